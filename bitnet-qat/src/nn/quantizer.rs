//! A quantizer as a Burn module: configuration, STE and the learned step when there is one.

use std::sync::Arc;

use burn::config::Config;
use burn::module::{Module, Param, ParamId, Reparameterization};
use burn::nn::RmsNorm;
use burn::tensor::{DType, Device, Int, Tensor};

use super::settings::QuantizerSettings;
use crate::error::QatError;
use crate::quant::layout::ScaleLayout;
use crate::quant::{
    Granularity, QuantConfig, QuantFormat, quant_grid, validate_shape, without_graph,
};
use crate::recorded::Recorded;
use crate::ste::{Ste, apply_norm_ste, apply_ste, lsq_grad_scale, lsq_quantize};

/// Configuration of a [`Quantizer`]: the quantizer and its straight-through estimator.
///
/// # Example
/// ```
/// use bitnet_qat::nn::QuantizerConfig;
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::ste::Ste;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let w = Tensor::<2>::from_data([[0.5, -0.1], [-1.0, 0.2]], &device);
/// let q = QuantizerConfig::new(QuantConfig::ternary())
///     .with_ste(Ste::LearnedStepSize)
///     .init_weight(&w)
///     .unwrap();
/// assert!(q.step.is_some()); // a trainable step, initialised to mean|w|
/// let wq = q.forward(w);
/// assert_eq!(wq.dims(), [2, 2]);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct QuantizerConfig {
    /// The quantizer.
    pub quant: QuantConfig,
    /// The straight-through estimator.
    #[config(default = "Ste::Standard")]
    pub ste: Ste,
}

/// Which axis the scales of a [`Quantizer`] run along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantAxis {
    /// Axis 0: a Burn weight stored `[d_input, d_output]`.
    Weight,
    /// The last axis: activations `[..., features]`.
    Activation,
    /// A weight stored output-first, `[d_output, ...]` — a convolution kernel `[channels_out,
    /// channels_in / groups, k...]` (Burn's layout), an embedding table `[n_embedding,
    /// d_model]` — quantized through its *linear view* `[numel / d_output, d_output]` (see
    /// [`linear_view`]) as a [`QuantAxis::Weight`] quantizer would: `PerChannel` is one scale
    /// per output channel (per embedding row), `PerGroup` groups consecutive elements of one
    /// output's inputs.
    OutputFirst,
}

impl QuantAxis {
    /// Whether this is a weight's axis ([`QuantAxis::Weight`] or [`QuantAxis::OutputFirst`]).
    pub fn is_weight(self) -> bool {
        self != QuantAxis::Activation
    }
}

/// The linear view `[numel / d_output, d_output]` of an output-first weight `[d_output, ...]`
/// (a convolution kernel `[channels_out, channels_in / groups, k...]` becomes
/// `[channels_in / groups · k..., channels_out]`): what a [`QuantAxis::OutputFirst`]
/// quantizer quantizes, and what [`crate::nn::quantizers`] reports as its weight.
///
/// # Example
/// ```
/// use bitnet_qat::nn::linear_view;
/// use burn::tensor::{Device, Tensor};
///
/// let kernel = Tensor::<4>::zeros([8, 3, 5, 5], &Device::flex());
/// assert_eq!(linear_view(kernel).dims(), [75, 8]);
/// ```
pub fn linear_view<const D: usize>(kernel: Tensor<D>) -> Tensor<2> {
    let dims = kernel.dims();
    let rest: usize = dims[1..].iter().product();
    kernel.reshape([dims[0], rest]).transpose()
}

