//! The typed error returned by every fallible operation of this crate.

use thiserror::Error;

/// Everything that can go wrong when configuring, training, saving, loading or running a
/// quantization-aware model: one variant per kind of problem a caller can act on.
///
/// Configurations are checked when they are validated or when a layer is built, so a bad
/// setting is reported before the first forward pass instead of surfacing as a panic inside
/// Burn or as a silent NaN. Files are checked field by field before anything they describe is
/// allocated ([`QatError::File`], [`QatError::Record`]).
///
/// The enum is `#[non_exhaustive]`: match the variants you act on and keep a catch-all arm.
///
/// # Example
/// ```
/// use bitnet_qat::QatError;
/// use bitnet_qat::lm::BitNetLmConfig;
///
/// let err = BitNetLmConfig::new(64, 60, 2, 8, 128)
///     .validate()
///     .unwrap_err();
/// match err {
///     QatError::Config { name, .. } => assert_eq!(name, "BitNetLmConfig.d_model"),
///     other => panic!("{other}"),
/// }
/// ```
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
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
    /// A layer dimension is zero.
    #[error("layer dimension `{name}` must be > 0")]
    ZeroDim {
        /// The name of the dimension (`d_input`, `d_output`).
        name: &'static str,
    },
    /// A configuration value outside the range this crate accepts, on its own or together with
    /// the settings beside it.
    #[error("`{name}` = {value}: {allowed}")]
    Config {
        /// The setting, as `Type.field` (`BitNetLmConfig.n_layers`, `QatPlan.loss_scale`).
        name: String,
        /// The value found.
        value: String,
        /// What is allowed, in words (`finite and > 0`, `1..=1024`).
        allowed: String,
    },
    /// An operation that does not apply to a layer of the model (packing an int8 layer, an
    /// activation quantizer the packed kernels do not reproduce, ...).
    #[error("layer `{layer}`: {reason}")]
    Unsupported {
        /// The layer's path in the model (`blocks.0.attention.q_proj`), or its type where it
        /// has none.
        layer: String,
        /// What the operation cannot do with it, and what to do instead.
        reason: String,
    },
    /// A tensor does not have the shape the operation needs.
    #[error("shape mismatch for {what}: expected {expected}, got {got:?}")]
    Shape {
        /// What was checked (`TernaryLinear input`, a parameter path).
        what: String,
        /// The expected shape (`[..., 256]`).
        expected: String,
        /// The shape that was found.
        got: Vec<usize>,
    },
    /// Two things that must agree do not: a model and its configuration, a tokenizer and a
    /// model, a KV cache and the model it is used with.
    #[error("{what}: expected {expected}, found {found}")]
    Mismatch {
        /// What was compared.
        what: String,
        /// What the one side requires.
        expected: String,
        /// What the other side has.
        found: String,
    },
    /// A token id outside the model's vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    Token {
        /// The id found.
        id: i64,
        /// The model's vocabulary size (valid ids are `0..vocab_size`).
        vocab_size: usize,
    },
    /// A sequence that is empty or longer than the model's `max_seq_len`.
    #[error("a sequence of {len} positions: the model takes 1 to {max}")]
    SequenceLength {
        /// Positions asked for (prompt, cached and new tokens together).
        len: usize,
        /// The model's `max_seq_len`.
        max: usize,
    },
    /// A tensor holds NaN or infinite values.
    #[error("{what} contains {nan} NaN and {inf} infinite values")]
    NonFinite {
        /// What was checked (`input`, `parameter `fc1.weight``, `loss`, ...).
        what: String,
        /// How many NaN values were found.
        nan: usize,
        /// How many infinite values were found.
        inf: usize,
    },
    /// A dataset is missing, too small for the request, or cannot be batched.
    #[error("dataset: {0}")]
    Dataset(String),
    /// A model record (a checkpoint or a saved packed model, in any Burn store format) holds
    /// values this crate cannot have written: a malformed quantizer setting or packed layout,
    /// an invalid code or scale, tensors that do not fit the model.
    #[error("record `{path}`: {reason}")]
    Record {
        /// The parameter path in the model (`fc.weight.packed.layout`), or the file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file that cannot be read: truncated, malformed, or describing sizes or values the
    /// format or this crate's models do not allow.
    #[error("{}", file_message(format, path, field, *offset, reason))]
    File {
        /// The format (`GGUF`, `safetensors`, `config.json`, `lm.json`, `burnpack`, `IDX`).
        format: &'static str,
        /// The file, or empty when it was read from memory.
        path: String,
        /// The field, key or tensor at fault (`tensor count`, `blk.0.attn_q.weight`,
        /// `n_layers`).
        field: String,
        /// The byte offset of the field in the file, where the format has one.
        offset: Option<u64>,
        /// What is wrong.
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
    /// A file or folder could not be read or written.
    #[error("I/O error on {path}: {message}")]
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// A training run stopped before its end (a diverged model, a failed step, a checkpoint
    /// that cannot be resumed).
    #[error("training stopped: {0}")]
    Training(String),
    /// Tensor data could not be read back from its device.
    #[error("reading {what} back from the device: {reason}")]
    Device {
        /// What was read.
        what: String,
        /// The backend's message.
        reason: String,
    },
}

fn file_message(
    format: &str,
    path: &str,
    field: &str,
    offset: Option<u64>,
    reason: &str,
) -> String {
    let mut out = format!("{format} file");
    if !path.is_empty() {
        out.push_str(&format!(" {path}"));
    }
    if !field.is_empty() {
        out.push_str(&format!(", {field}"));
    }
    if let Some(offset) = offset {
        out.push_str(&format!(" at byte {offset}"));
    }
    out.push_str(&format!(": {reason}"));
    out
}

impl QatError {
    /// A [`QatError::Config`] error.
    pub(crate) fn config(
        name: impl Into<String>,
        value: impl std::fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Self::Config {
            name: name.into(),
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }

    /// A [`QatError::Unsupported`] error.
    pub(crate) fn unsupported(layer: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Unsupported {
            layer: layer.into(),
            reason: reason.into(),
        }
    }

    /// A [`QatError::Record`] error.
    pub(crate) fn record(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Record {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A [`QatError::Mismatch`] error.
    pub(crate) fn mismatch(
        what: impl Into<String>,
        expected: impl std::fmt::Display,
        found: impl std::fmt::Display,
    ) -> Self {
        Self::Mismatch {
            what: what.into(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }

    /// A [`QatError::Io`] error for `path`.
    pub(crate) fn io(path: &std::path::Path, error: impl std::fmt::Display) -> Self {
        Self::Io {
            path: path.display().to_string(),
            message: error.to_string(),
        }
    }

    /// A [`QatError::Device`] error.
    pub(crate) fn device(what: impl Into<String>, reason: impl std::fmt::Debug) -> Self {
        Self::Device {
            what: what.into(),
            reason: format!("{reason:?}"),
        }
    }

    /// This error with `path` as the file it concerns: a [`QatError::File`] read from memory
    /// (its path empty) takes the path; other errors are returned unchanged.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Self::File {
                format,
                path: p,
                field,
                offset,
                reason,
            } if p.is_empty() => Self::File {
                format,
                path: path.display().to_string(),
                field,
                offset,
                reason,
            },
            other => other,
        }
    }

    /// This error with `layer` as the layer (or parameter path) it concerns: a
    /// [`QatError::Unsupported`] or [`QatError::Record`] found by a check that did not know
    /// where it was takes the path; a [`QatError::Shape`] names it; other errors are returned
    /// unchanged.
    pub(crate) fn at(self, layer: &str) -> Self {
        match self {
            Self::Unsupported { layer: l, reason } if l.is_empty() => Self::Unsupported {
                layer: layer.to_string(),
                reason,
            },
            Self::Record { path, reason } if path.is_empty() => Self::Record {
                path: layer.to_string(),
                reason,
            },
            Self::Shape {
                what,
                expected,
                got,
            } if !what.contains('`') => Self::Shape {
                what: format!("{what} of `{layer}`"),
                expected,
                got,
            },
            other => other,
        }
    }
}

/// The byte offset of a 1-based `line` and `column` of JSON text (serde_json's error position).
pub(crate) fn json_offset(bytes: &[u8], line: usize, column: usize) -> Option<u64> {
    if line == 0 {
        return None;
    }
    let start = if line == 1 {
        0
    } else {
        bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .nth(line - 2)?
            .0
            + 1
    };
    Some((start + column.saturating_sub(1)) as u64)
}

/// A `Result` whose error is [`QatError`].
pub type Result<T> = core::result::Result<T, QatError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_field_offset_and_layer_once() {
        let file = QatError::File {
            format: "GGUF",
            path: "m.gguf".into(),
            field: "tensor count".into(),
            offset: Some(8),
            reason: "2^40 tensors in a 100-byte file".into(),
        };
        assert_eq!(
            file.to_string(),
            "GGUF file m.gguf, tensor count at byte 8: 2^40 tensors in a 100-byte file"
        );
        let bytes = QatError::File {
            format: "lm.json",
            path: String::new(),
            field: "n_layers".into(),
            offset: None,
            reason: "too many".into(),
        };
        assert_eq!(bytes.to_string(), "lm.json file, n_layers: too many");
        // A path is filled in once; a second `at` keeps the first.
        let e = QatError::unsupported("", "int4 has no packed form")
            .at("fc1.weight")
            .at("outer");
        assert_eq!(e.to_string(), "layer `fc1.weight`: int4 has no packed form");
        let e = QatError::record("", "code 3").at("fc.weight.packed.codes");
        assert_eq!(e.to_string(), "record `fc.weight.packed.codes`: code 3");
        assert_eq!(
            QatError::config("QatPlan.loss_scale", 0.0, "finite and > 0").to_string(),
            "`QatPlan.loss_scale` = 0: finite and > 0"
        );
    }

    #[test]
    fn json_offsets_count_lines_and_columns() {
        let text = b"ab\ncd\nef";
        assert_eq!(json_offset(text, 1, 2), Some(1));
        assert_eq!(json_offset(text, 3, 1), Some(6));
        assert_eq!(json_offset(text, 4, 1), None);
    }
}
