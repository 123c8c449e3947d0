//! [`MultiHeadAttention`]: burn-nn's multi-head attention whose four projections are drop-in
//! [`Linear`]s, so the attention of a Burn model is BitNet W1.58A8 by changing its imports.
//!
//! The attention scores and the softmax stay in floating point, as in BitNet (which quantizes
//! the linear layers only). Records, initial values and (without quantization) outputs are
//! burn-nn's.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::attention::MultiHeadAttentionConfig as FloatConfig;
use burn::nn::{Dropout, Initializer};
use burn::tensor::activation::{quiet_softmax, softmax};
use burn::tensor::{Bool, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::hand_written_config;
use super::linear::Linear;
use crate::error::{QatError, Result};
use crate::nn::QuantScheme;

/// Configuration of a drop-in [`MultiHeadAttention`]: burn-nn's `MultiHeadAttentionConfig`
/// (the same fields and defaults) plus [`MultiHeadAttentionConfig::quant`], the quantization of
/// the four projections (BitNet b1.58 by default).
///
/// # Example
/// ```
/// use bitnet_qat::nn::attention::{MhaInput, MultiHeadAttentionConfig};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let mha = MultiHeadAttentionConfig::new(64, 4).init(&device);
/// let x = Tensor::<3>::ones([2, 10, 64], &device);
/// assert_eq!(mha.forward(MhaInput::self_attn(x)).context.dims(), [2, 10, 64]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MultiHeadAttentionConfig {
    /// The size of each linear layer.
    pub d_model: usize,
    /// The number of heads.
    pub n_heads: usize,
    /// The dropout rate (default 0.1).
    pub dropout: f64,
    /// The value the masked scores are set to before the softmax (default -1e4).
    pub min_float: f64,
    /// Whether to use the "quiet" softmax, which lets a head attend to nothing (default
    /// `false`).
    pub quiet_softmax: bool,
    /// The initializer of the projections (burn-nn's default).
    pub initializer: Initializer,
    /// Whether the key projection has a bias (default `true`).
    pub key_bias: bool,
    /// Whether the value projection has a bias (default `true`).
    pub value_bias: bool,
    /// Whether the query projection has a bias (default `true`).
    pub query_bias: bool,
    /// Whether the output projection has a bias (default `true`).
    pub output_bias: bool,
    /// The quantization of the four projections (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

hand_written_config!(MultiHeadAttentionConfig);

impl MultiHeadAttentionConfig {
    /// burn-nn's defaults, with projections quantized as BitNet b1.58.
    pub fn new(d_model: usize, n_heads: usize) -> Self {
        let burn = FloatConfig::new(d_model, n_heads);
        Self {
            d_model,
            n_heads,
            dropout: burn.dropout,
            min_float: burn.min_float,
            quiet_softmax: burn.quiet_softmax,
            initializer: burn.initializer,
            key_bias: burn.key_bias,
            value_bias: burn.value_bias,
            query_bias: burn.query_bias,
            output_bias: burn.output_bias,
            quant: QuantScheme::bitnet(),
        }
    }

    /// Sets the dropout rate.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets the value of masked scores.
    pub fn with_min_float(mut self, min_float: f64) -> Self {
        self.min_float = min_float;
        self
    }

    /// Sets whether the quiet softmax is used.
    pub fn with_quiet_softmax(mut self, quiet_softmax: bool) -> Self {
        self.quiet_softmax = quiet_softmax;
        self
    }

    /// Sets the initializer of the projections.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.initializer = initializer;
        self
    }

    /// Sets the quantization of the projections.
    pub fn with_quant(mut self, quant: QuantScheme) -> Self {
        self.quant = quant;
        self
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> FloatConfig {
        let mut config = FloatConfig::new(self.d_model, self.n_heads)
            .with_dropout(self.dropout)
            .with_min_float(self.min_float)
            .with_quiet_softmax(self.quiet_softmax)
            .with_initializer(self.initializer.clone());
        config.key_bias = self.key_bias;
        config.value_bias = self.value_bias;
        config.query_bias = self.query_bias;
        config.output_bias = self.output_bias;
        config
    }

    /// Builds the layer on `device`: burn-nn's parameters and initializers with the quantizers of [`MultiHeadAttentionConfig::quant`].
    ///
    /// # Panics
    /// For an invalid configuration, with the message of the error
    /// [`MultiHeadAttentionConfig::try_init`] returns.
    pub fn init(&self, device: &Device) -> MultiHeadAttention {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`MultiHeadAttentionConfig::init`], with a typed error for an invalid configuration.
    ///
    /// # Errors
    /// [`QatError::Config`] for a width that is zero or not a multiple of the heads, or a
    /// dropout rate outside `[0, 1]`; as [`QuantScheme::validate`].
    pub fn try_init(&self, device: &Device) -> Result<MultiHeadAttention> {
        check_heads("MultiHeadAttentionConfig", self.d_model, self.n_heads)?;
        check_dropout("MultiHeadAttentionConfig.dropout", self.dropout)?;
        MultiHeadAttention::from_float(self.to_float().init(device), &self.quant)
    }
}

/// [`QatError::Config`] unless `d_model` is a positive multiple of `n_heads > 0`.
pub(super) fn check_heads(config: &str, d_model: usize, n_heads: usize) -> Result<()> {
    if n_heads == 0 || d_model == 0 || !d_model.is_multiple_of(n_heads) {
        return Err(QatError::config(
            format!("{config}.n_heads"),
            n_heads,
            format!("a divisor of the width d_model = {d_model} (which must be at least 1)"),
        ));
    }
    Ok(())
}

/// [`QatError::Config`] unless `dropout` is a probability (burn-nn's `Dropout` panics).
pub(super) fn check_dropout(name: &str, dropout: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&dropout) {
        return Err(QatError::config(name, dropout, "a probability in [0, 1]"));
    }
    Ok(())
}

