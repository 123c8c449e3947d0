//! The typed error returned by every fallible operation of this crate.

use thiserror::Error;

/// Everything that can go wrong when configuring or running quantization-aware training.
///
/// Configurations are checked when they are validated or when a layer is built, so a bad
/// setting is reported before the first forward pass instead of surfacing as a panic inside
/// Burn or as a silent NaN.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QatError {
    /// The bit width is not one this crate can quantize to.
    #[error("unsupported bit width {bits}: {hint}")]
    UnsupportedBits {
        /// The bit width that was asked for.
        bits: u32,
        /// Which bit widths are allowed in this position.
        hint: &'static str,
    },
    /// A group size of zero, or one that does not divide the grouped dimension.
    #[error("group size {group_size} does not divide the grouped dimension of size {dim}")]
    GroupSize {
        /// The configured group size.
        group_size: usize,
        /// The size of the dimension the groups are taken along.
        dim: usize,
    },
    /// The soft STE temperature is zero, negative or not finite.
    #[error("soft STE temperature must be finite and > 0, got {0}")]
    Temperature(f64),
    /// The EWGS `delta` is negative or not finite.
    #[error("EWGS delta must be finite and >= 0, got {0}")]
    Delta(f64),
    /// The quantizer epsilon is zero, negative or not finite.
    #[error("quantizer epsilon must be finite and > 0, got {0}")]
    Epsilon(f64),
    /// The RMSNorm epsilon is zero, negative or not finite.
    #[error("RMSNorm epsilon must be finite and > 0, got {0}")]
    NormEpsilon(f64),
    /// A combination of settings that has no meaning.
    #[error("invalid quantizer configuration: {0}")]
    Invalid(String),
    /// A layer dimension is zero.
    #[error("layer dimension `{name}` must be > 0")]
    ZeroDim {
        /// The name of the dimension (`d_input`, `d_output`).
        name: &'static str,
    },
    /// A tensor does not have the shape the operation needs.
    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape {
        /// What was checked.
        what: &'static str,
        /// The expected shape, in words.
        expected: String,
        /// The shape that was found.
        got: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{what} contains {nan} NaN and {inf} infinite values")]
    NonFinite {
        /// What was checked (`input`, `weight of layer fc1`, `loss`, ...).
        what: String,
        /// How many NaN values were found.
        nan: usize,
        /// How many infinite values were found.
        inf: usize,
    },
    /// A dataset could not be read or parsed.
    #[error("dataset error: {0}")]
    Dataset(String),
    /// A record (checkpoint, saved model) holds values that cannot be what this crate wrote.
    #[error("malformed record: {0}")]
    Record(String),
    /// A model file of another program's format (GGUF, Hugging Face safetensors and
    /// `config.json`) cannot be read: an I/O error, a truncated file, or values the format or
    /// this crate's models do not allow.
    #[error("{format} file: {reason}")]
    File {
        /// The format (`GGUF`, `safetensors`, `config.json`, ...).
        format: &'static str,
        /// What is wrong, naming the key or tensor.
        reason: String,
    },
    /// A model cannot be written in a format because the format (or the engine that runs it)
    /// cannot represent it.
    #[error("cannot export to {format}: {reason}")]
    Unrepresentable {
        /// The format (`GGUF`, `Hugging Face`).
        format: &'static str,
        /// What the format cannot represent.
        reason: String,
    },
}

/// A `Result` whose error is [`QatError`].
pub type Result<T> = core::result::Result<T, QatError>;
