//! QAT under burn-train's `ExecutionStrategy::MultiDevice` (both optimizer modes), over the same
//! device twice (Burn allows it; Flex and lavapipe have one device each). burn-train gives
//! each device its own contiguous half of the data and batches of the full batch size, runs
//! every replica's step on a fork of the main model, and sums the replicas' gradients: a step
//! over two devices is exactly a single-device step with two accumulated micro-batches in the
//! interleaved order. So the final weights must be equal bit for bit (two summands add the same
//! in either order), the QAT step must count optimizer steps once, and every schedule value and
//! QAT metric must match.

use std::path::Path;
use std::sync::Arc;

use bitnet_qat::data::{DigitItem, DigitsDataset, EpochLoader, ImageBatch, ImageBatcher};
use bitnet_qat::nn::QuantizerSettings;
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::train::{QatPlan, QatStat, QuietRenderer, WeightDecaySchedule, prepare};
use bitnet_qat_examples::learner::{Classifier, bitnet_lr, epoch_metric};
use bitnet_qat_examples::{Dense, Mlp};
use burn::data::dataloader::DataLoader;
use burn::data::dataset::InMemDataset;
use burn::optim::AdamConfig;
use burn::tensor::Device;
use burn::train::metric::store::Split;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ExecutionStrategy, Learner, MultiDeviceOptim, SupervisedTraining, TrainingStrategy,
};

use super::gpu::gpu_device;
use super::learner::initial_on;
use super::{fresh_dir, weights};

const BATCH: usize = 32;
/// Items of each device's half: 8 steps an epoch.
const HALF: usize = 256;
const EPOCHS: usize = 2;
const STEPS: usize = EPOCHS * HALF / BATCH;
/// The lambda warm-up ends inside the run, so its position matters.
const RAMP: usize = 10;

/// How a run uses the devices.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// One device, two accumulated micro-batches a step (the interleaved data).
    Accumulated,
    /// Two devices, burn-train's `MultiDevice` with this optimizer mode.
    Multi(MultiDeviceOptim),
}

/// Trains the digits classifier for `epochs` of the planned [`EPOCHS`] (resuming after
/// `resume` epochs from the checkpoints in `dir`) and returns the trained model.
fn run(
    mode: Mode,
    items: Vec<DigitItem>,
    valid: Vec<DigitItem>,
    device: &Device,
    dir: &Path,
    epochs: usize,
    resume: Option<usize>,
) -> Classifier {
    let train_device = device.clone().autodiff();
    let lr = bitnet_lr(3e-3, STEPS, 2, 0.05);
    let mut plan = QatPlan::new()
        .with_scheduler(
            QatScheduler::default().with_lambda(LambdaSchedule::new(RAMP, LambdaRamp::Linear)),
        )
        .with_weight_decay(WeightDecaySchedule::bitnet(&lr));
    plan.stats_every = 1;
    let model = prepare(Classifier {
        mlp: initial_on(&train_device),
        qat: plan.init(&train_device),
    })
    .unwrap();
    let optim = model.qat.optimizer(AdamConfig::new().build());
    let learner = Learner::new(model, optim, lr.init().unwrap());
    // No shuffling: the order of the items is the test's.
    let train: Arc<dyn DataLoader<ImageBatch>> = Arc::new(
        EpochLoader::new(InMemDataset::new(items), ImageBatcher, BATCH, &train_device)
            .starting_epoch(resume.unwrap_or(0)),
    );
    let valid: Arc<dyn DataLoader<ImageBatch>> = Arc::new(EpochLoader::new(
        InMemDataset::new(valid),
        ImageBatcher,
        256,
        device,
    ));
    let mut training = bitnet_qat::train::with_qat_metrics(
        SupervisedTraining::new(dir, train, valid)
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .num_epochs(epochs)
            .with_default_checkpointers()
            .renderer(Box::new(QuietRenderer::new())),
    );
    if let Some(epoch) = resume {
        training = training.checkpoint(epoch);
    }
    training = match mode {
        Mode::Accumulated => training.grads_accumulation(2),
        Mode::Multi(optim) => training.with_training_strategy(TrainingStrategy::Default(
            ExecutionStrategy::MultiDevice(vec![device.clone(), device.clone()], optim),
        )),
    };
    let result = training.launch(learner);
    assert!(result.error.is_none(), "{mode:?}: {:?}", result.error);
    result.model
}

