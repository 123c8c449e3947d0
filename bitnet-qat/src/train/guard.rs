//! What stops a QAT run cleanly instead of a panic deep inside a training step: the
//! [`RunGuard`] a [`QatState`](super::QatState) carries (burn-train's [`Interrupter`] and the
//! error that stopped the run), and [`check_checkpoint`], which checks a checkpoint before
//! burn-train resumes from it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::train::Interrupter;

use super::QatTrainModel;
use crate::error::{QatError, Result};
use crate::infer::{FloatTypes, load_checked};

/// The stop handle of a QAT run, shared by every clone of a [`QatState`](super::QatState).
///
/// burn-train's `TrainStep::optimize` and `TrainStep::step` cannot return an error. When one
/// of them meets a model it cannot go on with — weights that turned NaN or infinite, recorded
/// settings a corrupted checkpoint brought — the QAT hooks log the error (`tracing`, level
/// `error`), keep it ([`RunGuard::failure`]) and ask burn-train to stop through this
/// [`Interrupter`]: the current epoch's training ends after the step, no checkpoint of the
/// broken model is written, the checkpoints of earlier epochs stay for a resume. Give the same
/// interrupter to `SupervisedTraining::with_interrupter` (see
/// [`QatState::interrupter`](super::QatState::interrupter)).
#[derive(Clone, Default)]
pub(crate) struct RunGuard {
    interrupter: Interrupter,
    failure: Arc<Mutex<Option<QatError>>>,
    /// Set by [`prepare`](super::prepare).
    prepared: Arc<AtomicBool>,
    /// Set once the first optimizer step of the run was checked.
    first_step_checked: Arc<AtomicBool>,
}

impl std::fmt::Debug for RunGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunGuard")
            .field("stopped", &self.interrupter.should_stop())
            .field("failure", &self.failure())
            .finish()
    }
}

impl RunGuard {
    /// The interrupter burn-train's `SupervisedTraining::with_interrupter` takes.
    pub(crate) fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Records that [`prepare`](super::prepare) readied the model.
    pub(crate) fn set_prepared(&self) {
        self.prepared.store(true, Ordering::Relaxed);
    }

    /// Whether [`prepare`](super::prepare) readied the model.
    pub(crate) fn prepared(&self) -> bool {
        self.prepared.load(Ordering::Relaxed)
    }

    /// `true` the first time it is called (for the checks of a run's first step).
    pub(crate) fn first_step(&self) -> bool {
        !self.first_step_checked.swap(true, Ordering::Relaxed)
    }

    /// The first error that stopped the run.
    pub(crate) fn failure(&self) -> Option<QatError> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the run for `error` at global step `step`: logs it, keeps the first one, asks
    /// burn-train to stop.
    pub(crate) fn fail(&self, step: usize, error: QatError) {
        tracing::error!("QAT training stops at step {step}: {error}");
        let mut slot = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(QatError::Training(format!("step {step}: {error}")));
        }
        self.interrupter
            .stop(Some(&format!("QAT training stops at step {step}: {error}")));
    }
}

/// Where burn-train's default checkpointers (`SupervisedTraining::with_default_checkpointers`)
/// save the model of epoch `epoch` in the run folder `dir`.
pub fn checkpoint_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join("checkpoint").join(format!("model-{epoch}.bpk"))
}

/// Checks the model checkpoint that burn-train's default checkpointers saved after `epoch` in
/// the run folder `dir`, before `SupervisedTraining::checkpoint(epoch)` resumes from it:
/// burn-train loads a checkpoint inside `launch` and panics on one that does not fit, and a
/// checkpoint with corrupted values would fail later, inside a training step. Here it loads
/// into a copy of `model` (the model about to be trained) as [`crate::infer::load_packed`]
/// loads a file — every size bounded by the file, every tensor of its parameter's shape and
/// kind — with every float parameter of the type the model runs in (burn-train loads the file
/// as it is), and is checked as [`crate::check::check_model`] and [`prepare`](super::prepare)
/// check a model: every parameter finite, every quantizer setting, packed weight and the QAT
/// state well formed.
///
/// # Errors
/// [`QatError::Io`] for a checkpoint that cannot be read; [`QatError::File`] (format
/// `burnpack`) for one that is not a burnpack file; [`QatError::Record`] or
/// [`QatError::Shape`] naming the parameter for one that does not fit the model or holds
/// malformed values; [`QatError::NonFinite`] naming the parameter.
///
/// # Example
/// ```
/// use bitnet_qat::train::check_checkpoint;
/// # use bitnet_qat::nn::BitLinear;
/// # use bitnet_qat::train::{QatState, QatTrainModel};
/// # #[derive(burn::module::Module, Debug)]
/// # struct Net { fc: BitLinear, qat: QatState }
/// # impl QatTrainModel for Net {
/// #     fn qat_state(&self) -> &QatState { &self.qat }
/// #     fn qat_state_mut(&mut self) -> &mut QatState { &mut self.qat }
/// # }
/// # let net = Net {
/// #     fc: bitnet_qat::nn::BitLinearConfig::new(4, 2).init(&burn::tensor::Device::flex()).unwrap(),
/// #     qat: bitnet_qat::train::QatPlan::new().init(&burn::tensor::Device::flex()),
/// # };
/// let dir = std::env::temp_dir().join("bitnet-doc-no-run");
/// // No checkpoint of epoch 3 there: an I/O error naming the file, not a panic in `launch`.
/// assert!(matches!(
///     check_checkpoint(&net, &dir, 3),
///     Err(bitnet_qat::QatError::Io { path, .. }) if path.ends_with("model-3.bpk")
/// ));
/// ```
pub fn check_checkpoint<M: QatTrainModel>(model: &M, dir: &Path, epoch: usize) -> Result<()> {
    let path = checkpoint_path(dir, epoch);
    let bytes = std::fs::read(&path).map_err(|e| QatError::io(&path, e))?;
    check_checkpoint_bytes(model, bytes)
        .map(|_| ())
        .map_err(|e| e.in_file(&path))
}

/// [`check_checkpoint`] of the bytes of a checkpoint file: the checked model it loaded.
///
/// # Errors
/// As [`check_checkpoint`].
pub fn check_checkpoint_bytes<M: QatTrainModel>(model: &M, bytes: Vec<u8>) -> Result<M> {
    let loaded = load_checked(model.clone(), bytes, FloatTypes::Refuse)?;
    loaded.qat_state().try_step()?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_kept_once_and_stops_the_interrupter() {
        let guard = RunGuard::default();
        let clone = guard.clone();
        assert!(!guard.interrupter().should_stop());
        clone.fail(
            7,
            QatError::NonFinite {
                what: "parameter `fc.weight`".into(),
                nan: 3,
                inf: 0,
            },
        );
        clone.fail(8, QatError::Training("later".into()));
        assert!(guard.interrupter().should_stop());
        match guard.failure() {
            Some(QatError::Training(m)) => {
                assert!(
                    m.starts_with("step 7: parameter `fc.weight` contains 3 NaN"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
