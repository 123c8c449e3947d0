//! Layers: [`BitLinear`] and the [`Quantizer`] module it (and the reparameterizer) is built on.

mod bit_linear;
mod control;
mod quantizer;

pub use bit_linear::{BitLinear, BitLinearConfig};
pub use control::QatControl;
pub use quantizer::{QuantAxis, Quantizer, QuantizerConfig};
