//! [`TransformerEncoder`] and [`PositionWiseFeedForward`]: burn-nn's transformer encoder whose
//! linear layers are drop-in [`Linear`]s (W1.58A8 by default), so a Burn transformer — an
//! encoder, or a causal language model with an autoregressive mask — becomes BitNet by changing
//! its imports.
//!
//! Layer norms, dropout, the activation and the attention arithmetic are burn-nn's own; records,
//! initial values and (without quantization) outputs are burn-nn's, and a burn-nn checkpoint
//! loads with [`load_float_checkpoint`](crate::nn::load_float_checkpoint).

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay};
use burn::nn::activation::{Activation, ActivationConfig};
use burn::nn::transformer::{
    PositionWiseFeedForward as FloatPwff, PositionWiseFeedForwardConfig as FloatPwffConfig,
    TransformerEncoder as FloatEncoder, TransformerEncoderConfig as FloatEncoderConfig,
    TransformerEncoderLayer as FloatLayer,
};
use burn::nn::{Dropout, Initializer, LayerNorm};
use burn::tensor::{Bool, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::attention::{MhaInput, MultiHeadAttention, check_dropout, check_heads, expect_shape};
use super::config::hand_written_config;
use super::linear::Linear;
use crate::error::{QatError, Result};
use crate::nn::QuantScheme;

/// Configuration of a drop-in [`PositionWiseFeedForward`]: burn-nn's
/// `PositionWiseFeedForwardConfig` plus [`PositionWiseFeedForwardConfig::quant`].
///
/// # Example
/// ```
/// use bitnet_qat::nn::transformer::PositionWiseFeedForwardConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let ffn = PositionWiseFeedForwardConfig::new(64, 256).init(&device);
/// assert_eq!(ffn.forward(Tensor::<3>::ones([2, 5, 64], &device)).dims(), [2, 5, 64]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PositionWiseFeedForwardConfig {
    /// The width of the input and output.
    pub d_model: usize,
    /// The width of the hidden layer.
    pub d_ff: usize,
    /// The dropout rate (default 0.1).
    pub dropout: f64,
    /// The initializer of the two linear layers (burn-nn's default).
    pub initializer: Initializer,
    /// The activation between them (default GELU).
    pub activation: ActivationConfig,
    /// The quantization of the two linear layers (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

hand_written_config!(PositionWiseFeedForwardConfig);

impl PositionWiseFeedForwardConfig {
    /// burn-nn's defaults, quantized as BitNet b1.58.
    pub fn new(d_model: usize, d_ff: usize) -> Self {
        let burn = FloatPwffConfig::new(d_model, d_ff);
        Self {
            d_model,
            d_ff,
            dropout: burn.dropout,
            initializer: burn.initializer,
            activation: burn.activation,
            quant: QuantScheme::bitnet(),
        }
    }

    /// Sets the dropout rate.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets the initializer.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.initializer = initializer;
        self
    }

    /// Sets the activation.
    pub fn with_activation(mut self, activation: ActivationConfig) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the quantization.
    pub fn with_quant(mut self, quant: QuantScheme) -> Self {
        self.quant = quant;
        self
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> FloatPwffConfig {
        FloatPwffConfig::new(self.d_model, self.d_ff)
            .with_dropout(self.dropout)
            .with_initializer(self.initializer.clone())
            .with_activation(self.activation.clone())
    }

    /// Builds the layer on `device`: burn-nn's parameters and initializers, quantized as [`PositionWiseFeedForwardConfig::quant`].
    ///
    /// # Panics
    /// For an invalid configuration (see [`PositionWiseFeedForwardConfig::try_init`]).
    pub fn init(&self, device: &Device) -> PositionWiseFeedForward {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`PositionWiseFeedForwardConfig::init`] with a typed error.
    ///
    /// # Errors
    /// [`QatError::ZeroDim`] for a zero width, [`QatError::Config`] for a dropout rate outside
    /// `[0, 1]`; as [`QuantScheme::validate`].
    pub fn try_init(&self, device: &Device) -> Result<PositionWiseFeedForward> {
        check_widths(self.d_model, self.d_ff)?;
        check_dropout("PositionWiseFeedForwardConfig.dropout", self.dropout)?;
        PositionWiseFeedForward::from_float(self.to_float().init(device), &self.quant)
    }
}

fn check_widths(d_model: usize, d_ff: usize) -> Result<()> {
    for (name, d) in [("d_model", d_model), ("d_ff", d_ff)] {
        if d == 0 {
            return Err(QatError::ZeroDim { name });
        }
    }
    Ok(())
}

/// burn-nn's position-wise feed-forward network, `linear_outer(dropout(act(linear_inner(x))))`,
/// with drop-in [`Linear`]s.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct PositionWiseFeedForward {
    /// `d_model -> d_ff`.
    pub linear_inner: Linear,
    /// `d_ff -> d_model`.
    pub linear_outer: Linear,
    /// The dropout after the activation.
    pub dropout: Dropout,
    /// The activation (not recorded, as in burn-nn).
    #[module(skip)]
    pub activation: Activation,
}

