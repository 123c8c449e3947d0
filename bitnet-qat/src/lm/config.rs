//! [`BitNetLmConfig`]: the configuration of the BitNet b1.58 decoder.

use burn::config::Config;
use burn::nn::{EmbeddingConfig, Initializer, LinearConfig, RmsNormConfig};
use burn::tensor::Device;

use super::attention::Attention;
use super::block::DecoderBlock;
use super::ffn::GatedFfn;
use super::model::BitNetLm;
use super::projection::Projection;
use crate::check::check_norm_eps;
use crate::error::QatError;
use crate::nn::BitLinearConfig;
use crate::quant::QuantConfig;
use crate::ste::Ste;

/// The activation of the gated feed-forward network: `act(gate x) * up x`.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum FfnActivation {
    /// `relu(x)^2`, BitNet b1.58 2B4T's.
    ReluSquared,
    /// `x * sigmoid(x)` (LLaMA's SwiGLU).
    Silu,
}

/// Configuration of a [`BitNetLm`], the BitNet b1.58 2B4T decoder layout: full-precision token
/// embedding; `n_layers` blocks of pre-norm RMSNorm → attention (q/k/v/o projections, rotary
/// position embedding, grouped-query heads, causal softmax, SubLN `attn_sub_norm` before
/// `o_proj`) → residual, and pre-norm RMSNorm → `down(ffn_sub_norm(act(gate x) * up x))` →
/// residual; a final RMSNorm; a full-precision output head, tied to the embedding or separate.
///
/// The projections are [`BitLinear`](crate::nn::BitLinear)s without an inner norm and bias
/// (the block's norms come before them), with `weight_quant` and `activation_quant`; with
/// `weight_quant` set to `None` they are Burn `Linear`s: the full-precision baseline of the
/// same architecture.
///
/// # Example
/// ```
/// use bitnet_qat::lm::BitNetLmConfig;
/// use burn::tensor::{Device, Int, Tensor};
///
/// let device = Device::flex();
/// // 64 tokens, width 64, 2 blocks, 4 query heads sharing 2 key/value heads.
/// let config = BitNetLmConfig::new(64, 64, 2, 4, 128).with_n_kv_heads(Some(2));
/// let lm = config.init(&device).unwrap();
/// let tokens = Tensor::<2, Int>::from_data([[1, 2, 3, 4]], &device);
/// assert_eq!(lm.forward(tokens).dims(), [1, 4, 64]);
///
/// // Bad shapes are errors, not panics.
/// assert!(BitNetLmConfig::new(64, 60, 2, 8, 128).init(&device).is_err());
/// ```
#[derive(Config, Debug)]
pub struct BitNetLmConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Query heads; `d_model / n_heads` must be even (rotary pairs).
    pub n_heads: usize,
    /// Width of the feed-forward network.
    pub d_ff: usize,
    /// Key/value heads (grouped-query attention); `None` is `n_heads`. Must divide `n_heads`.
    #[config(default = "None")]
    pub n_kv_heads: Option<usize>,
    /// The longest sequence (prompt and generated tokens) the model accepts.
    #[config(default = 1024)]
    pub max_seq_len: usize,
    /// Base of the rotary frequencies (2B4T: 500000; LLaMA: 10000).
    #[config(default = 10000.0)]
    pub rope_theta: f64,
    /// The feed-forward activation.
    #[config(default = "FfnActivation::ReluSquared")]
    pub activation: FfnActivation,
    /// Whether the output head is the transposed token embedding (one parameter).
    #[config(default = true)]
    pub tied_head: bool,
    /// RMSNorm epsilon of every norm.
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// The weight quantizer of every projection; `None` for full precision (Burn `Linear`s).
    #[config(default = "Some(QuantConfig::ternary())")]
    pub weight_quant: Option<QuantConfig>,
    /// The weight STE of the projections.
    #[config(default = "Ste::Standard")]
    pub weight_ste: Ste,
    /// The activation quantizer of every projection input: 8-bit absmax per token (BitNet's),
    /// or per group of 256 features (`Granularity::PerGroup { size: 256 }`, what llama.cpp
    /// computes), or `None`. Must be `None` when `weight_quant` is.
    #[config(default = "Some(QuantConfig::activation_int8())")]
    pub activation_quant: Option<QuantConfig>,
    /// Initializer of the projections and the embedding (GPT-2's normal, std 0.02).
    #[config(default = "Initializer::Normal { mean: 0.0, std: 0.02 }")]
    pub initializer: Initializer,
}

/// The largest parameter a [`BitNetLmConfig`] may ask for: 2^34 elements (64 GiB of f32).
pub const MAX_PARAM_ELEMENTS: usize = 1 << 34;

/// The most decoder blocks a [`BitNetLmConfig`] may ask for (the largest published decoders
/// have about 128).
pub const MAX_LAYERS: usize = 1024;

