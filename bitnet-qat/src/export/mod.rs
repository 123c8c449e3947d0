//! Export and import of the BitNet language model ([`BitNetLm`]) in the formats other
//! engines run: GGUF for llama.cpp ([`export_gguf`], [`import_gguf`]) and Hugging Face
//! transformers' `BitNetForCausalLM` ([`export_hf`], [`import_hf`]). An import gives an
//! [`ImportedLm`], which builds the packed model for inference or the quantization-aware model
//! to fine-tune.
//!
//! See `docs/export.md` for what each engine can represent and how to run the files.

mod gguf;
mod hf;
mod hf_tokenizer;
mod lm_weights;

use burn::tensor::Device;

pub use gguf::{
    GgufFile, GgufTensor, GgufTernary, GgufType, GgufValue, TensorType, export_gguf, import_gguf,
    import_gguf_bytes,
};
pub use hf::{export_hf, import_hf, import_hf_bytes};

use crate::error::{QatError, Result};
use crate::lm::CharTokenizer;
use crate::lm::{BitNetLm, BitNetLmConfig};
use lm_weights::LmWeights;

/// The text of token 0 ([`crate::lm::UNKNOWN_TOKEN`]) in exported vocabularies.
const UNKNOWN_TEXT: &str = "<unk>";

/// A language model read from an exported file: its configuration, its tokenizer when the file
/// holds a character vocabulary, and its weights on the host.
#[derive(Debug, Clone)]
pub struct ImportedLm {
    /// The tokenizer, when the file's vocabulary is one of single characters (as this crate
    /// writes); `None` for other vocabularies.
    pub tokenizer: Option<CharTokenizer>,
    weights: LmWeights,
}

impl ImportedLm {
    /// The model's configuration.
    pub fn config(&self) -> &BitNetLmConfig {
        &self.weights.config
    }

    /// The model for inference on `device`, its ternary projections packed (never expanded to
    /// f32).
    ///
    /// # Errors
    /// [`crate::QatError::Mismatch`] when the weights do not fit the configuration.
    pub fn packed(&self, device: &Device) -> Result<BitNetLm> {
        self.weights.packed_lm(device)
    }

    /// The quantization-aware model on `device`, to fine-tune: every ternary projection a
    /// [`BitLinear`](crate::nn::BitLinear) whose latent weight is the dequantized weight.
    /// Its quantizer recomputes the scale from that weight (absmean), so the first forward
    /// pass is close to, not equal to, the imported model's.
    ///
    /// # Errors
    /// As [`ImportedLm::packed`].
    pub fn qat(&self, device: &Device) -> Result<BitNetLm> {
        self.weights.qat_lm(device)
    }
}

/// The field of a [`BitNetLmConfig`] that an error of [`BitNetLmConfig::validate`] names
/// (`n_layers` for `BitNetLmConfig.n_layers`, `norm_eps` for a bad epsilon; empty for another
/// error) and what is wrong with it: so a reader can name its own key for the field.
pub(crate) fn config_field(e: QatError) -> (String, String) {
    match e {
        QatError::Config {
            name,
            value,
            allowed,
        } => (
            name.strip_prefix("BitNetLmConfig.")
                .unwrap_or(&name)
                .to_string(),
            format!("{value}: {allowed}"),
        ),
        e @ QatError::NormEpsilon(_) => ("norm_eps".into(), e.to_string()),
        other => (String::new(), other.to_string()),
    }
}

/// Checks that `tokenizer` has the vocabulary of `config`: a [`QatError::Mismatch`] otherwise.
pub(crate) fn check_vocabulary(tokenizer: &CharTokenizer, config: &BitNetLmConfig) -> Result<()> {
    if tokenizer.vocab_size() == config.vocab_size {
        return Ok(());
    }
    Err(QatError::mismatch(
        "the tokenizer's vocabulary and the model's vocab_size",
        config.vocab_size,
        tokenizer.vocab_size(),
    ))
}
