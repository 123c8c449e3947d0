//! A quiet metrics renderer: one line per split and epoch instead of one per batch.

use std::io::Write;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// A burn-train renderer for logs and CI: prints one line per split and epoch with the epoch
/// value of every metric (Burn's own CLI renderer prints a line per batch; its TUI needs a
/// terminal).
///
/// # Example
/// ```
/// use bitnet_qat::train::QuietRenderer;
/// use burn::train::{LearnerModel, SupervisedTraining};
///
/// fn quietly<M: LearnerModel>(training: SupervisedTraining<M>) -> SupervisedTraining<M> {
///     training.renderer(Box::new(QuietRenderer::new()))
/// }
/// ```
pub struct QuietRenderer {
    out: Box<dyn Write + Send + Sync>,
    names: Vec<(MetricId, String)>,
    latest: Vec<(MetricId, String)>,
    split: String,
    epoch: usize,
    epochs: usize,
}

impl Default for QuietRenderer {
    fn default() -> Self {
        Self::new()
    }
}

impl QuietRenderer {
    /// Prints to standard output.
    pub fn new() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    /// Prints to `out`.
    pub fn to_writer(out: Box<dyn Write + Send + Sync>) -> Self {
        Self {
            out,
            names: Vec::new(),
            latest: Vec::new(),
            split: String::new(),
            epoch: 0,
            epochs: 0,
        }
    }

    fn record(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => entry,
        };
        // "epoch 0.512 % - batch 0.498 %": keep the epoch part.
        let formatted = &entry.serialized_entry.formatted;
        let value = formatted
            .split(" - batch")
            .next()
            .unwrap_or(formatted)
            .trim_start_matches("epoch ")
            .to_string();
        match self
            .latest
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some(slot) => slot.1 = value,
            None => self.latest.push((entry.metric_id, value)),
        }
    }

    fn flush_line(&mut self) {
        if self.latest.is_empty() {
            return;
        }
        let values = self
            .latest
            .drain(..)
            .map(|(id, value)| {
                let name = self
                    .names
                    .iter()
                    .find(|(known, _)| *known == id)
                    .map_or_else(|| format!("{id:?}"), |(_, n)| n.clone());
                format!("{name} {value}")
            })
            .collect::<Vec<_>>()
            .join(" | ");
        // A closed stdout must not stop training.
        let _ = writeln!(
            self.out,
            "[epoch {}/{}] {}: {values}",
            self.epoch, self.epochs, self.split
        );
    }
}

impl MetricsRendererTraining for QuietRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }
}

impl MetricsRendererEvaluation for QuietRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }
}

impl TrainingProgressLogger for QuietRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        label: Option<&str>,
    ) {
        self.epochs = total_epochs;
        // Each training split starts the next epoch.
        self.epoch = starting_epoch.saturating_sub(1);
        let _ = writeln!(
            self.out,
            "{}: epochs {starting_epoch}..={total_epochs}",
            label.unwrap_or("training")
        );
    }

    fn update_epoch(&mut self, _epoch: usize) {}

    fn start_split(&mut self, split: &str, _total_items: usize) {
        if split == "train" {
            self.epoch += 1;
        }
        self.split = split.to_string();
        self.latest.clear();
    }

    fn update_split(&mut self, _items_processed: usize) {}

    fn end_split(&mut self) {
        self.flush_line();
    }

    fn end(&mut self) {}

    /// Burn sends an event per step ("Iteration"): too chatty for this renderer.
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for QuietRenderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}

    fn start_test(&mut self, name: &str, _total_items: usize) {
        self.split = name.to_string();
        self.latest.clear();
    }

    fn update_test_progress(&mut self, _items_processed: usize) {}

    fn end_test(&mut self) {
        self.flush_line();
    }

    fn end_global_progress(&mut self) {}

    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for QuietRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .push((definition.metric_id, definition.name.to_string()));
    }
}
