//! A user's own burn-train model — its `TrainStep` and `InferenceStep`, drop-in layers — trained
//! with QAT through `Qat` and nothing else: schedules and QAT metrics in the run, an exact
//! resume from burn-train's checkpoints, the forgotten-step traps turned into errors, and the
//! QAT optimizer leaving full-precision weights alone.

use std::sync::Arc;

use bitnet_qat::QatError;
use bitnet_qat::data::{
    DIGITS_CLASSES, DIGITS_PIXELS, DigitsDataset, EpochLoader, ImageBatch, ImageBatcher,
};
use bitnet_qat::nn::{Linear, QuantScheme};
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::train::{
    Qat, QatPlan, QatState, QuietRenderer, WeightDecaySchedule, optimize, with_qat_metrics,
};
use burn::data::dataloader::DataLoader;
use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use burn::train::metric::store::Split;
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};

use super::{Lcg, fresh_dir, values, weights};

/// The user's model, as burn-train trains it (drop-in layers: `use bitnet_qat::nn::Linear`).
#[derive(Module, Debug)]
struct Net {
    hidden: Linear,
    head: Linear,
}

impl Net {
    fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.head.forward(relu(self.hidden.forward(batch.images)));
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for Net {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Net {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// burn-nn's `Linear` with weights from a fixed generator (Burn's initialisers draw from a
/// generator the tests running in parallel share).
fn float_linear(d_in: usize, d_out: usize, rng: &mut Lcg, device: &Device) -> burn::nn::Linear {
    let bound = 1.0 / (d_in as f32).sqrt();
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| (rng.uniform() * 2.0 - 1.0) * bound)
            .collect()
    };
    burn::nn::Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(draw(d_in * d_out), [d_in, d_out]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(draw(d_out), [d_out]),
            device,
        ))),
    }
}

/// W1.58A8 hidden layer, full-precision head (as BitNet keeps it).
fn net(device: &Device) -> Net {
    let mut rng = Lcg(0xC0FFEE);
    Net {
        hidden: Linear::from_float(
            float_linear(DIGITS_PIXELS, 64, &mut rng, device),
            &QuantScheme::bitnet(),
        )
        .unwrap(),
        head: Linear::from_float(
            float_linear(64, DIGITS_CLASSES, &mut rng, device),
            &QuantScheme::none(),
        )
        .unwrap(),
    }
}

fn plan() -> QatPlan {
    QatPlan::new()
        .with_scheduler(
            QatScheduler::default().with_lambda(LambdaSchedule::new(30, LambdaRamp::Linear)),
        )
        .with_weight_decay(WeightDecaySchedule::constant(0.05))
}

struct Run {
    epochs: usize,
    stop_after: Option<usize>,
    resume_from: Option<usize>,
}

