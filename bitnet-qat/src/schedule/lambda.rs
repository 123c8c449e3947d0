//! The lambda warm-up of the STE blend.

use burn::config::Config;

/// How lambda rises from 0 to 1 over the warm-up, as a function of `t = steps since the delay
/// / warm-up steps` (clamped to `[0, 1]`). The forms are those of Hugging Face's BitNet
/// fine-tuning experiments.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum LambdaRamp {
    /// `t`.
    Linear,
    /// `(e^(rate t) - 1) / (e^rate - 1)`: slow first, fast at the end.
    Exponential {
        /// The rate (`1` is Hugging Face's form), `> 0`.
        rate: f64,
    },
    /// `1 / (1 + e^(-steepness (t - 1/2)))`, reaching exactly 1 at the end of the warm-up.
    Sigmoid {
        /// The steepness `k` (Hugging Face used 100), `> 0`.
        steepness: f64,
    },
}

/// The lambda of the STE blend at each step: 0 during `delay_steps` (full-precision training),
/// then ramped to 1 over `warmup_steps`, then 1.
///
/// # Example
/// ```
/// use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule};
/// let s = LambdaSchedule::new(100, LambdaRamp::Linear).with_delay_steps(50);
/// assert_eq!(s.value(10), 0.0);
/// assert_eq!(s.value(100), 0.5);
/// assert_eq!(s.value(1000), 1.0);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct LambdaSchedule {
    /// Steps over which lambda rises from 0 to 1 (0: at once).
    pub warmup_steps: usize,
    /// The shape of the rise.
    pub ramp: LambdaRamp,
    /// Full-precision steps before the warm-up starts.
    #[config(default = 0)]
    pub delay_steps: usize,
}

impl LambdaSchedule {
    /// Checks the ramp's parameter.
    ///
    /// # Errors
    /// [`crate::QatError::Config`] of `LambdaSchedule.rate` or `LambdaSchedule.steepness` for
    /// an exponential rate or a sigmoid steepness that is not finite and positive (a rate of 0
    /// would make every value NaN).
    pub fn validate(&self) -> crate::Result<()> {
        let (name, v) = match self.ramp {
            LambdaRamp::Linear => return Ok(()),
            LambdaRamp::Exponential { rate } => ("LambdaSchedule.rate", rate),
            LambdaRamp::Sigmoid { steepness } => ("LambdaSchedule.steepness", steepness),
        };
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(crate::QatError::config(name, v, "finite and > 0"))
        }
    }

    /// Lambda at global step `step` (0-based), in `[0, 1]` (for a schedule that
    /// [validates](LambdaSchedule::validate)).
    pub fn value(&self, step: usize) -> f64 {
        if step < self.delay_steps {
            return 0.0;
        }
        if self.warmup_steps == 0 {
            return 1.0;
        }
        let t = ((step - self.delay_steps) as f64 / self.warmup_steps as f64).min(1.0);
        if t >= 1.0 {
            return 1.0;
        }
        let v = match self.ramp {
            LambdaRamp::Linear => t,
            LambdaRamp::Exponential { rate } => ((rate * t).exp() - 1.0) / (rate.exp() - 1.0),
            LambdaRamp::Sigmoid { steepness } => 1.0 / (1.0 + (-steepness * (t - 0.5)).exp()),
        };
        v.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_chosen_steps() {
        let lin = LambdaSchedule::new(1000, LambdaRamp::Linear);
        assert_eq!(
            [lin.value(0), lin.value(250), lin.value(1000)],
            [0.0, 0.25, 1.0]
        );
        let exp = LambdaSchedule::new(1000, LambdaRamp::Exponential { rate: 1.0 });
        let e = std::f64::consts::E;
        assert!((exp.value(500) - (e.sqrt() - 1.0) / (e - 1.0)).abs() < 1e-12);
        assert_eq!(exp.value(0), 0.0);
        let sig = LambdaSchedule::new(1000, LambdaRamp::Sigmoid { steepness: 10.0 });
        assert!((sig.value(500) - 0.5).abs() < 1e-12);
        assert!((sig.value(900) - 1.0 / (1.0 + (-4.0f64).exp())).abs() < 1e-12);
        assert_eq!(sig.value(1000), 1.0);
        let delayed = LambdaSchedule::new(0, LambdaRamp::Linear).with_delay_steps(10);
        assert_eq!([delayed.value(9), delayed.value(10)], [0.0, 1.0]);
    }

    #[test]
    fn ramps_without_meaning_are_rejected() {
        for (ramp, field, got) in [
            (
                LambdaRamp::Exponential { rate: 0.0 },
                "LambdaSchedule.rate",
                "0",
            ),
            (
                LambdaRamp::Exponential { rate: f64::NAN },
                "LambdaSchedule.rate",
                "NaN",
            ),
            (
                LambdaRamp::Sigmoid { steepness: -1.0 },
                "LambdaSchedule.steepness",
                "-1",
            ),
        ] {
            match LambdaSchedule::new(10, ramp).validate() {
                Err(crate::QatError::Config {
                    name,
                    value,
                    allowed,
                }) => {
                    assert_eq!((name.as_str(), value.as_str()), (field, got), "{ramp:?}");
                    assert_eq!(allowed, "finite and > 0");
                }
                other => panic!("{ramp:?}: {other:?}"),
            }
        }
        assert_eq!(
            LambdaSchedule::new(10, LambdaRamp::Linear).validate(),
            Ok(())
        );
    }
}
