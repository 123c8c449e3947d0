//! burn-train integration: a Learner run logs every QAT metric, and a run stopped after 2
//! epochs and resumed from its checkpoint ends bit-identical to 4 epochs straight.

use std::path::PathBuf;

use bitnet_qat::data::{DIGITS_CLASSES, DIGITS_PIXELS, DigitsDataset};
use bitnet_qat::nn::BitLinearConfig;
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::train::{QatPlan, QatStat};
use bitnet_qat_examples::learner::{FitConfig, epoch_metric, fit};
use bitnet_qat_examples::{Dense, Mlp};

use super::{Lcg, fresh_dir, weights};
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::metric::store::Split;

fn config(dir: &std::path::Path, epochs: usize) -> FitConfig {
    let mut config = FitConfig::new(dir);
    config.initial = Some(initial());
    config.hidden = vec![64];
    config.epochs = epochs;
    config.batch_size = 64;
    config.lr = 3e-3;
    // A lambda warm-up, so the schedule position matters on resume.
    config.plan = QatPlan::new().with_scheduler(
        QatScheduler::default().with_lambda(LambdaSchedule::new(40, LambdaRamp::Linear)),
    );
    config
}

/// A fresh network with weights from a fixed generator: Burn's initialisers draw from the
/// device's global generator, which the tests running in parallel share. (Each call builds new
/// quantizer controls: clones of a model share theirs.)
fn initial() -> Mlp {
    initial_on(&Device::flex().autodiff())
}

/// [`initial`] on `device`.
pub(crate) fn initial_on(device: &Device) -> Mlp {
    let mut rng = Lcg(0x5EED);
    let mut layer = |d_in: usize, d_out: usize| {
        let bound = 1.0 / (d_in as f32).sqrt();
        let w: Vec<f32> = (0..d_in * d_out)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect();
        let w = Tensor::<2>::from_data(TensorData::new(w, [d_in, d_out]), device);
        Dense::Bit(
            BitLinearConfig::new(d_in, d_out)
                .init_with(w, None, device)
                .unwrap(),
        )
    };
    Mlp {
        layers: vec![layer(DIGITS_PIXELS, 64), layer(64, DIGITS_CLASSES)],
    }
}