/// Fake quantization with a straight-through estimator, as a module.
///
/// Everything it does is recorded with the model: its learned step (with
/// [`Ste::LearnedStepSize`]) as a trainable parameter, and its [`QuantizerSettings`] — the
/// configuration and what schedules set (lambda, temperature, format) — as an integer
/// parameter. So a checkpoint restores a scheduled quantizer exactly, a clone is independent of
/// its original, and code that walks a model's parameters finds every quantizer of any model
/// (see [`crate::schedule::QatScheduler`], [`crate::schedule::weight_stats`]). It is also the
/// [`Reparameterization`] the [`QatReparameterizer`](crate::reparam::QatReparameterizer) and
/// [`BitLinear`](super::BitLinear) attach to weights.
#[derive(Module, Debug)]
pub struct Quantizer {
    /// The learned step `1/s`, one value per scale (only with [`Ste::LearnedStepSize`]).
    pub step: Option<Param<Tensor<1>>>,
    /// The recorded [`QuantizerSettings`] (see `nn::settings`).
    pub(crate) settings: Recorded,
    /// The settings of the parameter id they were built with: the forward pass reads them
    /// without a lock or a device round trip while the parameter is that one.
    #[module(skip)]
    host: Option<(ParamId, Arc<QuantizerSettings>)>,
}

impl QuantizerConfig {
    /// Builds a quantizer for a Burn weight `[d_input, d_output]` (scales along axis 0), on the
    /// weight's device. A learned step is initialised from `weight` so the first forward pass
    /// equals the non-learned quantizer.
    pub fn init_weight(&self, weight: &Tensor<2>) -> crate::Result<Quantizer> {
        self.init_linear_view(weight.clone(), QuantAxis::Weight)
    }

    /// Builds a quantizer for an output-first weight such as a convolution kernel
    /// `[channels_out, channels_in / groups, k...]` ([`QuantAxis::OutputFirst`]: scales per
    /// output channel with `PerChannel`), on the kernel's device. A learned step is initialised
    /// from `kernel`.
    ///
    /// # Errors
    /// As [`QuantizerConfig::init_weight`] for the kernel's linear view ([`linear_view`]).
    ///
    /// # Example
    /// ```
    /// use bitnet_qat::nn::QuantizerConfig;
    /// use bitnet_qat::quant::{Granularity, QuantConfig};
    /// use burn::tensor::{Device, Tensor};
    ///
    /// let device = Device::flex();
    /// let kernel = Tensor::<4>::ones([4, 2, 3, 3], &device);
    /// let quant = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
    /// let q = QuantizerConfig::new(quant).init_output_first(&kernel).unwrap();
    /// assert_eq!(q.forward(kernel).dims(), [4, 2, 3, 3]);
    /// ```
    pub fn init_output_first<const D: usize>(
        &self,
        kernel: &Tensor<D>,
    ) -> crate::Result<Quantizer> {
        self.init_linear_view(linear_view(kernel.clone()), QuantAxis::OutputFirst)
    }

    /// A weight quantizer for a weight whose linear view is `view` `[d_input, d_output]`.
    fn init_linear_view(&self, view: Tensor<2>, axis: QuantAxis) -> crate::Result<Quantizer> {
        self.ste.validate(&self.quant)?;
        validate_shape(&self.quant, &view.dims(), 0)?;
        let device = view.device();
        let step = match self.ste {
            Ste::LearnedStepSize => Some(Param::from_tensor(initial_step(view, &self.quant, 0))),
            _ => None,
        };
        let settings = QuantizerSettings::new(self.quant.clone(), self.ste, axis, step.is_some());
        Ok(Quantizer::from_settings(step, settings, &device))
    }

    /// Builds a quantizer for activations whose last axis has `d_features` elements, with its
    /// recorded settings on `device`.
    pub fn init_activation(&self, d_features: usize, device: &Device) -> crate::Result<Quantizer> {
        self.validate_activation(d_features)?;
        let settings =
            QuantizerSettings::new(self.quant.clone(), self.ste, QuantAxis::Activation, false);
        Ok(Quantizer::from_settings(None, settings, device))
    }

