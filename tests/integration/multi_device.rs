//! QAT under burn-train's `ExecutionStrategy::MultiDevice` (both optimizer modes), over the same
//! device twice (Burn allows it; Flex and lavapipe have one device each). burn-train gives
//! each device its own contiguous half of the data and batches of the full batch size, runs
//! every replica's step on a fork of the main model, and sums the replicas' gradients: a step
//! over two devices is exactly a single-device step with two accumulated micro-batches in the
//! interleaved order. So the final weights must be equal bit for bit (two summands add the same
//! in either order), the QAT step must count optimizer steps once, and every schedule value and
//! QAT metric must match.

use std::path::Path;

use bitnet_qat::data::{DigitItem, DigitsDataset};
use bitnet_qat::train::QatStat;
use bitnet_qat_examples::learner::{Classifier, epoch_metric};
use bitnet_qat_examples::multi::{
    DeviceRun, Strategy, interleave, quantizer_settings as settings, train_on_devices,
};
use burn::tensor::Device;
use burn::train::MultiDeviceOptim;
use burn::train::metric::store::Split;

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

/// Trains over `device` twice (or, `Accumulated`, on it alone with two micro-batches a step).
fn run(
    strategy: Strategy,
    items: Vec<DigitItem>,
    valid: Vec<DigitItem>,
    device: &Device,
    dir: &Path,
    stop_after: Option<usize>,
    resume_from: Option<usize>,
) -> Classifier {
    let run = DeviceRun {
        strategy,
        devices: vec![device.clone(), device.clone()],
        batch: BATCH,
        epochs: EPOCHS,
        stop_after,
        resume_from,
        lambda_ramp: RAMP,
        dir,
        initial: initial_on(&device.clone().autodiff()),
    };
    train_on_devices(run, items, valid).unwrap_or_else(|e| panic!("{strategy:?}: {e}"))
}

/// The single-device run, both MultiDevice modes and a MultiDevice run resumed after its first
/// epoch give the same model, step, schedules and QAT metrics.
fn multi_device_equals_accumulation(device: &Device, name: &str) {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let items = train.items()[..2 * HALF].to_vec();
    let valid = valid.items()[..256].to_vec();
    // Device d reads `items[d * HALF..]`: step t takes batch t of each half.
    let interleaved = interleave(&items, 2, BATCH).unwrap();
    assert_eq!(
        interleaved[BATCH], items[HALF],
        "the second micro-batch is the second half's"
    );

    let single_dir = fresh_dir(&format!("{name}-accumulated"));
    let single = run(
        Strategy::Accumulated,
        interleaved,
        valid.clone(),
        device,
        &single_dir,
        None,
        None,
    );
    assert_eq!(single.qat.step(), STEPS);
    let lambdas: Vec<f64> = settings(&single).iter().map(|s| s.lambda).collect();
    assert_eq!(lambdas, vec![1.0; 4], "the warm-up of {RAMP} steps is over");

    for optim in [
        MultiDeviceOptim::OptimMainDevice,
        MultiDeviceOptim::OptimSharded,
    ] {
        let what = format!("{name} {optim:?}");
        let dir = fresh_dir(&format!("{name}-{optim:?}"));
        let multi = run(
            Strategy::Multi(optim),
            items.clone(),
            valid.clone(),
            device,
            &dir,
            None,
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
    let main = Strategy::Multi(MultiDeviceOptim::OptimMainDevice);
    run(
        main,
        items.clone(),
        valid.clone(),
        device,
        &dir,
        Some(1),
        None,
    );
    let resumed = run(main, items, valid, device, &dir, None, Some(1));
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
