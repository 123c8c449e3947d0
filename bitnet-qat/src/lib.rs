#![warn(missing_docs)]
//! # bitnet-qat
//!
//! Quantization-aware training (QAT) for [Burn](https://burn.dev): train BitNet b1.58
//! (ternary, 1.58-bit) models and other extreme low-bit networks with autodiff, on every Burn
//! backend.
//!
//! - [`quant`]: quantizers — binary, ternary, 2 to 8-bit integer formats; absmean, absmax and
//!   absmedian scales; per-tensor, per-channel, per-group and per-token granularity; and
//!   [`quant::fake_quantize`].
//! - [`ste`]: straight-through estimators — standard, clipped, soft (temperature), learned step
//!   size (LSQ) and adaptive (EWGS).
//! - [`nn`]: [`nn::BitLinear`], the BitNet b1.58 layer; the drop-in replacements of burn-nn's
//!   layers ([`nn::Linear`], [`nn::conv::Conv2d`], ...: W1.58A8, burn-nn's records) and
//!   [`nn::load_float_checkpoint`]; [`nn::Quantizer`].
//! - [`reparam`]: [`reparam::QatReparameterizer`] makes the weights of a Burn model you cannot
//!   edit quantization-aware in one call, and reports what it did.
//! - [`lm`]: the BitNet b1.58 language model (a model, not a layer) with its text data and
//!   tokenizer.
//! - [`schedule`]: lambda warm-up, temperature annealing, progressive bit width, BitNet's
//!   two-stage LR / weight decay, QAT statistics.
//! - `train` (feature `train`, on by default): burn-train integration — `Qat`, which trains
//!   any burn-train model with QAT, QAT state in checkpoints, the optimize hook, QAT metrics for
//!   the dashboard.
//! - [`check`]: NaN/Inf checks; [`data`]: the embedded digits, Fashion-MNIST/MNIST IDX files and
//!   a batcher.
//!
//! # Example
//! ```
//! use bitnet_qat::nn::BitLinearConfig;
//! use burn::tensor::{Device, Tensor};
//!
//! let device = Device::flex().autodiff();
//! let layer = BitLinearConfig::new(16, 4).init(&device).unwrap();
//! let x = Tensor::<2>::ones([2, 16], &device).require_grad();
//! let y = layer.forward(x.clone());
//! let grads = y.sum().backward();
//! assert!(layer.weight.base().grad(&grads).is_some()); // the latent weight learns
//! ```

mod backends;
pub mod check;
pub mod data;
pub mod error;
pub mod export;
mod fused;
pub mod infer;
pub mod lm;
pub mod nn;
pub mod ops;
pub mod quant;
mod recorded;
pub mod reparam;
pub mod schedule;
pub mod ste;
#[cfg(feature = "train")]
pub mod train;

pub use error::{QatError, Result};

/// The types most programs need.
pub mod prelude {
    pub use crate::error::{QatError, Result};
    pub use crate::nn::{BitLinear, BitLinearConfig, QuantScheme, Quantizer, QuantizerConfig};
    pub use crate::quant::{Granularity, QuantConfig, QuantFormat, ScaleStat, fake_quantize};
    pub use crate::reparam::QatReparameterizer;
    pub use crate::ste::Ste;
}