/// The most parameters a whole [`BitNetLmConfig`] model may hold: 2^36 elements.
pub const MAX_MODEL_ELEMENTS: usize = 1 << 36;

/// The parameters of a [`BitNetLmConfig`] model, by kind ([`BitNetLmConfig::param_counts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    /// Elements of the parameters that stay full precision: the token embedding, every
    /// RMSNorm gain, the untied output head. A packed skeleton
    /// ([`BitNetLmConfig::init_packed_skeleton`]) allocates these and nothing else.
    pub dense: usize,
    /// Elements of the projection weights of all blocks.
    pub projections: usize,
}

impl ParamCounts {
    /// Every parameter.
    pub fn total(&self) -> usize {
        self.dense + self.projections
    }
}

impl BitNetLmConfig {
    /// The key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// The width of one head.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// The number of parameter elements the model holds, by kind; `None` when a count
    /// overflows (a configuration [`BitNetLmConfig::validate`] refuses).
    pub fn param_counts(&self) -> Option<ParamCounts> {
        let (d, ff, v) = (self.d_model, self.d_ff, self.vocab_size);
        let heads = if self.tied_head { 1 } else { 2 };
        let embedding = v.checked_mul(d)?.checked_mul(heads)?;
        // Four norms a block (attention, its SubLN, FFN, its SubLN) and the final one.
        let block_norms = d.checked_mul(3)?.checked_add(ff)?;
        let norms = block_norms.checked_mul(self.n_layers)?.checked_add(d)?;
        let block = self
            .projection_dims()
            .iter()
            .try_fold(0usize, |acc, (i, o)| acc.checked_add(i.checked_mul(*o)?))?;
        Some(ParamCounts {
            dense: embedding.checked_add(norms)?,
            projections: block.checked_mul(self.n_layers)?,
        })
    }