    /// Checks that [`QuantizerConfig::init_activation`] would build a quantizer.
    ///
    /// # Errors
    /// As [`Ste::validate`] and [`QuantConfig::validate_for_dim`]; [`QatError::Config`] of
    /// `QuantizerConfig.ste` for [`Ste::LearnedStepSize`] (weights only).
    pub fn validate_activation(&self, d_features: usize) -> crate::Result<()> {
        self.ste.validate(&self.quant)?;
        self.quant.validate_for_dim(d_features)?;
        if self.ste == Ste::LearnedStepSize {
            return Err(QatError::config(
                "QuantizerConfig.ste",
                "LearnedStepSize",
                "an STE without a learned step for activations: activation scales depend on \
                 the batch (LearnedStepSize is for weights only)",
            ));
        }
        Ok(())
    }
}

impl QuantizerConfig {
    /// [`QuantizerConfig::validate_activation`] for a layer whose configuration calls the STE
    /// setting `ste_setting` (`"BitLinearConfig.activation_ste"`): an STE error names it.
    pub(crate) fn validate_activation_as(
        &self,
        d_features: usize,
        ste_setting: &str,
    ) -> crate::Result<()> {
        self.validate_activation(d_features).map_err(|e| match e {
            QatError::Config {
                name,
                value,
                allowed,
            } if name == "QuantizerConfig.ste" => QatError::Config {
                name: ste_setting.into(),
                value,
                allowed,
            },
            other => other,
        })
    }
}

/// The initial LSQ step: the non-learned step `max(stat, eps) / Q_p`, one value per scale.
fn initial_step<const D: usize>(x: Tensor<D>, config: &QuantConfig, axis: usize) -> Tensor<1> {
    // Computed without autodiff: a parameter must start as a leaf of the graph, with the
    // input's gradient-checkpointing strategy (the tensors of one op must share it).
    let strategy = x.gradient_checkpointing_strategy();
    let x = without_graph(x);
    let layout = ScaleLayout::new(config.granularity, axis, x.dims());
    let (_, qp) = config.code_range();
    let step = layout
        .reduce_compact(x.abs(), config.stat.into())
        .clamp_min(config.eps)
        .div_scalar(qp);
    match strategy {
        Some(strategy) => step
            .autodiff()
            .with_gradient_checkpointing_strategy(strategy),
        None => step,
    }
}

impl Quantizer {
    /// A quantizer from its recorded parameters (as a traversal finds them).
    pub(crate) fn from_params(
        step: Option<Param<Tensor<1>>>,
        settings: Param<Tensor<1, Int>>,
    ) -> Self {
        Self {
            step,
            settings: Recorded::new(settings),
            host: None,
        }
    }

    fn from_settings(
        step: Option<Param<Tensor<1>>>,
        settings: QuantizerSettings,
        device: &Device,
    ) -> Self {
        let param = settings.to_param(device);
        Self {
            host: Some((param.id, Arc::new(settings))),
            settings: param,
            step,
        }
    }