#[test]
fn learner_logs_the_qat_metrics() {
    let dir = fresh_dir("learner-metrics");
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 42);
    let fitted = fit(
        train,
        valid,
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        config(&dir, 2),
        &Device::flex(),
    )
    .unwrap();
    assert_eq!(fitted.valid_accuracy.len(), 2);
    assert!(
        fitted.valid_accuracy[1] > 80.0,
        "{:?}",
        fitted.valid_accuracy
    );
    let metric =
        |stat: QatStat, epoch| epoch_metric(&dir, stat.name(), epoch, Split::Train).unwrap();
    for epoch in 1..=2 {
        let codes = metric(QatStat::Negative, epoch)
            + metric(QatStat::Zero, epoch)
            + metric(QatStat::Positive, epoch);
        assert!(
            (codes - 100.0).abs() < 1e-6,
            "code fractions sum to {codes} %"
        );
        assert!((metric(QatStat::Bits, epoch) - 3f64.log2()).abs() < 1e-9);
        let error = metric(QatStat::WeightError, epoch);
        assert!(error > 1.0 && error < 100.0, "weight error {error} %");
        assert!(metric(QatStat::GradNorm, epoch) > 0.0);
        assert!(metric(QatStat::StepMean, epoch) > 0.0);
        assert_eq!(metric(QatStat::Temperature, epoch), 0.0);
    }
    // Weights move: codes flip, most in the first epoch.
    let (flip1, flip2) = (metric(QatStat::FlipRate, 1), metric(QatStat::FlipRate, 2));
    assert!(flip1 > 0.0 && flip2 > 0.0, "flip rates {flip1} {flip2}");
    // 23 steps an epoch: the lambda ramp (40 steps) averages below 1 in epoch 1, is 1 after.
    let (l1, l2) = (metric(QatStat::Lambda, 1), metric(QatStat::Lambda, 2));
    assert!(
        (l1 - (0..23).map(|s| s as f64 / 40.0).sum::<f64>() / 23.0).abs() < 1e-9,
        "{l1}"
    );
    assert!((l2 - (23..46).map(|s| (s as f64 / 40.0).min(1.0)).sum::<f64>() / 23.0).abs() < 1e-9);
    assert!(epoch_metric(&dir, "Accuracy", 2, Split::Valid).unwrap() > 80.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_plus_two_epochs_equal_four_bit_for_bit() {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let device = Device::flex();
    let straight_dir = fresh_dir("resume-straight");
    let straight = fit(
        train.clone(),
        valid.clone(),
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        config(&straight_dir, 4),
        &device,
    )
    .unwrap();

    let split_dir = fresh_dir("resume-split");
    // The first launch plans 4 epochs (the LR schedule spans them) and stops after 2.
    let mut first = config(&split_dir, 4);
    first.stop_after = Some(2);
    fit(
        train.clone(),
        valid.clone(),
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        first,
        &device,
    )
    .unwrap();
    let mut second = config(&split_dir, 4);
    second.resume_from = Some(2);
    let resumed = fit(train, valid, DIGITS_PIXELS, DIGITS_CLASSES, second, &device).unwrap();

    assert_eq!(weights(&resumed.model), weights(&straight.model));
    assert_eq!(resumed.model.qat.step(), straight.model.qat.step());
    assert_eq!(resumed.valid_accuracy, straight.valid_accuracy[2..]);
    for epoch in 3..=4 {
        for split in ["train", "valid"] {
            let folder = |dir: &PathBuf| dir.join(split).join(format!("epoch-{epoch}"));
            let mut names: Vec<_> = std::fs::read_dir(folder(&straight_dir))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            // Accuracy, loss (+ learning rate and the ten QAT metrics in training).
            let expected = if split == "train" { 13 } else { 2 };
            assert_eq!(names.len(), expected, "{names:?}");
            for name in names {
                let a = std::fs::read(folder(&straight_dir).join(&name)).unwrap();
                let b = std::fs::read(folder(&split_dir).join(&name)).unwrap();
                assert!(
                    a == b,
                    "{split} epoch {epoch} {name:?} differs after resuming"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&straight_dir);
    let _ = std::fs::remove_dir_all(&split_dir);
}

#[test]
fn a_diverging_run_stops_with_the_step_and_the_parameter_instead_of_panicking() {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let dir = fresh_dir("learner-diverge");
    let mut run = config(&dir, 3);
    // Adam steps of 1e35: the logits overflow, the gradients turn NaN, so do the weights.
    run.lr = 1e35;
    run.plan = QatPlan::new().with_stats_every(1);
    run.checkpoints = true;
    let err = fit(
        train,
        valid,
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        run,
        &Device::flex(),
    )
    .map(|_| ())
    .unwrap_err();
    match &err {
        bitnet_qat::QatError::Training(message) => {
            assert!(message.starts_with("step "), "{message}");
            assert!(message.contains("mlp.layers."), "{message}");
            assert!(
                message.contains("NaN") || message.contains("infinite"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The run stopped in its first epoch: no checkpoint of the diverged model was written.
    assert!(!bitnet_qat::train::checkpoint_path(&dir, 1).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_that_cannot_be_resumed_is_refused_before_launch() {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let dir = fresh_dir("learner-bad-checkpoint");
    let mut first = config(&dir, 2);
    first.stop_after = Some(1);
    first.checkpoints = true;
    let device = Device::flex();
    fit(
        train.clone(),
        valid.clone(),
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        first,
        &device,
    )
    .unwrap();
    let path = bitnet_qat::train::checkpoint_path(&dir, 1);
    let good = std::fs::read(&path).unwrap();
    let resume = |dir: &std::path::Path| {
        let mut second = config(dir, 2);
        second.resume_from = Some(1);
        fit(
            train.clone(),
            valid.clone(),
            DIGITS_PIXELS,
            DIGITS_CLASSES,
            second,
            &device,
        )
        .map(|_| ())
    };
    // Truncated: burnpack's refusal naming the file, not burn-train's panic inside `launch`.
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    match resume(&dir) {
        Err(bitnet_qat::QatError::File {
            format: "burnpack",
            path: p,
            ..
        }) => assert!(p.ends_with("model-1.bpk"), "{p}"),
        other => panic!("{other:?}"),
    }
    // Missing.
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(resume(&dir), Err(bitnet_qat::QatError::Io { .. })));
    // A checkpoint of another network (64 hidden units here, 32 there).
    let other_dir = fresh_dir("learner-other-checkpoint");
    let mut other = config(&other_dir, 2);
    other.stop_after = Some(1);
    other.checkpoints = true;
    other.initial = None;
    other.hidden = vec![32];
    fit(
        train.clone(),
        valid.clone(),
        DIGITS_PIXELS,
        DIGITS_CLASSES,
        other,
        &device,
    )
    .unwrap();
    std::fs::copy(bitnet_qat::train::checkpoint_path(&other_dir, 1), &path).unwrap();
    match resume(&dir) {
        Err(bitnet_qat::QatError::Shape {
            what,
            expected,
            got,
        }) => {
            assert_eq!(what, "`mlp.layers.0.Bit.weight`");
            assert_eq!((expected.as_str(), got), ("[64, 64]", vec![64, 32]));
        }
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&other_dir);
}
