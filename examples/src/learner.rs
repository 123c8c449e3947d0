//! The example MLP trained with burn-train's `Learner`: a [`Classifier`] (an [`Mlp`] plus its
//! [`QatState`]) implementing `TrainStep`/`InferenceStep`, and [`fit`], which runs
//! `SupervisedTraining` with accuracy, loss, learning rate and every QAT metric, checkpoints and
//! exact resume.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bitnet_qat::data::{EpochLoader, ImageBatch, ImageBatcher};
use bitnet_qat::schedule::{BitNetLrSchedulerConfig, Decay};
use bitnet_qat::ste::Ste;
use bitnet_qat::train::{
    QatPlan, QatState, QuietRenderer, WeightDecaySchedule, prepare, with_qat_metrics,
};
use bitnet_qat::{QatError, Result};
use burn::data::dataloader::DataLoader;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn::train::logger::{FileMetricLogger, MetricLogger};
use burn::train::metric::store::Split;
use burn::train::metric::{AccuracyMetric, LearningRateMetric, LossMetric, NumericEntry};
use burn::train::renderer::MetricsRenderer;
use burn::train::{ClassificationOutput, Learner, SupervisedTraining};

use crate::{Mlp, Precision};

/// An [`Mlp`] classifier with the QAT state that burn-train checkpoints with it.
#[derive(Module, Debug)]
pub struct Classifier {
    /// The network.
    pub mlp: Mlp,
    /// Global step, flip counts and the QAT plan.
    pub qat: QatState,
}

impl Classifier {
    /// Loss, logits and targets of a batch.
    pub fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.mlp.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

/// Implements `QatTrainModel`, `TrainStep` and `InferenceStep` for a model with a
/// `qat: QatState` field and a method `$classify(&self, $input) -> ClassificationOutput`: the
/// train step backpropagates the loss and attaches the QAT statistics, `optimize` and
/// `optimize_multi` are [`optimize`] and [`bitnet_qat::train::optimize_multi`], the inference
/// step is the classification.
macro_rules! qat_classification_steps {
    ($model:ty, $input:ty, $classify:ident) => {
        impl bitnet_qat::train::QatTrainModel for $model {
            fn qat_state(&self) -> &bitnet_qat::train::QatState {
                &self.qat
            }

            fn qat_state_mut(&mut self) -> &mut bitnet_qat::train::QatState {
                &mut self.qat
            }
        }

        impl burn::train::TrainStep for $model {
            type Input = $input;
            type Output = bitnet_qat::train::QatClassificationOutput;

            fn step(
                &self,
                batch: $input,
            ) -> burn::train::TrainOutput<bitnet_qat::train::QatClassificationOutput> {
                let output = self.$classify(batch);
                let grads = self.qat.backward(output.loss.clone());
                self.qat.train_output(self, grads, output)
            }

            fn optimize(
                self,
                optim: &mut burn::optim::ModuleOptimizer,
                lr: burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
                grads: burn::optim::GradientsParams,
            ) -> Self {
                bitnet_qat::train::optimize(self, optim, lr, grads)
            }

            fn optimize_multi(
                self,
                optim: &mut burn::optim::ModuleOptimizer,
                lr: burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate,
                grads: burn::optim::MultiGradientsParams,
            ) -> Self {
                bitnet_qat::train::optimize_multi(self, optim, lr, grads)
            }
        }

        impl burn::train::InferenceStep for $model {
            type Input = $input;
            type Output = burn::train::ClassificationOutput;

            fn step(&self, batch: $input) -> burn::train::ClassificationOutput {
                self.$classify(batch)
            }
        }
    };
}
pub(crate) use qat_classification_steps;

qat_classification_steps!(Classifier, ImageBatch, classify);

/// BitNet's two-stage learning rate for `total_steps` (peak `peak`, two thirds of it after the
/// cut, cosine decay, `warmup` steps) with weight decay `weight_decay` in stage 1.
pub fn bitnet_lr(
    peak: f64,
    total_steps: usize,
    warmup: usize,
    weight_decay: f64,
) -> BitNetLrSchedulerConfig {
    BitNetLrSchedulerConfig::new(peak, peak * 2.0 / 3.0, total_steps)
        .with_warmup_steps(warmup)
        .with_decay(Decay::Cosine)
        .with_weight_decay(weight_decay)
}

/// Settings of [`fit`].
pub struct FitConfig {
    /// Where burn-train writes logs and checkpoints.
    pub dir: PathBuf,
    /// Hidden layer sizes.
    pub hidden: Vec<usize>,
    /// FP32 or the weight format of every layer.
    pub precision: Precision,
    /// The weight STE of the quantized layers.
    pub ste: Ste,
    /// Passes over the training set.
    pub epochs: usize,
    /// Items per step.
    pub batch_size: usize,
    /// Peak learning rate of BitNet's two-stage schedule (Adam).
    pub lr: f64,
    /// Weight decay of stage 1 (0 in stage 2).
    pub weight_decay: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
    /// Quantizer schedules and latent clipping (its weight decay is set from `weight_decay`).
    pub plan: QatPlan,
    /// Start from this network instead of a freshly initialised one. Burn's initialisers draw
    /// from the device's global generator, which concurrent code (other tests) also draws from.
    pub initial: Option<Mlp>,
    /// Stop after this epoch (the schedules still span `epochs`): the first half of a run
    /// that is resumed later.
    pub stop_after: Option<usize>,
    /// Resume after this many epochs from the checkpoints in `dir`.
    pub resume_from: Option<usize>,
    /// Save a checkpoint after every epoch.
    pub checkpoints: bool,
    /// The renderer: `None` uses burn-train's default (the TUI on a terminal with the `tui`
    /// feature, else a line per batch); see [`QuietRenderer`].
    pub renderer: Option<Box<dyn MetricsRenderer>>,
}

impl FitConfig {
    /// Defaults for `dir`: MLP with one hidden layer of 256, ternary, 4 epochs of 128, peak LR
    /// 2e-3, weight decay 0.05, seed 42, quiet renderer, checkpoints on.
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            hidden: vec![256],
            precision: Precision::Ternary,
            ste: Ste::Standard,
            epochs: 4,
            batch_size: 128,
            lr: 2e-3,
            weight_decay: 0.05,
            seed: 42,
            plan: QatPlan::new(),
            initial: None,
            stop_after: None,
            resume_from: None,
            checkpoints: true,
            renderer: Some(Box::new(QuietRenderer::new())),
        }
    }
}

