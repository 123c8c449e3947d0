//! burn-train integration: [`Qat`], which trains any burn-train model with QAT and no glue; the
//! [`QatState`] that a model carries through `Learner` training
//! (global step, flip counts, schedules), the [`optimize`] and [`optimize_multi`] hooks, the
//! [`QatOptimizer`] wrapper (scheduled weight decay, latent clipping) and [`per_layer_lr`], the
//! [`QatMetric`]s of the dashboard, and a [`QuietRenderer`] for logs and CI.
//!
//! Enabled by the `train` feature (on by default). The guide is `docs/training.md`.

mod guard;
mod metric;
mod optimizer;
mod output;
mod qat_model;
mod renderer;
mod state;

pub use crate::schedule::WeightDecaySchedule;
pub use guard::{check_checkpoint, check_checkpoint_bytes, checkpoint_path};
pub use metric::{QatMetric, QatStat, with_qat_metrics};
pub use optimizer::{DecayControl, QatOptimizer, ScaledLrScheduler, per_layer_lr};
pub use output::{QatClassificationOutput, QatOutput, QatStats};
pub use qat_model::Qat;
pub use renderer::QuietRenderer;
pub use state::{QatPlan, QatState, QatTrainModel, optimize, optimize_multi, prepare};