/// The input of [`MultiHeadAttention::forward`]: queries, keys, values and optional masks, as
/// burn-nn's `MhaInput`.
#[derive(Debug, Clone)]
pub struct MhaInput {
    query: Tensor<3>,
    key: Tensor<3>,
    value: Tensor<3>,
    mask_pad: Option<Tensor<2, Bool>>,
    mask_attn: Option<Tensor<3, Bool>>,
}

impl MhaInput {
    /// Self-attention: queries, keys and values are all `tensor` `[batch, seq, d_model]`.
    pub fn self_attn(tensor: Tensor<3>) -> Self {
        Self::new(tensor.clone(), tensor.clone(), tensor)
    }

    /// Queries `[batch, seq_q, d_model]`, keys and values `[batch, seq_k, d_model]`.
    pub fn new(query: Tensor<3>, key: Tensor<3>, value: Tensor<3>) -> Self {
        Self {
            query,
            key,
            value,
            mask_pad: None,
            mask_attn: None,
        }
    }

    /// A padding mask `[batch, seq_k]`: `true` keys are not attended to.
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// An attention mask `[batch, seq_q, seq_k]` (or `[1, seq_q, seq_k]` for the whole batch):
    /// `true` pairs are not attended to (see
    /// burn-nn's `generate_autoregressive_mask` for a causal one).
    pub fn mask_attn(mut self, mask_attn: Tensor<3, Bool>) -> Self {
        self.mask_attn = Some(mask_attn);
        self
    }
}

/// The output of [`MultiHeadAttention::forward`].
#[derive(Debug, Clone)]
pub struct MhaOutput {
    /// The attention weights `[batch, n_heads, seq_q, seq_k]`.
    pub weights: Tensor<4>,
    /// The context `[batch, seq_q, d_model]`.
    pub context: Tensor<3>,
}

/// burn-nn's multi-head attention ("Attention Is All You Need") with drop-in [`Linear`]
/// projections: `softmax(q kᵀ / √d_k) v` per head, each of `q`, `k`, `v` and the output a
/// W1.58A8 projection by default.
///
/// burn-nn's incremental decoding (`forward_cache`) is not offered: for generation with a key/value
/// cache and the packed kernels, use [`BitNetLm`](crate::lm::BitNetLm).
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantScheme;
/// use bitnet_qat::nn::attention::{MhaInput, MultiHeadAttention};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let float = burn::nn::attention::MultiHeadAttentionConfig::new(32, 4).init(&device);
/// let x = Tensor::<3>::ones([1, 6, 32], &device);
/// let expected = float.forward(burn::nn::attention::MhaInput::self_attn(x.clone())).context;
/// // Without quantization: burn-nn's outputs, bit for bit.
/// let mha = MultiHeadAttention::from_float(float, &QuantScheme::none()).unwrap();
/// let got = mha.forward(MhaInput::self_attn(x)).context;
/// assert_eq!(got.into_data(), expected.into_data());
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct MultiHeadAttention {
    /// The query projection.
    pub query: Linear,
    /// The key projection.
    pub key: Linear,
    /// The value projection.
    pub value: Linear,
    /// The output projection.
    pub output: Linear,
    /// The dropout of the attention weights.
    pub dropout: Dropout,
    /// The width.
    pub d_model: usize,
    /// The number of heads.
    pub n_heads: usize,
    /// The width of a head.
    pub d_k: usize,
    /// The value of masked scores.
    pub min_float: f64,
    /// Whether the quiet softmax is used.
    pub quiet_softmax: bool,
}