impl PositionWiseFeedForward {
    /// burn-nn's network made quantization-aware by `quant`.
    ///
    /// # Errors
    /// As [`Linear::from_float`].
    pub fn from_float(ffn: FloatPwff, quant: &QuantScheme) -> Result<Self> {
        Ok(Self {
            linear_inner: Linear::from_float(ffn.linear_inner, quant)?,
            linear_outer: Linear::from_float(ffn.linear_outer, quant)?,
            dropout: ffn.dropout,
            activation: ffn.activation,
        })
    }

    /// burn-nn's network with this one's latent weights.
    pub fn to_float(self) -> FloatPwff {
        FloatPwff {
            linear_inner: self.linear_inner.to_float(),
            linear_outer: self.linear_outer.to_float(),
            dropout: self.dropout,
            activation: self.activation,
        }
    }

    /// The forward pass: `[..., d_model]` to `[..., d_model]`.
    ///
    /// # Panics
    /// For an input whose last axis is not `d_model` ([`Self::try_forward`] returns an error).
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        self.try_forward(input).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The forward pass with a typed error ([`QatError::Shape`]) for an input of another width.
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> Result<Tensor<D>> {
        let x = self.linear_inner.try_forward(input)?;
        let x = self.dropout.forward(self.activation.forward(x));
        self.linear_outer.try_forward(x)
    }
}

impl ModuleDisplay for PositionWiseFeedForward {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let [d_model, d_ff] = self.linear_inner.weight.shape().dims::<2>();
        content
            .add("d_model", &d_model)
            .add("d_ff", &d_ff)
            .add("prob", &self.dropout.prob)
            .optional()
    }
}

