//! The digits classifier trained over several devices with burn-train's strategies, and the
//! single-device run that it must equal.
//!
//! burn-train's `MultiDevice` gives each device a contiguous slice of the data and batches of
//! the full batch size, and sums the devices' gradients. One step over N devices is therefore
//! exactly a single-device step that accumulates N micro-batches, taking the devices' batches
//! in turn ([`interleave`]). `ddp` with a summing all-reduce is the same, up to the order of
//! the additions.
//!
//! `tests/integration/multi_device.rs` checks this on Flex and lavapipe. The `multi_device`
//! example checks it on GPUs, including `ddp` on CUDA.

use std::path::Path;
use std::sync::Arc;

use bitnet_qat::data::{DigitItem, EpochLoader, ImageBatch, ImageBatcher};
use bitnet_qat::nn::{QuantizerSettings, quantizers};
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::train::{QatPlan, QuietRenderer};
use bitnet_qat::{QatError, Result};
use burn::data::dataloader::DataLoader;
use burn::data::dataset::InMemDataset;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::distributed::{DistributedConfig, ReduceOperation};
use burn::tensor::{Device, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ExecutionStrategy, MultiDeviceOptim, SupervisedTraining, TrainingStrategy};

use crate::Mlp;
use crate::learner::{Classifier, Run, bitnet_lr, classifier_learner, launch};

/// How a run uses its devices.
#[derive(Debug, Clone, Copy)]
pub enum Strategy {
    /// The first device alone, accumulating one micro-batch per device each step. Give it the
    /// [`interleave`]d data.
    Accumulated,
    /// burn-train's `MultiDevice` with this optimizer mode.
    Multi(MultiDeviceOptim),
    /// burn-train's distributed data parallel strategy, gradients all-reduced by summing
    /// (collectives exist on CUDA only).
    Ddp,
}

/// A run of [`train_on_devices`].
pub struct DeviceRun<'a> {
    /// How the devices are used.
    pub strategy: Strategy,
    /// The devices, main device first. The same device may appear several times.
    pub devices: Vec<Device>,
    /// Items per device and step.
    pub batch: usize,
    /// Epochs planned (the schedules span them).
    pub epochs: usize,
    /// Stop after this epoch.
    pub stop_after: Option<usize>,
    /// Resume after this many epochs from the checkpoints in `dir`.
    pub resume_from: Option<usize>,
    /// Steps of the linear lambda warm-up.
    pub lambda_ramp: usize,
    /// Logs and checkpoints.
    pub dir: &'a Path,
    /// The network to start from (built on the first device's autodiff device).
    pub initial: Mlp,
}

/// `items` in the order a single device must take them to meet, step after step, the batches
/// that `slices` devices take from their contiguous slices.
///
/// # Errors
/// [`QatError::Config`] of `DeviceRun.devices` for no slices or of `DeviceRun.batch` for a
/// batch of 0; [`QatError::Dataset`] unless `items` splits into `slices` slices of whole
/// batches.
pub fn interleave(items: &[DigitItem], slices: usize, batch: usize) -> Result<Vec<DigitItem>> {
    let per_slice = steps_per_epoch(items.len(), slices, batch)? * batch;
    Ok((0..per_slice / batch)
        .flat_map(|t| {
            (0..slices).flat_map(move |d| {
                let start = d * per_slice + t * batch;
                &items[start..start + batch]
            })
        })
        .cloned()
        .collect())
}

/// Optimizer steps per epoch of `items` over `slices` devices.
fn steps_per_epoch(items: usize, slices: usize, batch: usize) -> Result<usize> {
    if slices == 0 {
        return Err(no_devices());
    }
    if batch == 0 {
        return Err(QatError::Config {
            name: "DeviceRun.batch".into(),
            value: "0".into(),
            allowed: "> 0".into(),
        });
    }
    if items == 0 || !items.is_multiple_of(slices * batch) {
        return Err(QatError::Dataset(format!(
            "{items} items do not split into {slices} device slices of whole batches of {batch}"
        )));
    }
    Ok(items / (slices * batch))
}

