//! QAT metrics for burn-train's dashboard and file logs.

use std::sync::Arc;

use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Adaptor, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};
use burn::train::{LearnerModel, SupervisedTraining, TrainStep};

use super::QatStats;

/// Which QAT statistic a [`QatMetric`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QatStat {
    /// Relative MSE between latent and quantized weights, in percent.
    WeightError,
    /// Percent of weights quantized to a negative code (−1 for ternary).
    Negative,
    /// Percent of weights quantized to 0.
    Zero,
    /// Percent of weights quantized to a positive code (+1 for ternary).
    Positive,
    /// Percent of quantized weights whose code changed in the previous update.
    FlipRate,
    /// Mean quantization step (the scale `1/s`) of the weights.
    StepMean,
    /// L2 norm of all gradients.
    GradNorm,
    /// The STE blend lambda (1 = fully quantized).
    Lambda,
    /// Mean bits per quantized weight of the current formats.
    Bits,
    /// Soft-STE temperature (0 when no quantizer uses the soft STE).
    Temperature,
}

impl QatStat {
    /// Every statistic, in dashboard order.
    pub const ALL: [QatStat; 10] = [
        QatStat::WeightError,
        QatStat::Negative,
        QatStat::Zero,
        QatStat::Positive,
        QatStat::FlipRate,
        QatStat::StepMean,
        QatStat::GradNorm,
        QatStat::Lambda,
        QatStat::Bits,
        QatStat::Temperature,
    ];

    /// The metric's name on the dashboard (and, with `_` for spaces, its log file name).
    pub fn name(self) -> &'static str {
        match self {
            QatStat::WeightError => "QAT Weight Error",
            QatStat::Negative => "QAT Codes -1",
            QatStat::Zero => "QAT Codes 0",
            QatStat::Positive => "QAT Codes +1",
            QatStat::FlipRate => "QAT Flip Rate",
            QatStat::StepMean => "QAT Scale",
            QatStat::GradNorm => "Gradient Norm",
            QatStat::Lambda => "QAT Lambda",
            QatStat::Bits => "QAT Bits",
            QatStat::Temperature => "QAT Temperature",
        }
    }

    /// The value of this statistic in `stats`.
    pub fn value(self, stats: &QatStats) -> f64 {
        let w = &stats.weights;
        match self {
            QatStat::WeightError => 100.0 * w.relative_mse,
            QatStat::Negative => 100.0 * w.fraction_negative,
            QatStat::Zero => 100.0 * w.fraction_zero,
            QatStat::Positive => 100.0 * w.fraction_positive,
            QatStat::FlipRate => 100.0 * stats.flip_rate,
            QatStat::StepMean => w.step_mean,
            QatStat::GradNorm => stats.grad_norm,
            QatStat::Lambda => stats.lambda,
            QatStat::Bits => stats.bits,
            QatStat::Temperature => stats.temperature.unwrap_or(0.0),
        }
    }

    fn unit(self) -> Option<&'static str> {
        match self {
            QatStat::WeightError
            | QatStat::Negative
            | QatStat::Zero
            | QatStat::Positive
            | QatStat::FlipRate => Some("%"),
            _ => None,
        }
    }

    fn precision(self) -> usize {
        match self {
            QatStat::FlipRate => 4,
            QatStat::StepMean => 5,
            _ => 3,
        }
    }
}

/// A burn-train numeric metric for one [`QatStat`]; its input is the [`QatStats`] of the
/// training output (see [`QatClassificationOutput`](super::QatClassificationOutput)). The epoch
/// value is the mean over the epoch's steps.
///
/// # Example
/// ```
/// use bitnet_qat::train::{QatMetric, QatStat};
/// let metrics = QatMetric::all();
/// assert_eq!(metrics.len(), 10);
/// assert_eq!(QatMetric::new(QatStat::FlipRate).stat(), QatStat::FlipRate);
/// ```
#[derive(Clone)]
pub struct QatMetric {
    stat: QatStat,
    name: MetricName,
    state: NumericMetricState,
}

