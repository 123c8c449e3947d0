//! [`QatState`]: the QAT part of a model trained with burn-train's `Learner`.

use std::sync::{Arc, Mutex};

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams, Optimizer};
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use burn::train::TrainOutput;

use super::guard::RunGuard;
use super::{DecayControl, QatOptimizer, QatOutput, QatStats, WeightDecaySchedule};
use crate::error::{QatError, Result};
use crate::nn::quantizers;
use crate::recorded::{Recorded, int_values, u64_at};
use crate::schedule::{FlipTracker, QatScheduler, WeightStats, weight_stats};
use crate::ste::Ste;

/// What a QAT run schedules: the quantizer schedules, the weight-decay schedule and latent
/// clipping. [`QatPlan::init`] builds the [`QatState`] a model holds.
///
/// # Example
/// ```
/// use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
/// use bitnet_qat::train::{QatPlan, WeightDecaySchedule};
///
/// let state = QatPlan::new()
///     .with_scheduler(QatScheduler::default().with_lambda(LambdaSchedule::new(100, LambdaRamp::Linear)))
///     .with_weight_decay(WeightDecaySchedule::constant(0.05))
///     .init(&burn::tensor::Device::flex());
/// assert_eq!(state.step(), 0);
/// ```
#[derive(Debug, Clone)]
pub struct QatPlan {
    /// Lambda warm-up, temperature annealing and progressive bit width.
    pub scheduler: QatScheduler,
    /// The decoupled weight decay of [`QatOptimizer`].
    pub weight_decay: WeightDecaySchedule,
    /// Clip latent weights to `[-c, c]` after each update.
    pub latent_clip: Option<f32>,
    /// Measure the weight statistics and the flip rate at every `stats_every`-th update
    /// (default 10; 1 measures every step). Each measurement reads the quantized weights back
    /// twice; between measurements the metrics repeat the last one.
    pub stats_every: usize,
    /// Static loss scaling for f16 training (default 1: none): [`QatState::backward`]
    /// multiplies the loss by it, so that small gradients do not underflow inside the backward
    /// pass, and [`QatState::train_output`] divides the parameters' gradients by it. A power of
    /// two (e.g. 1024) scales exactly; a non-finite gradient norm in the metrics says it is too
    /// large.
    pub loss_scale: f64,
    /// Whether the weight decay and the latent clipping of [`QatState::optimizer`] also apply
    /// to the full-precision weights (rank ≥ 2 parameters without a quantizer: embeddings, the
    /// output head); default `false`: only the quantized weights' latent values are decayed
    /// and clipped.
    pub float_weight_decay: bool,
}

impl Default for QatPlan {
    fn default() -> Self {
        Self {
            scheduler: QatScheduler::default(),
            weight_decay: WeightDecaySchedule::default(),
            latent_clip: None,
            stats_every: 10,
            loss_scale: 1.0,
            float_weight_decay: false,
        }
    }
}

impl QatPlan {
    /// No schedules, no weight decay, no clipping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the quantizer schedules.
    pub fn with_scheduler(mut self, scheduler: QatScheduler) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// Sets the weight-decay schedule.
    pub fn with_weight_decay(mut self, weight_decay: WeightDecaySchedule) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Sets latent-weight clipping.
    pub fn with_latent_clip(mut self, clip: Option<f32>) -> Self {
        self.latent_clip = clip;
        self
    }

    /// Sets the static loss scale (see [`QatPlan::loss_scale`]; [`prepare`] checks it).
    pub fn with_loss_scale(mut self, scale: f64) -> Self {
        self.loss_scale = scale;
        self
    }

    /// Sets [`QatPlan::float_weight_decay`].
    pub fn with_float_weight_decay(mut self, decay: bool) -> Self {
        self.float_weight_decay = decay;
        self
    }

    /// Measures the weight statistics every `every` updates (0 is taken as 1).
    pub fn with_stats_every(mut self, every: usize) -> Self {
        self.stats_every = every.max(1);
        self
    }

    /// The state of a fresh run (global step 0) on `device`.
    pub fn init(&self, device: &Device) -> QatState {
        QatState {
            recorded: Recorded::new(Param::initialized(ParamId::new(), encode(0, None, device))),
            plan: self.clone(),
            decay: DecayControl::default(),
            cache: CodesCache::default(),
            mirror: Mirror::default(),
            guard: RunGuard::default(),
        }
    }
}

