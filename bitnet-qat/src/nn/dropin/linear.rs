//! [`Linear`]: burn-nn's `Linear` with BitNet quantization.

use burn::module::{Content, DisplaySettings, Module, ModuleDisplay, Param};
use burn::nn::{Initializer, LinearLayout};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::hand_written_config;
use super::latent;
use crate::nn::bit_linear::AttachAt;
use crate::nn::{BitLinear, QuantScheme, Quantizer};

/// Configuration of a drop-in [`Linear`]: burn-nn's `LinearConfig` (the same fields and
/// defaults) plus [`LinearConfig::quant`], BitNet b1.58 by default.
///
/// A configuration saved from burn-nn's `LinearConfig` loads (`quant` takes its default).
///
/// # Example
/// ```
/// use bitnet_qat::nn::{LinearConfig, QuantScheme};
/// use burn::config::Config;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let layer = LinearConfig::new(64, 32).init(&device); // W1.58A8, with a bias
/// let y = layer.forward(Tensor::<3>::ones([2, 5, 64], &device));
/// assert_eq!(y.dims(), [2, 5, 32]);
///
/// // burn-nn's configuration file loads: its layer, quantized.
/// let json = burn::nn::LinearConfig::new(64, 32).to_string();
/// let config = LinearConfig::load_binary(json.as_bytes()).unwrap();
/// assert_eq!(config.quant, QuantScheme::bitnet());
/// ```
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinearConfig {
    /// The size of the input features.
    pub d_input: usize,
    /// The size of the output features.
    pub d_output: usize,
    /// Whether to add a (full-precision) bias (burn-nn's default: `true`).
    pub bias: bool,
    /// The weight initializer (burn-nn's default).
    pub initializer: Initializer,
    /// The layout the weight is stored in (burn-nn's `LinearLayout`).
    pub layout: LinearLayout,
    /// The quantization of the weight and the input activations (default: BitNet b1.58).
    #[serde(default)]
    pub quant: QuantScheme,
}

hand_written_config!(LinearConfig);

impl LinearConfig {
    /// burn-nn's defaults for `d_input -> d_output`, quantized as BitNet b1.58.
    pub fn new(d_input: usize, d_output: usize) -> Self {
        let burn = burn::nn::LinearConfig::new(d_input, d_output);
        Self {
            d_input,
            d_output,
            bias: burn.bias,
            initializer: burn.initializer,
            layout: burn.layout,
            quant: QuantScheme::bitnet(),
        }
    }

    /// Sets whether the layer has a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }

    /// Sets the weight initializer.
    pub fn with_initializer(mut self, initializer: Initializer) -> Self {
        self.initializer = initializer;
        self
    }