/// Configuration of a drop-in [`TransformerEncoder`]: burn-nn's `TransformerEncoderConfig` (the
/// same fields and defaults) plus [`TransformerEncoderConfig::quant`], the quantization of every
/// linear layer of every block (BitNet b1.58 by default).
///
/// A configuration saved from burn-nn's `TransformerEncoderConfig` loads (`quant` takes its
/// default).
///
/// # Example
/// ```
/// use bitnet_qat::nn::transformer::{TransformerEncoderConfig, TransformerEncoderInput};
/// use burn::nn::attention::generate_autoregressive_mask;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// // Width 64, 256 hidden, 4 heads, 2 blocks, pre-norm: a causal W1.58A8 transformer.
/// let encoder = TransformerEncoderConfig::new(64, 256, 4, 2)
///     .with_norm_first(true)
///     .init(&device);
/// let x = Tensor::<3>::ones([2, 16, 64], &device);
/// let mask = generate_autoregressive_mask(2, 16, &device);
/// let y = encoder.forward(TransformerEncoderInput::new(x).mask_attn(mask));
/// assert_eq!(y.dims(), [2, 16, 64]);
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransformerEncoderConfig {
    /// The width of the residual stream.
    pub d_model: usize,
    /// The width of the feed-forward networks.
    pub d_ff: usize,
    /// The number of attention heads.
    pub n_heads: usize,
    /// The number of blocks.
    pub n_layers: usize,
    /// The dropout rate (default 0.1).
    pub dropout: f64,
    /// Layer norm before the attention and the feed-forward network (pre-norm) instead of
    /// after the residual additions (default `false`, post-norm).
    pub norm_first: bool,
    /// Whether the attention uses the quiet softmax (default `false`).
    pub quiet_softmax: bool,
    /// The initializer of the linear layers (burn-nn's default).
    pub initializer: Initializer,
    /// The activation of the feed-forward networks (default GELU).
    pub activation: ActivationConfig,
    /// The epsilon of the layer norms (default 1e-5).
    pub layer_norm_eps: f64,
    /// The quantization of the linear layers (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

hand_written_config!(TransformerEncoderConfig);

impl TransformerEncoderConfig {
    /// burn-nn's defaults, with every linear layer quantized as BitNet b1.58.
    pub fn new(d_model: usize, d_ff: usize, n_heads: usize, n_layers: usize) -> Self {
        let burn = FloatEncoderConfig::new(d_model, d_ff, n_heads, n_layers);
        Self {
            d_model,
            d_ff,
            n_heads,
            n_layers,
            dropout: burn.dropout,
            norm_first: burn.norm_first,
            quiet_softmax: burn.quiet_softmax,
            initializer: burn.initializer,
            activation: burn.activation,
            layer_norm_eps: burn.layer_norm_eps,
            quant: QuantScheme::bitnet(),
        }
    }

    /// Sets the dropout rate.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Sets pre-norm (`true`) or post-norm blocks.
    pub fn with_norm_first(mut self, norm_first: bool) -> Self {
        self.norm_first = norm_first;
        self
    }

    /// Sets whether the quiet softmax is used.
    pub fn with_quiet_softmax(mut self, quiet_softmax: bool) -> Self {
        self.quiet_softmax = quiet_softmax;
        self
    }

    /// Sets the initializer.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.initializer = initializer;
        self
    }

    /// Sets the feed-forward activation.
    pub fn with_activation(mut self, activation: ActivationConfig) -> Self {
        self.activation = activation;
        self
    }

    /// Sets the layer norms' epsilon.
    pub fn with_layer_norm_eps(mut self, layer_norm_eps: f64) -> Self {
        self.layer_norm_eps = layer_norm_eps;
        self
    }

    /// Sets the quantization of the linear layers.
    pub fn with_quant(mut self, quant: QuantScheme) -> Self {
        self.quant = quant;
        self
    }

    /// burn-nn's configuration of the same encoder.
    pub fn to_float(&self) -> FloatEncoderConfig {
        FloatEncoderConfig::new(self.d_model, self.d_ff, self.n_heads, self.n_layers)
            .with_dropout(self.dropout)
            .with_norm_first(self.norm_first)
            .with_quiet_softmax(self.quiet_softmax)
            .with_initializer(self.initializer.clone())
            .with_activation(self.activation.clone())
            .with_layer_norm_eps(self.layer_norm_eps)
    }

    /// Builds the encoder on `device`: burn-nn's parameters and initializers, every linear layer quantized as [`TransformerEncoderConfig::quant`].
    ///
    /// # Panics
    /// For an invalid configuration, with the message of the error
    /// [`TransformerEncoderConfig::try_init`] returns.
    pub fn init(&self, device: &Device) -> TransformerEncoder {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`TransformerEncoderConfig::init`], with a typed error for an invalid configuration.
    ///
    /// # Errors
    /// [`QatError::ZeroDim`] for a zero width, [`QatError::Config`] for heads that do not
    /// divide the width or a dropout rate outside `[0, 1]`; as [`QuantScheme::validate`].
    pub fn try_init(&self, device: &Device) -> Result<TransformerEncoder> {
        check_widths(self.d_model, self.d_ff)?;
        check_heads("TransformerEncoderConfig", self.d_model, self.n_heads)?;
        check_dropout("TransformerEncoderConfig.dropout", self.dropout)?;
        TransformerEncoder::from_float(self.to_float().init(device), &self.quant)
    }
}

/// The input of [`TransformerEncoder::forward`]: a sequence and optional masks, as burn-nn's
/// `TransformerEncoderInput`.
#[derive(Debug, Clone)]
pub struct TransformerEncoderInput {
    tensor: Tensor<3>,
    mask_pad: Option<Tensor<2, Bool>>,
    mask_attn: Option<Tensor<3, Bool>>,
}

impl TransformerEncoderInput {
    /// A sequence `[batch, seq, d_model]`.
    pub fn new(tensor: Tensor<3>) -> Self {
        Self {
            tensor,
            mask_pad: None,
            mask_attn: None,
        }
    }

    /// A padding mask `[batch, seq]` (`true`: padding, not attended to).
    pub fn mask_pad(mut self, mask_pad: Tensor<2, Bool>) -> Self {
        self.mask_pad = Some(mask_pad);
        self
    }

