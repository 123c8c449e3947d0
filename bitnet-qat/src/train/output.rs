//! What a QAT training step reports: [`QatStats`], and the classification output that carries
//! them to burn-train's metrics.

use burn::tensor::{ExecutionError, Tensor};
use burn::train::ClassificationOutput;
use burn::train::metric::{
    AccuracyInput, Adaptor, CerInput, ConfusionStatsInput, HammingScoreInput, ItemLazy, LossInput,
    PerplexityInput, TopKAccuracyInput, WerInput,
};

use crate::schedule::WeightStats;

/// The QAT state of one training step, for the metrics of [`QatMetric`](super::QatMetric).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct QatStats {
    /// The global optimizer step this forward pass ran at (0-based).
    pub step: usize,
    /// Quantization error, code fractions and steps of the quantized weights.
    pub weights: WeightStats,
    /// Fraction of quantized weights whose code changed in the previous optimizer update.
    pub flip_rate: f64,
    /// L2 norm of all parameter gradients of this step.
    pub grad_norm: f64,
    /// Mean STE blend `lambda` over the quantizers (1: fully quantized).
    pub lambda: f64,
    /// Mean bits per quantized weight of the current formats (ternary: 1.585).
    pub bits: f64,
    /// Mean temperature of the soft-STE quantizers, if any.
    pub temperature: Option<f64>,
}

/// A training step's output `O` (Burn's [`ClassificationOutput`], `RegressionOutput`,
/// `SequenceOutput`, or your own) plus the step's [`QatStats`]: the training output type of a
/// QAT model. It feeds the QAT metrics, and Burn's metrics as `O` does (accuracy, loss, top-k,
/// perplexity, precision/recall; implement `Adaptor<YourInput> for QatOutput<YourOutput>` for
/// another metric input).
///
/// The gradient norm of a step built by [`QatState::train_output`](super::QatState::train_output)
/// stays on the device until burn-train's metric thread syncs the item, so the training loop
/// does not wait for a read-back; [`Adaptor::<QatStats>::adapt`] reads it if nothing synced.
pub struct QatOutput<O> {
    /// The model's own output (loss, logits and targets for a classifier).
    pub output: O,
    /// The QAT statistics of the step.
    pub qat: QatStats,
    /// The sum of the squared gradients, not yet read back into `qat.grad_norm`.
    grad_sq: Option<Tensor<1>>,
}

/// The training output of a QAT classifier.
pub type QatClassificationOutput = QatOutput<ClassificationOutput>;

impl<O> QatOutput<O> {
    /// The output of a step with its (complete) statistics.
    pub fn new(output: O, qat: QatStats) -> Self {
        Self {
            output,
            qat,
            grad_sq: None,
        }
    }

    /// The output of a step whose gradient norm is `sqrt(grad_sq)`, read later.
    pub(crate) fn with_pending_grad_norm(
        output: O,
        qat: QatStats,
        grad_sq: Option<Tensor<1>>,
    ) -> Self {
        Self {
            output,
            qat,
            grad_sq: grad_sq.map(|t| t.without_autodiff()),
        }
    }
}

/// `sqrt` of the one-element tensor `grad_sq` (a read-back from the device).
pub(super) fn norm_of(grad_sq: Tensor<1>) -> Result<f64, ExecutionError> {
    let data = grad_sq.try_into_data()?;
    let sum = data
        .try_cast_as::<f64>()
        .and_then(|d| d.try_to_vec::<f64>())
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(0.0);
    Ok(sum.sqrt())
}

impl<O: ItemLazy> ItemLazy for QatOutput<O> {
    fn sync(self) -> Result<Self, ExecutionError> {
        let mut qat = self.qat;
        if let Some(grad_sq) = self.grad_sq {
            qat.grad_norm = norm_of(grad_sq)?;
        }
        Ok(Self {
            output: self.output.sync()?,
            qat,
            grad_sq: None,
        })
    }
}

impl<O> Adaptor<QatStats> for QatOutput<O> {
    fn adapt(&self) -> QatStats {
        let mut qat = self.qat;
        if let Some(grad_sq) = &self.grad_sq {
            qat.grad_norm = norm_of(grad_sq.clone()).unwrap_or(f64::NAN);
        }
        qat
    }
}

macro_rules! delegate {
    ($($input:ty),*) => {$(
        impl<O: Adaptor<$input>> Adaptor<$input> for QatOutput<O> {
            fn adapt(&self) -> $input {
                self.output.adapt()
            }
        }
    )*};
}

// Every metric input of burn-train 0.22's built-in outputs.
delegate!(
    AccuracyInput,
    LossInput,
    TopKAccuracyInput,
    PerplexityInput,
    ConfusionStatsInput,
    HammingScoreInput,
    CerInput,
    WerInput
);