/// The recorded state `[global step, last measurement]`: the measurement `(weight statistics,
/// flip rate)` as 16-bit pieces of the f64 bits (whatever the device's integer type), so a
/// checkpoint restores it exactly; all zeros when nothing was measured yet.
fn encode(step: usize, measured: Option<(WeightStats, f64)>, device: &Device) -> Tensor<1, Int> {
    let mut values = vec![step as i64];
    match measured {
        Some((w, flip)) => values.extend(
            [
                w.relative_mse,
                w.fraction_negative,
                w.fraction_zero,
                w.fraction_positive,
                w.step_mean,
                w.step_min,
                w.step_max,
                w.numel as f64,
                flip,
                1.0,
            ]
            .iter()
            .flat_map(|v| {
                let bits = v.to_bits();
                (0..4).map(move |i| ((bits >> (16 * i)) & 0xFFFF) as i64)
            }),
        ),
        None => values.extend([0; 40]),
    }
    Tensor::from_data(TensorData::new(values, [41]), device)
}

/// The inverse of [`encode`]: one read-back from the device, every value checked.
///
/// # Errors
/// [`QatError::Record`] for a malformed state (a corrupted or foreign record), without its
/// path (the caller adds it).
fn decode(t: &Tensor<1, Int>) -> Result<(usize, Option<(WeightStats, f64)>)> {
    let bad = |what: String| QatError::record("", format!("QAT state: {what}"));
    let values = int_values(&t.clone().into_data()).map_err(|e| bad(e.to_string()))?;
    if values.len() != 41 {
        return Err(bad(format!("{} values, expected 41", values.len())));
    }
    let step = usize::try_from(values[0]).map_err(|_| bad(format!("step {}", values[0])))?;
    if values[1..].iter().any(|v| !(0..=0xFFFF).contains(v)) {
        return Err(bad("a measurement piece outside 0..=65535".into()));
    }
    let v: Vec<f64> = (0..10)
        .map(|i| f64::from_bits(u64_at(&values, 1 + 4 * i)))
        .collect();
    let measured = match v[9] {
        1.0 => {
            if v[..9].iter().any(|x| !x.is_finite()) {
                return Err(bad("a measurement that is not finite".into()));
            }
            Some((
                WeightStats {
                    relative_mse: v[0],
                    fraction_negative: v[1],
                    fraction_zero: v[2],
                    fraction_positive: v[3],
                    step_mean: v[4],
                    step_min: v[5],
                    step_max: v[6],
                    numel: v[7] as usize,
                },
                v[8],
            ))
        }
        0.0 if values[1..].iter().all(|x| *x == 0) => None,
        _ => return Err(bad("the measurement flag".into())),
    };
    Ok((step, measured))
}

/// The decoded recorded state: the step and the last measurement.
type Decoded = (usize, Option<(WeightStats, f64)>);

/// A host copy of the recorded state, so that a training step does not wait for the device to
/// read it back. It is valid while the parameter's id is the one it was taken with:
/// [`optimize`] gives the parameter a fresh id whenever it writes it, and the parameter is a
/// [`Recorded`], which takes a fresh id whenever a load writes it (also from formats without
/// ids, such as safetensors), so a loaded (or otherwise replaced) state is read from the device
/// once.
#[derive(Debug, Clone, Default)]
struct Mirror(Arc<Mutex<Option<(ParamId, Decoded)>>>);

impl Mirror {
    fn get(&self, id: ParamId) -> Option<Decoded> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard.as_ref().filter(|(i, _)| *i == id).map(|(_, r)| *r)
    }

    fn set(&self, id: ParamId, recorded: Decoded) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, recorded));
    }
}

/// The codes of the weights of the state they were read at (the id of its recorded
/// parameter, which a load or an update replaces), shared by the clones of a state so that
/// consecutive measurements read them once. A cache only: a state of another id (loaded from a
/// checkpoint, whatever its step) reads its own weights.
#[derive(Debug, Clone, Default)]
struct CodesCache(Arc<Mutex<Option<(ParamId, FlipTracker)>>>);

impl CodesCache {
    fn get(&self, id: ParamId) -> Option<FlipTracker> {
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(i, _)| *i == id)
            .map(|(_, t)| t.clone())
    }

    fn set(&self, id: ParamId, tracker: FlipTracker) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some((id, tracker));
    }
}

