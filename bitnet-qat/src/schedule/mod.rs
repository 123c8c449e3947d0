//! Training schedules for QAT, all functions of the global optimizer step so that a resumed run
//! recomputes them exactly:
//!
//! - [`LambdaSchedule`]: the blend `x + lambda (q(x) - x).detach()` ramped from 0 to 1 (linear,
//!   exponential, sigmoid), after an optional full-precision delay;
//! - [`TemperatureSchedule`]: annealing of the [`Soft`](crate::ste::Ste::Soft) STE temperature;
//! - [`BitWidthSchedule`]: progressive formats such as 8 → 4 → 2 → 1.58 bits, switched at given
//!   steps or when a validation metric stops improving ([`PlateauSwitch`]);
//! - [`BitNetLrScheduler`]: BitNet's two-stage learning rate (warm-up, peak, abrupt cooldown,
//!   linear or cosine decay) as a Burn `LrScheduler`, and its weight-decay schedule;
//! - [`weight_stats`] and [`FlipTracker`]: quantization error, code distribution, flip rate and
//!   step statistics for QAT dashboards.

mod apply;
mod bit_width;
mod lambda;
mod lr;
mod stats;
mod temperature;

pub use apply::QatScheduler;
pub use bit_width::{BitPhase, BitWidthSchedule, PlateauSwitch};
pub use lambda::{LambdaRamp, LambdaSchedule};
pub use lr::{BitNetLrScheduler, BitNetLrSchedulerConfig, Decay, WeightDecaySchedule};
pub use stats::{FlipTracker, WeightStats, layer_stats, weight_stats};
pub use temperature::{Anneal, TemperatureSchedule};