impl MultiHeadAttention {
    /// burn-nn's attention with its projections made quantization-aware by `quant` (the same
    /// parameters and settings).
    ///
    /// # Errors
    /// [`QatError::Config`] for a width that is not a multiple of the heads; as
    /// [`Linear::from_float`].
    pub fn from_float(
        mha: burn::nn::attention::MultiHeadAttention,
        quant: &QuantScheme,
    ) -> Result<Self> {
        check_heads("MultiHeadAttention", mha.d_model, mha.n_heads)?;
        Ok(Self {
            query: Linear::from_float(mha.query, quant)?,
            key: Linear::from_float(mha.key, quant)?,
            value: Linear::from_float(mha.value, quant)?,
            output: Linear::from_float(mha.output, quant)?,
            dropout: mha.dropout,
            d_model: mha.d_model,
            n_heads: mha.n_heads,
            d_k: mha.d_k,
            min_float: mha.min_float,
            quiet_softmax: mha.quiet_softmax,
        })
    }

    /// burn-nn's attention with this layer's latent weights (see [`Linear::to_float`]).
    pub fn to_float(self) -> burn::nn::attention::MultiHeadAttention {
        burn::nn::attention::MultiHeadAttention {
            query: self.query.to_float(),
            key: self.key.to_float(),
            value: self.value.to_float(),
            output: self.output.to_float(),
            dropout: self.dropout,
            activation: burn::nn::Gelu::new(),
            d_model: self.d_model,
            n_heads: self.n_heads,
            d_k: self.d_k,
            min_float: self.min_float,
            quiet_softmax: self.quiet_softmax,
        }
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// - query `[batch, seq_q, d_model]`, key and value `[batch, seq_k, d_model]`
    /// - masks: padding `[batch, seq_k]`, attention `[batch, seq_q, seq_k]`
    /// - context `[batch, seq_q, d_model]`, weights `[batch, n_heads, seq_q, seq_k]`
    ///
    /// # Panics
    /// For inputs of other shapes (as burn-nn's); [`MultiHeadAttention::try_forward`] returns
    /// an error instead.
    pub fn forward(&self, input: MhaInput) -> MhaOutput {
        self.try_forward(input).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The forward pass, with a typed error for inputs or masks of the wrong shapes.
    ///
    /// # Errors
    /// [`QatError::Shape`] naming the input.
    pub fn try_forward(&self, input: MhaInput) -> Result<MhaOutput> {
        let [batch, seq_q, d_model] = input.query.dims();
        let [_, seq_k, _] = input.key.dims();
        expect_shape(
            "MultiHeadAttention query",
            &input.query.dims(),
            &[None, None, Some(self.d_model)],
        )?;
        let kv = [Some(batch), Some(seq_k), Some(self.d_model)];
        expect_shape("MultiHeadAttention key", &input.key.dims(), &kv)?;
        expect_shape("MultiHeadAttention value", &input.value.dims(), &kv)?;
        if let Some(mask) = &input.mask_pad {
            expect_shape(
                "MultiHeadAttention padding mask",
                &mask.dims(),
                &[Some(batch), Some(seq_k)],
            )?;
        }
        if let Some(mask) = &input.mask_attn {
            // One mask for the whole batch (`[1, seq_q, seq_k]`) is shared, as burn-nn's is.
            let rows = if mask.dims()[0] == 1 { 1 } else { batch };
            let want = [Some(rows), Some(seq_q), Some(seq_k)];
            expect_shape("MultiHeadAttention attention mask", &mask.dims(), &want)?;
        }
        let query = self.heads(input.query, &self.query)?;
        let key = self.heads(input.key, &self.key)?;
        let value = self.heads(input.value, &self.value)?;

        let mut scores = query
            .matmul(key.transpose())
            .div_scalar((self.d_k as f32).sqrt());
        if let Some(mask) = input.mask_pad {
            scores = scores.mask_fill(mask.reshape([batch, 1, 1, seq_k]), self.min_float);
        }
        if let Some(mask) = input.mask_attn {
            let mask = mask.expand([batch, seq_q, seq_k]);
            scores = scores.mask_fill(mask.reshape([batch, 1, seq_q, seq_k]), self.min_float);
        }
        let weights = match self.quiet_softmax {
            true => quiet_softmax(scores, 3),
            false => softmax(scores, 3),
        };
        let weights = self.dropout.forward(weights);
        let context = weights
            .clone()
            .matmul(value)
            .swap_dims(1, 2)
            .reshape([batch, seq_q, d_model]);
        let context = self.output.try_forward(context)?;
        Ok(MhaOutput { weights, context })
    }

    /// `x` `[batch, seq, d_model]` through `linear`, split into heads `[batch, heads, seq, d_k]`.
    fn heads(&self, x: Tensor<3>, linear: &Linear) -> Result<Tensor<4>> {
        let [batch, seq, _] = x.dims();
        Ok(linear
            .try_forward(x)?
            .reshape([batch, seq, self.n_heads, self.d_k])
            .swap_dims(1, 2))
    }
}

/// [`QatError::Shape`] for `what` unless `dims` has `want`'s sizes where they are given.
pub(super) fn expect_shape(what: &str, dims: &[usize], want: &[Option<usize>]) -> Result<()> {
    let fits = dims.len() == want.len()
        && dims
            .iter()
            .zip(want)
            .all(|(d, w)| w.is_none_or(|w| *d == w));
    if fits {
        return Ok(());
    }
    let expected = want
        .iter()
        .map(|w| w.map_or_else(|| "_".to_string(), |w| w.to_string()))
        .collect::<Vec<_>>()
        .join(", ");
    Err(QatError::Shape {
        what: what.to_string(),
        expected: format!("[{expected}]"),
        got: dims.to_vec(),
    })
}

impl ModuleDisplay for MultiHeadAttention {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("n_heads", &self.n_heads)
            .add("d_k", &self.d_k)
            .add("dropout", &self.dropout.prob)
            .add("min_float", &self.min_float)
            .add("quiet_softmax", &self.quiet_softmax)
            .optional()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::attention::generate_autoregressive_mask;

    fn float_mha(device: &Device) -> burn::nn::attention::MultiHeadAttention {
        burn::nn::attention::MultiHeadAttentionConfig::new(32, 4)
            .with_dropout(0.0)
            .init(device)
    }

    #[test]
    fn without_quantization_a_masked_forward_is_burn_nn_bit_for_bit() {
        let device = Device::flex();
        device.seed(3);
        let float = float_mha(&device);
        let x = Tensor::<3>::random([2, 7, 32], burn::tensor::Distribution::Default, &device);
        let mask = generate_autoregressive_mask(2, 7, &device);
        let expected = float
            .forward(burn::nn::attention::MhaInput::self_attn(x.clone()).mask_attn(mask.clone()));
        let mha = MultiHeadAttention::from_float(float, &QuantScheme::none()).unwrap();
        let got = mha.forward(MhaInput::self_attn(x.clone()).mask_attn(mask));
        // One mask for the whole batch is the same mask.
        let shared = generate_autoregressive_mask(1, 7, &device);
        let shared = mha.forward(MhaInput::self_attn(x).mask_attn(shared));
        assert_eq!(shared.context.into_data(), got.context.clone().into_data());
        assert_eq!(got.context.into_data(), expected.context.into_data());
        assert_eq!(got.weights.into_data(), expected.weights.into_data());
    }

    #[test]
    fn init_draws_burn_nn_parameters() {
        let device = Device::flex();
        // Burn draws a lazy parameter's values when it is first read: each model's first read
        // comes right after the seed.
        device.seed(11);
        let float = float_mha(&device).query.weight.val();
        device.seed(11);
        let config = MultiHeadAttentionConfig::new(32, 4).with_dropout(0.0);
        let ours = config.clone().with_quant(QuantScheme::none()).init(&device);
        assert_eq!(float.into_data(), ours_latent(&ours.query).into_data());
        // By default the projections are W1.58A8: ternary weights, int8 activations.
        let ours = config.init(&device);
        assert!(ours.value.weight_quantizer().is_some());
        assert!(ours.value.activation_quantizer.is_some());
    }

    fn ours_latent(linear: &Linear) -> Tensor<2> {
        super::super::latent(linear.weight.clone()).val()
    }

    #[test]
    fn bad_shapes_and_configurations_are_typed_errors() {
        let device = Device::flex();
        let mha = MultiHeadAttentionConfig::new(32, 4).init(&device);
        let x = Tensor::<3>::ones([2, 5, 32], &device);
        let err = mha
            .try_forward(
                MhaInput::self_attn(x.clone())
                    .mask_attn(generate_autoregressive_mask(2, 4, &device)),
            )
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Shape { what, got, .. } if what.contains("attention mask") && *got == vec![2, 4, 4]),
            "{err}"
        );
        let err = mha
            .try_forward(MhaInput::self_attn(Tensor::<3>::ones([2, 5, 16], &device)))
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Shape { what, .. } if what.contains("query")),
            "{err}"
        );
        let err = MultiHeadAttentionConfig::new(30, 4)
            .try_init(&device)
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Config { name, .. } if name.ends_with("n_heads")),
            "{err}"
        );
        let err = MultiHeadAttentionConfig::new(32, 4)
            .with_dropout(1.5)
            .try_init(&device)
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Config { name, .. } if name.ends_with("dropout")),
            "{err}"
        );
    }
}