/// The QAT state of a model trained with burn-train: the global step (which drives every
/// schedule) and the last weight-statistics measurement (with the flip rate) are recorded with
/// the model, so a checkpoint holds them and a resumed run continues exactly; the [`QatPlan`]
/// is configuration.
///
/// Put one in your model, implement [`QatTrainModel`] (two accessors), then:
/// 1. before training, pass the model through [`prepare`] (it sets the schedules of the
///    current step and checks every quantizer), and before resuming from a checkpoint check it
///    with [`check_checkpoint`](super::check_checkpoint);
/// 2. end `TrainStep::step` with [`QatState::train_output`];
/// 3. implement `TrainStep::optimize` with [`optimize`] (it sets the schedules of the next
///    step);
/// 4. give [`QatState::interrupter`] to `SupervisedTraining::with_interrupter`: a step that
///    meets a diverged model (NaN or infinite weights) stops the run there, with the error in
///    [`QatState::failure`], instead of panicking.
///
/// See the `train_fashion_mnist` example and `docs/training.md`.
#[derive(Module, Debug)]
pub struct QatState {
    /// `[global step, last measured weight statistics and flip rate]` (see `encode` and
    /// [`QatPlan::stats_every`]).
    recorded: Recorded,
    #[module(skip)]
    plan: QatPlan,
    #[module(skip)]
    decay: DecayControl,
    #[module(skip)]
    cache: CodesCache,
    #[module(skip)]
    mirror: Mirror,
    #[module(skip)]
    guard: RunGuard,
}

/// A model with a [`QatState`], trainable with [`optimize`]. Its quantizers are found on their
/// own (any layers, any nesting); only the state needs these accessors.
pub trait QatTrainModel: Module {
    /// The model's QAT state.
    fn qat_state(&self) -> &QatState;
    /// The model's QAT state, to update.
    fn qat_state_mut(&mut self) -> &mut QatState;
}

impl QatState {
    /// `(global step, last measurement)`, read back from the device in one transfer.
    ///
    /// # Errors
    /// [`QatError::Record`] for a malformed recorded state.
    fn try_read(&self) -> Result<Decoded> {
        let id = self.recorded.id;
        if let Some(recorded) = self.mirror.get(id) {
            return Ok(recorded);
        }
        let recorded = decode(&self.recorded.val())?;
        self.mirror.set(id, recorded);
        Ok(recorded)
    }

    /// [`QatState::try_read`] for the hot paths of training, after [`prepare`] checked it: a
    /// state that is malformed anyway (a checkpoint loaded without
    /// [`check_checkpoint`](super::check_checkpoint)) stops the run and reads as step 0.
    fn read(&self) -> Decoded {
        self.try_read().unwrap_or_else(|e| {
            self.guard.fail(0, e.at("QatState.recorded"));
            (0, None)
        })
    }

    /// The global optimizer step (the number of updates so far); 0 for a malformed recorded
    /// state, which stops a run (see [`QatState::failure`]).
    pub fn step(&self) -> usize {
        self.read().0
    }

    /// The global optimizer step, or the error of a malformed recorded state.
    ///
    /// # Errors
    /// [`QatError::Record`] for a malformed recorded state (a corrupted or foreign record).
    pub fn try_step(&self) -> Result<usize> {
        self.try_read()
            .map(|(step, _)| step)
            .map_err(|e| e.at("QatState.recorded"))
    }

    /// The interrupter that stops a run whose step meets a model it cannot go on with (see
    /// [`QatState`], step 4): pass it to burn-train's `SupervisedTraining::with_interrupter`.
    /// Every clone of the state shares it.
    pub fn interrupter(&self) -> burn::train::Interrupter {
        self.guard.interrupter()
    }

    /// The error that stopped the run, if a step stopped it: [`QatError::Training`] naming the
    /// step and the cause (a parameter that holds NaN, a malformed setting).
    pub fn failure(&self) -> Option<QatError> {
        self.guard.failure()
    }

    /// The plan this state runs.
    pub fn plan(&self) -> &QatPlan {
        &self.plan
    }

    /// The optimizer of `model` — the whole model `Learner::new` trains, this state included
    /// (the quantized weights are matched by their paths in it) — for `Learner::new`: `inner`
    /// for every parameter, wrapped in a
    /// [`QatOptimizer`] (this state's weight-decay schedule and latent clipping) for the latent
    /// weights of `model`'s quantizers — or for every parameter with
    /// [`QatPlan::float_weight_decay`].
    ///
    /// A run whose optimizer was not built here (with a weight decay or a latent clip planned)
    /// stops at its first step with [`QatError::Training`] (see [`QatState::failure`]).
    pub fn optimizer<O: Optimizer>(&self, model: &impl Module, inner: O) -> ModuleOptimizer {
        let qat = QatOptimizer::new(inner.clone(), self.decay.clone())
            .with_latent_clip(self.plan.latent_clip);
        if self.plan.float_weight_decay {
            return qat.into();
        }
        // By path: a checkpoint that burn-train resumes from restores its own parameter ids.
        let weights: Vec<String> = quantizers(model)
            .iter()
            .filter_map(|found| found.weight_path().map(str::to_string))
            .collect();
        ModuleOptimizer::from(inner).with_group(ParamGroup::from_paths(weights), qat, None)
    }

