//! Layers: [`BitLinear`]; the drop-in replacements of burn-nn's layers ([`Linear`],
//! [`conv::Conv1d`], [`conv::Conv2d`], [`Embedding`]: burn-nn's fields and records, a
//! [`QuantScheme`] that defaults to BitNet b1.58) with [`load_float_checkpoint`]; the
//! [`Quantizer`] module they (and the reparameterizer) are built on, with its recorded
//! [`QuantizerSettings`]; and [`quantizers`], which finds every quantizer of any model.

mod bit_linear;
mod discover;
mod dropin;
mod quantizer;
mod scheme;
mod settings;

pub use bit_linear::{BitLinear, BitLinearConfig};
pub use discover::{FoundQuantizer, quantizers, update_quantizers};
pub use dropin::{
    Embedding, EmbeddingConfig, FloatLoad, Linear, LinearConfig, load_float_checkpoint,
    load_float_checkpoint_file,
};
pub use dropin::{attention, conv, transformer};
pub use quantizer::{QuantAxis, Quantizer, QuantizerConfig, linear_view};
pub use scheme::QuantScheme;
pub use settings::QuantizerSettings;
