//! BitNet's two-stage learning-rate and weight-decay schedule.

use burn::config::Config;
use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::{LearningRate, RecordState, StateSink, StateSource};
use burn::tensor::Device;

/// The shape of the decay within each stage.
#[derive(Config, Debug, PartialEq, Copy)]
pub enum Decay {
    /// Straight line from the stage's first to its last value.
    Linear,
    /// Half cosine from the stage's first to its last value.
    Cosine,
}

/// BitNet b1.58's two-stage schedule (Training Tips §1; 2B4T report §3).
///
/// - warm-up: linear from 0 to `peak_lr` over `warmup_steps` (BitNet: 375);
/// - stage 1, to `cooldown_fraction * total_steps` (BitNet: halfway): decay from `peak_lr` to
///   `stage1_end_lr`;
/// - stage 2: an abrupt cut to `stage2_lr`, then decay to `final_lr`.
///
/// Weight decay is `weight_decay` in stage 1 and 0 in stage 2 ([`BitNetLrScheduler::weight_decay`]).
///
/// # Example
/// ```
/// use bitnet_qat::schedule::BitNetLrSchedulerConfig;
/// use burn::optim::lr_scheduler::LrScheduler;
///
/// let mut lr = BitNetLrSchedulerConfig::new(1.5e-3, 1e-3, 1000).init().unwrap();
/// let first = lr.step(); // step 0 of the warm-up
/// assert!(first < 1e-5);
/// ```
#[derive(Config, Debug, PartialEq)]
pub struct BitNetLrSchedulerConfig {
    /// The peak learning rate of stage 1 (BitNet 700M: 1.5e-3).
    pub peak_lr: f64,
    /// The learning rate stage 2 starts at (BitNet 700M: 1e-3).
    pub stage2_lr: f64,
    /// Total optimizer steps.
    pub total_steps: usize,
    /// Linear warm-up steps.
    #[config(default = 375)]
    pub warmup_steps: usize,
    /// Where stage 2 starts, as a fraction of `total_steps`.
    #[config(default = 0.5)]
    pub cooldown_fraction: f64,
    /// The learning rate at the end of stage 1 (default: `peak_lr`, a constant stage 1).
    #[config(default = "None")]
    pub stage1_end_lr: Option<f64>,
    /// The learning rate at the end of stage 2.
    #[config(default = 0.0)]
    pub final_lr: f64,
    /// The decay within each stage.
    #[config(default = "Decay::Linear")]
    pub decay: Decay,
    /// Weight decay in stage 1 (BitNet: 0.1; 0 in stage 2).
    #[config(default = 0.1)]
    pub weight_decay: f64,
}

impl BitNetLrSchedulerConfig {
    /// Checks the settings and builds the scheduler.
    ///
    /// # Errors
    /// [`crate::QatError::Config`] naming the setting (`BitNetLrSchedulerConfig.total_steps`,
    /// `.cooldown_fraction`, `.peak_lr`, `.stage2_lr`, `.final_lr`, `.stage1_end_lr`,
    /// `.weight_decay`, `.warmup_steps`): no steps, a cooldown fraction outside `[0, 1]`, a
    /// learning rate or weight decay that is not finite and `>= 0`, or a warm-up that does not
    /// end before stage 2.
    pub fn init(&self) -> crate::Result<BitNetLrScheduler> {
        let bad = |field: &str, value: &dyn std::fmt::Display, allowed: String| {
            Err(crate::QatError::config(
                format!("BitNetLrSchedulerConfig.{field}"),
                value,
                allowed,
            ))
        };
        if self.total_steps == 0 {
            return bad("total_steps", &self.total_steps, "> 0".into());
        }
        if !(0.0..=1.0).contains(&self.cooldown_fraction) {
            return bad(
                "cooldown_fraction",
                &self.cooldown_fraction,
                "in [0, 1]".into(),
            );
        }
        let rates = [
            ("peak_lr", Some(self.peak_lr)),
            ("stage2_lr", Some(self.stage2_lr)),
            ("final_lr", Some(self.final_lr)),
            ("stage1_end_lr", self.stage1_end_lr),
            ("weight_decay", Some(self.weight_decay)),
        ];
        for (field, rate) in rates {
            if let Some(r) = rate
                && !(r.is_finite() && r >= 0.0)
            {
                return bad(field, &r, "finite and >= 0".into());
            }
        }
        if self.warmup_steps > self.boundary() {
            return bad(
                "warmup_steps",
                &self.warmup_steps,
                format!(
                    "<= {}, the start of stage 2 (total_steps × cooldown_fraction)",
                    self.boundary()
                ),
            );
        }
        Ok(BitNetLrScheduler {
            config: self.clone(),
            step: 0,
        })
    }