    /// The [`QatStats`] of this step: weight statistics, the flip rate of the previous update,
    /// the gradient norm and the schedule values.
    pub fn stats(
        &self,
        model: &impl Module,
        grads: &GradientsParams,
        grad_source: &impl Module,
    ) -> QatStats {
        let mut stats = self.stats_without_grad_norm(model);
        stats.grad_norm = match grad_sq_sum(grad_source, grads).map(super::output::norm_of) {
            None => 0.0,
            Some(Ok(norm)) => norm,
            Some(Err(e)) => {
                self.guard
                    .fail(stats.step, QatError::device("the gradient norm", e));
                f64::NAN
            }
        };
        stats
    }

    /// [`QatState::stats`] with `grad_norm` left at 0. A model that cannot be measured (NaN
    /// weights) stops the run, with zero statistics for this step.
    fn stats_without_grad_norm(&self, model: &impl Module) -> QatStats {
        let (step, measured) = self.read();
        // Before the first measurement (step 0 of a run), measure the initial weights.
        let (weights, flip_rate) = measured.unwrap_or_else(|| {
            let weights = weight_stats(model).unwrap_or_else(|e| {
                self.guard.fail(step, e);
                WeightStats::default()
            });
            (weights, 0.0)
        });
        let (lambda, bits, temperature) = settings(model).unwrap_or_else(|e| {
            self.guard.fail(step, e);
            (1.0, 32.0, None)
        });
        QatStats {
            step,
            weights,
            flip_rate,
            grad_norm: 0.0,
            lambda,
            bits,
            temperature,
        }
    }

    /// The gradients of `loss`, computed from `loss ×` [`QatPlan::loss_scale`]: the first half
    /// of `TrainStep::step` (then [`QatState::train_output`], which scales them back).
    pub fn backward(&self, loss: Tensor<1>) -> Gradients {
        let scale = self.plan.loss_scale;
        if scale == 1.0 {
            loss.backward()
        } else {
            loss.mul_scalar(scale).backward()
        }
    }

    /// Ends `TrainStep::step`: the gradients (from [`QatState::backward`], divided by the loss
    /// scale) as Burn's `TrainOutput` wants them, and the step's `output` (a
    /// `ClassificationOutput`, `RegressionOutput`, `SequenceOutput`, ...) with this step's
    /// [`QatStats`].
    pub fn train_output<M: Module, O>(
        &self,
        model: &M,
        grads: Gradients,
        output: O,
    ) -> TrainOutput<QatOutput<O>> {
        let grads = unscale(
            GradientsParams::from_grads(grads, model),
            model,
            self.plan.loss_scale,
        );
        self.output_of(model, grads, output)
    }

    /// `output` and the gradients of a step with this step's [`QatStats`] (the gradient norm
    /// left on the device for the metric thread).
    pub(crate) fn output_of<M: Module, O>(
        &self,
        model: &M,
        grads: GradientsParams,
        output: O,
    ) -> TrainOutput<QatOutput<O>> {
        let qat = self.stats_without_grad_norm(model);
        // Read back by the metric thread, not here (see QatOutput).
        let grad_sq = grad_sq_sum(model, &grads);
        TrainOutput {
            grads,
            item: QatOutput::with_pending_grad_norm(output, qat, grad_sq),
        }
    }
}

/// Readies a model for training: sets its quantizers to the schedule values of its state's
/// step (0 for a fresh run, the checkpoint's for a resumed one) and checks the recorded
/// settings of every quantizer, so that training cannot meet a malformed one.
///
/// # Errors
/// [`QatError::Config`] for a loss scale that is not finite and positive or a bad weight-decay
/// schedule; [`QatError::Record`] naming the parameter for malformed recorded settings, packed
/// weights or QAT state; [`QatError::NonFinite`] naming a parameter that holds NaN or infinite
/// values (see [`crate::check::check_model`]).
///
/// # Example
/// ```
/// use bitnet_qat::nn::BitLinear;
/// use bitnet_qat::train::{QatState, QatTrainModel};
///
/// #[derive(burn::module::Module, Debug)]
/// struct Net { fc: BitLinear, qat: QatState }
///
/// impl QatTrainModel for Net {
///     fn qat_state(&self) -> &QatState { &self.qat }
///     fn qat_state_mut(&mut self) -> &mut QatState { &mut self.qat }
/// }
/// ```
pub fn prepare<M: QatTrainModel>(model: M) -> Result<M> {
    let state = model.qat_state();
    state.plan.weight_decay.validate()?;
    let scale = state.plan.loss_scale;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(QatError::config(
            "QatPlan.loss_scale",
            scale,
            "finite and > 0",
        ));
    }
    let step = state.try_step()?;
    crate::check::check_model(&model)?;
    state.guard.set_prepared();
    // `apply` decodes the recorded settings of every quantizer, so a malformed one is an error
    // here, before training.
    state.plan.scheduler.clone().apply(model, step)
}

