//! Applying schedules to the quantizers of a model.

use burn::module::Module;

use super::{BitWidthSchedule, LambdaSchedule, TemperatureSchedule};
use crate::error::Result;
use crate::nn::update_quantizers;

/// The QAT schedules of a run, applied to a model at each global step (in `TrainStep::optimize`
/// or a custom loop). Everything is derived from the step, so applying it after loading a
/// checkpoint restores the exact settings.
///
/// It reaches every [`Quantizer`](crate::nn::Quantizer) of any model through its recorded
/// settings, so the scheduled values are part of the model: saved with it, restored with it,
/// and carried by its clones and `valid()` copies.
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinearConfig;
/// use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
///
/// let layers = vec![BitLinearConfig::new(8, 4).init(&burn::tensor::Device::flex()).unwrap()];
/// let scheduler = QatScheduler::default().with_lambda(LambdaSchedule::new(100, LambdaRamp::Linear));
/// let layers = scheduler.apply(layers, 25).unwrap();
/// assert_eq!(layers[0].weight_quantizer().unwrap().settings().lambda, 0.25);
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

    /// Checks every schedule (see [`LambdaSchedule::validate`],
    /// [`TemperatureSchedule::validate`]; a [`BitWidthSchedule`] is checked when it is built).
    ///
    /// # Errors
    /// The first schedule's error.
    pub fn validate(&self) -> Result<()> {
        if let Some(l) = &self.lambda {
            l.validate()?;
        }
        if let Some(t) = &self.temperature {
            t.validate()?;
        }
        Ok(())
    }

    /// `model` with every quantizer set to the values of global step `step`: lambda on all
    /// quantizers, the temperature on all (it takes effect on soft STEs), the format on weight
    /// quantizers.
    ///
    /// # Errors
    /// A schedule that does not [`validate`](QatScheduler::validate);
    /// [`crate::QatError::Record`] for a quantizer whose recorded settings are malformed.
    pub fn apply<M: Module>(&self, model: M, step: usize) -> Result<M> {
        self.validate()?;
        let lambda = self.lambda.as_ref().map(|s| s.value(step));
        let temperature = self.temperature.as_ref().map(|s| s.value(step));
        let format = self.bit_width.as_ref().map(|s| s.format_at(step));
        update_quantizers(model, |_, settings| {
            let mut s = settings.clone();
            if let Some(l) = lambda {
                s = s.with_lambda(l);
            }
            if temperature.is_some() {
                s = s.with_temperature(temperature)?;
            }
            if let Some(f) = format
                && s.axis.is_weight()
            {
                s = s.with_format(Some(f))?;
            }
            Ok(s)
        })
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
        let q = layer.weight_quantizer().unwrap().clone();
        let w = layer.weight.base();
        let hard = fake_quantize_weight(w.clone(), &QuantConfig::ternary()).unwrap();
        q.clone()
            .with_lambda(0.0)
            .forward(w.clone())
            .into_data()
            .assert_eq(&w.clone().into_data(), true);
        let quarter = q.clone().with_lambda(0.25);
        let expected = w.clone().mul_scalar(0.75) + hard.clone().mul_scalar(0.25);
        let blended = quarter.forward(w.clone().require_grad());
        blended
            .clone()
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Tolerance::absolute(1e-6));
        // The gradient of the standard STE stays the identity at any lambda.
        let leaf = layer.weight.base().require_grad();
        let grads = quarter.forward(leaf.clone()).sum().backward();
        let ones = leaf.ones_like().inner().into_data();
        leaf.grad(&grads)
            .unwrap()
            .into_data()
            .assert_eq(&ones, true);
        // A changed quantizer leaves its original alone.
        assert_eq!(q.settings().lambda, 1.0);
    }

    #[test]
    fn schedules_are_part_of_the_model_and_its_copies() {
        let device = Device::flex().autodiff();
        let model = vec![BitLinearConfig::new(4, 2).init(&device).unwrap()];
        let scheduler =
            QatScheduler::default().with_lambda(LambdaSchedule::new(10, LambdaRamp::Linear));
        let before = model.clone();
        let model = scheduler.apply(model, 3).unwrap();
        let lambda =
            |m: &Vec<crate::nn::BitLinear>| m[0].weight_quantizer().unwrap().settings().lambda;
        // The clone taken before is independent; a valid() copy carries the values.
        assert_eq!((lambda(&before), lambda(&model)), (1.0, 0.3));
        assert_eq!(lambda(&model.valid()), 0.3);
        // The record holds them: a fresh skeleton loads step 3's lambda.
        let skeleton = vec![BitLinearConfig::new(4, 2).init(&device).unwrap()];
        let loaded = skeleton.load_record(model.clone().into_record());
        assert_eq!(lambda(&loaded), 0.3);
        assert_eq!(
            loaded[0]
                .activation_quantizer
                .as_ref()
                .unwrap()
                .settings()
                .lambda,
            0.3
        );
    }

    #[test]
    fn a_temperature_override_reaches_the_soft_ste() {
        let device = Device::flex();
        let layer = BitLinearConfig::new(4, 2)
            .with_norm(false)
            .with_activation_quant(None)
            .with_weight_ste(Ste::Soft { temperature: 0.5 })
            .init(&device)
            .unwrap();
        let hard = fake_quantize_weight(layer.weight.base(), &QuantConfig::ternary()).unwrap();
        // Unscheduled, T = 0.5: a soft staircase, visibly off the hard values.
        let soft = layer.weight.val();
        let gap = (soft - hard.clone()).abs().max().into_scalar::<f32>();
        assert!(gap > 1e-3, "{gap}");
        // Scheduled to 1e-6: the hard quantizer.
        let cold = QatScheduler::default()
            .with_temperature(TemperatureSchedule::new(1e-6, 1e-6, 1, Anneal::Linear))
            .apply(layer, 5)
            .unwrap();
        let settings = cold.weight_quantizer().unwrap().settings();
        assert_eq!(settings.temperature, Some(1e-6));
        assert_eq!(settings.effective().1, Ste::Soft { temperature: 1e-6 });
        cold.weight
            .val()
            .into_data()
            .assert_approx_eq::<f32>(&hard.into_data(), Tolerance::absolute(1e-6));
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
        let layer = scheduler.apply(layer, 15).unwrap();
        let act = layer.activation_quantizer.as_ref().unwrap().settings();
        let weight_q = layer.weight_quantizer().unwrap();
        assert_eq!(weight_q.settings().lambda, 0.5);
        assert!((act.temperature.unwrap() - 0.1f64.powf(0.3)).abs() < 1e-12);
        assert_eq!(weight_q.effective().0, QuantConfig::int(8));
        // Activation quantizers keep their format.
        assert_eq!(act.format, None);
        let layer = scheduler.apply(layer, 60).unwrap();
        let weight_q = layer.weight_quantizer().unwrap();
        assert_eq!(weight_q.effective().0, QuantConfig::ternary());
        let w = layer.weight.base();
        layer.weight.val().into_data().assert_approx_eq::<f32>(
            &fake_quantize_weight(w, &QuantConfig::ternary())
                .unwrap()
                .into_data(),
            Tolerance::absolute(1e-7),
        );
        // The soft STE reads the scheduled temperature.
        let xs = x(&device);
        let cold = layer
            .activation_quantizer
            .as_ref()
            .unwrap()
            .forward(xs.clone());
        let hard = fake_quantize(xs, &QuantConfig::activation_int8()).unwrap();
        cold.into_data()
            .assert_approx_eq::<f32>(&hard.into_data(), Tolerance::absolute(0.02));
    }
}
