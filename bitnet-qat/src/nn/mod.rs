//! Layers: [`BitLinear`] and the [`Quantizer`] module it (and the reparameterizer) is built on,
//! with its recorded [`QuantizerSettings`] and [`quantizers`], which finds every quantizer of any
//! model.

mod bit_linear;
mod discover;
mod quantizer;
mod settings;
pub mod transformer;

pub use bit_linear::{BitLinear, BitLinearConfig};
pub use discover::{FoundQuantizer, quantizers, update_quantizers};
pub use quantizer::{QuantAxis, Quantizer, QuantizerConfig};
pub use settings::QuantizerSettings;