    /// The quantizer's recorded settings: its configuration and schedule values.
    ///
    /// # Panics
    /// If the recorded settings are malformed (a corrupted or foreign record loaded into the
    /// model); [`Quantizer::try_settings`] returns the error, and
    /// [`crate::check::check_model`] checks a whole model after loading.
    pub fn settings(&self) -> QuantizerSettings {
        match self.try_settings() {
            Ok(s) => (*s).clone(),
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Quantizer::settings`], with a typed error for malformed recorded settings.
    pub fn try_settings(&self) -> crate::Result<Arc<QuantizerSettings>> {
        match &self.host {
            Some((id, s)) if *id == self.settings.id => Ok(s.clone()),
            _ => QuantizerSettings::of(&self.settings),
        }
    }

    /// The quantizer and STE in force (see [`QuantizerSettings::effective`]).
    pub fn effective(&self) -> (QuantConfig, Ste) {
        self.settings().effective()
    }

    /// Whether this (activation) quantizer is BitNet's — 8-bit absmax per token
    /// ([`QuantConfig::activation_int8`]), a hard STE, lambda 1 — which the packed int8 kernels
    /// reproduce exactly.
    ///
    /// # Errors
    /// [`QatError::Record`] for malformed recorded settings.
    pub(crate) fn is_bitnet_int8(&self) -> crate::Result<bool> {
        Ok(self.bitnet_int8_group()? == Some(None))
    }

    /// `Some(None)` for BitNet's int8 activations per token ([`Quantizer::is_bitnet_int8`]),
    /// `Some(Some(g))` for the same per group of `g` features, `g` a multiple of 256 (llama.cpp's
    /// `Q8_K` blocks for `g = 256`), which the packed int8 kernels compute group by group;
    /// `None` otherwise.
    ///
    /// # Errors
    /// [`QatError::Record`] for malformed recorded settings.
    pub(crate) fn bitnet_int8_group(&self) -> crate::Result<Option<Option<usize>>> {
        let settings = self.try_settings()?;
        let (quant, ste) = settings.effective();
        if matches!(ste, Ste::Soft { .. }) || settings.lambda != 1.0 {
            return Ok(None);
        }
        let per_token = QuantConfig::activation_int8();
        Ok(match quant.granularity {
            _ if quant == per_token => Some(None),
            Granularity::PerGroup { size }
                if size.is_multiple_of(256)
                    && quant == per_token.with_granularity(quant.granularity) =>
            {
                Some(Some(size))
            }
            _ => None,
        })
    }

    /// This quantizer with `settings` recorded in place of its own. The configuration part
    /// (`quant`, `ste`, `axis`, `learned_step`) must stay the same: only schedules change.
    pub(crate) fn with_settings(self, settings: QuantizerSettings) -> Self {
        let step = self.step;
        Self::from_settings(step, settings, &self.settings.lazy_device())
    }

    /// This quantizer with lambda set (clamped to `[0, 1]`, NaN taken as 1): the forward pass
    /// is `x + lambda (q(x) - x)`.
    pub fn with_lambda(self, lambda: f64) -> Self {
        let settings = self.settings().with_lambda(lambda);
        self.with_settings(settings)
    }

    /// This quantizer with its soft STE temperature overridden (`None` restores the configured
    /// one).
    ///
    /// # Errors
    /// [`QatError::Temperature`] for a temperature that is not finite and positive.
    pub fn with_temperature(self, temperature: Option<f64>) -> crate::Result<Self> {
        let settings = self.settings().with_temperature(temperature)?;
        Ok(self.with_settings(settings))
    }

    /// This quantizer with its weight format overridden (`None` restores the configured one;
    /// see [`QuantizerSettings::effective`] for where it applies).
    ///
    /// # Errors
    /// [`QatError::UnsupportedBits`] for an invalid format.
    pub fn with_format(self, format: Option<QuantFormat>) -> crate::Result<Self> {
        let settings = self.settings().with_format(format)?;
        Ok(self.with_settings(settings))
    }

    /// Fake-quantizes `x` (the forward pass of the configured quantizer, the gradient of the
    /// configured STE).
    ///
    /// # Panics
    /// If `x`'s shape does not fit the configuration checked when the quantizer was built
    /// (for example a different group-divisibility), or if the recorded settings are malformed;
    /// [`Quantizer::try_forward`] returns an error instead.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.try_forward(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Quantizer::forward`], with a typed error for a shape that does not fit or malformed
    /// recorded settings.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> crate::Result<Tensor<D>> {
        // One read of the settings: the whole pass uses one consistent configuration.
        let settings = self.try_settings()?;
        if settings.axis == QuantAxis::OutputFirst {
            let dims = x.dims();
            let q = self.forward_along(linear_view(x), &settings, 0)?;
            return Ok(q.transpose().reshape(dims));
        }
        let axis = axis_of::<D>(settings.axis);
        self.forward_along(x, &settings, axis)
    }

