//! A quantizer as a Burn module: configuration, STE and the learned step when there is one.

use burn::config::Config;
use burn::module::{Module, Param, Reparameterization};
use burn::tensor::Tensor;

use super::control::QatControl;
use crate::error::QatError;
use crate::quant::layout::ScaleLayout;
use crate::quant::{
    QuantConfig, QuantFormat, ScaleStat, quant_grid, validate_shape, without_graph,
};
use crate::ste::{Ste, apply_ste, lsq_grad_scale, lsq_quantize};

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
}

/// Fake quantization with a straight-through estimator, as a module.
///
/// It holds the learned step of [`Ste::LearnedStepSize`] as a recorded, trainable parameter,
/// so learned scales are saved and restored with the model. It is also the
/// [`Reparameterization`] the [`QatReparameterizer`](crate::reparam::QatReparameterizer)
/// attaches to the weights of any Burn model.
#[derive(Module, Debug)]
pub struct Quantizer {
    /// The learned step `1/s`, one value per scale (only with [`Ste::LearnedStepSize`]).
    pub step: Option<Param<Tensor<1>>>,
    /// The quantizer.
    #[module(skip)]
    pub quant: QuantConfig,
    /// The straight-through estimator.
    #[module(skip)]
    pub ste: Ste,
    /// Whether the scales run along axis 0 (weights) or the last axis (activations).
    #[module(skip)]
    pub axis: QuantAxis,
    /// Run-time settings (lambda, temperature, format) a schedule changes during training.
    #[module(skip)]
    pub control: QatControl,
}

impl QuantizerConfig {
    /// Builds a quantizer for a Burn weight `[d_input, d_output]` (scales along axis 0).
    /// A learned step is initialised from `weight` so the first forward pass equals the
    /// non-learned quantizer.
    pub fn init_weight(&self, weight: &Tensor<2>) -> crate::Result<Quantizer> {
        self.ste.validate(&self.quant)?;
        validate_shape(&self.quant, &weight.dims(), 0)?;
        let step = match self.ste {
            Ste::LearnedStepSize => Some(Param::from_tensor(initial_step(
                weight.clone(),
                &self.quant,
                0,
            ))),
            _ => None,
        };
        Ok(Quantizer {
            step,
            quant: self.quant.clone(),
            ste: self.ste,
            axis: QuantAxis::Weight,
            control: QatControl::default(),
        })
    }

    /// Builds a quantizer for activations whose last axis has `d_features` elements.
    pub fn init_activation(&self, d_features: usize) -> crate::Result<Quantizer> {
        self.ste.validate(&self.quant)?;
        self.quant.validate_for_dim(d_features)?;
        if self.ste == Ste::LearnedStepSize {
            return Err(QatError::Invalid(
                "Ste::LearnedStepSize is supported for weights only: activation scales \
                 depend on the batch"
                    .into(),
            ));
        }
        Ok(Quantizer {
            step: None,
            quant: self.quant.clone(),
            ste: self.ste,
            axis: QuantAxis::Activation,
            control: QatControl::default(),
        })
    }
}

/// The initial LSQ step: the non-learned step `max(stat, eps) / Q_p`, one value per scale.
fn initial_step<const D: usize>(x: Tensor<D>, config: &QuantConfig, axis: usize) -> Tensor<1> {
    // Computed without autodiff: a parameter must start as a leaf of the graph.
    let autodiff = x.is_autodiff();
    let x = without_graph(x);
    let layout = ScaleLayout::new(config.granularity, axis, x.dims());
    let (_, qp) = config.code_range();
    let step = layout
        .reduce_compact(x.abs(), config.stat.into())
        .clamp_min(config.eps)
        .div_scalar(qp);
    if autodiff { step.autodiff() } else { step }
}