/// The `TrainStep::optimize` of a QAT model: applies the weight decay of the current step,
/// runs the optimizer, advances the global step, sets the schedules of the next step and,
/// every [`QatPlan::stats_every`] steps, records the weight statistics and the flip rate.
///
/// # Example
/// The body of `TrainStep::optimize` for a QAT model (`examples/train_fashion_mnist.rs` has the
/// whole model):
/// ```
/// use bitnet_qat::train::{QatTrainModel, optimize};
/// use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
/// use burn::optim::{GradientsParams, ModuleOptimizer};
///
/// fn optimize_step<M: QatTrainModel>(
///     model: M,
///     optim: &mut ModuleOptimizer,
///     lr: ModuleLearningRate,
///     grads: GradientsParams,
/// ) -> M {
///     optimize(model, optim, lr, grads)
/// }
/// ```
pub fn optimize<M: QatTrainModel>(
    model: M,
    optim: &mut ModuleOptimizer,
    lr: impl Into<ModuleLearningRate>,
    grads: GradientsParams,
) -> M {
    advance(model, |model| optim.step(lr, model, grads))
}

/// The `TrainStep::optimize_multi` of a QAT model: [`optimize`] for the gradients of several
/// devices, which burn-train's `ExecutionStrategy::MultiDevice` with
/// `MultiDeviceOptim::OptimSharded` hands over (each parameter's gradients summed on one of the
/// devices). Without it that strategy calls Burn's default `optimize_multi`, and the QAT step,
/// the schedules and the weight decay never advance.
///
/// # Example
/// ```
/// use bitnet_qat::train::{QatTrainModel, optimize_multi};
/// use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
/// use burn::optim::{ModuleOptimizer, MultiGradientsParams};
///
/// fn optimize_multi_step<M: QatTrainModel>(
///     model: M,
///     optim: &mut ModuleOptimizer,
///     lr: ModuleLearningRate,
///     grads: MultiGradientsParams,
/// ) -> M {
///     optimize_multi(model, optim, lr, grads)
/// }
/// ```
pub fn optimize_multi<M: QatTrainModel>(
    model: M,
    optim: &mut ModuleOptimizer,
    lr: impl Into<ModuleLearningRate>,
    grads: MultiGradientsParams,
) -> M {
    advance(model, |model| optim.step_multi(lr, model, grads))
}

/// The traps of a hand-written training step, checked at the first update of a run: a model
/// that [`prepare`] did not ready, an optimizer that is not [`QatState::optimizer`]'s (with a
/// weight decay or a latent clip planned, which it would silently skip). Either stops the run.
fn check_first_step<M: QatTrainModel>(model: &M, qat_optimizer_ran: bool, step: usize) {
    let state = model.qat_state();
    if !state.guard.prepared() {
        state.guard.fail(
            step,
            QatError::Training(
                "the model was not readied with `bitnet_qat::train::prepare` (or `Qat::new`): \
                 its quantizers would run without the schedules' values of this step"
                    .into(),
            ),
        );
    }
    let plan = &state.plan;
    let planned = plan.latent_clip.is_some() || plan.weight_decay.value > 0.0;
    if planned && !qat_optimizer_ran && quantizers(model).iter().any(|f| f.weight.is_some()) {
        state.guard.fail(
            step,
            QatError::Training(
                "the optimizer is not the QAT one: build it with `QatState::optimizer` (or \
                 `Qat::learner`), or the planned weight decay and latent clipping never apply"
                    .into(),
            ),
        );
    }
}