/// The result of [`fit`].
#[derive(Debug)]
pub struct Fitted {
    /// The trained model in inference mode.
    pub model: Classifier,
    /// Validation accuracy in percent after each epoch run by this call (read back from the
    /// metric logs).
    pub valid_accuracy: Vec<f64>,
    /// Wall time of the training in seconds.
    pub seconds: f64,
}

/// Trains a [`Classifier`] `pixels -> hidden... -> classes` on `train` with burn-train's
/// `Learner` (Adam, BitNet's two-stage LR and weight decay, the QAT metrics), validating on
/// `valid` after each epoch.
///
/// # Errors
/// [`QatError::Dataset`] for an empty training or validation set; [`QatError::Config`] for
/// `FitConfig.epochs` or `FitConfig.batch_size` of 0; [`QatError::Training`] when the run
/// fails; [`QatError::Io`] or [`QatError::Training`] when the validation accuracy cannot be
/// read back from the metric logs (see [`epoch_metric`]).
pub fn fit<I, D>(
    train: D,
    valid: D,
    pixels: usize,
    classes: usize,
    config: FitConfig,
    device: &Device,
) -> Result<Fitted>
where
    D: Dataset<I> + 'static,
    I: Send + Sync + Clone + std::fmt::Debug + 'static,
    ImageBatcher: Batcher<I, ImageBatch>,
{
    for (set, items) in [("training", train.len()), ("validation", valid.len())] {
        if items == 0 {
            return Err(QatError::Dataset(format!(
                "fit: the {set} set has no items"
            )));
        }
    }
    positive(&[
        ("FitConfig.epochs", config.epochs),
        ("FitConfig.batch_size", config.batch_size),
    ])?;
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;
    let lr = bitnet_lr(
        config.lr,
        total_steps,
        (total_steps / 20).min(375),
        config.weight_decay,
    );
    let mut sizes = vec![pixels];
    sizes.extend_from_slice(&config.hidden);
    sizes.push(classes);
    let mlp = match config.initial {
        Some(mlp) => mlp.fork(&device).train(),
        None => Mlp::with_ste(&sizes, config.precision, config.ste, &device)?,
    };
    let learner = classifier_learner(mlp, config.plan.clone(), &lr, &device)?;

    let run = Run {
        dir: &config.dir,
        epochs: config.epochs,
        stop_after: config.stop_after,
        resume_from: config.resume_from,
        checkpoints: config.checkpoints,
        renderer: config.renderer,
    };
    let valid_batch = config.batch_size.max(256);
    let (model, valid_accuracy, seconds) = fit_images(
        learner,
        (train, valid),
        (config.batch_size, valid_batch),
        config.seed,
        run,
        &device,
    )?;
    Ok(Fitted {
        model,
        valid_accuracy,
        seconds,
    })
}

