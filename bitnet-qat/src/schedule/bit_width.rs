//! Progressive bit width: 8 → 4 → 2 → 1.58 bits.

use crate::quant::QuantFormat;

/// One phase of a [`BitWidthSchedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BitPhase {
    /// The global step from which the phase's format is used (by step); ignored for the first
    /// phase and for phases switched by a metric.
    pub start_step: usize,
    /// The weight format of the phase.
    pub format: QuantFormat,
}

/// A sequence of weight formats switched at given steps.
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantFormat;
/// use bitnet_qat::schedule::BitWidthSchedule;
/// let s = BitWidthSchedule::by_steps(&[
///     (0, QuantFormat::Int { bits: 8 }),
///     (1000, QuantFormat::Int { bits: 4 }),
///     (2000, QuantFormat::Ternary),
/// ]).unwrap();
/// assert_eq!(s.format_at(1500), QuantFormat::Int { bits: 4 });
/// assert_eq!(s.format_at(5000), QuantFormat::Ternary);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct BitWidthSchedule {
    phases: Vec<BitPhase>,
}

impl BitWidthSchedule {
    /// Phases that start at the given steps (strictly increasing, the first at 0).
    ///
    /// # Errors
    /// [`crate::QatError::Config`] of `BitWidthSchedule.phases` for no phase, of
    /// `BitPhase.start_step` for a first phase not at step 0 or steps that do not strictly
    /// increase; [`crate::QatError::UnsupportedBits`] for an invalid format.
    pub fn by_steps(phases: &[(usize, QuantFormat)]) -> crate::Result<Self> {
        let Some(&(first, _)) = phases.first() else {
            return Err(crate::QatError::config(
                "BitWidthSchedule.phases",
                "no phase",
                "at least one phase, the first starting at step 0",
            ));
        };
        if first != 0 {
            return Err(crate::QatError::config(
                "BitPhase.start_step",
                first,
                "0 for the first phase",
            ));
        }
        if let Some(w) = phases.windows(2).find(|w| w[1].0 <= w[0].0) {
            return Err(crate::QatError::config(
                "BitPhase.start_step",
                w[1].0,
                format!("> {} (phases start at strictly increasing steps)", w[0].0),
            ));
        }
        for (_, f) in phases {
            f.validate()?;
        }
        Ok(Self {
            phases: phases
                .iter()
                .map(|&(start_step, format)| BitPhase { start_step, format })
                .collect(),
        })
    }

    /// The phases.
    pub fn phases(&self) -> &[BitPhase] {
        &self.phases
    }

    /// The index of the phase in force at `step`.
    pub fn phase_at(&self, step: usize) -> usize {
        self.phases
            .iter()
            .rposition(|p| p.start_step <= step)
            .unwrap_or(0)
    }

    /// The format in force at `step`.
    pub fn format_at(&self, step: usize) -> QuantFormat {
        self.phases[self.phase_at(step)].format
    }
}

/// Metric-driven phase switching: advance to the next phase when a validation metric (lower is
/// better, for example the loss) has not improved by `min_delta` for `patience` evaluations.
/// Its state is three numbers, saved with the checkpoint.
///
/// # Example
/// ```
/// use bitnet_qat::schedule::PlateauSwitch;
/// let mut p = PlateauSwitch::new(2, 0.01, 3);
/// assert!(!p.observe(1.0));
/// assert!(!p.observe(0.999)); // not better by 0.01
/// assert!(p.observe(1.2));    // second stale evaluation: next phase
/// assert_eq!(p.phase(), 1);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PlateauSwitch {
    patience: usize,
    min_delta: f64,
    phases: usize,
    phase: usize,
    best: f64,
    stale: usize,
}

impl PlateauSwitch {
    /// `patience` stale evaluations switch to the next of `phases` phases.
    pub fn new(patience: usize, min_delta: f64, phases: usize) -> Self {
        Self {
            patience: patience.max(1),
            min_delta,
            phases: phases.max(1),
            phase: 0,
            best: f64::INFINITY,
            stale: 0,
        }
    }

    /// Feeds one validation value; returns whether the phase advanced.
    pub fn observe(&mut self, metric: f64) -> bool {
        if metric < self.best - self.min_delta {
            self.best = metric;
            self.stale = 0;
            return false;
        }
        self.stale += 1;
        if self.stale >= self.patience && self.phase + 1 < self.phases {
            self.phase += 1;
            self.stale = 0;
            self.best = f64::INFINITY;
            return true;
        }
        false
    }

    /// The current phase index.
    pub fn phase(&self) -> usize {
        self.phase
    }

    /// The state to save: `(phase, best, stale)`.
    pub fn state(&self) -> (usize, f64, usize) {
        (self.phase, self.best, self.stale)
    }

    /// Restores a saved state.
    pub fn restore(&mut self, (phase, best, stale): (usize, f64, usize)) {
        self.phase = phase.min(self.phases - 1);
        self.best = best;
        self.stale = stale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_by_step_and_bad_schedules() {
        let s = BitWidthSchedule::by_steps(&[
            (0, QuantFormat::Int { bits: 8 }),
            (10, QuantFormat::Int { bits: 2 }),
            (20, QuantFormat::Ternary),
        ])
        .unwrap();
        assert_eq!(
            [
                s.format_at(0),
                s.format_at(9),
                s.format_at(10),
                s.format_at(25)
            ],
            [
                QuantFormat::Int { bits: 8 },
                QuantFormat::Int { bits: 8 },
                QuantFormat::Int { bits: 2 },
                QuantFormat::Ternary
            ]
        );
        assert!(matches!(
            BitWidthSchedule::by_steps(&[]),
            Err(crate::QatError::Config { name, .. }) if name == "BitWidthSchedule.phases"
        ));
        assert!(matches!(
            BitWidthSchedule::by_steps(&[(5, QuantFormat::Ternary)]),
            Err(crate::QatError::Config { name, value, .. })
                if name == "BitPhase.start_step" && value == "5"
        ));
        assert!(matches!(
            BitWidthSchedule::by_steps(&[(0, QuantFormat::Ternary), (0, QuantFormat::Binary)]),
            Err(crate::QatError::Config { name, value, allowed })
                if name == "BitPhase.start_step" && value == "0" && allowed.starts_with("> 0")
        ));
        assert!(matches!(
            BitWidthSchedule::by_steps(&[(0, QuantFormat::Int { bits: 12 })]),
            Err(crate::QatError::UnsupportedBits { bits: 12, .. })
        ));
    }

    #[test]
    fn plateau_switch_stops_at_the_last_phase_and_restores() {
        let mut p = PlateauSwitch::new(1, 0.0, 2);
        assert!(!p.observe(1.0));
        assert!(p.observe(1.0));
        assert!(!p.observe(2.0) && !p.observe(3.0));
        assert_eq!(p.phase(), 1);
        let mut q = PlateauSwitch::new(1, 0.0, 2);
        q.restore(p.state());
        assert_eq!(q, p);
    }
}