/// One QAT step around `update` (the optimizer step): the weight decay of the current step
/// before it; the next step's schedules, the statistics and the step count after it.
///
/// What `optimize` cannot return — a diverged model (NaN or infinite weights, found when the
/// statistics are measured), malformed recorded settings — stops the run through the state's
/// [`RunGuard`]: the update is kept, the measurement or schedule of this step is skipped.
fn advance<M: QatTrainModel>(model: M, update: impl FnOnce(M) -> M) -> M {
    let state = model.qat_state();
    let guard = state.guard.clone();
    let (step, previous) = state.read();
    state.decay.set(state.plan.weight_decay.at(step));
    let measure = step.is_multiple_of(state.plan.stats_every.max(1));
    let tracker = if measure {
        match state.cache.get(state.recorded.id) {
            Some(tracker) => Some(tracker),
            None => {
                let mut tracker = FlipTracker::default();
                match tracker.update(&model) {
                    Ok(_) => Some(tracker),
                    Err(e) => {
                        guard.fail(step, e);
                        None
                    }
                }
            }
        }
    } else {
        None
    };
    let scheduler = state.plan.scheduler.clone();
    let decay = state.decay.clone();
    decay.take_stepped();
    let model = update(model);
    if guard.first_step() {
        check_first_step(&model, decay.take_stepped(), step);
    }
    // `apply` drops the model on an error: keep a copy (tensor handles, not their data).
    let model = match scheduler.apply(model.clone(), step + 1) {
        Ok(scheduled) => scheduled,
        Err(e) => {
            guard.fail(step, e);
            model
        }
    };
    let state = model.qat_state();
    let device = state.recorded.val().device();
    let mut next_codes = None;
    let measured = match tracker {
        Some(mut tracker) => match tracker.update(&model) {
            Ok((rate, stats)) => {
                next_codes = Some(tracker);
                Some((stats, rate))
            }
            Err(e) => {
                guard.fail(step + 1, e);
                previous
            }
        },
        None => previous,
    };
    let mut model = model;
    let state = model.qat_state_mut();
    // A fresh id marks the new value for the host mirror and the codes cache (see `Mirror`).
    let id = ParamId::new();
    state.recorded = Recorded::new(Param::initialized(id, encode(step + 1, measured, &device)));
    state.mirror.set(id, (step + 1, measured));
    if let Some(tracker) = next_codes {
        state.cache.set(id, tracker);
    }
    model
}

/// Mean lambda, numel-weighted bits of the weight formats, and mean soft-STE temperature.
///
/// # Errors
/// [`QatError::Record`] naming a quantizer whose recorded settings are malformed.
fn settings(model: &impl Module) -> Result<(f64, f64, Option<f64>)> {
    let (mut lambda, mut count) = (0.0, 0usize);
    let (mut temperature, mut soft) = (0.0, 0usize);
    let (mut bits, mut numel) = (0.0, 0usize);
    for found in quantizers(model) {
        let settings = found
            .quantizer
            .try_settings()
            .map_err(|e| e.at(&format!("{}.settings", found.path)))?;
        lambda += settings.lambda;
        count += 1;
        let (quant, ste) = settings.effective();
        if let Ste::Soft { temperature: t } = ste {
            temperature += t;
            soft += 1;
        }
        if let Some(w) = &found.weight {
            let n = w.shape().num_elements();
            bits += quant.format.bits_per_value() * n as f64;
            numel += n;
        }
    }
    Ok((
        if count > 0 {
            lambda / count as f64
        } else {
            1.0
        },
        if numel > 0 { bits / numel as f64 } else { 32.0 },
        (soft > 0).then(|| temperature / soft as f64),
    ))
}

/// The sum of the squared gradients of `module`'s parameters (on the device), `None` without
/// any.
/// `grads` divided by `scale` (unchanged for 1).
fn unscale(grads: GradientsParams, module: &impl Module, scale: f64) -> GradientsParams {
    struct Unscale {
        grads: GradientsParams,
        inverse: f64,
    }
    impl ModuleVisitor for Unscale {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.remove::<D>(param.id) {
                self.grads.register(param.id, g.mul_scalar(self.inverse));
            }
        }
    }
    if scale == 1.0 {
        return grads;
    }
    let mut visitor = Unscale {
        grads,
        inverse: 1.0 / scale,
    };
    module.visit(&mut visitor);
    visitor.grads
}