    /// The first step of stage 2: `round(total_steps * cooldown_fraction)`.
    pub fn stage2_start(&self) -> usize {
        self.boundary()
    }

    fn boundary(&self) -> usize {
        (self.total_steps as f64 * self.cooldown_fraction).round() as usize
    }
}

/// The weight decay as a function of the global step: `value` until `until_step` (BitNet: the
/// start of stage 2), 0 afterwards.
///
/// # Example
/// ```
/// use bitnet_qat::schedule::BitNetLrSchedulerConfig;
/// use bitnet_qat::schedule::WeightDecaySchedule;
///
/// let lr = BitNetLrSchedulerConfig::new(1.5e-3, 1e-3, 1000).with_warmup_steps(100);
/// let wd = WeightDecaySchedule::bitnet(&lr);
/// assert_eq!((wd.at(499), wd.at(500)), (0.1, 0.0));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WeightDecaySchedule {
    /// The decoupled weight decay (AdamW style: `w -= lr * value * w`).
    pub value: f64,
    /// The first step without weight decay (`None`: decay for the whole run).
    pub until_step: Option<usize>,
}

impl WeightDecaySchedule {
    /// A constant weight decay.
    pub fn constant(value: f64) -> Self {
        Self {
            value,
            until_step: None,
        }
    }

    /// BitNet's schedule: the config's `weight_decay` in stage 1, 0 from stage 2 on.
    pub fn bitnet(config: &BitNetLrSchedulerConfig) -> Self {
        Self {
            value: config.weight_decay,
            until_step: Some(config.stage2_start()),
        }
    }

    /// Checks the value.
    ///
    /// # Errors
    /// [`crate::QatError::Config`] of `WeightDecaySchedule.value` for a weight decay that is
    /// not finite and `>= 0`.
    pub fn validate(&self) -> crate::Result<()> {
        if self.value.is_finite() && self.value >= 0.0 {
            Ok(())
        } else {
            Err(crate::QatError::config(
                "WeightDecaySchedule.value",
                self.value,
                "finite and >= 0",
            ))
        }
    }

    /// The weight decay of global step `step`.
    pub fn at(&self, step: usize) -> f64 {
        match self.until_step {
            Some(end) if step >= end => 0.0,
            _ => self.value,
        }
    }
}

/// The scheduler built by [`BitNetLrSchedulerConfig::init`].
#[derive(Debug, Clone)]
pub struct BitNetLrScheduler {
    config: BitNetLrSchedulerConfig,
    step: usize,
}

impl BitNetLrScheduler {
    /// The learning rate at global step `step` (0-based).
    pub fn lr_at(&self, step: usize) -> LearningRate {
        let c = &self.config;
        let boundary = c.boundary();
        if step < c.warmup_steps {
            return c.peak_lr * (step + 1) as f64 / c.warmup_steps as f64;
        }
        let (from, to, start, end) = if step < boundary {
            (
                c.peak_lr,
                c.stage1_end_lr.unwrap_or(c.peak_lr),
                c.warmup_steps,
                boundary,
            )
        } else {
            (c.stage2_lr, c.final_lr, boundary, c.total_steps)
        };
        let t = if end > start {
            ((step - start) as f64 / (end - start) as f64).min(1.0)
        } else {
            1.0
        };
        let shape = match c.decay {
            Decay::Linear => t,
            Decay::Cosine => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
        };
        from + (to - from) * shape
    }

