//! What a QAT training step reports: [`QatStats`], and the classification output that carries
//! them to burn-train's metrics.

use burn::tensor::ExecutionError;
use burn::train::ClassificationOutput;
use burn::train::metric::{
    AccuracyInput, Adaptor, ConfusionStatsInput, ItemLazy, LossInput, PerplexityInput,
    TopKAccuracyInput,
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

/// Burn's [`ClassificationOutput`] plus the step's [`QatStats`]: the training output type of a QAT
/// classifier. It feeds Burn's accuracy, loss, top-k, perplexity and precision/recall metrics and
/// the QAT metrics.
pub struct QatClassificationOutput {
    /// Loss, logits and targets.
    pub output: ClassificationOutput,
    /// The QAT statistics of the step.
    pub qat: QatStats,
}

impl ItemLazy for QatClassificationOutput {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(Self {
            output: self.output.sync()?,
            qat: self.qat,
        })
    }
}

impl Adaptor<QatStats> for QatClassificationOutput {
    fn adapt(&self) -> QatStats {
        self.qat
    }
}

macro_rules! delegate {
    ($($input:ty),*) => {$(
        impl Adaptor<$input> for QatClassificationOutput {
            fn adapt(&self) -> $input {
                <ClassificationOutput as Adaptor<$input>>::adapt(&self.output)
            }
        }
    )*};
}

delegate!(
    AccuracyInput,
    LossInput,
    TopKAccuracyInput,
    PerplexityInput,
    ConfusionStatsInput
);
