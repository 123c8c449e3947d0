//! Applying schedules to the quantizers of a model.

use burn::nn::Linear;
use burn::tensor::Tensor;

use super::{BitWidthSchedule, LambdaSchedule, TemperatureSchedule};
use crate::nn::{BitLinear, QuantAxis, Quantizer};

/// A model whose quantizers a schedule can reach.
///
/// Implemented for [`BitLinear`], reparameterized Burn `Linear`, `Vec` and `Option`; for a model
/// of your own, call it on each field:
///
/// ```
/// use bitnet_qat::nn::{BitLinear, Quantizer};
/// use bitnet_qat::schedule::QatModule;
///
/// #[derive(burn::module::Module, Debug)]
/// struct Mlp { fc1: BitLinear, fc2: BitLinear }
///
/// impl QatModule for Mlp {
///     fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer)) {
///         self.fc1.for_each_quantizer(f);
///         self.fc2.for_each_quantizer(f);
///     }
/// }
/// ```
pub trait QatModule {
    /// Calls `f` on every quantizer of the module.
    fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer));

    /// Calls `f` on every quantized weight (`[d_input, d_output]` latent values) with its
    /// quantizer, for [`weight_stats`](super::weight_stats) and
    /// [`FlipTracker`](super::FlipTracker). The default visits none.
    fn for_each_weight(&self, f: &mut dyn FnMut(&Quantizer, Tensor<2>)) {
        let _ = f;
    }
}

impl QatModule for BitLinear {
    fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer)) {
        f(&self.weight_quantizer);
        if let Some(q) = &self.activation_quantizer {
            f(q);
        }
    }

    fn for_each_weight(&self, f: &mut dyn FnMut(&Quantizer, Tensor<2>)) {
        f(&self.weight_quantizer, self.weight.val());
    }
}

impl QatModule for Linear {
    fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer)) {
        if let Some(q) = self.weight.reparameterization::<Quantizer>() {
            f(q);
        }
    }

    fn for_each_weight(&self, f: &mut dyn FnMut(&Quantizer, Tensor<2>)) {
        if let Some(q) = self.weight.reparameterization::<Quantizer>() {
            f(q, self.weight.base());
        }
    }
}

impl<T: QatModule> QatModule for Vec<T> {
    fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer)) {
        self.iter().for_each(|m| m.for_each_quantizer(f));
    }

    fn for_each_weight(&self, f: &mut dyn FnMut(&Quantizer, Tensor<2>)) {
        self.iter().for_each(|m| m.for_each_weight(f));
    }
}

impl<T: QatModule> QatModule for Option<T> {
    fn for_each_quantizer(&self, f: &mut dyn FnMut(&Quantizer)) {
        if let Some(m) = self {
            m.for_each_quantizer(f);
        }
    }

    fn for_each_weight(&self, f: &mut dyn FnMut(&Quantizer, Tensor<2>)) {
        if let Some(m) = self {
            m.for_each_weight(f);
        }
    }
}

/// The QAT schedules of a run, applied to a model at each global step (in `TrainStep::optimize`
/// or a custom loop). Everything is derived from the step, so applying it after loading a
/// checkpoint restores the exact settings.
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinearConfig;
/// use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatModule, QatScheduler};
///
/// let layer = BitLinearConfig::new(8, 4).init(&burn::tensor::Device::flex()).unwrap();
/// let scheduler = QatScheduler::default().with_lambda(LambdaSchedule::new(100, LambdaRamp::Linear));
/// scheduler.apply(&layer, 25);
/// assert_eq!(layer.weight_quantizer.control.lambda(), 0.25);
/// ```
#[derive(Debug, Clone, Default)]
pub struct QatScheduler {
    /// The STE blend (all quantizers).
    pub lambda: Option<LambdaSchedule>,
    /// The soft STE temperature (quantizers with the soft STE).
    pub temperature: Option<TemperatureSchedule>,
    /// The weight format (weight quantizers without a learned step).
    pub bit_width: Option<BitWidthSchedule>,
}

impl QatScheduler {
    /// Adds the lambda warm-up.
    pub fn with_lambda(mut self, schedule: LambdaSchedule) -> Self {
        self.lambda = Some(schedule);
        self
    }

    /// Adds the temperature annealing.
    pub fn with_temperature(mut self, schedule: TemperatureSchedule) -> Self {
        self.temperature = Some(schedule);
        self
    }

    /// Adds the progressive bit width.
    pub fn with_bit_width(mut self, schedule: BitWidthSchedule) -> Self {
        self.bit_width = Some(schedule);
        self
    }

