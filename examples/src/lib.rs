#![warn(missing_docs)]
//! Shared code of the bitnet-qat examples: a small MLP in full precision or with
//! [`BitLinear`] layers, a plain training loop on the embedded digits, and ([`learner`]) the
//! same MLP trained with burn-train's `Learner` and the QAT metrics.

pub mod cli;
pub mod cnn;
pub mod device;
pub mod learner;
pub mod lm;
pub mod multi;
pub mod report;
pub mod your_lm;
pub mod your_model;

use std::time::Instant;

use bitnet_qat::data::{DIGITS_CLASSES, DIGITS_PIXELS, DigitItem, DigitsDataset, shuffle};
use bitnet_qat::nn::{BitLinear, BitLinearConfig};
use bitnet_qat::quant::{QuantConfig, QuantFormat};
use bitnet_qat::ste::Ste;
use bitnet_qat::{QatError, Result};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

/// A dense layer: full precision or BitNet.
// A handful of layers per model: the size difference of the variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Dense {
    /// Burn's `Linear`.
    Fp32(Linear),
    /// A BitNet b1.58 `BitLinear`.
    Bit(BitLinear),
}

impl Dense {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        match self {
            Dense::Fp32(l) => l.forward(x),
            Dense::Bit(l) => l.forward(x),
        }
    }
}

/// Applies `layers` in order with ReLU between them (not after the last).
fn relu_chain<L>(
    layers: &[L],
    x: Tensor<2>,
    forward: impl Fn(&L, Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    let last = layers.len().saturating_sub(1);
    layers.iter().enumerate().fold(x, |x, (i, layer)| {
        let y = forward(layer, x);
        if i < last { relu(y) } else { y }
    })
}

/// Which layers an [`Mlp`] is built from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Precision {
    /// Burn `Linear` layers.
    Fp32,
    /// `BitLinear` layers: W1.58 A8 with RMSNorm inside each layer.
    Ternary,
    /// `BitLinear` layers with these weights (binary, ternary or 2–8-bit integers with their
    /// presets), 8-bit activations and RMSNorm inside each layer.
    Weights(QuantFormat),
}

/// The weight quantizer preset of a format: absmean for binary, ternary (BitNet) and 2-bit,
/// absmax for 3 to 8 bits. (With an absmax scale, 2-bit codes `-2..=1` put almost every weight
/// at 0 and training is unstable: 63 % against 89 % on Fashion-MNIST.)
pub fn weight_preset(format: QuantFormat) -> QuantConfig {
    match format {
        QuantFormat::Binary => QuantConfig::binary(),
        QuantFormat::Ternary => QuantConfig::ternary(),
        QuantFormat::Int { bits } if bits <= 2 => {
            QuantConfig::int(bits).with_stat(bitnet_qat::quant::ScaleStat::AbsMean)
        }
        QuantFormat::Int { bits } => QuantConfig::int(bits),
    }
}

/// A multi-layer perceptron with ReLU between its layers.
#[derive(Module, Debug)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Dense>,
}

impl Mlp {
    /// Builds `sizes[0] -> sizes[1] -> ... -> sizes[n]` with the given precision.
    pub fn new(sizes: &[usize], precision: Precision, device: &Device) -> Result<Self> {
        Self::with_ste(sizes, precision, Ste::Standard, device)
    }