    /// The weight decay at global step `step`: `weight_decay` in stage 1, 0 in stage 2
    /// ([`WeightDecaySchedule::bitnet`]).
    pub fn weight_decay(&self, step: usize) -> f64 {
        WeightDecaySchedule::bitnet(&self.config).at(step)
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.step
    }
}

impl LrScheduler for BitNetLrScheduler {
    fn step(&mut self) -> LearningRate {
        let lr = self.lr_at(self.step);
        self.step += 1;
        lr
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::from_state(&StepState {
            step: self.step as u64,
        })
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        if let Some(state) = record.into_state::<StepState>() {
            self.step = state.step as usize;
        }
    }
}

/// The recorded state: the number of steps taken.
struct StepState {
    step: u64,
}

impl RecordState for StepState {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        out.push_scalar(prefix, "step", self.step.into());
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, _device: &Device) -> Option<Self> {
        let step = u64::try_from(src.take_scalar(prefix, "step")?).ok()?;
        Some(Self { step })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BitNetLrSchedulerConfig {
        BitNetLrSchedulerConfig::new(1.5e-3, 1e-3, 1000)
            .with_warmup_steps(100)
            .with_stage1_end_lr(Some(1.2e-3))
    }

    #[test]
    fn warmup_stages_and_the_boundary() {
        let s = config().init().unwrap();
        assert!((s.lr_at(0) - 1.5e-5).abs() < 1e-15);
        assert!((s.lr_at(99) - 1.5e-3).abs() < 1e-15);
        assert!((s.lr_at(100) - 1.5e-3).abs() < 1e-15);
        assert!((s.lr_at(300) - 1.35e-3).abs() < 1e-12); // halfway through stage 1
        assert!(s.lr_at(499) > 1.2e-3 && s.lr_at(499) < 1.21e-3);
        // The abrupt cooldown at step 500, then linear decay to 0.
        assert!((s.lr_at(500) - 1e-3).abs() < 1e-15);
        assert!((s.lr_at(750) - 5e-4).abs() < 1e-15);
        assert_eq!(s.lr_at(1000), 0.0);
        assert_eq!([s.weight_decay(499), s.weight_decay(500)], [0.1, 0.0]);
        let cos = config().with_decay(Decay::Cosine).init().unwrap();
        assert!((cos.lr_at(750) - 5e-4).abs() < 1e-15);
        assert!(cos.lr_at(600) > s.lr_at(600));
    }

    #[test]
    fn the_scheduler_resumes_from_its_record() {
        let mut a = config().init().unwrap();
        let lrs: Vec<f64> = (0..600).map(|_| a.step()).collect();
        let mut b = config().init().unwrap();
        for _ in 0..300 {
            b.step();
        }
        let mut c = config().init().unwrap();
        c.load_record(b.to_record());
        assert_eq!(c.steps(), 300);
        let resumed: Vec<f64> = (0..300).map(|_| c.step()).collect();
        assert_eq!(resumed, lrs[300..]);
    }

    #[test]
    fn bad_settings_are_errors() {
        for (config, field, got) in [
            (
                BitNetLrSchedulerConfig::new(1e-3, 1e-3, 0),
                "total_steps",
                "0",
            ),
            (
                config().with_cooldown_fraction(1.5),
                "cooldown_fraction",
                "1.5",
            ),
            (config().with_warmup_steps(900), "warmup_steps", "900"),
            (
                BitNetLrSchedulerConfig::new(f64::NAN, 1e-3, 10),
                "peak_lr",
                "NaN",
            ),
            (
                config().with_stage1_end_lr(Some(-1.0)),
                "stage1_end_lr",
                "-1",
            ),
        ] {
            match config.init() {
                Err(crate::QatError::Config { name, value, .. }) => {
                    assert_eq!(name, format!("BitNetLrSchedulerConfig.{field}"));
                    assert_eq!(value, got, "{field}");
                }
                other => panic!("{field}: {:?}", other.map(|_| ())),
            }
        }
        assert!(matches!(
            WeightDecaySchedule::constant(-0.1).validate(),
            Err(crate::QatError::Config { name, value, .. })
                if name == "WeightDecaySchedule.value" && value == "-0.1"
        ));
    }
}