    /// An attention mask `[batch, seq, seq]` (`true`: not attended to), e.g. burn-nn's
    /// `generate_autoregressive_mask` for a causal model.
    pub fn mask_attn(mut self, mask_attn: Tensor<3, Bool>) -> Self {
        self.mask_attn = Some(mask_attn);
        self
    }
}

/// burn-nn's transformer encoder ("Attention Is All You Need") with drop-in [`Linear`]s in its
/// attention and feed-forward networks: `n_layers` blocks of self-attention and a position-wise
/// feed-forward network, each with a residual connection, dropout and a layer norm (before,
/// `norm_first`, or after).
///
/// burn-nn's incremental decoding (`forward_autoregressive_inference`) is not offered: for
/// generation with a key/value cache and the packed kernels, use
/// [`BitNetLm`](crate::lm::BitNetLm).
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantScheme;
/// use bitnet_qat::nn::transformer::{TransformerEncoder, TransformerEncoderInput};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex();
/// let float = burn::nn::transformer::TransformerEncoderConfig::new(32, 64, 4, 2)
///     .with_dropout(0.0)
///     .init(&device);
/// let x = Tensor::<3>::ones([1, 5, 32], &device);
/// let input = burn::nn::transformer::TransformerEncoderInput::new(x.clone());
/// let expected = float.forward(input);
/// // Without quantization: burn-nn's outputs, bit for bit.
/// let encoder = TransformerEncoder::from_float(float, &QuantScheme::none()).unwrap();
/// let got = encoder.forward(TransformerEncoderInput::new(x));
/// assert_eq!(got.into_data(), expected.into_data());
/// ```
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct TransformerEncoder {
    /// The blocks.
    pub layers: Vec<TransformerEncoderLayer>,
    /// The width of the residual stream.
    pub d_model: usize,
    /// The width of the feed-forward networks.
    pub d_ff: usize,
    /// The number of heads.
    pub n_heads: usize,
    /// The number of blocks.
    pub n_layers: usize,
    /// The dropout rate.
    pub dropout: f64,
    /// Pre-norm (`true`) or post-norm blocks.
    pub norm_first: bool,
    /// Whether the attention uses the quiet softmax.
    pub quiet_softmax: bool,
}

impl TransformerEncoder {
    /// burn-nn's encoder with every linear layer made quantization-aware by `quant` (the same
    /// parameters and settings).
    ///
    /// # Errors
    /// As [`MultiHeadAttention::from_float`] and [`Linear::from_float`].
    pub fn from_float(encoder: FloatEncoder, quant: &QuantScheme) -> Result<Self> {
        let layers = encoder
            .layers
            .into_iter()
            .map(|layer| TransformerEncoderLayer::from_float(layer, quant))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            d_model: encoder.d_model,
            d_ff: encoder.d_ff,
            n_heads: encoder.n_heads,
            n_layers: encoder.n_layers,
            dropout: encoder.dropout,
            norm_first: encoder.norm_first,
            quiet_softmax: encoder.quiet_softmax,
        })
    }

    /// burn-nn's encoder with this one's latent weights (see [`Linear::to_float`]).
    pub fn to_float(self) -> FloatEncoder {
        FloatEncoder {
            layers: self
                .layers
                .into_iter()
                .map(TransformerEncoderLayer::to_float)
                .collect(),
            d_model: self.d_model,
            d_ff: self.d_ff,
            n_heads: self.n_heads,
            n_layers: self.n_layers,
            dropout: self.dropout,
            norm_first: self.norm_first,
            quiet_softmax: self.quiet_softmax,
        }
    }

    /// The forward pass: `[batch, seq, d_model]` to `[batch, seq, d_model]`.
    ///
    /// # Panics
    /// For an input or a mask of the wrong shape; [`TransformerEncoder::try_forward`] returns
    /// an error instead.
    pub fn forward(&self, input: TransformerEncoderInput) -> Tensor<3> {
        self.try_forward(input).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The forward pass, with a typed error for an input or a mask of the wrong shape.
    ///
    /// # Errors
    /// [`QatError::Shape`] naming the input or the mask.
    pub fn try_forward(&self, input: TransformerEncoderInput) -> Result<Tensor<3>> {
        let want = [None, None, Some(self.d_model)];
        expect_shape("TransformerEncoder input", &input.tensor.dims(), &want)?;
        let mut x = input.tensor;
        for layer in &self.layers {
            x = layer.try_forward(x, input.mask_pad.clone(), input.mask_attn.clone())?;
        }
        Ok(x)
    }
}

