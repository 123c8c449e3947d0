//! Straight-through estimators: how the gradient passes the rounding of a quantizer.
//!
//! Every STE here runs on every Burn backend through autodiff. `Standard`, `Clipped`, `Soft` and
//! `LearnedStepSize` are written with plain tensor operations; `Adaptive` (EWGS) needs the sign
//! of the incoming gradient, which no composition of tensor operations can see, so it uses the
//! custom backward pass of [`crate::ops::QatBackend::ewgs_ste`].
//!
//! On Flex and GPU devices, every STE with the usual quantizers (ternary, binary or integer,
//! absmean or absmax, any granularity) takes a fused path instead: one backend op for the
//! forward pass whose backward pass is the STE's (the identity, a fused clip mask, EWGS with a
//! fused rounding residual, the soft staircase's fused slope, or LSQ's fused factors). It computes the same values;
//! [`crate::quant::has_fused_kernels`] says whether a device has it. [`norm_quantize_ste`] does
//! the same for RMSNorm followed by the quantizer (BitLinear's input), norm included.

mod lsq;
mod soft;

use burn::config::Config;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;

pub use lsq::{lsq_grad_scale, lsq_quantize};
pub use soft::soft_staircase;

use crate::error::QatError;
use crate::ops::QatBackend;
use crate::quant::{QuantConfig, QuantFormat, quant_grid, validate_shape};

/// A straight-through estimator.
///
/// The notation below: `s` is the quantizer's scale (detached), `u = x * s` the input on the
/// integer grid, `q` the dequantized value and `g` the gradient arriving at `q`.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Ste {
    /// Identity gradient: `x + (q - x).detach()`. The BitNet recipe.
    Standard,
    /// Identity inside the representable range (`Q_n <= u <= Q_p`), zero outside
    /// (the hardtanh STE of BinaryConnect and BNNs).
    Clipped,
    /// A differentiable staircase: `q = (Q_n + sum_k sigmoid((u - t_k) / T)) / s` over the
    /// rounding thresholds `t_k = Q_n + k + 1/2` (binary: `2 sigmoid(u / T) - 1`). The forward
    /// pass is soft and tends to the hard quantizer as `T -> 0`; anneal `T` with a schedule.
    /// It costs one sigmoid per threshold: 2 for ternary, 255 for 8 bits.
    Soft {
        /// The temperature `T > 0`, in units of one quantization step.
        temperature: f64,
    },
    /// Learned step size quantization (LSQ, Esser et al., ICLR 2020): the step `1/s` is a
    /// trainable parameter, initialised from the configured statistic (so the first forward pass
    /// equals the non-learned quantizer), with LSQ's gradient and its `1 / sqrt(N * Q_p)`
    /// gradient scaling. Weights only; not for the binary format.
    LearnedStepSize,
    /// Element-wise gradient scaling (EWGS, Lee et al., CVPR 2021):
    /// `g_x = g * (1 + delta * sign(g) * (u - round(u)))`, where `u` is clamped to the code
    /// range (so outside it the gradient is the identity). `delta = 0` is the standard STE.
    Adaptive {
        /// The scaling factor `delta >= 0` (the paper uses about 1e-3 to 1e-2).
        delta: f64,
    },
}

impl Ste {
    /// Checks the STE's own parameters and its fit with the quantizer format.
    ///
    /// # Errors
    /// As [`QuantConfig::validate`]; [`QatError::Temperature`] and [`QatError::Delta`] for the
    /// STE's own parameters; [`QatError::Config`] of `Ste` for [`Ste::LearnedStepSize`] with the
    /// binary format.
    ///
    /// # Example
    /// ```
    /// use bitnet_qat::quant::QuantConfig;
    /// use bitnet_qat::ste::Ste;
    ///
    /// assert!(Ste::Soft { temperature: 0.0 }.validate(&QuantConfig::ternary()).is_err());
    /// assert!(Ste::LearnedStepSize.validate(&QuantConfig::binary()).is_err());
    /// assert!(Ste::Adaptive { delta: 1e-3 }.validate(&QuantConfig::int(4)).is_ok());
    /// ```
    pub fn validate(&self, config: &QuantConfig) -> crate::Result<()> {
        config.validate()?;
        match *self {
            Ste::Soft { temperature } if !(temperature.is_finite() && temperature > 0.0) => {
                Err(QatError::Temperature(temperature))
            }
            Ste::Adaptive { delta } if !(delta.is_finite() && delta >= 0.0) => {
                Err(QatError::Delta(delta))
            }
            Ste::LearnedStepSize if config.format == QuantFormat::Binary => Err(QatError::config(
                "Ste",
                "LearnedStepSize",
                "an STE other than LearnedStepSize for the binary format: the learned step size \
                 (LSQ) needs an integer grid, and the binary format has none",
            )),
            _ => Ok(()),
        }
    }
}

