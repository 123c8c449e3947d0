//! Drop-in replacements for burn-nn's layers with BitNet quantization: change
//! `use burn::nn::Linear` to `use bitnet_qat::nn::Linear` (and the same for the configurations,
//! [`conv`](crate::nn::conv)'s layers, [`Embedding`](crate::nn::Embedding), and burn-nn's
//! [`attention`](crate::nn::attention) and [`transformer`](crate::nn::transformer) modules,
//! whose linear layers become drop-ins) and nothing else.
//!
//! Each layer has burn-nn's fields, parameters and record keys (`weight`, `bias`), so a
//! checkpoint of the burn-nn model loads into it ([`load_float_checkpoint`]); its configuration
//! has burn-nn's fields and defaults plus `quant` (a [`QuantScheme`](crate::nn::QuantScheme),
//! BitNet b1.58 by default; `QuantScheme::none()` computes what burn-nn computes, bit for
//! bit). The weight quantizer is attached to `weight` as a reparameterization (recorded under
//! `weight.qat.*`, found by every schedule, statistic, metric and [`crate::infer::pack`]); the
//! activation quantizer is the field `activation_quantizer`.

pub mod attention;
pub(crate) mod config;
pub mod conv;
mod conv_taps;
mod embedding;
mod float_checkpoint;
mod linear;
pub mod transformer;

pub use embedding::{Embedding, EmbeddingConfig};
pub use float_checkpoint::{FloatLoad, load_float_checkpoint, load_float_checkpoint_file};
pub use linear::{Linear, LinearConfig};

use burn::module::Param;
use burn::tensor::Tensor;

/// `param` without its reparameterization: the latent value, with its id and mappers.
pub(crate) fn latent<const D: usize>(param: Param<Tensor<D>>) -> Param<Tensor<D>> {
    // `Param::map` detaches the reparameterization and keeps the id and the save/load mappers.
    param.map(|t| t)
}