impl ModuleDisplay for TransformerEncoder {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content
            .add("d_model", &self.d_model)
            .add("d_ff", &self.d_ff)
            .add("n_heads", &self.n_heads)
            .add("n_layers", &self.n_layers)
            .add("dropout", &self.dropout)
            .add("norm_first", &self.norm_first)
            .add("quiet_softmax", &self.quiet_softmax)
            .optional()
    }
}

/// A block of a [`TransformerEncoder`], with burn-nn's fields (burn-nn names the norm before
/// the attention `norm_2` and the one before the feed-forward network `norm_1` in pre-norm
/// blocks; the records keep those names).
#[derive(Module, Debug)]
pub struct TransformerEncoderLayer {
    /// The self-attention.
    pub mha: MultiHeadAttention,
    /// The feed-forward network.
    pub pwff: PositionWiseFeedForward,
    /// Pre-norm: before the feed-forward network; post-norm: after the attention's residual.
    pub norm_1: LayerNorm,
    /// Pre-norm: before the attention; post-norm: after the feed-forward network's residual.
    pub norm_2: LayerNorm,
    /// The dropout of both residual branches.
    pub dropout: Dropout,
    /// Pre-norm (`true`) or post-norm.
    pub norm_first: bool,
}

impl TransformerEncoderLayer {
    /// burn-nn's block made quantization-aware by `quant`.
    ///
    /// # Errors
    /// As [`MultiHeadAttention::from_float`] and [`Linear::from_float`].
    pub fn from_float(layer: FloatLayer, quant: &QuantScheme) -> Result<Self> {
        Ok(Self {
            mha: MultiHeadAttention::from_float(layer.mha, quant)?,
            pwff: PositionWiseFeedForward::from_float(layer.pwff, quant)?,
            norm_1: layer.norm_1,
            norm_2: layer.norm_2,
            dropout: layer.dropout,
            norm_first: layer.norm_first,
        })
    }

    /// burn-nn's block with this one's latent weights.
    pub fn to_float(self) -> FloatLayer {
        FloatLayer {
            mha: self.mha.to_float(),
            pwff: self.pwff.to_float(),
            norm_1: self.norm_1,
            norm_2: self.norm_2,
            dropout: self.dropout,
            norm_first: self.norm_first,
        }
    }