fn grad_sq_sum(module: &impl Module, grads: &GradientsParams) -> Option<Tensor<1>> {
    struct SumSquares<'a> {
        grads: &'a GradientsParams,
        parts: Vec<Tensor<1>>,
    }
    impl ModuleVisitor for SumSquares<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.grads.get::<D>(param.id) {
                self.parts.push(g.square().sum());
            }
        }
    }
    let mut visitor = SumSquares {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut visitor);
    (!visitor.parts.is_empty()).then(|| Tensor::cat(visitor.parts, 0).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{BitLinear, BitLinearConfig};
    use crate::schedule::{LambdaRamp, LambdaSchedule};
    use burn::optim::SgdConfig;

    #[derive(Module, Debug)]
    struct Net {
        fc: BitLinear,
        qat: QatState,
    }

    impl QatTrainModel for Net {
        fn qat_state(&self) -> &QatState {
            &self.qat
        }
        fn qat_state_mut(&mut self) -> &mut QatState {
            &mut self.qat
        }
    }

    /// A 2×2 ternary layer without norm and activation quantizer, weights
    /// `[[0.5, -0.1], [-1.0, 0.2]]` (mean|W| = 0.45: codes [1, 0, -1, 0]).
    fn small_net(plan: &QatPlan, device: &Device) -> Net {
        let w = Tensor::<2>::from_data([[0.5, -0.1], [-1.0, 0.2]], device);
        Net {
            fc: BitLinearConfig::new(2, 2)
                .with_norm(false)
                .with_activation_quant(None)
                .init_with(w, None, device)
                .unwrap(),
            qat: plan.init(device),
        }
    }

    #[test]
    fn hand_computed_step_stats_and_update() {
        let device = Device::flex().autodiff();
        let plan = QatPlan::new()
            .with_scheduler(
                QatScheduler::default().with_lambda(LambdaSchedule::new(4, LambdaRamp::Linear)),
            )
            .with_stats_every(1);
        let net = prepare(small_net(&plan, &device)).unwrap();
        let lambda = |net: &Net| net.fc.weight_quantizer().unwrap().settings().lambda;
        assert_eq!(lambda(&net), 0.0);
        let x = Tensor::<2>::from_data([[1.0, 2.0]], &device);
        let loss = net.fc.forward(x).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &net);
        let stats = net.qat.stats(&net, &grads, &net);
        // d(sum(x W))/dW = x^T 1 = [[1, 1], [2, 2]]: norm sqrt(10).
        assert!((stats.grad_norm - 10f64.sqrt()).abs() < 1e-6, "{stats:?}");
        assert_eq!(stats.step, 0);
        assert_eq!(stats.flip_rate, 0.0);
        assert_eq!(stats.lambda, 0.0);
        assert!((stats.bits - 3f64.log2()).abs() < 1e-12);
        assert_eq!(stats.temperature, None);
        assert_eq!(
            (stats.weights.fraction_negative, stats.weights.fraction_zero),
            (0.25, 0.5)
        );

        // SGD with lr 0.3: W - 0.3 g = [[0.2, -0.4], [-1.6, -0.4]]; mean|W| = 0.65,
        // codes [0, -1, -1, -1]: three of four codes flipped.
        let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
        let net = optimize(net, &mut optim, 0.3, grads);
        assert_eq!(net.qat.step(), 1);
        assert_eq!(lambda(&net), 0.25);
        let next = net.qat.stats(&net, &GradientsParams::new(), &net);
        assert_eq!(next.flip_rate, 0.75);
        assert_eq!(next.step, 1);
        assert_eq!(next.weights.fraction_negative, 0.75);
        // The step, the measurement and the schedule values are recorded with the model.
        let record = net.clone().into_record();
        let fresh = small_net(&plan, &device).load_record(record);
        assert_eq!(fresh.qat.read(), (1, Some((next.weights, 0.75))));
        assert_eq!(lambda(&fresh), 0.25);
        assert_eq!(
            fresh.qat.stats(&fresh, &GradientsParams::new(), &fresh),
            next
        );
    }

    #[test]
    fn a_malformed_recorded_state_is_a_typed_error_before_training() {
        let device = Device::flex().autodiff();
        let mut net = small_net(&QatPlan::new(), &device);
        // The step and a measurement flag that is neither 0 nor 1.
        let mut values = vec![3i64];
        values.extend([7; 40]);
        net.qat.recorded = Recorded::new(Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(values, [41]), &device),
        ));
        match prepare(net) {
            Err(QatError::Record { path, reason }) => {
                assert_eq!(path, "QatState.recorded");
                assert!(reason.contains("measurement flag"), "{reason}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
        let mut net = small_net(&QatPlan::new(), &device);
        net.qat.recorded = Recorded::new(Param::initialized(
            ParamId::new(),
            Tensor::from_data(TensorData::new(vec![1i64, 2], [2]), &device),
        ));
        assert!(matches!(
            prepare(net),
            Err(QatError::Record { reason, .. }) if reason.contains("2 values")
        ));
    }

    #[test]
    fn a_diverged_model_stops_the_run_instead_of_panicking() {
        let device = Device::flex().autodiff();
        let plan = QatPlan::new().with_stats_every(1);
        let net = prepare(small_net(&plan, &device)).unwrap();
        let interrupter = net.qat.interrupter();
        let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
        // A gradient of NaN: the update makes every weight NaN; the measurement after it finds
        // them.
        let x = Tensor::<2>::from_data([[f32::NAN, 1.0]], &device);
        let grads = GradientsParams::from_grads(net.fc.forward(x).sum().backward(), &net);
        let net = optimize(net, &mut optim, 0.1, grads);
        assert!(interrupter.should_stop());
        match net.qat.failure() {
            Some(QatError::Training(m)) => {
                assert!(m.starts_with("step 1: "), "{m}");
                assert!(m.contains("`fc.weight.qat` contains 6 NaN"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        // The step still advanced (the update was kept), the last measurement too.
        assert_eq!(net.qat.step(), 1);
        // The statistics of the next step read the recorded state; the interrupter stays set.
        let stats = net.qat.stats(&net, &GradientsParams::new(), &net);
        assert_eq!(stats.step, 1);
        assert!(interrupter.should_stop());
    }

    #[test]
    fn the_host_mirror_follows_loaded_records() {
        let device = Device::flex().autodiff();
        let plan = QatPlan::new().with_stats_every(1);
        let net = prepare(Net {
            fc: BitLinearConfig::new(4, 3).init(&device).unwrap(),
            qat: plan.init(&device),
        })
        .unwrap();
        let at_zero = net.clone().into_record();
        let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
        let mut net = net;
        for _ in 0..3 {
            let loss = net.fc.forward(Tensor::<2>::ones([2, 4], &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimize(net, &mut optim, 0.1, grads);
        }
        // The mirror answers without a read-back, and agrees with the device.
        assert_eq!(net.qat.step(), 3);
        assert_eq!(decode(&net.qat.recorded.val()).unwrap(), net.qat.read());
        let at_three = net.clone().into_record();
        // Loading an earlier record into the same model (sharing the mirror) reads the device.
        let net = net.load_record(at_zero);
        assert_eq!(net.qat.step(), 0);
        let net = net.load_record(at_three);
        assert_eq!(net.qat.step(), 3);
    }

    #[test]
    fn a_state_loaded_from_safetensors_under_the_skeletons_id_is_the_saved_one() {
        use burn::store::{ModuleSnapshot, SafetensorsStore};
        let device = Device::flex().autodiff();
        let plan = QatPlan::new();
        let mut net = prepare(small_net(&plan, &device)).unwrap();
        let mut optim = net.qat.optimizer(&net, SgdConfig::new().build());
        for _ in 0..2 {
            let loss = net.fc.forward(Tensor::<2>::ones([1, 2], &device)).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimize(net, &mut optim, 0.1, grads);
        }
        let path = std::env::temp_dir().join(format!(
            "bitnet-qat-state-{}.safetensors",
            std::process::id()
        ));
        net.save_into(&mut SafetensorsStore::from_file(&path))
            .unwrap();
        // The skeleton's state is read (and mirrored) before the load; safetensors keeps the
        // skeleton's parameter ids for the loaded values.
        let skeleton = small_net(&plan, &device);
        assert_eq!(skeleton.qat.step(), 0);
        let mut loaded = skeleton.clone();
        let result = loaded.load_from(&mut SafetensorsStore::from_file(&path));
        std::fs::remove_file(&path).ok();
        result.unwrap();
        assert_eq!(loaded.qat.step(), 2);
        assert_eq!(skeleton.qat.step(), 0);
    }

    #[test]
    fn the_learner_output_reads_the_gradient_norm_later() {
        use burn::train::ClassificationOutput;
        use burn::train::metric::{Adaptor, ItemLazy};
        let device = Device::flex().autodiff();
        let net = small_net(&QatPlan::new(), &device);
        let logits = net
            .fc
            .forward(Tensor::<2>::from_data([[1.0, 2.0]], &device));
        let loss = logits.clone().sum();
        let output = ClassificationOutput::new(
            loss.clone().reshape([1]),
            logits,
            Tensor::from_data([0], &device),
        );
        let out = net.qat.train_output(&net, loss.backward(), output);
        // As in the hand-computed step: sqrt(10), read when adapted or synced.
        let adapted = Adaptor::<QatStats>::adapt(&out.item);
        assert!(
            (adapted.grad_norm - 10f64.sqrt()).abs() < 1e-6,
            "{adapted:?}"
        );
        let synced = out.item.sync().unwrap();
        assert!((synced.qat.grad_norm - 10f64.sqrt()).abs() < 1e-6);
        assert_eq!(Adaptor::<QatStats>::adapt(&synced), synced.qat);
    }
}