    /// The forward pass with scales along `axis`.
    fn forward_along<const D: usize>(
        &self,
        x: Tensor<D>,
        settings: &QuantizerSettings,
        axis: usize,
    ) -> crate::Result<Tensor<D>> {
        let (quant, ste) = settings.effective();
        validate_shape(&quant, &x.dims(), axis)?;
        let lambda = settings.lambda;
        if lambda == 0.0 {
            return Ok(x);
        }
        let q = self.quantize(x.clone(), &quant, &ste, axis)?;
        Ok(if lambda == 1.0 {
            q
        } else {
            // x + lambda (q - x): the STE's gradient weighted by lambda, the identity by 1 - lambda.
            x.mul_scalar(1.0 - lambda) + q.mul_scalar(lambda)
        })
    }

    /// [`Quantizer::try_forward`] of `norm.forward(x)`: BitLinear's normalized and quantized
    /// input, through [`crate::ste::norm_quantize_ste`]'s fused op for an activation quantizer
    /// without a learned step at lambda 1 (otherwise the two run one after the other).
    ///
    /// # Errors
    /// As [`Quantizer::try_forward`].
    pub(crate) fn try_forward_normalized<const D: usize>(
        &self,
        x: Tensor<D>,
        norm: &RmsNorm,
    ) -> crate::Result<Tensor<D>> {
        let settings = self.try_settings()?;
        if self.step.is_some() || settings.lambda != 1.0 || settings.axis != QuantAxis::Activation {
            return self.try_forward(norm.forward(x));
        }
        let (quant, ste) = settings.effective();
        validate_shape(&quant, &x.dims(), D - 1)?;
        Ok(apply_norm_ste(x, norm, &quant, &ste))
    }

    /// The quantized value with the STE's gradient, whatever lambda is.
    fn quantize<const D: usize>(
        &self,
        x: Tensor<D>,
        quant: &QuantConfig,
        ste: &Ste,
        axis: usize,
    ) -> crate::Result<Tensor<D>> {
        Ok(match &self.step {
            Some(step) => {
                let layout = ScaleLayout::new(quant.granularity, axis, x.dims());
                if step.shape().dims::<1>()[0] != layout.num_scales() {
                    return Err(QatError::Shape {
                        what: "learned step".into(),
                        expected: format!("[{}]", layout.num_scales()),
                        got: step.shape().dims::<1>().to_vec(),
                    });
                }
                let (qn, qp) = quant.code_range();
                let g = lsq_grad_scale(layout.elems_per_scale(), qp);
                match crate::fused::try_fused_lsq(&x, &step.val(), quant, axis, g) {
                    Some(q) => q,
                    None => lsq_quantize(x, layout.broadcast(step.val()), qn, qp, g),
                }
            }
            None => apply_ste(x, quant, ste, axis),
        })
    }

    /// The learned step this quantizer would start from for a weight whose linear view is
    /// `view` (as [`QuantizerConfig::init_weight`] computes it), `None` without a learned step:
    /// a quantizer whose weight was loaded after it was built restarts from it.
    ///
    /// # Errors
    /// As [`Quantizer::try_forward`].
    pub(crate) fn initial_step_for(&self, view: Tensor<2>) -> crate::Result<Option<Tensor<1>>> {
        if self.step.is_none() {
            return Ok(None);
        }
        let settings = self.try_settings()?;
        validate_shape(&settings.quant, &view.dims(), 0)?;
        Ok(Some(initial_step(view, &settings.quant, 0)))
    }

    /// The quantized weight `[d_input, d_output]` of the forward pass at lambda 1, without
    /// autodiff: the values a converted layer must reproduce.
    ///
    /// # Errors
    /// As [`Quantizer::try_forward`].
    pub(crate) fn hard_weight(&self, weight: Tensor<2>) -> crate::Result<Tensor<2>> {
        let settings = self.try_settings()?;
        let (quant, ste) = settings.effective();
        validate_shape(&quant, &weight.dims(), 0)?;
        self.quantize(without_graph(weight), &quant, &ste, 0)
    }