    /// The block's forward pass (see [`TransformerEncoder::try_forward`]).
    ///
    /// # Errors
    /// [`QatError::Shape`] for an input or a mask of the wrong shape.
    pub fn try_forward(
        &self,
        x: Tensor<3>,
        mask_pad: Option<Tensor<2, Bool>>,
        mask_attn: Option<Tensor<3, Bool>>,
    ) -> Result<Tensor<3>> {
        // Attention branch: pre-norm normalises its input with `norm_2` (burn-nn's naming).
        let attended = match self.norm_first {
            true => self.norm_2.forward(x.clone()),
            false => x.clone(),
        };
        let mut input = MhaInput::self_attn(attended);
        if let Some(mask) = mask_pad {
            input = input.mask_pad(mask);
        }
        if let Some(mask) = mask_attn {
            input = input.mask_attn(mask);
        }
        let branch = self.dropout.forward(self.mha.try_forward(input)?.context);
        let mut x = x + branch;
        // Feed-forward branch: pre-norm normalises its input with `norm_1`; post-norm
        // normalises the residual stream itself.
        let ffn_input = match self.norm_first {
            true => self.norm_1.forward(x.clone()),
            false => {
                x = self.norm_1.forward(x);
                x.clone()
            }
        };
        let branch = self.dropout.forward(self.pwff.try_forward(ffn_input)?);
        let x = x + branch;
        Ok(match self.norm_first {
            true => x,
            false => self.norm_2.forward(x),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::attention::generate_autoregressive_mask;
    use burn::tensor::Distribution;

    fn float_encoder(norm_first: bool, device: &Device) -> FloatEncoder {
        FloatEncoderConfig::new(32, 64, 4, 2)
            .with_dropout(0.0)
            .with_norm_first(norm_first)
            .init(device)
    }

    #[test]
    fn without_quantization_pre_and_post_norm_blocks_are_burn_nn_bit_for_bit() {
        let device = Device::flex();
        for norm_first in [true, false] {
            device.seed(5);
            let float = float_encoder(norm_first, &device);
            let x = Tensor::<3>::random([2, 9, 32], Distribution::Default, &device);
            let mask = generate_autoregressive_mask(2, 9, &device);
            let pad = Tensor::<2>::random([2, 9], Distribution::Default, &device).greater_elem(0.8);
            let input = burn::nn::transformer::TransformerEncoderInput::new(x.clone())
                .mask_attn(mask.clone())
                .mask_pad(pad.clone());
            let expected = float.forward(input);
            let encoder = TransformerEncoder::from_float(float, &QuantScheme::none()).unwrap();
            let input = TransformerEncoderInput::new(x)
                .mask_attn(mask)
                .mask_pad(pad);
            assert_eq!(encoder.forward(input).into_data(), expected.into_data());
        }
    }

    #[test]
    fn every_linear_layer_is_w158a8_and_to_float_gives_the_latent_weights_back() {
        let device = Device::flex();
        device.seed(9);
        let float = float_encoder(true, &device);
        let inner = float.layers[1].pwff.linear_inner.weight.val();
        let encoder = TransformerEncoder::from_float(float, &QuantScheme::bitnet()).unwrap();
        // 2 blocks of 4 attention projections and 2 feed-forward layers.
        let found = crate::nn::quantizers(&encoder);
        let weights = found.iter().filter(|f| f.weight.is_some()).count();
        assert_eq!(weights, 12);
        let layer = &encoder.layers[1].pwff.linear_inner;
        let quantized = layer.weight.val();
        let scale = quantized.clone().abs().max().into_scalar::<f32>();
        let ternary = quantized
            .div_scalar(scale)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert!(ternary.iter().all(|v| [-1.0, 0.0, 1.0].contains(v)));
        assert!(layer.activation_quantizer.is_some());
        let back = encoder.to_float();
        assert_eq!(
            back.layers[1].pwff.linear_inner.weight.val().into_data(),
            inner.into_data()
        );
    }

    #[test]
    fn the_quantized_encoder_trains_through_the_straight_through_estimator() {
        let device = Device::flex().autodiff();
        device.seed(2);
        let encoder = TransformerEncoderConfig::new(32, 64, 4, 1)
            .with_dropout(0.0)
            .with_norm_first(true)
            .init(&device);
        let x = Tensor::<3>::random([2, 6, 32], Distribution::Default, &device);
        let mask = generate_autoregressive_mask(2, 6, &device);
        let loss = encoder
            .forward(TransformerEncoderInput::new(x).mask_attn(mask))
            .powi_scalar(2)
            .mean();
        let grads = loss.backward();
        for linear in [
            &encoder.layers[0].mha.query,
            &encoder.layers[0].pwff.linear_outer,
        ] {
            let grad = linear
                .weight
                .grad(&grads)
                .expect("a gradient for the latent weight");
            assert!(grad.abs().sum().into_scalar::<f32>() > 0.0);
        }
    }

    #[test]
    fn shapes_and_configurations_are_checked() {
        let device = Device::flex();
        let encoder = TransformerEncoderConfig::new(32, 64, 4, 1).init(&device);
        let err = encoder
            .try_forward(TransformerEncoderInput::new(Tensor::<3>::ones(
                [1, 3, 16],
                &device,
            )))
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Shape { what, got, .. } if what.contains("TransformerEncoder input") && *got == vec![1, 3, 16]),
            "{err}"
        );
        let err = TransformerEncoderConfig::new(32, 0, 4, 1)
            .try_init(&device)
            .unwrap_err();
        assert!(matches!(err, QatError::ZeroDim { name: "d_ff" }), "{err}");
        let err = TransformerEncoderConfig::new(32, 64, 5, 1)
            .try_init(&device)
            .unwrap_err();
        assert!(
            matches!(&err, QatError::Config { name, .. } if name.ends_with("n_heads")),
            "{err}"
        );
    }

    #[test]
    fn burn_nn_configuration_files_load_with_bitnet_quantization() {
        use burn::config::Config;
        let json = FloatEncoderConfig::new(64, 128, 4, 3)
            .with_norm_first(true)
            .to_string();
        let config = TransformerEncoderConfig::load_binary(json.as_bytes()).unwrap();
        assert_eq!(
            (config.d_model, config.n_layers, config.norm_first),
            (64, 3, true)
        );
        assert_eq!(config.quant, QuantScheme::bitnet());
    }
}