impl Quantizer {
    /// Fake-quantizes `x` (the forward pass of the configured quantizer, the gradient of the
    /// configured STE).
    ///
    /// # Panics
    /// If `x`'s shape does not fit the configuration checked when the quantizer was built
    /// (for example a different group-divisibility); [`Quantizer::try_forward`] returns an error
    /// instead.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.try_forward(x) {
            Ok(y) => y,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Quantizer::forward`], with a typed error for a shape that does not fit.
    pub fn try_forward<const D: usize>(&self, x: Tensor<D>) -> crate::Result<Tensor<D>> {
        let lambda = self.control.lambda();
        if lambda == 0.0 {
            validate_shape(&self.effective().0, &x.dims(), self.axis_of::<D>())?;
            return Ok(x);
        }
        let q = self.quantize(x.clone())?;
        Ok(if lambda == 1.0 {
            q
        } else {
            // x + lambda (q - x): the STE's gradient weighted by lambda, the identity by 1 - lambda.
            x.mul_scalar(1.0 - lambda) + q.mul_scalar(lambda)
        })
    }

    /// The quantized value with the STE's gradient, whatever the control's lambda.
    fn quantize<const D: usize>(&self, x: Tensor<D>) -> crate::Result<Tensor<D>> {
        let axis = self.axis_of::<D>();
        let (quant, ste) = self.effective();
        validate_shape(&quant, &x.dims(), axis)?;
        Ok(match &self.step {
            Some(step) => {
                let layout = ScaleLayout::new(quant.granularity, axis, x.dims());
                if step.shape().dims::<1>()[0] != layout.num_scales() {
                    return Err(QatError::Shape {
                        what: "learned step",
                        expected: format!("[{}]", layout.num_scales()),
                        got: step.shape().dims::<1>().to_vec(),
                    });
                }
                let (qn, qp) = quant.code_range();
                let g = lsq_grad_scale(layout.elems_per_scale(), qp);
                match crate::fused::try_fused_lsq(&x, &step.val(), &quant, axis, g) {
                    Some(q) => q,
                    None => lsq_quantize(x, layout.broadcast(step.val()), qn, qp, g),
                }
            }
            None => apply_ste(x, &quant, &ste, axis),
        })
    }

    /// The quantizer and STE in force: the configured ones with the control's overrides. A
    /// format override applies to weight quantizers without a learned step and brings that
    /// format's preset statistic (absmean for ternary and binary, absmax for integers); a
    /// temperature override applies to the soft STE.
    pub fn effective(&self) -> (QuantConfig, Ste) {
        let mut quant = self.quant.clone();
        if self.axis == QuantAxis::Weight
            && self.step.is_none()
            && let Some(format) = self.control.format()
            && format != quant.format
        {
            quant.format = format;
            quant.stat = match format {
                QuantFormat::Int { .. } => ScaleStat::AbsMax,
                QuantFormat::Ternary | QuantFormat::Binary => ScaleStat::AbsMean,
            };
        }
        let ste = match (self.ste, self.control.temperature()) {
            (Ste::Soft { .. }, Some(temperature)) => Ste::Soft { temperature },
            (ste, _) => ste,
        };
        (quant, ste)
    }

    /// The integer codes of a weight `[d_input, d_output]` as the forward pass quantizes it (at
    /// lambda 1), and the multiplier `s` of every element (`q = codes / s`), both
    /// `[d_input, d_output]`, without autodiff. The codes are read off the forward pass itself,
    /// so they are exactly the ones it uses, whichever implementation (fused or portable) ran.
    ///
    /// # Panics
    /// If the weight's shape does not fit the quantizer (see [`Quantizer::forward`]).
    pub fn weight_codes(&self, weight: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let weight = without_graph(weight);
        let (quant, _) = self.effective();
        let scale: Tensor<2> = match &self.step {
            Some(step) => ScaleLayout::new(quant.granularity, 0, weight.dims())
                .broadcast(without_graph(step.val()))
                .recip(),
            None => quant_grid(weight.clone(), &quant, 0).scale,
        };
        let scale = scale + weight.zeros_like(); // expand to [d_input, d_output]
        let hard = match self.quantize(weight) {
            Ok(q) => q,
            Err(e) => panic!("{e}"),
        };
        let codes = (hard * scale.clone()).round();
        (codes, scale)
    }

    fn axis_of<const D: usize>(&self) -> usize {
        match self.axis {
            QuantAxis::Weight => 0,
            QuantAxis::Activation => D - 1,
        }
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
            config.init_activation(16),
            Err(QatError::Invalid(_))
        ));
        let config = QuantizerConfig::new(QuantConfig::activation_int8());
        assert_eq!(
            config.init_activation(16).unwrap().axis,
            QuantAxis::Activation
        );
    }
}