/// Trains `learner`'s image classifier on `train` — batches of `batch_sizes.0` in an order
/// drawn from `seed` for each epoch (so a run resumed after epoch e continues it) — validating
/// accuracy and loss on `valid` in batches of `batch_sizes.1` after each epoch, as `run` says.
/// Returns as [`launch`], the validation accuracy of each epoch run.
pub(crate) fn fit_images<M, I, D>(
    learner: Learner<M>,
    (train, valid): (D, D),
    (batch_size, valid_batch): (usize, usize),
    seed: u64,
    run: Run<'_>,
    device: &Device,
) -> Result<(M, Vec<f64>, f64)>
where
    D: Dataset<I> + 'static,
    I: Send + Sync + Clone + std::fmt::Debug + 'static,
    ImageBatcher: Batcher<I, ImageBatch>,
    M: burn::train::LearnerModel + bitnet_qat::train::QatTrainModel,
    M: burn::train::TrainStep<Input = ImageBatch> + burn::train::InferenceStep<Input = ImageBatch>,
    <M as burn::train::TrainStep>::Output: burn::train::metric::Adaptor<bitnet_qat::train::QatStats>
        + burn::train::metric::Adaptor<()>
        + burn::train::metric::Adaptor<burn::train::metric::AccuracyInput>
        + burn::train::metric::Adaptor<burn::train::metric::LossInput>,
    <M as burn::train::InferenceStep>::Output: burn::train::metric::Adaptor<burn::train::metric::AccuracyInput>
        + burn::train::metric::Adaptor<burn::train::metric::LossInput>,
{
    let train_loader: Arc<dyn DataLoader<ImageBatch>> = Arc::new(
        EpochLoader::new(train, ImageBatcher, batch_size, device)?
            .shuffle(seed)
            .starting_epoch(run.resume_from.unwrap_or(0)),
    );
    let valid_loader: Arc<dyn DataLoader<ImageBatch>> = Arc::new(EpochLoader::new(
        valid,
        ImageBatcher,
        valid_batch,
        &device.clone().without_autodiff(),
    )?);
    let training = SupervisedTraining::new(run.dir, train_loader, valid_loader)
        .metrics((AccuracyMetric::new(), LossMetric::new()));
    launch(training, learner, run, "Accuracy")
}

/// [`QatError::Config`] for the first `(setting, value)` whose value is 0.
pub(crate) fn positive(settings: &[(&str, usize)]) -> Result<()> {
    match settings.iter().find(|(_, value)| *value == 0) {
        Some((name, value)) => Err(QatError::Config {
            name: name.to_string(),
            value: value.to_string(),
            allowed: "> 0".into(),
        }),
        None => Ok(()),
    }
}

/// The `Learner` of a [`Classifier`] around `mlp` (built on `device`): the QAT state of `plan`
/// with BitNet's weight decay of `lr`, readied by `prepare`, Adam in the QAT optimizer
/// wrapper, and `lr` as the learning-rate schedule.
pub(crate) fn classifier_learner(
    mlp: Mlp,
    plan: QatPlan,
    lr: &BitNetLrSchedulerConfig,
    device: &Device,
) -> Result<Learner<Classifier>> {
    let plan = plan.with_weight_decay(WeightDecaySchedule::bitnet(lr));
    let model = prepare(Classifier {
        mlp,
        qat: plan.init(device),
    })?;
    let optim = model.qat.optimizer(&model, AdamConfig::new().build());
    Ok(Learner::new(model, optim, lr.init()?))
}