    /// Sets the weight layout.
    pub fn with_layout(mut self, layout: LinearLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the quantization.
    pub fn with_quant(mut self, quant: QuantScheme) -> Self {
        self.quant = quant;
        self
    }

    /// burn-nn's configuration of the same layer.
    pub fn to_float(&self) -> burn::nn::LinearConfig {
        burn::nn::LinearConfig::new(self.d_input, self.d_output)
            .with_bias(self.bias)
            .with_initializer(self.initializer.clone())
            .with_layout(self.layout)
    }

    /// Builds the layer on `device`: burn-nn's parameters (the same initial values for the
    /// same seed) with the quantizers of [`LinearConfig::quant`].
    ///
    /// # Panics
    /// For an invalid configuration, as burn-nn's `init` does, with the message of the error
    /// [`LinearConfig::try_init`] returns.
    pub fn init(&self, device: &Device) -> Linear {
        self.try_init(device).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`LinearConfig::init`], with a typed error for an invalid configuration.
    ///
    /// # Errors
    /// [`crate::QatError::ZeroDim`] for a zero size; as [`QuantScheme::validate`].
    pub fn try_init(&self, device: &Device) -> crate::Result<Linear> {
        for (name, d) in [("d_input", self.d_input), ("d_output", self.d_output)] {
            if d == 0 {
                return Err(crate::QatError::ZeroDim { name });
            }
        }
        Linear::from_float(self.to_float().init(device), &self.quant)
    }
}

/// burn-nn's `Linear` with BitNet quantization: `y = act_quant(x) · weight_quant(W) + b`, with
/// the straight-through estimators of its [`QuantScheme`] in training.
///
/// Its parameters and record keys are burn-nn's (`weight` `[d_input, d_output]`, `bias`), plus
/// the quantizers' settings (`weight.qat.settings`, `activation_quantizer.settings`); see
/// [`load_float_checkpoint`](crate::nn::load_float_checkpoint) for loading a burn-nn checkpoint.
/// Without quantization ([`QuantScheme::none`]) its forward pass is burn-nn's, bit for bit.
/// It computes as a [`BitLinear`] without the norm does — in training, after
/// [`Module::valid`] (the integer sums the packed kernels compute) and once
/// [`crate::infer::pack`]ed (the int8 × ternary kernels).
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct Linear {
    /// The weight `[d_input, d_output]`: the latent values (`weight.base()`) with the weight
    /// [`Quantizer`] attached, if any (`weight.val()` is the quantized weight).
    pub weight: Param<Tensor<2>>,
    /// The optional bias `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// The input-activation quantizer, if activations are quantized.
    pub activation_quantizer: Option<Quantizer>,
}

impl Linear {
    /// burn-nn's `linear` made quantization-aware with `quant`: the same parameters (ids, values,
    /// layout), with the quantizers attached. The weight quantizer is built from the weight's
    /// values (its learned step, if any, starts at the fixed quantizer's).
    ///
    /// # Errors
    /// As [`QuantScheme::validate`] for the layer's sizes.
    pub fn from_float(linear: burn::nn::Linear, quant: &QuantScheme) -> crate::Result<Self> {
        let [d_input, _] = linear.weight.shape().dims::<2>();
        quant.validate(d_input, d_input)?;
        let device = linear.weight.lazy_device();
        let weight_quantizer = match quant.weight {
            Some(_) => quant.weight_quantizer(&linear.weight.val())?,
            None => None,
        };
        let layer = Self {
            activation_quantizer: quant.activation_quantizer(d_input, &device)?,
            weight: linear.weight,
            bias: linear.bias,
        };
        Ok(layer.apply_reparameterization(AttachAt {
            path: "weight",
            quantizer: weight_quantizer,
        }))
    }

    /// burn-nn's `Linear` with this layer's latent weight and bias (the quantizers dropped; the
    /// same parameter ids). [`Module::materialize`] first to keep the quantized weight instead.
    pub fn to_float(self) -> burn::nn::Linear {
        burn::nn::Linear {
            weight: latent(self.weight),
            bias: self.bias,
        }
    }

    /// The forward pass.
    ///
    /// # Shapes
    /// - input: `[..., d_input]`
    /// - output: `[..., d_output]`
    ///
    /// # Panics
    /// If the last axis of `input` is not `d_input` (as burn-nn's); [`Linear::try_forward`]
    /// returns an error instead.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        match self.try_forward(input) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// The forward pass, with a typed error for an input whose last axis is not `d_input`
    /// (or a malformed record: see [`crate::check::check_model`]).
    pub fn try_forward<const D: usize>(&self, input: Tensor<D>) -> crate::Result<Tensor<D>> {
        self.as_bit_linear().forward_checked(input)
    }

    /// The weight quantizer, if the weight is quantized.
    pub fn weight_quantizer(&self) -> Option<&Quantizer> {
        self.weight.reparameterization::<Quantizer>()
    }

    /// The same parameters as a [`BitLinear`] without a norm, which computes exactly this
    /// layer's forward pass (parameters are shared, not copied).
    fn as_bit_linear(&self) -> BitLinear {
        BitLinear {
            weight: self.weight.clone(),
            bias: self.bias.clone(),
            norm: None,
            activation_quantizer: self.activation_quantizer.clone(),
        }
    }
}

impl ModuleDisplay for Linear {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new()
            .with_new_line_after_attribute(false)
            .optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        let bit = self.as_bit_linear();
        let [d_input, d_output] = match bit.packed_weight().map(|p| p.layout()) {
            Some(Ok(layout)) => [layout.d_input, layout.d_output],
            _ => self.weight.shape().dims(),
        };
        let quant = |q: Option<&Quantizer>| {
            q.and_then(|q| q.try_settings().ok())
                .map_or_else(|| "float".to_string(), |s| format!("{:?}", s.quant.format))
        };
        content
            .add("d_input", &d_input)
            .add("d_output", &d_output)
            .add("bias", &self.bias.is_some())
            .add("weight", &quant(self.weight_quantizer()))
            .add("activation", &quant(self.activation_quantizer.as_ref()))
            .optional()
    }
}