    /// Checks the shapes and settings.
    ///
    /// # Errors
    /// [`QatError::Config`] naming the field (`BitNetLmConfig.n_layers`, ...): a zero size,
    /// more than [`MAX_LAYERS`] blocks, `d_model` not a multiple of `n_heads`, an odd head
    /// width, `n_kv_heads` not dividing `n_heads`, a non-finite or non-positive `rope_theta`,
    /// activation quantization on full-precision weights, a parameter over
    /// [`MAX_PARAM_ELEMENTS`] elements or a model over [`MAX_MODEL_ELEMENTS`];
    /// [`QatError::NormEpsilon`] for a bad `norm_eps`; the projections' own errors for an
    /// invalid quantizer.
    pub fn validate(&self) -> crate::Result<()> {
        let field = |name: &str| format!("BitNetLmConfig.{name}");
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
            ("n_kv_heads", self.kv_heads()),
            ("d_ff", self.d_ff),
            ("max_seq_len", self.max_seq_len),
        ] {
            if v == 0 {
                return Err(QatError::config(field(name), v, "> 0"));
            }
        }
        if self.n_layers > MAX_LAYERS {
            return Err(QatError::config(
                field("n_layers"),
                self.n_layers,
                format!("1..={MAX_LAYERS}"),
            ));
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return Err(QatError::config(
                field("d_model"),
                self.d_model,
                format!("a multiple of n_heads = {}", self.n_heads),
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(QatError::config(
                field("n_heads"),
                self.n_heads,
                format!(
                    "a head width d_model / n_heads that is even (rotary pairs); it is {}",
                    self.head_dim()
                ),
            ));
        }
        if !self.n_heads.is_multiple_of(self.kv_heads()) {
            return Err(QatError::config(
                field("n_kv_heads"),
                self.kv_heads(),
                format!("a divisor of n_heads = {}", self.n_heads),
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(QatError::config(
                field("rope_theta"),
                self.rope_theta,
                "finite and > 0",
            ));
        }
        if self.weight_quant.is_none() && self.activation_quant.is_some() {
            return Err(QatError::config(
                field("activation_quant"),
                "Some(..)",
                "None when weight_quant is None (full-precision weights take full-precision \
                 activations)",
            ));
        }
        check_norm_eps(self.norm_eps)?;
        // The sizes of the largest parameters (a corrupted configuration file must not
        // overflow, nor reach an allocation that cannot exist).
        for (name, a, b) in [
            ("vocab_size", self.vocab_size, self.d_model),
            ("d_ff", self.d_model, self.d_ff),
            ("d_model", self.d_model, self.d_model),
        ] {
            if a.checked_mul(b).is_none_or(|n| n > MAX_PARAM_ELEMENTS) {
                return Err(QatError::config(
                    field(name),
                    if name == "vocab_size" { a } else { b },
                    format!(
                        "a value whose largest parameter ({a} x {b}) has at most \
                         {MAX_PARAM_ELEMENTS} elements"
                    ),
                ));
            }
        }
        if self
            .param_counts()
            .is_none_or(|c| c.total() > MAX_MODEL_ELEMENTS)
        {
            return Err(QatError::config(
                field("n_layers"),
                self.n_layers,
                format!("a model of at most {MAX_MODEL_ELEMENTS} parameters with these widths"),
            ));
        }
        // The projections check their quantizers against their widths.
        for (d_in, d_out) in self.projection_dims() {
            if let Some(p) = self.projection(d_in, d_out) {
                p.validate()?;
            }
        }
        Ok(())
    }

    /// Builds the model on `device`.
    ///
    /// # Errors
    /// As [`BitNetLmConfig::validate`].
    pub fn init(&self, device: &Device) -> crate::Result<BitNetLm> {
        self.build(device, false)
    }

    /// The model as [`crate::infer::pack`] leaves it before attaching the packed weights: the
    /// projections built by [`BitLinearConfig::init_packed_skeleton`] (no weight quantizer,
    /// weights never allocated). The skeleton to load a packed model into with
    /// [`crate::infer::load_packed`] without allocating its f32 projection weights; not for
    /// training.
    ///
    /// # Errors
    /// As [`BitNetLmConfig::validate`].
    pub fn init_packed_skeleton(&self, device: &Device) -> crate::Result<BitNetLm> {
        self.build(device, true)
    }

    fn build(&self, device: &Device, skeleton: bool) -> crate::Result<BitNetLm> {
        self.validate()?;
        let embedding = EmbeddingConfig::new(self.vocab_size, self.d_model)
            .with_initializer(self.initializer.clone())
            .init(device);
        let blocks = (0..self.n_layers)
            .map(|_| self.block(device, skeleton))
            .collect::<crate::Result<Vec<_>>>()?;
        let head = (!self.tied_head).then(|| {
            LinearConfig::new(self.d_model, self.vocab_size)
                .with_bias(false)
                .with_initializer(self.initializer.clone())
                .init(device)
        });
        Ok(BitNetLm {
            embedding,
            blocks,
            norm: self.norm(self.d_model, device),
            head,
            max_seq_len: self.max_seq_len,
            rope_theta: self.rope_theta,
        })
    }

    fn block(&self, device: &Device, skeleton: bool) -> crate::Result<DecoderBlock> {
        let kv = self.kv_heads() * self.head_dim();
        let attention = Attention {
            q_proj: self.init_projection(self.d_model, self.d_model, device, skeleton)?,
            k_proj: self.init_projection(self.d_model, kv, device, skeleton)?,
            v_proj: self.init_projection(self.d_model, kv, device, skeleton)?,
            o_proj: self.init_projection(self.d_model, self.d_model, device, skeleton)?,
            sub_norm: self.norm(self.d_model, device),
            n_heads: self.n_heads,
            n_kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
        };
        let ffn = GatedFfn {
            gate_proj: self.init_projection(self.d_model, self.d_ff, device, skeleton)?,
            up_proj: self.init_projection(self.d_model, self.d_ff, device, skeleton)?,
            down_proj: self.init_projection(self.d_ff, self.d_model, device, skeleton)?,
            sub_norm: self.norm(self.d_ff, device),
            activation: self.activation,
        };
        Ok(DecoderBlock {
            attention_norm: self.norm(self.d_model, device),
            attention,
            ffn_norm: self.norm(self.d_model, device),
            ffn,
        })
    }

    fn norm(&self, d: usize, device: &Device) -> burn::nn::RmsNorm {
        RmsNormConfig::new(d)
            .with_epsilon(self.norm_eps)
            .init(device)
    }

    /// The `(d_input, d_output)` of a block's seven projections, in the order q, k, v, o,
    /// gate, up, down.
    pub(crate) fn projection_dims(&self) -> [(usize, usize); 7] {
        let (d, kv, ff) = (self.d_model, self.kv_heads() * self.head_dim(), self.d_ff);
        [(d, d), (d, kv), (d, kv), (d, d), (d, ff), (d, ff), (ff, d)]
    }

    /// The `BitLinear` configuration of a projection, `None` for full precision.
    pub(crate) fn projection(&self, d_in: usize, d_out: usize) -> Option<BitLinearConfig> {
        self.weight_quant.clone().map(|w| {
            BitLinearConfig::new(d_in, d_out)
                .with_norm(false)
                .with_norm_eps(self.norm_eps)
                .with_weight_quant(w)
                .with_weight_ste(self.weight_ste)
                .with_activation_quant(self.activation_quant.clone())
                .with_initializer(self.initializer.clone())
        })
    }

    fn init_projection(
        &self,
        d_in: usize,
        d_out: usize,
        device: &Device,
        skeleton: bool,
    ) -> crate::Result<Projection> {
        Ok(match self.projection(d_in, d_out) {
            Some(config) if skeleton => Projection::Bit(config.init_packed_skeleton(device)?),
            Some(config) => Projection::Bit(config.init(device)?),
            None => Projection::Full(
                LinearConfig::new(d_in, d_out)
                    .with_bias(false)
                    .with_initializer(self.initializer.clone())
                    .init(device),
            ),
        })
    }
}
