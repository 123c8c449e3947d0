//! [`Projection`]: a linear map of the transformer, BitNet or full precision.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::Tensor;

use crate::nn::BitLinear;

/// A bias-free projection of a [`BitNetLm`](super::BitNetLm): a [`BitLinear`] (quantized
/// weights and activations, no inner norm) or, for the full-precision baseline, Burn's
/// `Linear`. Both store the weight `[d_input, d_output]`.
// A few per block: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Projection {
    /// Burn's `Linear` (full precision).
    Full(Linear),
    /// A BitNet layer.
    Bit(BitLinear),
}

impl Projection {
    /// Applies the projection to the last axis of `x`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Projection::Full(l) => l.forward(x),
            Projection::Bit(l) => l.forward(x),
        }
    }

    /// The BitNet layer, if this projection is one.
    pub fn bit_linear(&self) -> Option<&BitLinear> {
        match self {
            Projection::Bit(l) => Some(l),
            Projection::Full(_) => None,
        }
    }
}
