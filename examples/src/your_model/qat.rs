//! A Burn user's CNN, twice: `float.rs` as Burn trains it (burn-nn layers, its own `TrainStep`
//! and `InferenceStep`, a `Learner`), `qat.rs` the same made BitNet W1.58A8 — the first
//! convolution and the head in full precision — and trained with QAT. `docs/your-model.md`
//! shows the diff.

use bitnet_qat::nn::conv::{Conv2d, Conv2dConfig};
use bitnet_qat::nn::{Linear, LinearConfig, QuantScheme};
use bitnet_qat::train::{Qat, QatPlan, with_qat_metrics};
use burn::data::dataloader::DataLoader;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::optim::AdamConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor};
use burn::train::metric::{AccuracyMetric, LossMetric};
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};
use burn::train::{Learner, SupervisedTraining};
use std::sync::Arc;

/// A batch: images `[n, 1, 28, 28]` and their classes.
pub type Batch = (Tensor<4>, Tensor<1, Int>);

/// The network.
#[derive(Module, Debug)]
pub struct Net {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    pool: MaxPool2d,
    fc: Linear,
    head: Linear,
}

impl Net {
    /// A fresh network.
    pub fn new(device: &Device) -> Self {
        let fp = QuantScheme::none(); // the first convolution and the head stay in full precision
        Self {
            conv1: Conv2dConfig::new([1, 16], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_quant(fp.clone())
                .init(device),
            norm1: BatchNormConfig::new(16).init(device),
            conv2: Conv2dConfig::new([16, 32], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .init(device),
            norm2: BatchNormConfig::new(32).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            fc: LinearConfig::new(32 * 7 * 7, 128).init(device),
            head: LinearConfig::new(128, 10).with_quant(fp).init(device),
        }
    }

    /// Logits of images `[n, 1, 28, 28]`.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .pool
            .forward(relu(self.norm1.forward(self.conv1.forward(images))));
        let x = self
            .pool
            .forward(relu(self.norm2.forward(self.conv2.forward(x))));
        self.head.forward(relu(self.fc.forward(x.flatten(1, 3))))
    }

    /// Loss, logits and targets of a batch.
    pub fn classify(&self, (images, targets): Batch) -> ClassificationOutput {
        let logits = self.forward(images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl TrainStep for Net {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Net {
    type Input = Batch;
    type Output = ClassificationOutput;

    fn step(&self, batch: Batch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// What the `Learner` trains.
pub type Trained = Qat<Net>;

/// The `Learner` and the training of the network; `training.launch(learner)` runs it.
pub fn training(
    dir: &str,
    train: Arc<dyn DataLoader<Batch>>,
    valid: Arc<dyn DataLoader<Batch>>,
    device: &Device,
) -> bitnet_qat::Result<(Learner<Trained>, SupervisedTraining<Trained>)> {
    let learner = Qat::new(Net::new(device), &QatPlan::new(), device)?
        .learner(AdamConfig::new().build(), 1e-3);
    let training = with_qat_metrics(SupervisedTraining::new(dir, train, valid))
        .metrics((AccuracyMetric::new(), LossMetric::new()));
    Ok((learner, training))
}