    /// Like [`Mlp::new`], with `ste` as the weight STE of the quantized layers.
    pub fn with_ste(
        sizes: &[usize],
        precision: Precision,
        ste: Ste,
        device: &Device,
    ) -> Result<Self> {
        let layers = sizes
            .windows(2)
            .map(|w| {
                let bit = |quant: QuantConfig| {
                    BitLinearConfig::new(w[0], w[1])
                        .with_weight_quant(quant)
                        .with_weight_ste(ste)
                        .init(device)
                        .map(Dense::Bit)
                };
                match precision {
                    Precision::Fp32 => Ok(Dense::Fp32(LinearConfig::new(w[0], w[1]).init(device))),
                    Precision::Ternary => bit(QuantConfig::ternary()),
                    Precision::Weights(format) => bit(weight_preset(format)),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// The logits `[batch, classes]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        relu_chain(&self.layers, x, |layer, x| layer.forward(x))
    }
}

impl Mlp {
    /// Bytes of the model's record (what `bitnet_qat::infer::save` writes): the f32 model's, or
    /// after `bitnet_qat::infer::pack` the packed one's.
    pub fn size_bytes(&self) -> Result<usize> {
        bitnet_qat::infer::record_bytes(self.clone())
    }
}

/// Settings of [`train`].
#[derive(Debug, Clone)]
pub struct TrainSettings {
    /// Passes over the training set.
    pub epochs: usize,
    /// Items per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the weight initialisation and of the batch order.
    pub seed: u64,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 3e-3,
            seed: 42,
        }
    }
}

/// The result of [`train`].
#[derive(Debug)]
pub struct Trained {
    /// The trained model, in inference mode.
    pub model: Mlp,
    /// The last epoch's mean training loss.
    pub final_loss: f64,
    /// Optimizer steps taken.
    pub steps: usize,
    /// Wall time of the training loop in seconds.
    pub seconds: f64,
}

/// Builds an MLP `64 -> hidden... -> 10` and trains it on `train` with Adam and cross-entropy.
///
/// A NaN or infinite loss stops training with [`bitnet_qat::QatError::NonFinite`].
pub fn train(
    hidden: &[usize],
    precision: Precision,
    train: &DigitsDataset,
    settings: &TrainSettings,
    device: &Device,
) -> Result<Trained> {
    let device = device.clone().autodiff();
    device.seed(settings.seed);
    let mut sizes = vec![DIGITS_PIXELS];
    sizes.extend_from_slice(hidden);
    sizes.push(DIGITS_CLASSES);
    let mut model = Mlp::new(&sizes, precision, &device)?;
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let start = Instant::now();
    let mut order: Vec<usize> = (0..train.len()).collect();
    let (mut steps, mut final_loss) = (0, f64::NAN);
    for epoch in 0..settings.epochs {
        shuffle(&mut order, settings.seed.wrapping_add(epoch as u64));
        let (mut sum, mut count) = (0.0, 0);
        for chunk in order.chunks(settings.batch_size) {
            let items: Vec<DigitItem> = chunk.iter().map(|&i| train.items()[i].clone()).collect();
            let (x, y) = DigitsDataset::batch(&items, &device);
            let loss = loss_fn.forward(model.forward(x), y);
            // One readback per step; a non-finite loss stops before it reaches the weights.
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(QatError::NonFinite {
                    what: format!("training loss at step {steps}"),
                    nan: usize::from(value.is_nan()),
                    inf: usize::from(value.is_infinite()),
                });
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(settings.lr, model, grads);
            sum += value as f64;
            count += 1;
            steps += 1;
        }
        final_loss = sum / count as f64;
    }
    Ok(Trained {
        model: model.valid(),
        final_loss,
        steps,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Test accuracy in percent of an inference-mode model.
pub fn accuracy(model: &Mlp, data: &DigitsDataset, device: &Device) -> f64 {
    accuracy_of(|x| model.forward(x), data, device)
}

/// Test accuracy in percent of any classifier `forward: images -> logits`.
pub fn accuracy_of(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    data: &DigitsDataset,
    device: &Device,
) -> f64 {
    let device = device.clone().without_autodiff();
    let (x, y) = DigitsDataset::batch(data.items(), &device);
    100.0 * correct(&forward, x, y) as f64 / data.len().max(1) as f64
}

/// How many rows of `x` `forward` classifies as `y` says.
fn correct(
    forward: &impl Fn(Tensor<2>) -> Tensor<2>,
    x: Tensor<2>,
    y: Tensor<1, burn::tensor::Int>,
) -> i64 {
    let predicted = forward(x).argmax(1).flatten::<1>(0, 1);
    predicted.equal(y).int().sum().into_scalar::<i64>()
}

/// Accuracy in percent of `forward: images -> logits` on an IDX dataset, in batches of 1000.
pub fn accuracy_of_batches(
    forward: impl Fn(Tensor<2>) -> Tensor<2>,
    data: &bitnet_qat::data::IdxDataset,
    device: &Device,
) -> f64 {
    let device = device.clone().without_autodiff();
    let indices: Vec<usize> = (0..data.len()).collect();
    let correct: i64 = indices
        .chunks(1000)
        .map(|chunk| {
            let (x, y) = data.batch(chunk, &device);
            correct(&forward, x, y)
        })
        .sum();
    100.0 * correct as f64 / data.len().max(1) as f64
}
