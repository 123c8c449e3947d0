//! Quantizers: formats, scale statistics, granularity and fake quantization.
//!
//! Every quantizer maps a tensor `x` onto an integer grid with a scale
//! `s = Q_p / max(stat(|x|), eps)`, rounds half to even, clamps to `[Q_n, Q_p]` and maps back:
//! `q = clamp(round(x * s), Q_n, Q_p) / s`. With `Q_p = 1` and `stat = mean` this is the
//! BitNet b1.58 weight quantizer exactly as the published code writes it
//! (`1 / max(mean|W|, 1e-5)`, not the paper's `W / (gamma + eps)`); with `Q_p = 127` and
//! `stat = max` per token it is the BitNet 8-bit activation quantizer. Binary weights follow
//! BitNet b1: `sign(W - mean W) * stat(|W|)`.

mod config;
mod fake;
pub(crate) mod layout;

pub use crate::fused::has_fused_kernels;
pub use config::{Granularity, QuantConfig, QuantFormat, ScaleStat};
pub use fake::{QuantGrid, fake_quantize, fake_quantize_weight, quantize};
pub(crate) use fake::{quant_grid, validate_shape};

/// `t` without its autodiff graph (the inner tensor), or `t` itself.
pub(crate) fn without_graph<const D: usize>(t: burn::tensor::Tensor<D>) -> burn::tensor::Tensor<D> {
    if t.is_autodiff() { t.inner() } else { t }
}
