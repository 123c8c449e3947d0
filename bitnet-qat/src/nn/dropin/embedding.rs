//! [`Embedding`]: burn-nn's `Embedding`, full precision by default, with an optional quantized
//! table.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::config::hand_written_config;
use super::latent;
use crate::error::QatError;
use crate::nn::bit_linear::AttachAt;
use crate::nn::{Quantizer, QuantizerConfig};

/// Configuration of a drop-in [`Embedding`]: burn-nn's `EmbeddingConfig` (the same fields and
/// defaults) plus [`EmbeddingConfig::quant`], `None` by default: BitNet, like every QAT
/// recipe, keeps the embeddings in full precision.
///
/// # Example
/// ```
/// use bitnet_qat::nn::EmbeddingConfig;
/// use bitnet_qat::nn::QuantizerConfig;
/// use bitnet_qat::quant::{Granularity, QuantConfig};
/// use burn::tensor::{Device, Int, Tensor};
///
/// let device = Device::flex();
/// let float = EmbeddingConfig::new(100, 16).init(&device);
/// assert!(float.weight_quantizer().is_none());
/// // 8-bit rows, one scale per token's vector.
/// let int8 = EmbeddingConfig::new(100, 16)
///     .with_quant(Some(QuantizerConfig::new(
///         QuantConfig::int(8).with_granularity(Granularity::PerChannel),
///     )))
///     .init(&device);
/// let ids = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// assert_eq!(int8.forward(ids).dims(), [1, 3, 16]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmbeddingConfig {
    /// The number of embedding vectors.
    pub n_embedding: usize,
    /// The size of each vector.
    pub d_model: usize,
    /// The initializer (burn-nn's default: `Normal { mean: 0, std: 1 }`).
    pub initializer: Initializer,
    /// The quantizer of the table `[n_embedding, d_model]`, or `None` (the default) for full
    /// precision. Its scales run along each vector: `PerChannel` is one scale per token.
    #[serde(default)]
    pub quant: Option<QuantizerConfig>,
}

hand_written_config!(EmbeddingConfig);

impl EmbeddingConfig {
    /// burn-nn's defaults, in full precision.
    pub fn new(n_embedding: usize, d_model: usize) -> Self {
        let burn = burn::nn::EmbeddingConfig::new(n_embedding, d_model);
        Self {
            n_embedding,
            d_model,
            initializer: burn.initializer,
            quant: None,
        }
    }

    /// Sets the initializer.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.initializer = initializer;
        self
    }

    /// Sets the quantizer of the table.
    pub fn with_quant(mut self, quant: Option<QuantizerConfig>) -> Self {
        self.quant = quant;
        self
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> burn::nn::EmbeddingConfig {
        burn::nn::EmbeddingConfig::new(self.n_embedding, self.d_model)
            .with_initializer(self.initializer.clone())
    }

    /// Builds the layer on `device`: burn-nn's table (the same initial values for the same
    /// seed), with its quantizer if [`EmbeddingConfig::quant`] has one.
    ///
    /// # Panics
    /// For an invalid configuration, as burn-nn's `init` does, with the message of the error
    /// [`EmbeddingConfig::try_init`] returns.
    pub fn init(&self, device: &Device) -> Embedding {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`EmbeddingConfig::init`], with a typed error for an invalid configuration.
    ///
    /// # Errors
    /// [`QatError::ZeroDim`] for a zero size; as [`QuantizerConfig::init_output_first`].
    pub fn try_init(&self, device: &Device) -> crate::Result<Embedding> {
        for (name, d) in [("n_embedding", self.n_embedding), ("d_model", self.d_model)] {
            if d == 0 {
                return Err(QatError::ZeroDim { name });
            }
        }
        Embedding::from_float(self.to_float().init(device), self.quant.as_ref())
    }
}

/// burn-nn's `Embedding`: the table `[n_embedding, d_model]` (record key `weight`) looked up by
/// token ids, optionally quantized with one quantizer over the table (scales along each
/// vector).
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Embedding {
    /// The table `[n_embedding, d_model]`: the latent values, its quantizer attached if any.
    pub weight: Param<Tensor<2>>,
}

impl Embedding {
    /// burn-nn's `embedding` with `quant` attached to its table (none: the same layer).
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_output_first`].
    pub fn from_float(
        embedding: burn::nn::Embedding,
        quant: Option<&QuantizerConfig>,
    ) -> crate::Result<Self> {
        let quantizer = match quant {
            Some(q) => Some(q.init_output_first(&embedding.weight.val())?),
            None => None,
        };
        let layer = Self {
            weight: embedding.weight,
        };
        Ok(layer.apply_reparameterization(AttachAt {
            path: "weight",
            quantizer,
        }))
    }

    /// burn-nn's `Embedding` with the latent table (the quantizer dropped).
    pub fn to_float(self) -> burn::nn::Embedding {
        burn::nn::Embedding {
            weight: latent(self.weight),
        }
    }

    /// The vectors of `input`'s ids.
    ///
    /// # Shapes
    /// - input: `[batch_size, seq_length]`
    /// - output: `[batch_size, seq_length, d_model]`
    pub fn forward(&self, input: Tensor<2, Int>) -> Tensor<3> {
        burn::nn::Embedding {
            weight: self.weight.clone(),
        }
        .forward(input)
    }

    /// The table's quantizer, if it is quantized.
    pub fn weight_quantizer(&self) -> Option<&Quantizer> {
        self.weight.reparameterization::<Quantizer>()
    }
}

impl ModuleDisplay for Embedding {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [n_embedding, d_model] = self.weight.shape().dims();
        let quant = self
            .weight_quantizer()
            .and_then(|q| q.try_settings().ok())
            .map_or_else(|| "float".to_string(), |s| format!("{:?}", s.quant.format));
        content
            .add("n_embedding", &n_embedding)
            .add("d_model", &d_model)
            .add("weight", &quant)
            .optional()
    }
}