    /// The integer codes of a weight `[d_input, d_output]` as the forward pass quantizes it (at
    /// lambda 1), and the multiplier `s` of every element (`q = codes / s`), both
    /// `[d_input, d_output]`, without autodiff. The codes are read off the forward pass itself,
    /// so they are exactly the ones it uses, whichever implementation (fused or portable) ran.
    ///
    /// # Errors
    /// As [`Quantizer::try_forward`]: a weight whose shape does not fit, malformed settings.
    pub fn weight_codes(&self, weight: Tensor<2>) -> crate::Result<(Tensor<2>, Tensor<2>)> {
        // In f32 whatever the weight's type: the codes of an f16/bf16 weight are those of its
        // (exactly representable) values in f32, as its quantizer computes them.
        let weight = without_graph(weight).cast(DType::F32);
        let settings = self.try_settings()?;
        let (quant, ste) = settings.effective();
        validate_shape(&quant, &weight.dims(), 0)?;
        let scale: Tensor<2> = match &self.step {
            Some(step) => ScaleLayout::new(quant.granularity, 0, weight.dims())
                .broadcast(without_graph(step.val()).cast(DType::F32))
                .recip(),
            None => quant_grid(weight.clone(), &quant, 0).scale,
        };
        let scale = scale + weight.zeros_like(); // expand to [d_input, d_output]
        let hard = self.quantize(weight, &quant, &ste, 0)?;
        let codes = (hard * scale.clone()).round();
        Ok((codes, scale))
    }
}

/// The axis the scales of a `D`-dimensional input run along.
fn axis_of<const D: usize>(axis: QuantAxis) -> usize {
    match axis {
        // A kernel is quantized through its linear view (`Quantizer::try_forward`).
        QuantAxis::Weight | QuantAxis::OutputFirst => 0,
        QuantAxis::Activation => D - 1,
    }
}

impl Reparameterization for Quantizer {
    const NAME: &'static str = "qat";

    fn apply<const D: usize>(&self, base: Tensor<D>) -> Tensor<D> {
        self.forward(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{Granularity, fake_quantize_weight};
    use burn::tensor::{Device, TensorData};

    fn weight(device: &Device) -> Tensor<2> {
        let data: Vec<f32> = (0..48)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        Tensor::from_data(TensorData::new(data, [8, 6]), device)
    }

    #[test]
    fn learned_step_starts_at_the_fixed_quantizer() {
        let device = Device::flex().autodiff();
        for quant in [
            QuantConfig::ternary(),
            QuantConfig::int(4).with_granularity(Granularity::PerChannel),
            QuantConfig::int(8).with_granularity(Granularity::PerGroup { size: 4 }),
        ] {
            let w = weight(&device);
            let fixed = fake_quantize_weight(w.clone(), &quant).unwrap();
            let lsq = QuantizerConfig::new(quant.clone())
                .with_ste(Ste::LearnedStepSize)
                .init_weight(&w)
                .unwrap();
            let learned = lsq.forward(w);
            let (a, b) = (learned.into_data(), fixed.into_data());
            a.assert_approx_eq::<f32>(&b, burn::tensor::Tolerance::absolute(1e-6));
        }
    }

    #[test]
    fn activation_quantizers_reject_learned_steps() {
        let config =
            QuantizerConfig::new(QuantConfig::activation_int8()).with_ste(Ste::LearnedStepSize);
        assert!(matches!(
            config.init_activation(16, &Device::flex()),
            Err(QatError::Config { name, value, .. })
                if name == "QuantizerConfig.ste" && value == "LearnedStepSize"
        ));
        let config = QuantizerConfig::new(QuantConfig::activation_int8());
        assert_eq!(
            config
                .init_activation(16, &Device::flex())
                .unwrap()
                .settings()
                .axis,
            QuantAxis::Activation
        );
    }
}
