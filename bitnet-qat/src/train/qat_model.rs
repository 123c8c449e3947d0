//! [`Qat`]: any model that burn-train trains — one with Burn's `TrainStep` and `InferenceStep` —
//! trained with QAT, with no glue to write.

use burn::module::{Module, ModuleDisplay};
use burn::optim::lr_scheduler::module_lr_scheduler::{ModuleLearningRate, ModuleLrScheduler};
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams, Optimizer};
use burn::tensor::Device;
use burn::train::{InferenceStep, Learner, LearnerModel, TrainOutput, TrainStep};

use super::{QatOutput, QatPlan, QatState, QatTrainModel, optimize, optimize_multi, prepare};
use crate::error::{QatError, Result};

/// A model and its [`QatState`], trainable by burn-train's `Learner` as it is: its `TrainStep`
/// runs the model's own `TrainStep::step` (your loss, your backward pass) and adds the step's
/// [`QatStats`](super::QatStats) to the output ([`QatOutput`], for the QAT metrics of the
/// dashboard, [`with_qat_metrics`](super::with_qat_metrics)); `optimize` and `optimize_multi`
/// are [`optimize`] and [`optimize_multi`] (schedules, weight decay, statistics, the step
/// count); its `InferenceStep` is the model's. [`Qat::new`] readies it ([`prepare`]) and
/// [`Qat::learner`] builds the `Learner` with the QAT optimizer, so no step can be forgotten.
/// The state is recorded with the model, so burn-train's checkpoints resume the schedules
/// exactly.
///
/// The model's own backward pass is not scaled: with a [`QatPlan::loss_scale`] other than 1
/// (f16 training), implement `TrainStep` with [`QatState::backward`] and
/// [`QatState::train_output`] instead.
///
/// # Example
/// ```
/// use bitnet_qat::nn::{Linear, LinearConfig};
/// use bitnet_qat::train::{Qat, QatPlan};
/// use burn::module::Module;
/// use burn::nn::loss::CrossEntropyLossConfig;
/// use burn::optim::AdamConfig;
/// use burn::tensor::{Device, Int, Tensor};
/// use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
///
/// // A model as burn-train trains it: its own `TrainStep` and `InferenceStep`.
/// #[derive(Module, Debug)]
/// struct Net {
///     fc: Linear, // bitnet_qat::nn::Linear: W1.58A8
/// }
///
/// impl Net {
///     fn classify(&self, (x, y): (Tensor<2>, Tensor<1, Int>)) -> ClassificationOutput {
///         let logits = self.fc.forward(x);
///         let loss = CrossEntropyLossConfig::new()
///             .init(&logits.device())
///             .forward(logits.clone(), y.clone());
///         ClassificationOutput::new(loss, logits, y)
///     }
/// }
///
/// impl TrainStep for Net {
///     type Input = (Tensor<2>, Tensor<1, Int>);
///     type Output = ClassificationOutput;
///     fn step(&self, batch: Self::Input) -> TrainOutput<ClassificationOutput> {
///         let output = self.classify(batch);
///         TrainOutput::new(self, output.loss.backward(), output)
///     }
/// }
///
/// impl InferenceStep for Net {
///     type Input = (Tensor<2>, Tensor<1, Int>);
///     type Output = ClassificationOutput;
///     fn step(&self, batch: Self::Input) -> ClassificationOutput {
///         self.classify(batch)
///     }
/// }
///
/// let device = Device::flex().autodiff();
/// let net = Net { fc: LinearConfig::new(8, 3).init(&device) };
/// // The QAT model and its Learner: schedules, weight decay and metrics wired in.
/// let learner = Qat::new(net, &QatPlan::new(), &device)
///     .unwrap()
///     .learner(AdamConfig::new().build(), 1e-3);
/// # let _ = learner;
/// ```
#[derive(Module, Debug)]
pub struct Qat<M: Module> {
    /// The model.
    pub model: M,
    /// Its QAT state: global step, last statistics, the plan.
    pub qat: QatState,
}

impl<M: Module + ModuleDisplay> Qat<M> {
    /// `model` with the state of a fresh run of `plan` on `device`, readied by [`prepare`].
    ///
    /// # Errors
    /// As [`prepare`]; [`QatError::Config`] of `QatPlan.loss_scale` for a loss scale other
    /// than 1 (see [`Qat`]).
    pub fn new(model: M, plan: &QatPlan, device: &Device) -> Result<Self> {
        if plan.loss_scale != 1.0 {
            return Err(QatError::config(
                "QatPlan.loss_scale",
                plan.loss_scale,
                "1: Qat runs the model's own TrainStep, whose backward pass it cannot scale \
                 (implement TrainStep with QatState::backward and QatState::train_output for \
                 loss scaling)",
            ));
        }
        prepare(Self {
            model,
            qat: plan.init(device),
        })
    }

    /// The optimizer for `Learner::new`: `inner` with the QAT weight decay and latent clipping
    /// on the quantized weights ([`QatState::optimizer`]).
    pub fn optimizer<O: Optimizer>(&self, inner: O) -> ModuleOptimizer {
        self.qat.optimizer(self, inner)
    }

    /// burn-train's `Learner` of this model: [`Qat::optimizer`] around `inner`, and `lr`.
    pub fn learner<O: Optimizer>(self, inner: O, lr: impl Into<ModuleLrScheduler>) -> Learner<Self>
    where
        Self: LearnerModel,
    {
        let optim = self.optimizer(inner);
        Learner::new(self, optim, lr)
    }
}

impl<M: Module + ModuleDisplay> QatTrainModel for Qat<M> {
    fn qat_state(&self) -> &QatState {
        &self.qat
    }

    fn qat_state_mut(&mut self) -> &mut QatState {
        &mut self.qat
    }
}

impl<M: TrainStep + Module + ModuleDisplay> TrainStep for Qat<M> {
    type Input = M::Input;
    type Output = QatOutput<M::Output>;

    fn step(&self, item: M::Input) -> TrainOutput<QatOutput<M::Output>> {
        let TrainOutput { grads, item } = TrainStep::step(&self.model, item);
        self.qat.output_of(&self.model, grads, item)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        optimize(self, optim, lr, grads)
    }

    fn optimize_multi(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: MultiGradientsParams,
    ) -> Self {
        optimize_multi(self, optim, lr, grads)
    }
}

impl<M: InferenceStep + Module + ModuleDisplay> InferenceStep for Qat<M> {
    type Input = M::Input;
    type Output = M::Output;

    fn step(&self, item: M::Input) -> M::Output {
        InferenceStep::step(&self.model, item)
    }
}