/// How a fit runs: its log folder, the epochs planned and run, checkpoints, resume, renderer.
pub(crate) struct Run<'a> {
    pub(crate) dir: &'a Path,
    /// Epochs planned (the schedules span them).
    pub(crate) epochs: usize,
    /// Stop after this epoch.
    pub(crate) stop_after: Option<usize>,
    /// Resume after this many epochs from the checkpoints in `dir`.
    pub(crate) resume_from: Option<usize>,
    /// Save a checkpoint after every epoch.
    pub(crate) checkpoints: bool,
    /// `None`: burn-train's default renderer.
    pub(crate) renderer: Option<Box<dyn MetricsRenderer>>,
}

/// Runs `training` (its loaders and metrics set) with the learning-rate and QAT metrics, the
/// checkpoints, resume and renderer of `run`. Returns the trained model (in inference mode),
/// the validation value of the metric `metric` for each epoch this call ran, and the wall
/// time in seconds.
///
/// A checkpoint is checked before burn-train resumes from it
/// ([`bitnet_qat::train::check_checkpoint`]), and the model's QAT interrupter stops the run at a
/// step that meets a diverged model: that is a [`QatError::Training`] naming the step and the
/// parameter, the checkpoints of earlier epochs kept.
pub(crate) fn launch<M>(
    training: SupervisedTraining<M>,
    learner: Learner<M>,
    run: Run<'_>,
    metric: &str,
) -> Result<(M, Vec<f64>, f64)>
where
    M: burn::train::LearnerModel + bitnet_qat::train::QatTrainModel,
    <M as burn::train::TrainStep>::Output: burn::train::metric::Adaptor<bitnet_qat::train::QatStats>
        + burn::train::metric::Adaptor<()>,
{
    let last = run.stop_after.unwrap_or(run.epochs).min(run.epochs);
    let mut training = with_qat_metrics(
        training
            .metric_train_numeric(LearningRateMetric::new())
            .num_epochs(last),
    );
    if run.checkpoints || run.resume_from.is_some() {
        training = training.with_default_checkpointers();
    }
    let model = learner.model();
    if let Some(epoch) = run.resume_from {
        bitnet_qat::train::check_checkpoint(&model, run.dir, epoch)?;
        training = training.checkpoint(epoch);
    }
    let state = model.qat_state().clone();
    training = training.with_interrupter(state.interrupter());
    if let Some(renderer) = run.renderer {
        training = training.renderer(renderer);
    }
    let start = Instant::now();
    let result = training.launch(learner);
    let seconds = start.elapsed().as_secs_f64();
    if let Some(error) = result.error {
        return Err(QatError::Training(error.to_string()));
    }
    if let Some(failure) = state.failure() {
        return Err(failure);
    }
    let first = run.resume_from.unwrap_or(0) + 1;
    let values = (first..=last)
        .map(|epoch| epoch_metric(run.dir, metric, epoch, Split::Valid))
        .collect::<Result<Vec<_>>>()?;
    Ok((result.model, values, seconds))
}

/// The epoch value of a numeric metric from burn-train's logs in `dir` (the mean over the
/// epoch's batches, weighted by batch size).
///
/// # Errors
/// [`QatError::Io`] naming `dir` when the log cannot be read; [`QatError::Training`] when it
/// holds no entry for the metric and epoch (the run did not log it).
pub fn epoch_metric(dir: &Path, name: &str, epoch: usize, split: Split) -> Result<f64> {
    let entries = FileMetricLogger::new(dir)
        .read_numeric(name, epoch, &split)
        .map_err(|e| QatError::Io {
            path: dir.display().to_string(),
            message: format!("metric log {name} epoch {epoch}: {e}"),
        })?;
    let (mut sum, mut count) = (0.0, 0usize);
    for entry in entries {
        match entry {
            NumericEntry::Final(v) => return Ok(v),
            NumericEntry::Value(v) => {
                sum += v;
                count += 1;
            }
            NumericEntry::Aggregated {
                aggregated_value,
                count: n,
            } => {
                sum += aggregated_value * n as f64;
                count += n;
            }
        }
    }
    if count == 0 {
        return Err(QatError::Training(format!(
            "the metric log {name} epoch {epoch} in {} has no entries",
            dir.display()
        )));
    }
    Ok(sum / count as f64)
}