    /// Sets every quantizer of `model` to the values of global step `step`.
    pub fn apply(&self, model: &impl QatModule, step: usize) {
        let lambda = self.lambda.as_ref().map(|s| s.value(step));
        let temperature = self.temperature.as_ref().map(|s| s.value(step));
        let format = self.bit_width.as_ref().map(|s| s.format_at(step));
        model.for_each_quantizer(&mut |q| {
            if let Some(l) = lambda {
                q.control.set_lambda(l);
            }
            if temperature.is_some() {
                q.control.set_temperature(temperature);
            }
            if let Some(f) = format
                && q.axis == QuantAxis::Weight
            {
                // Formats in a BitWidthSchedule were validated when it was built.
                q.control.set_format(Some(f)).expect("validated format");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::BitLinearConfig;
    use crate::quant::{QuantConfig, QuantFormat, fake_quantize, fake_quantize_weight};
    use crate::schedule::{Anneal, LambdaRamp};
    use crate::ste::Ste;
    use burn::module::Module;
    use burn::tensor::{Device, Tensor, Tolerance};

    fn x(device: &Device) -> Tensor<2> {
        Tensor::from_data([[0.3, -1.2, 0.05, 0.7], [2.0, -0.7, 0.4, -0.1]], device)
    }

    #[test]
    fn lambda_blends_full_precision_and_quantized() {
        let device = Device::flex().autodiff();
        let layer = BitLinearConfig::new(4, 2).init(&device).unwrap();
        let q = &layer.weight_quantizer;
        let w = layer.weight.val();
        let hard = fake_quantize_weight(w.clone(), &QuantConfig::ternary()).unwrap();
        q.control.set_lambda(0.0);
        q.forward(w.clone())
            .into_data()
            .assert_eq(&w.clone().into_data(), true);
        q.control.set_lambda(0.25);
        let expected = w.clone().mul_scalar(0.75) + hard.clone().mul_scalar(0.25);
        let blended = q.forward(w.clone().require_grad());
        blended
            .clone()
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        // The gradient of the standard STE stays the identity at any lambda.
        let leaf = layer.weight.val().require_grad();
        let grads = q.forward(leaf.clone()).sum().backward();
        let ones = leaf.ones_like().inner().into_data();
        leaf.grad(&grads)
            .unwrap()
            .into_data()
            .assert_eq(&ones, true);
        // Validation copies share the control.
        q.control.set_lambda(1.0);
        let valid = layer.valid();
        valid.weight_quantizer.control.set_lambda(0.5);
        assert_eq!(q.control.lambda(), 0.5);
    }

    #[test]
    fn the_scheduler_sets_lambda_temperature_and_format_by_step() {
        let device = Device::flex();
        let layer = BitLinearConfig::new(4, 2)
            .with_weight_quant(QuantConfig::int(8))
            .with_activation_ste(Ste::Soft { temperature: 1.0 })
            .init(&device)
            .unwrap();
        let scheduler = QatScheduler::default()
            .with_lambda(LambdaSchedule::new(10, LambdaRamp::Linear).with_delay_steps(10))
            .with_temperature(TemperatureSchedule::new(
                1.0,
                0.01,
                100,
                Anneal::Exponential,
            ))
            .with_bit_width(
                BitWidthSchedule::by_steps(&[
                    (0, QuantFormat::Int { bits: 8 }),
                    (50, QuantFormat::Ternary),
                ])
                .unwrap(),
            );
        scheduler.apply(&layer, 15);
        let act = layer.activation_quantizer.as_ref().unwrap();
        assert_eq!(layer.weight_quantizer.control.lambda(), 0.5);
        assert!((act.control.temperature().unwrap() - 0.1f64.powf(0.3)).abs() < 1e-12);
        assert_eq!(layer.weight_quantizer.effective().0, QuantConfig::int(8));
        // Activation quantizers keep their format.
        assert_eq!(act.control.format(), None);
        scheduler.apply(&layer, 60);
        assert_eq!(layer.weight_quantizer.effective().0, QuantConfig::ternary());
        let w = layer.weight.val();
        layer
            .weight_quantizer
            .forward(w.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &fake_quantize_weight(w, &QuantConfig::ternary())
                    .unwrap()
                    .into_data(),
                Tolerance::absolute(1e-7),
            );
        // The soft STE reads the scheduled temperature.
        let xs = x(&device);
        let cold = act.forward(xs.clone());
        let hard = fake_quantize(xs, &QuantConfig::activation_int8()).unwrap();
        cold.into_data()
            .assert_approx_eq::<f32>(&hard.into_data(), Tolerance::absolute(0.02));
    }
}