/// Every quantizer's settings, in module order.
fn settings(model: &Classifier) -> Vec<QuantizerSettings> {
    let mlp: &Mlp = &model.mlp;
    mlp.layers
        .iter()
        .filter_map(|layer| match layer {
            Dense::Bit(l) => l.weight_quantizer().map(|q| q.settings()),
            _ => None,
        })
        .collect()
}

/// The single-device run, both MultiDevice modes and a MultiDevice run resumed after its first
/// epoch give the same model, step, schedules and QAT metrics.
fn multi_device_equals_accumulation(device: &Device, name: &str) {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let items = train.items()[..2 * HALF].to_vec();
    let valid = valid.items()[..256].to_vec();
    // Device d reads `items[d * HALF..]`: step t takes batch t of each half.
    let interleaved: Vec<DigitItem> = (0..HALF / BATCH)
        .flat_map(|t| {
            let first = &items[t * BATCH..(t + 1) * BATCH];
            let second = &items[HALF + t * BATCH..HALF + (t + 1) * BATCH];
            first.iter().chain(second).cloned()
        })
        .collect();

    let single_dir = fresh_dir(&format!("{name}-accumulated"));
    let single = run(
        Mode::Accumulated,
        interleaved,
        valid.clone(),
        device,
        &single_dir,
        EPOCHS,
        None,
    );
    assert_eq!(single.qat.step(), STEPS);
    let lambdas: Vec<f64> = settings(&single).iter().map(|s| s.lambda).collect();
    assert_eq!(lambdas, vec![1.0; 2], "the warm-up of {RAMP} steps is over");

    for optim in [
        MultiDeviceOptim::OptimMainDevice,
        MultiDeviceOptim::OptimSharded,
    ] {
        let what = format!("{name} {optim:?}");
        let dir = fresh_dir(&format!("{name}-{optim:?}"));
        let multi = run(
            Mode::Multi(optim),
            items.clone(),
            valid.clone(),
            device,
            &dir,
            EPOCHS,
            None,
        );
        // Optimizer steps counted once, not once per device.
        assert_eq!(multi.qat.step(), STEPS, "{what}");
        assert_eq!(settings(&multi), settings(&single), "{what}");
        assert!(
            weights(&multi) == weights(&single),
            "{what}: weights differ"
        );
        for epoch in 1..=EPOCHS {
            for stat in [
                QatStat::Lambda,
                QatStat::Bits,
                QatStat::WeightError,
                QatStat::FlipRate,
                QatStat::GradNorm,
            ] {
                let metric =
                    |dir: &Path| epoch_metric(dir, stat.name(), epoch, Split::Train).unwrap();
                // The epoch means add the logged values in arrival order, and a GPU's
                // reduction of the gradient norm need not repeat to the last bit.
                let (a, b) = (metric(&dir), metric(&single_dir));
                assert!(
                    (a - b).abs() <= 1e-7 * b.abs().max(1.0),
                    "{what}: {} epoch {epoch}: {a} vs {b}",
                    stat.name()
                );
            }
        }
        // Lambda is the mean over the epoch's steps (each logged once per device).
        let l1 = epoch_metric(&dir, QatStat::Lambda.name(), 1, Split::Train).unwrap();
        let expected = (0..STEPS / EPOCHS)
            .map(|s| s as f64 / RAMP as f64)
            .sum::<f64>()
            / (STEPS / EPOCHS) as f64;
        assert!((l1 - expected).abs() < 1e-9, "{what}: lambda {l1}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    // The main device's checkpoints resume a MultiDevice run exactly.
    let dir = fresh_dir(&format!("{name}-resumed"));
    let main = Mode::Multi(MultiDeviceOptim::OptimMainDevice);
    run(main, items.clone(), valid.clone(), device, &dir, 1, None);
    let resumed = run(main, items, valid, device, &dir, EPOCHS, Some(1));
    assert_eq!(resumed.qat.step(), STEPS);
    assert!(
        weights(&resumed) == weights(&single),
        "{name}: the resumed run differs"
    );
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&single_dir);
}

#[test]
fn multi_device_on_flex_equals_gradient_accumulation() {
    multi_device_equals_accumulation(&Device::flex(), "multi-flex");
}

#[test]
fn multi_device_on_wgpu_equals_gradient_accumulation() {
    if let Some(device) = gpu_device() {
        multi_device_equals_accumulation(&device, "multi-wgpu");
    }
}