/// Fake-quantizes `x` along its last axis with a straight-through estimator, so gradients reach
/// `x`. The forward pass equals [`fake_quantize`](crate::quant::fake_quantize) (except for
/// [`Ste::Soft`], whose forward pass is soft).
///
/// [`Ste::LearnedStepSize`] needs a trainable step: use a [`Quantizer`](crate::nn::Quantizer)
/// or [`lsq_quantize`].
///
/// # Errors
/// As [`Ste::validate`]; [`QatError::Shape`] or [`QatError::GroupSize`] when `config` does not
/// fit the last axis of `x`; [`QatError::Config`] of `Ste` for [`Ste::LearnedStepSize`].
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::ste::{quantize_ste, Ste};
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let x = Tensor::<1>::from_data([0.3, -2.0, 0.9], &device).require_grad();
/// let y = quantize_ste(x.clone(), &QuantConfig::ternary(), &Ste::Clipped).unwrap();
/// let grads = y.sum().backward();
/// let g: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// // mean|x| = 1.0666..: -2.0 lies outside [-mean, mean], so its gradient is clipped.
/// assert_eq!(g, vec![1.0, 0.0, 1.0]);
/// ```
pub fn quantize_ste<const D: usize>(
    x: Tensor<D>,
    config: &QuantConfig,
    ste: &Ste,
) -> crate::Result<Tensor<D>> {
    check_fixed_ste(config, ste, &x.dims())?;
    Ok(apply_ste(x, config, ste, D - 1))
}

/// The checks of [`quantize_ste`]: `ste` valid for `config`, `config` for a tensor of `dims`
/// along its last axis, and no learned step (that needs a trainable parameter).
fn check_fixed_ste(config: &QuantConfig, ste: &Ste, dims: &[usize]) -> crate::Result<()> {
    ste.validate(config)?;
    validate_shape(config, dims, dims.len().saturating_sub(1))?;
    if *ste == Ste::LearnedStepSize {
        return Err(QatError::config(
            "Ste",
            "LearnedStepSize",
            "an STE without a learned step: LearnedStepSize needs a trainable step (use \
             nn::Quantizer or ste::lsq_quantize)",
        ));
    }
    Ok(())
}

/// RMSNorm and then [`quantize_ste`] along the last axis: `quantize_ste(norm.forward(x), config,
/// ste)`, BitLinear's normalized and quantized input (and a transformer's SubLN norm before a
/// quantized projection). On Flex and GPU devices, with a per-token or per-group absmean or
/// absmax quantizer and the standard or clipped STE, one fused op computes both, forward and
/// backward (one pass for the forward values, one for each gradient), instead of RMSNorm's
/// separate tensor operations; otherwise the two run one after the other. The values agree up
/// to float rounding (an activation on a rounding boundary may take the neighbouring code),
/// the gradients of `x` and of the norm's `γ` up to the order of the sums.
///
/// # Errors
/// As [`quantize_ste`]; [`QatError::Shape`] when the last axis of `x` is not the norm's width.
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::ste::{norm_quantize_ste, Ste};
/// use burn::nn::RmsNormConfig;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let norm = RmsNormConfig::new(4).init(&device);
/// let x = Tensor::<2>::from_data([[1.0, -2.0, 3.0, 0.5]], &device).require_grad();
/// let y = norm_quantize_ste(x.clone(), &norm, &QuantConfig::activation_int8(), &Ste::Standard)
///     .unwrap();
/// let grads = y.sum().backward();
/// assert!(norm.gamma.val().grad(&grads).is_some() && x.grad(&grads).is_some());
/// ```
pub fn norm_quantize_ste<const D: usize>(
    x: Tensor<D>,
    norm: &RmsNorm,
    config: &QuantConfig,
    ste: &Ste,
) -> crate::Result<Tensor<D>> {
    let [width] = norm.gamma.shape().dims();
    if x.dims()[D - 1] != width {
        return Err(QatError::Shape {
            what: "norm_quantize_ste input".into(),
            expected: format!("[..., {width}]"),
            got: x.dims().to_vec(),
        });
    }
    check_fixed_ste(config, ste, &x.dims())?;
    Ok(apply_norm_ste(x, norm, config, ste))
}

/// [`norm_quantize_ste`] without its checks: the configuration must be valid for `x`, whose last
/// axis is the norm's width.
pub(crate) fn apply_norm_ste<const D: usize>(
    x: Tensor<D>,
    norm: &RmsNorm,
    config: &QuantConfig,
    ste: &Ste,
) -> Tensor<D> {
    use crate::fused::{FusedSte, try_fused_norm_quant};
    if let Some(fused) = FusedSte::of(ste)
        && let Some(q) = try_fused_norm_quant(&x, &norm.gamma.val(), norm.epsilon, config, fused)
    {
        return q;
    }
    apply_ste(norm.forward(x), config, ste, D - 1)
}

