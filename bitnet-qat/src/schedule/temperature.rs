//! Temperature annealing for the soft STE.

use burn::config::Config;

/// How the temperature goes from `start` to `end`.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Anneal {
    /// Straight line.
    Linear,
    /// Geometric: `start (end / start)^t` (both must be `> 0`).
    Exponential,
    /// Half cosine: `end + (start - end) (1 + cos(pi t)) / 2`.
    Cosine,
}

/// The soft STE temperature at each step: `start` at step 0, `end` from step `steps` on.
///
/// # Example
/// ```
/// use bitnet_qat::schedule::{Anneal, TemperatureSchedule};
/// let s = TemperatureSchedule::new(1.0, 0.01, 100, Anneal::Exponential);
/// assert!((s.value(50) - 0.1).abs() < 1e-12);
/// assert_eq!(s.value(500), 0.01);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct TemperatureSchedule {
    /// The temperature at step 0.
    pub start: f64,
    /// The temperature from step `steps` on.
    pub end: f64,
    /// Steps of annealing.
    pub steps: usize,
    /// The curve.
    pub anneal: Anneal,
}

impl TemperatureSchedule {
    /// Checks the temperatures.
    ///
    /// # Errors
    /// [`crate::QatError::Temperature`] for a start or end temperature that is not finite and
    /// positive (the soft STE divides by it).
    pub fn validate(&self) -> crate::Result<()> {
        for t in [self.start, self.end] {
            if !(t.is_finite() && t > 0.0) {
                return Err(crate::QatError::Temperature(t));
            }
        }
        Ok(())
    }

    /// The temperature at global step `step` (for a schedule that
    /// [validates](TemperatureSchedule::validate)).
    pub fn value(&self, step: usize) -> f64 {
        if self.steps == 0 || step >= self.steps {
            return self.end;
        }
        let t = step as f64 / self.steps as f64;
        match self.anneal {
            Anneal::Linear => self.start + (self.end - self.start) * t,
            Anneal::Exponential => self.start * (self.end / self.start).powf(t),
            Anneal::Cosine => {
                self.end + (self.start - self.end) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_chosen_steps() {
        let lin = TemperatureSchedule::new(1.0, 0.1, 10, Anneal::Linear);
        assert!((lin.value(3) - 0.73).abs() < 1e-12);
        let cos = TemperatureSchedule::new(1.0, 0.1, 10, Anneal::Cosine);
        assert!((cos.value(5) - 0.55).abs() < 1e-12);
        assert_eq!(cos.value(0), 1.0);
        assert_eq!(cos.value(10), 0.1);
    }

    #[test]
    fn temperatures_without_meaning_are_rejected() {
        for (start, end) in [(1.0, 0.0), (0.0, 1.0), (f64::INFINITY, 0.1), (1.0, -0.5)] {
            let s = TemperatureSchedule::new(start, end, 10, Anneal::Linear);
            assert!(
                matches!(s.validate(), Err(crate::QatError::Temperature(t)) if t == start || t == end),
                "{start} -> {end}"
            );
        }
    }
}
