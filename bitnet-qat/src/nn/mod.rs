//! Layers: [`BitLinear`] and the [`Quantizer`] module it (and the reparameterizer) is built on.

mod bit_linear;
mod quantizer;

pub use bit_linear::{BitLinear, BitLinearConfig};
pub use quantizer::{QuantAxis, Quantizer, QuantizerConfig};