/// Applies a non-learned STE along `axis`. The configuration must be valid for `x`.
pub(crate) fn apply_ste<const D: usize>(
    x: Tensor<D>,
    config: &QuantConfig,
    ste: &Ste,
    axis: usize,
) -> Tensor<D> {
    if let Some(fused) = crate::fused::FusedSte::of(ste)
        && let Some(q) = crate::fused::try_fused(&x, config, axis, fused)
    {
        return q;
    }
    let grid = quant_grid(x.clone(), config, axis);
    let tracked = x.is_autodiff();
    match *ste {
        Ste::Soft { temperature } => {
            let u = grid.regrid(x);
            grid.restore(soft_staircase(u, config.format, temperature) / grid.scale.clone())
        }
        // Without a gradient to shape, every other STE's forward pass is `q`.
        _ if !tracked => grid.dequantize(),
        Ste::Standard | Ste::LearnedStepSize => {
            // q + (x - x.detach()): the value is exactly q, the gradient the identity.
            grid.dequantize() + (x.clone() - x.detach())
        }
        Ste::Clipped => {
            let inside = grid.restore(
                grid.grid
                    .clone()
                    .greater_equal_elem(grid.qn)
                    .bool_and(grid.grid.clone().lower_equal_elem(grid.qp))
                    .float(),
            );
            grid.dequantize() + (x.clone() - x.detach()) * inside
        }
        Ste::Adaptive { delta } => {
            let e = grid.restore(grid.grid.clone().clamp(grid.qn, grid.qp) - grid.codes.clone());
            ewgs(x, grid.dequantize(), e, delta)
        }
    }
}

/// `q` in the forward pass, the EWGS gradient to `x` in the backward pass.
fn ewgs<const D: usize>(x: Tensor<D>, q: Tensor<D>, e: Tensor<D>, delta: f64) -> Tensor<D> {
    use burn::backend::Dispatch;
    Tensor::from_dispatch(<Dispatch as QatBackend>::ewgs_ste(
        x.into_dispatch(),
        q.into_dispatch(),
        e.into_dispatch(),
        delta,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::fake_quantize;
    use burn::tensor::Device;

    fn x(device: &Device) -> Tensor<2> {
        Tensor::from_data([[0.3, -1.7, 0.05, 2.2], [-0.4, 0.9, -0.6, 0.0]], device)
    }

    #[test]
    fn without_autodiff_every_hard_ste_returns_q_exactly() {
        let device = Device::flex();
        let q = fake_quantize(x(&device), &QuantConfig::ternary())
            .unwrap()
            .into_data();
        for ste in [Ste::Standard, Ste::Clipped, Ste::Adaptive { delta: 0.1 }] {
            let y = quantize_ste(x(&device), &QuantConfig::ternary(), &ste).unwrap();
            y.into_data().assert_eq(&q, true);
        }
    }

    #[test]
    fn with_autodiff_the_forward_value_is_still_q() {
        let device = Device::flex().autodiff();
        let q = fake_quantize(x(&device), &QuantConfig::int(4))
            .unwrap()
            .into_data();
        for ste in [Ste::Standard, Ste::Clipped, Ste::Adaptive { delta: 0.1 }] {
            let input = x(&device).require_grad();
            let y = quantize_ste(input, &QuantConfig::int(4), &ste).unwrap();
            y.into_data().assert_eq(&q, true);
        }
    }

    #[test]
    fn a_learned_step_without_a_parameter_is_a_config_error() {
        let device = Device::flex();
        for config in [QuantConfig::ternary(), QuantConfig::binary()] {
            assert!(matches!(
                quantize_ste(x(&device), &config, &Ste::LearnedStepSize),
                Err(QatError::Config { name, value, .. })
                    if name == "Ste" && value == "LearnedStepSize"
            ));
        }
    }

    #[test]
    fn soft_ste_is_hard_at_a_tiny_temperature_and_smooth_at_a_large_one() {
        let device = Device::flex();
        let hard = fake_quantize(x(&device), &QuantConfig::ternary()).unwrap();
        let cold = quantize_ste(
            x(&device),
            &QuantConfig::ternary(),
            &Ste::Soft { temperature: 1e-4 },
        );
        cold.unwrap().into_data().assert_approx_eq::<f32>(
            &hard.clone().into_data(),
            burn::tensor::Tolerance::absolute(1e-6),
        );
        let warm = quantize_ste(
            x(&device),
            &QuantConfig::ternary(),
            &Ste::Soft { temperature: 1.0 },
        );
        let diff = (warm.unwrap() - hard).abs().max().into_scalar::<f32>();
        assert!(
            diff > 0.05,
            "a warm soft STE differs from the hard quantizer ({diff})"
        );
    }
}