/// The error for a run without devices.
fn no_devices() -> QatError {
    QatError::Config {
        name: "DeviceRun.devices".into(),
        value: "no devices".into(),
        allowed: "at least one device".into(),
    }
}

/// Trains the digits classifier as `run` says (Adam, BitNet's two-stage LR and weight decay, a
/// lambda warm-up, the QAT statistics every step, no shuffling) and returns it.
///
/// # Errors
/// [`QatError::Dataset`] for data that does not split into whole batches per device;
/// [`QatError::Config`] of `DeviceRun.devices` for no devices or of `DeviceRun.batch` for a
/// batch of 0; [`QatError::Training`] (naming the strategy) for a failed training; as
/// [`crate::learner::epoch_metric`] when the metric logs cannot be read.
pub fn train_on_devices(
    run: DeviceRun<'_>,
    items: Vec<DigitItem>,
    valid: Vec<DigitItem>,
) -> Result<Classifier> {
    let main = run.devices.first().ok_or_else(no_devices)?.clone();
    let steps = steps_per_epoch(items.len(), run.devices.len(), run.batch)? * run.epochs;
    let train_device = main.clone().autodiff();
    let lr = bitnet_lr(3e-3, steps, 2, 0.05);
    let plan = QatPlan::new()
        .with_scheduler(
            QatScheduler::default()
                .with_lambda(LambdaSchedule::new(run.lambda_ramp, LambdaRamp::Linear)),
        )
        .with_stats_every(1);
    let learner = classifier_learner(run.initial, plan, &lr, &train_device)?;
    let train: Arc<dyn DataLoader<ImageBatch>> = Arc::new(
        EpochLoader::new(
            InMemDataset::new(items),
            ImageBatcher,
            run.batch,
            &train_device,
        )?
        .starting_epoch(run.resume_from.unwrap_or(0)),
    );
    let valid: Arc<dyn DataLoader<ImageBatch>> = Arc::new(EpochLoader::new(
        InMemDataset::new(valid),
        ImageBatcher,
        256,
        &main,
    )?);
    let training = SupervisedTraining::new(run.dir, train, valid)
        .metrics((AccuracyMetric::new(), LossMetric::new()));
    let execution = match run.strategy {
        Strategy::Accumulated => None,
        Strategy::Multi(optim) => Some(ExecutionStrategy::MultiDevice(run.devices.clone(), optim)),
        Strategy::Ddp => Some(ExecutionStrategy::ddp(
            run.devices.clone(),
            DistributedConfig {
                all_reduce_op: ReduceOperation::Sum,
            },
        )),
    };
    let training = match execution {
        None if run.devices.len() > 1 => training.grads_accumulation(run.devices.len()),
        None => training,
        Some(execution) => training.with_training_strategy(TrainingStrategy::Default(execution)),
    };
    let (model, _, _) = launch(
        training,
        learner,
        Run {
            dir: run.dir,
            epochs: run.epochs,
            stop_after: run.stop_after,
            resume_from: run.resume_from,
            checkpoints: true,
            renderer: Some(Box::new(QuietRenderer::new())),
        },
        "Accuracy",
    )
    .map_err(|e| match e {
        // The strategy that failed, in the message of the failed run.
        QatError::Training(message) => QatError::Training(format!("{:?}: {message}", run.strategy)),
        other => other,
    })?;
    Ok(model)
}

/// Every quantizer's settings (weights and activations), in module order: what must agree
/// between two runs at the same step.
pub fn quantizer_settings(model: &impl Module) -> Vec<QuantizerSettings> {
    quantizers(model)
        .into_iter()
        .map(|found| found.quantizer.settings())
        .collect()
}

/// The values of every float parameter of `model`, one vector per parameter in module order:
/// what two runs are compared on.
pub fn float_parameters(model: &impl Module) -> Vec<Vec<f32>> {
    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let data = param.val().into_data().convert::<f32>();
            self.0.push(data.iter::<f32>().collect());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}
