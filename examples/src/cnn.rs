//! The CNN of the `cnn` example — the shape of Burn's MNIST example: two 3×3 convolutions with
//! batch norm, ReLU and max pooling, a hidden `Linear`, dropout and the head — written as a
//! burn-nn user writes it, with its own `TrainStep` and `InferenceStep`, from the drop-in
//! layers of `bitnet_qat::nn`; and [`fit_cnn`], which trains it with burn-train through
//! [`Qat`] (no QAT glue).

use std::path::PathBuf;

use bitnet_qat::Result;
use bitnet_qat::data::{IdxDataset, ImageBatch};
use bitnet_qat::nn::conv::{Conv2d, Conv2dConfig};
use bitnet_qat::nn::{Linear, LinearConfig, QuantScheme};
use bitnet_qat::train::{Qat, QatPlan, WeightDecaySchedule};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, PaddingConfig2d};
use burn::optim::AdamConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use burn::train::renderer::MetricsRenderer;
use burn::train::{ClassificationOutput, InferenceStep, TrainOutput, TrainStep};

use crate::learner::{Run, bitnet_lr, fit_images, positive};

/// What the CNN quantizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CnnPrecision {
    /// Full precision: burn-nn's layers, bit for bit (the baseline).
    Fp32,
    /// BitNet b1.58 W1.58A8 for the second convolution and the hidden layer; the first
    /// convolution (one input channel) and the head in full precision, as BitNet keeps the
    /// edges of a network.
    W158a8,
    /// W1.58A8 for every convolution and `Linear`, the first and the head included.
    AllTernary,
}

impl CnnPrecision {
    /// The schemes of the edges (first convolution, head) and of the inner layers.
    fn schemes(self) -> (QuantScheme, QuantScheme) {
        match self {
            CnnPrecision::Fp32 => (QuantScheme::none(), QuantScheme::none()),
            CnnPrecision::W158a8 => (QuantScheme::none(), QuantScheme::bitnet()),
            CnnPrecision::AllTernary => (QuantScheme::bitnet(), QuantScheme::bitnet()),
        }
    }
}

/// A Fashion-MNIST classifier `[n, 784] -> [n, 10]`.
#[derive(Module, Debug)]
pub struct Cnn {
    conv1: Conv2d,
    norm1: BatchNorm,
    conv2: Conv2d,
    norm2: BatchNorm,
    pool: MaxPool2d,
    dropout: Dropout,
    fc: Linear,
    head: Linear,
}

impl Cnn {
    /// A fresh network (initialised from the device's generator).
    pub fn new(precision: CnnPrecision, device: &Device) -> Self {
        let (edge, inner) = precision.schemes();
        Self {
            conv1: Conv2dConfig::new([1, 16], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_quant(edge.clone())
                .init(device),
            norm1: BatchNormConfig::new(16).init(device),
            conv2: Conv2dConfig::new([16, 32], [3, 3])
                .with_padding(PaddingConfig2d::Same)
                .with_quant(inner.clone())
                .init(device),
            norm2: BatchNormConfig::new(32).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            dropout: DropoutConfig::new(0.25).init(),
            fc: LinearConfig::new(32 * 7 * 7, 128)
                .with_quant(inner)
                .init(device),
            head: LinearConfig::new(128, 10).with_quant(edge).init(device),
        }
    }

    /// Logits of 28×28 images given as rows of 784 pixels.
    pub fn forward(&self, images: Tensor<2>) -> Tensor<2> {
        let [n, _] = images.dims();
        let x = images.reshape([n, 1, 28, 28]);
        let x = self
            .pool
            .forward(relu(self.norm1.forward(self.conv1.forward(x))));
        let x = self
            .pool
            .forward(relu(self.norm2.forward(self.conv2.forward(x))));
        let x = self.dropout.forward(relu(self.fc.forward(x.flatten(1, 3))));
        self.head.forward(x)
    }

    /// Loss, logits and targets of a batch.
    pub fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let logits = self.forward(batch.images);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.targets.clone());
        ClassificationOutput::new(loss, logits, batch.targets)
    }
}

impl TrainStep for Cnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.classify(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for Cnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// Settings of [`fit_cnn`].
pub struct CnnFit {
    /// Where burn-train writes logs and checkpoints.
    pub dir: PathBuf,
    /// What the network quantizes.
    pub precision: CnnPrecision,
    /// Passes over the training set.
    pub epochs: usize,
    /// Items per step.
    pub batch_size: usize,
    /// Peak learning rate of BitNet's two-stage schedule (Adam).
    pub lr: f64,
    /// Weight decay of stage 1 (on every weight for FP32, on the latent ternary ones else).
    pub weight_decay: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
    /// `None`: burn-train's default renderer (the dashboard on a terminal).
    pub renderer: Option<Box<dyn MetricsRenderer>>,
}

/// The result of [`fit_cnn`].
pub struct FittedCnn {
    /// The trained network in inference mode, with its QAT state.
    pub model: Qat<Cnn>,
    /// Validation accuracy in percent after each epoch.
    pub valid_accuracy: Vec<f64>,
    /// Wall time of the training in seconds.
    pub seconds: f64,
}

/// Trains a [`Cnn`] on `train` with burn-train's `Learner` (Adam, BitNet's two-stage LR and
/// weight decay, accuracy, loss and the QAT metrics), validating on `valid` after each epoch.
///
/// # Errors
/// `QatError::Config` for zero epochs or batch size; as [`Qat::new`]; `QatError::Training`
/// when the run fails.
pub fn fit_cnn(
    train: IdxDataset,
    valid: IdxDataset,
    config: CnnFit,
    device: &Device,
) -> Result<FittedCnn> {
    positive(&[
        ("CnnFit.epochs", config.epochs),
        ("CnnFit.batch_size", config.batch_size),
    ])?;
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let total = train.len().div_ceil(config.batch_size) * config.epochs;
    let lr = bitnet_lr(config.lr, total, (total / 20).min(375), config.weight_decay);
    let plan = QatPlan::new()
        .with_weight_decay(WeightDecaySchedule::bitnet(&lr))
        .with_float_weight_decay(config.precision == CnnPrecision::Fp32);
    let model = Qat::new(Cnn::new(config.precision, &device), &plan, &device)?;
    let learner = model.learner(AdamConfig::new().build(), lr.init()?);
    let run = Run {
        dir: &config.dir,
        epochs: config.epochs,
        stop_after: None,
        resume_from: None,
        checkpoints: true,
        renderer: config.renderer,
    };
    let (model, valid_accuracy, seconds) = fit_images(
        learner,
        (train, valid),
        (config.batch_size, 500),
        config.seed,
        run,
        &device,
    )?;
    Ok(FittedCnn {
        model,
        valid_accuracy,
        seconds,
    })
}