impl QatMetric {
    /// The metric of `stat`.
    pub fn new(stat: QatStat) -> Self {
        Self {
            stat,
            name: Arc::new(stat.name().to_string()),
            state: NumericMetricState::new(),
        }
    }

    /// One metric per statistic, in [`QatStat::ALL`] order.
    pub fn all() -> Vec<Self> {
        QatStat::ALL.into_iter().map(Self::new).collect()
    }

    /// The statistic this metric reports.
    pub fn stat(&self) -> QatStat {
        self.stat
    }

    fn format(&self) -> FormatOptions {
        let format = FormatOptions::new(self.name.clone()).precision(self.stat.precision());
        match self.stat.unit() {
            Some(unit) => format.unit(unit),
            None => format,
        }
    }
}

impl Metric for QatMetric {
    type Input = QatStats;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(
        &mut self,
        item: &QatStats,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        self.state.update(self.stat.value(item), 1);
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: self.stat.unit().map(str::to_string),
            higher_is_better: false,
        }
        .into()
    }
}

impl Numeric for QatMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// Registers every [`QatMetric`] as a training metric of `training`.
///
/// # Example
/// ```
/// use bitnet_qat::train::{QatStats, with_qat_metrics};
/// use burn::train::metric::Adaptor;
/// use burn::train::{LearnerModel, SupervisedTraining, TrainStep};
///
/// /// Any model whose training output adapts to `QatStats`, as `QatClassificationOutput` does
/// /// (`examples/train_fashion_mnist.rs` has one).
/// fn with_dashboard<M>(training: SupervisedTraining<M>) -> SupervisedTraining<M>
/// where
///     M: LearnerModel,
///     <M as TrainStep>::Output: Adaptor<QatStats>,
/// {
///     with_qat_metrics(training)
/// }
/// ```
pub fn with_qat_metrics<M>(mut training: SupervisedTraining<M>) -> SupervisedTraining<M>
where
    M: LearnerModel,
    <M as TrainStep>::Output: Adaptor<QatStats>,
{
    for metric in QatMetric::all() {
        training = training.metric_train_numeric(metric);
    }
    training
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::WeightStats;

    fn meta() -> MetricMetadata {
        MetricMetadata {
            progress: burn::data::dataloader::Progress::new(1, 1, None),
            iteration: Some(0),
            lr: None,
        }
    }

    #[test]
    fn each_metric_reads_its_statistic() {
        let stats = QatStats {
            step: 3,
            weights: WeightStats {
                relative_mse: 0.25,
                fraction_negative: 0.3,
                fraction_zero: 0.5,
                fraction_positive: 0.2,
                step_mean: 0.04,
                step_min: 0.03,
                step_max: 0.05,
                numel: 10,
            },
            flip_rate: 0.001,
            grad_norm: 2.5,
            lambda: 0.75,
            bits: 1.585,
            temperature: None,
        };
        let expected = [25.0, 30.0, 50.0, 20.0, 0.1, 0.04, 2.5, 0.75, 1.585, 0.0];
        for (metric, want) in QatMetric::all().iter_mut().zip(expected) {
            let entry = metric.update(&stats, &meta()).unwrap();
            let got = metric.value().unwrap().current();
            assert!(
                (got - want).abs() < 1e-12,
                "{}: {got} vs {want}",
                metric.stat.name()
            );
            assert!(entry.formatted.starts_with("epoch "), "{}", entry.formatted);
        }
        // The epoch value is the mean of the steps.
        let mut flips = QatMetric::new(QatStat::FlipRate);
        for rate in [0.01, 0.03] {
            let s = QatStats {
                flip_rate: rate,
                ..stats
            };
            flips.update(&s, &meta()).unwrap();
        }
        assert!((flips.running_value().unwrap().current() - 2.0).abs() < 1e-12);
    }
}
