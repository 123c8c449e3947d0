//! [`QatReport`]: what [`QatReparameterizer::apply`](super::QatReparameterizer::apply) did with
//! every parameter of a model.

use std::fmt;

use crate::nn::QuantAxis;
use crate::quant::{Granularity, QuantFormat};

/// Every parameter of a model the reparameterizer looked at (the quantizers' own parameters
/// aside), in traversal order, with what it became or why it was left in full precision.
///
/// Its `Display` is a table, one line per parameter, and a summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct QatReport {
    /// One entry per parameter.
    pub params: Vec<ParamReport>,
}

/// One parameter of a [`QatReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParamReport {
    /// The module path, as records key it (`"encoder.layers.0.pwff.linear_inner.weight"`).
    pub path: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// The type of the module that holds it (`"Linear"`, `"Conv2d"`, `"Embedding"`, ...).
    pub module: String,
    /// What became of it.
    pub outcome: Outcome,
}

/// What the reparameterizer did with one parameter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// A quantizer was attached.
    Quantized {
        /// The weight format.
        format: QuantFormat,
        /// Which elements share a scale.
        granularity: Granularity,
        /// How the scales run: [`QuantAxis::Weight`] for a 2-D weight `[d_input, d_output]`,
        /// [`QuantAxis::OutputFirst`] for a convolution kernel `[channels_out, ...]`.
        axis: QuantAxis,
    },
    /// It already had a quantizer (a [`BitLinear`](crate::nn::BitLinear)'s, a drop-in
    /// layer's, an earlier call's), which it keeps.
    KeptQuantizer,
    /// Left in full precision, for this reason.
    Float(FloatReason),
}

impl Outcome {
    /// Whether the parameter carries a quantizer (attached now or kept).
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Self::Float(_))
    }
}

/// Why a parameter was left in full precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatReason {
    /// Under a path given to [`exclude`](super::QatReparameterizer::exclude).
    Excluded,
    /// An embedding table: kept in full precision by default (BitNet and every QAT recipe do),
    /// see [`quantize_embeddings`](super::QatReparameterizer::quantize_embeddings).
    Embedding,
    /// The output head — the last `Linear` among the model's own fields: kept in full
    /// precision by default, see [`quantize_head`](super::QatReparameterizer::quantize_head).
    OutputHead,
    /// Not a weight the default selection takes: not named `weight`, or fewer than 2 axes
    /// (biases, norm gains).
    NotAWeight,
    /// Refused by the custom filter of [`with_filter`](super::QatReparameterizer::with_filter).
    Filtered,
}

impl QatReport {
    /// The parameters that were quantized by this call.
    pub fn quantized(&self) -> impl Iterator<Item = &ParamReport> {
        self.params
            .iter()
            .filter(|p| matches!(p.outcome, Outcome::Quantized { .. }))
    }

    /// The parameters left in full precision, with the reason.
    pub fn float(&self) -> impl Iterator<Item = (&ParamReport, FloatReason)> {
        self.params.iter().filter_map(|p| match p.outcome {
            Outcome::Float(reason) => Some((p, reason)),
            _ => None,
        })
    }

    /// The entry of the parameter at `path`.
    pub fn get(&self, path: &str) -> Option<&ParamReport> {
        self.params.iter().find(|p| p.path == path)
    }

    /// The share of the model's parameter values that are quantized (this call's and kept
    /// quantizers), in `[0, 1]`.
    pub fn quantized_fraction(&self) -> f64 {
        let numel = |p: &ParamReport| p.shape.iter().product::<usize>() as f64;
        let total: f64 = self.params.iter().map(numel).sum();
        let quantized: f64 = self
            .params
            .iter()
            .filter(|p| p.outcome.is_quantized())
            .map(numel)
            .sum();
        if total > 0.0 { quantized / total } else { 0.0 }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Quantized {
                format,
                granularity,
                axis,
            } => {
                let axis = match axis {
                    QuantAxis::OutputFirst => ", kernel",
                    _ => "",
                };
                write!(f, "quantized: {format:?} {granularity:?}{axis}")
            }
            Outcome::KeptQuantizer => f.write_str("quantized: kept its own quantizer"),
            Outcome::Float(reason) => write!(
                f,
                "float: {}",
                match reason {
                    FloatReason::Excluded => "excluded",
                    FloatReason::Embedding => "embedding (opt in: quantize_embeddings)",
                    FloatReason::OutputHead => "output head (opt in: quantize_head)",
                    FloatReason::NotAWeight => "not a weight",
                    FloatReason::Filtered => "refused by the filter",
                }
            ),
        }
    }
}

impl fmt::Display for QatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shape = |p: &ParamReport| format!("{:?}", p.shape);
        let path_w = self.params.iter().map(|p| p.path.len()).max().unwrap_or(0);
        let shape_w = self
            .params
            .iter()
            .map(|p| shape(p).len())
            .max()
            .unwrap_or(0);
        let module_w = self
            .params
            .iter()
            .map(|p| p.module.len())
            .max()
            .unwrap_or(0);
        for p in &self.params {
            writeln!(
                f,
                "{:path_w$}  {:shape_w$}  {:module_w$}  {}",
                p.path,
                shape(p),
                p.module,
                p.outcome
            )?;
        }
        let quantized = self
            .params
            .iter()
            .filter(|p| p.outcome.is_quantized())
            .count();
        write!(
            f,
            "{quantized} of {} parameters quantized ({:.1} % of the values); weights only: \
             activations stay in full precision (the drop-in layers quantize them)",
            self.params.len(),
            100.0 * self.quantized_fraction()
        )
    }
}