/// Trains `learner` on the digits with burn-train, as a user would: accuracy, loss and the QAT
/// metrics, checkpoints, the QAT interrupter. Returns the trained model and the error of the
/// run, if it failed.
fn train(
    dir: &std::path::Path,
    learner: Learner<Qat<Net>>,
    state: QatState,
    run: Run,
) -> (Qat<Net>, Option<QatError>) {
    let (train, valid) = DigitsDataset::load().unwrap().split(0.2, 7);
    let device = Device::flex().autodiff();
    let train_loader: Arc<dyn DataLoader<ImageBatch>> = Arc::new(
        EpochLoader::new(train, ImageBatcher, 64, &device)
            .unwrap()
            .shuffle(3)
            .starting_epoch(run.resume_from.unwrap_or(0)),
    );
    let valid_loader: Arc<dyn DataLoader<ImageBatch>> =
        Arc::new(EpochLoader::new(valid, ImageBatcher, 256, &Device::flex()).unwrap());
    let mut training = with_qat_metrics(
        SupervisedTraining::new(dir, train_loader, valid_loader)
            .metrics((AccuracyMetric::new(), LossMetric::new()))
            .num_epochs(run.stop_after.unwrap_or(run.epochs))
            .with_default_checkpointers()
            .with_interrupter(state.interrupter())
            .renderer(Box::new(QuietRenderer::new())),
    );
    if let Some(epoch) = run.resume_from {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(learner);
    assert!(result.error.is_none() || state.failure().is_some());
    (result.model, state.failure())
}

fn learner(device: &Device) -> Learner<Qat<Net>> {
    Qat::new(net(device), &plan(), device)
        .unwrap()
        .learner(AdamConfig::new().build(), 3e-3)
}

#[test]
fn a_burn_train_model_trains_with_qat_and_resumes_exactly_with_no_glue() {
    let device = Device::flex().autodiff();
    let straight_dir = fresh_dir("zero-glue-straight");
    let learner_straight = learner(&device);
    let state = learner_straight.model().qat.clone();
    let run = Run {
        epochs: 4,
        stop_after: None,
        resume_from: None,
    };
    let (straight, failure) = train(&straight_dir, learner_straight, state, run);
    assert!(failure.is_none(), "{failure:?}");
    // The schedules ran: every step counted, the lambda warm-up of 30 steps done.
    let (train_set, _) = DigitsDataset::load().unwrap().split(0.2, 7);
    assert_eq!(straight.qat.step(), 4 * train_set.len().div_ceil(64));
    let found = bitnet_qat::nn::quantizers(&straight);
    assert_eq!(found.len(), 2); // the hidden layer's weight and activation quantizers
    assert!(found.iter().all(|f| f.quantizer.settings().lambda == 1.0));
    // The QAT metrics are in the run's logs, and the model learned.
    let lambda = |epoch| {
        bitnet_qat_examples::learner::epoch_metric(&straight_dir, "QAT Lambda", epoch, Split::Train)
            .unwrap()
    };
    let (l1, l2, l3) = (lambda(1), lambda(2), lambda(3));
    assert!(l1 < l2 && l2 < l3 && l3 == 1.0, "{l1} {l2} {l3}");
    let accuracy =
        bitnet_qat_examples::learner::epoch_metric(&straight_dir, "Accuracy", 4, Split::Valid)
            .unwrap();
    assert!(accuracy > 80.0, "validation accuracy {accuracy}");

    // 2 epochs, then 2 more resumed from burn-train's checkpoint: bit for bit the same.
    let split_dir = fresh_dir("zero-glue-split");
    let first = learner(&device);
    let state = first.model().qat.clone();
    let run = Run {
        epochs: 4,
        stop_after: Some(2),
        resume_from: None,
    };
    let (_, failure) = train(&split_dir, first, state, run);
    assert!(failure.is_none(), "{failure:?}");
    let second = learner(&device);
    let state = second.model().qat.clone();
    let run = Run {
        epochs: 4,
        stop_after: None,
        resume_from: Some(2),
    };
    let (resumed, failure) = train(&split_dir, second, state, run);
    assert!(failure.is_none(), "{failure:?}");
    assert_eq!(resumed.qat.step(), straight.qat.step());
    assert_eq!(weights(&resumed), weights(&straight));
    let _ = std::fs::remove_dir_all(&straight_dir);
    let _ = std::fs::remove_dir_all(&split_dir);
}

#[test]
fn a_forgotten_prepare_or_qat_optimizer_stops_the_run_at_its_first_step() {
    let device = Device::flex().autodiff();
    // The state built by hand, `prepare` forgotten.
    let unprepared = Qat {
        model: net(&device),
        qat: plan().init(&device),
    };
    let optim = unprepared.optimizer(AdamConfig::new().build());
    let state = unprepared.qat.clone();
    let dir = fresh_dir("zero-glue-unprepared");
    let run = Run {
        epochs: 1,
        stop_after: None,
        resume_from: None,
    };
    let (model, failure) = train(&dir, Learner::new(unprepared, optim, 3e-3), state, run);
    match failure {
        Some(QatError::Training(m)) => {
            assert!(m.starts_with("step 0: "), "{m}");
            assert!(
                m.contains("not readied with `bitnet_qat::train::prepare`"),
                "{m}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The run stopped after that step.
    assert_eq!(model.qat.step(), 1);

    // A plain optimizer, with a weight decay planned.
    let model = Qat::new(net(&device), &plan(), &device).unwrap();
    let state = model.qat.clone();
    let dir = fresh_dir("zero-glue-plain-optim");
    let plain = AdamConfig::new().build().into();
    let run = Run {
        epochs: 1,
        stop_after: None,
        resume_from: None,
    };
    let (_, failure) = train(&dir, Learner::new(model, plain, 3e-3), state, run);
    match failure {
        Some(QatError::Training(m)) => {
            assert!(m.contains("the optimizer is not the QAT one"), "{m}")
        }
        other => panic!("{other:?}"),
    }
    // A loss scale cannot reach the model's own backward pass.
    assert!(matches!(
        Qat::new(net(&device), &plan().with_loss_scale(1024.0), &device),
        Err(QatError::Config { name, .. }) if name == "QatPlan.loss_scale"
    ));
}

#[test]
fn the_qat_optimizer_decays_the_quantized_weights_only_unless_told_otherwise() {
    let device = Device::flex().autodiff();
    let (lr, wd) = (0.1, 0.5);
    let batch = || {
        let digits = DigitsDataset::load().unwrap();
        let (images, targets) = DigitsDataset::batch(&digits.items()[..32], &device);
        ImageBatch { images, targets }
    };
    for float_decay in [false, true] {
        let plan = QatPlan::new()
            .with_weight_decay(WeightDecaySchedule::constant(wd))
            .with_float_weight_decay(float_decay);
        let model = Qat::new(net(&device), &plan, &device).unwrap();
        let before = (
            values(model.model.hidden.weight.base()),
            values(model.model.head.weight.val()),
        );
        let output = TrainStep::step(&model, batch());
        let grads: GradientsParams = output.grads;
        let g_hidden = values(grads.get::<2>(model.model.hidden.weight.id).unwrap());
        let g_head = values(grads.get::<2>(model.model.head.weight.id).unwrap());
        let mut optim = model.optimizer(SgdConfig::new().build());
        let model = optimize(model, &mut optim, lr, grads);
        // SGD, then the decoupled decay of the quantized (latent) weight: w - lr g - lr wd w.
        let sgd = |w: &[f32], g: &[f32], decay: f64| -> Vec<f32> {
            w.iter()
                .zip(g)
                .map(|(w, g)| (w - lr as f32 * g) - (lr * decay) as f32 * w)
                .collect()
        };
        let hidden = values(model.model.hidden.weight.base());
        let head = values(model.model.head.weight.val());
        super::assert_close(&hidden, &sgd(&before.0, &g_hidden, wd), 1e-6, "hidden");
        let head_decay = if float_decay { wd } else { 0.0 };
        super::assert_close(&head, &sgd(&before.1, &g_head, head_decay), 1e-6, "head");
    }
}
