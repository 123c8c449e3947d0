//! Quantization-aware training for any Burn model in one call.
//!
//! [`QatReparameterizer`] attaches a [`Quantizer`] to the weights of an existing model through
//! Burn's [`Module::apply_reparameterization`]. After that, `param.val()` (what the model's own
//! layers read) is the fake-quantized weight, and the latent weight (`param.base()`) receives
//! the STE gradient. No layer code changes. [`QatReparameterizer::apply`] returns a
//! [`QatReport`]: every parameter, what it became or why it stayed in full precision.
//!
//! # What it selects
//! - Every parameter named `weight` with 2 axes or more: 2-D weights in Burn's `Linear`
//!   layout `[d_input, d_output]` (`PerChannel` is one scale per output, `PerGroup` groups
//!   consecutive inputs), convolution kernels `[channels_out, channels_in / groups, k...]`
//!   through their linear view ([`QuantAxis::OutputFirst`]: `PerChannel` is one scale per
//!   output channel).
//! - Except embedding tables and the output head (the last `Linear` among the model's own
//!   fields, when there is more than one weight to quantize), which BitNet and every QAT
//!   recipe keep in full precision: opt in with [`QatReparameterizer::quantize_embeddings`]
//!   and [`QatReparameterizer::quantize_head`]; and except what [`QatReparameterizer::exclude`]
//!   names.
//!
//! # What it does not do
//! - It quantizes **weights only**. The activations of a model whose code you cannot change
//!   are not quantized, because a parameter hook cannot see them: the model trains as W1.58A16,
//!   not BitNet's W1.58A8. Build the model from the drop-in layers
//!   ([`Linear`](crate::nn::Linear), [`conv`](crate::nn::conv)) — one changed `use` line — or
//!   from [`BitLinear`](crate::nn::BitLinear) for W1.58A8.
//! - Transposed convolutions store their kernel `[channels_in, channels_out / groups, k...]`:
//!   only per-tensor scales are right for them, and other granularities are an error.

mod report;

pub use report::{FloatReason, Outcome, ParamReport, QatReport};

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, Reparameterizer};
use burn::tensor::Tensor;

use crate::error::{QatError, Result};
use crate::nn::{QuantAxis, Quantizer, QuantizerConfig};
use crate::quant::Granularity;

/// A custom parameter filter: `(path, shape) -> quantize?`.
pub type ParamFilter = fn(&str, &[usize]) -> bool;

/// Makes the weights of any Burn model quantization-aware (see the [module](self) for what it
/// selects).
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::reparam::{FloatReason, Outcome, QatReparameterizer};
/// use burn::module::Module;
/// use burn::nn::conv::{Conv2d, Conv2dConfig};
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::tensor::Device;
///
/// #[derive(Module, Debug)]
/// struct Net {
///     embedding: Embedding,
///     conv: Conv2d,
///     hidden: Linear,
///     head: Linear,
/// }
///
/// let device = Device::flex().autodiff();
/// let net = Net {
///     embedding: EmbeddingConfig::new(100, 16).init(&device),
///     conv: Conv2dConfig::new([1, 4], [3, 3]).init(&device),
///     hidden: LinearConfig::new(16, 16).init(&device),
///     head: LinearConfig::new(16, 100).init(&device),
/// };
/// // Ternary convolution and hidden layer; embedding and output head stay in full precision.
/// let (net, report) = QatReparameterizer::new(QuantConfig::ternary()).apply(net).unwrap();
/// assert!(net.hidden.weight.reparameterization::<bitnet_qat::nn::Quantizer>().is_some());
/// assert!(net.conv.weight.reparameterization::<bitnet_qat::nn::Quantizer>().is_some());
/// assert_eq!(
///     report.get("head.weight").unwrap().outcome,
///     Outcome::Float(FloatReason::OutputHead)
/// );
/// assert_eq!(
///     report.get("embedding.weight").unwrap().outcome,
///     Outcome::Float(FloatReason::Embedding)
/// );
/// println!("{report}"); // a table: every parameter and what became of it
/// ```
#[derive(Debug, Clone)]
pub struct QatReparameterizer {
    config: QuantizerConfig,
    exclude: Vec<String>,
    filter: Option<ParamFilter>,
    quantize_embeddings: bool,
    quantize_head: bool,
}

impl QatReparameterizer {
    /// Quantizes the selected weights with `quant` and the standard STE.
    pub fn new(quant: crate::quant::QuantConfig) -> Self {
        Self::from_config(QuantizerConfig::new(quant))
    }

    /// Quantizes the selected weights with a quantizer and STE.
    pub fn from_config(config: QuantizerConfig) -> Self {
        Self {
            config,
            exclude: Vec::new(),
            filter: None,
            quantize_embeddings: false,
            quantize_head: false,
        }
    }

    /// Leaves the parameters under these module paths in full precision. A path matches
    /// itself and everything below it: `"head"` matches `"head.weight"`, `"layers.0"` matches
    /// `"layers.0.weight"`, but `"head"` does not match `"header.weight"`.
    pub fn exclude<I, S>(mut self, paths: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exclude.extend(paths.into_iter().map(Into::into));
        self
    }

    /// Replaces the default selection (parameters named `weight` with 2 axes or more, embeddings
    /// and the head aside) with `filter`. Exclusions still apply.
    pub fn with_filter(mut self, filter: ParamFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Quantizes embedding tables too (default: full precision). Scales run along each
    /// vector: `PerChannel` is one scale per token.
    pub fn quantize_embeddings(mut self, quantize: bool) -> Self {
        self.quantize_embeddings = quantize;
        self
    }

    /// Quantizes the output head too (default: full precision).
    pub fn quantize_head(mut self, quantize: bool) -> Self {
        self.quantize_head = quantize;
        self
    }

    /// Applies the reparameterization to `model` and reports what it did with every
    /// parameter. Weights that already carry a quantizer (a
    /// [`BitLinear`](crate::nn::BitLinear)'s, a drop-in layer's, one attached by an earlier
    /// call) keep it.
    ///
    /// # Errors
    /// As [`Ste::validate`](crate::ste::Ste::validate) for an invalid quantizer;
    /// [`QatError::Config`] of `QuantConfig.granularity` for a group size that does not divide
    /// a selected weight's inputs (naming the parameter path in `allowed`);
    /// [`QatError::Unsupported`] naming a transposed convolution's kernel for a granularity
    /// other than per tensor, or a selected parameter of fewer than 2 axes;
    /// [`QatError::Config`] of `QatReparameterizer.filter` when no parameter was selected.
    pub fn apply<M: Module>(self, model: M) -> Result<(M, QatReport)> {
        self.config.ste.validate(&self.config.quant)?;
        let surveyed = survey(&model);
        let mut outcomes: Vec<Outcome> = surveyed.iter().map(|p| self.outcome(p)).collect();
        // The head: the last `Linear` among the model's own fields, when more than one weight
        // would be quantized.
        let selected = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Quantized { .. }))
            .count();
        if !self.quantize_head
            && self.filter.is_none()
            && selected > 1
            && let Some(head) = surveyed
                .iter()
                .zip(&outcomes)
                .rposition(|(p, o)| p.top_level_linear && matches!(o, Outcome::Quantized { .. }))
        {
            outcomes[head] = Outcome::Float(FloatReason::OutputHead);
        }
        for (p, o) in surveyed.iter().zip(&outcomes) {
            if let Outcome::Quantized { granularity, .. } = o {
                check_transposed(&p.module, &p.path, *granularity)?;
            }
        }
        if !outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Quantized { .. }))
        {
            let filter = if self.filter.is_some() {
                "a custom filter"
            } else {
                "the default selection (weights of 2 axes or more, embeddings and the head aside)"
            };
            return Err(QatError::config(
                "QatReparameterizer.filter",
                format!(
                    "{filter}, excluding {:?}: no parameter selected",
                    self.exclude
                ),
                "a filter and exclusions that select at least one parameter without a \
                 quantizer (weights that already have one, such as BitLinear's, keep theirs)",
            ));
        }
        let mut attach = Attach {
            config: &self.config,
            selected: surveyed
                .iter()
                .zip(&outcomes)
                .filter_map(|(p, o)| match o {
                    Outcome::Quantized { axis, .. } => Some((p.path.clone(), *axis)),
                    _ => None,
                })
                .collect(),
            error: None,
        };
        let model = model.apply_reparameterization(&mut attach);
        if let Some(e) = attach.error {
            return Err(e);
        }
        let report = QatReport {
            params: surveyed
                .into_iter()
                .zip(outcomes)
                .map(|(p, outcome)| ParamReport {
                    path: p.path,
                    shape: p.shape,
                    module: p.module,
                    outcome,
                })
                .collect(),
        };
        Ok((model, report))
    }

    /// Whether the parameter at `path` with shape `dims` is quantized by the selection and the
    /// exclusions (embeddings and the head, which need the model, aside).
    pub fn selects(&self, path: &str, dims: &[usize]) -> bool {
        self.select(path, dims).is_ok()
    }

    /// The selection for `path` and `dims`: `Ok` to quantize, or why not.
    fn select(&self, path: &str, dims: &[usize]) -> std::result::Result<(), FloatReason> {
        let excluded = self.exclude.iter().any(|p| {
            path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        if excluded {
            return Err(FloatReason::Excluded);
        }
        match self.filter {
            Some(filter) if filter(path, dims) => Ok(()),
            Some(_) => Err(FloatReason::Filtered),
            None if dims.len() >= 2 && path.rsplit('.').next() == Some("weight") => Ok(()),
            None => Err(FloatReason::NotAWeight),
        }
    }

    /// What becomes of one surveyed parameter (the head decided afterwards).
    fn outcome(&self, p: &Surveyed) -> Outcome {
        if p.quantized {
            return Outcome::KeptQuantizer;
        }
        if let Err(reason) = self.select(&p.path, &p.shape) {
            return Outcome::Float(reason);
        }
        if p.module == "Embedding" && !self.quantize_embeddings {
            return Outcome::Float(FloatReason::Embedding);
        }
        // A 2-D weight is stored [d_input, d_output] (Burn's `Linear`), except an embedding
        // table [n_embedding, d_model], which is output-first like a kernel.
        let axis = if p.shape.len() == 2 && p.module != "Embedding" {
            QuantAxis::Weight
        } else {
            QuantAxis::OutputFirst
        };
        Outcome::Quantized {
            format: self.config.quant.format,
            granularity: self.config.quant.granularity,
            axis,
        }
    }
}

/// A float parameter of the model, as the survey finds it.
struct Surveyed {
    path: String,
    shape: Vec<usize>,
    /// The type of the module that holds it, without Burn's `Struct:` prefix.
    module: String,
    /// Whether it is the weight of a `Linear` that is a field of the model itself.
    top_level_linear: bool,
    /// Whether it already carries a quantizer.
    quantized: bool,
}

/// Every float parameter of `model` that is not part of a reparameterization, in traversal
/// order.
fn survey(model: &impl Module) -> Vec<Surveyed> {
    let quantized: Vec<String> = crate::nn::quantizers(model)
        .iter()
        .filter_map(|found| found.weight_path().map(str::to_string))
        .collect();
    let mut survey = Survey::default();
    model.visit(&mut survey);
    survey
        .found
        .into_iter()
        .map(|mut p| {
            p.quantized = quantized.contains(&p.path);
            p
        })
        .collect()
}

#[derive(Default)]
struct Survey {
    /// `(name, container type)` of every module entered.
    path: Vec<(String, String)>,
    found: Vec<Surveyed>,
}

impl ModuleVisitor for Survey {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // The parameters of a reparameterization (a quantizer's step) are not the model's.
        if self.path.iter().any(|(_, ty)| ty == "Reparameterization") {
            return;
        }
        let module = self
            .path
            .last()
            .map(|(_, ty)| ty.strip_prefix("Struct:").unwrap_or(ty).to_string())
            .unwrap_or_default();
        let top_level_linear =
            self.path.len() == 2 && self.path[0].1.starts_with("Struct:") && module == "Linear";
        self.found.push(Surveyed {
            path: self
                .path
                .iter()
                .map(|(name, _)| name.as_str())
                .collect::<Vec<_>>()
                .join("."),
            shape: param.lazy_shape().to_vec(),
            module,
            top_level_linear,
            quantized: false,
        });
    }
}

/// Attaches a quantizer to each selected parameter.
struct Attach<'a> {
    config: &'a QuantizerConfig,
    selected: HashMap<String, QuantAxis>,
    error: Option<QatError>,
}

impl Reparameterizer for &mut Attach<'_> {
    type Reparam = Quantizer;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Quantizer>) {
        if self.error.is_some() {
            return (param, None);
        }
        let Some(axis) = self.selected.get(path).copied() else {
            return (param, None);
        };
        let dims = param.shape().dims::<D>();
        let built = match (D, axis) {
            (2, QuantAxis::Weight) => {
                let weight: Tensor<2> = param.val().reshape([dims[0], dims[1]]);
                self.config.init_weight(&weight)
            }
            (2.., QuantAxis::OutputFirst) => self.config.init_output_first(&param.val()),
            _ => Err(QatError::unsupported(
                path,
                format!("a parameter of shape {dims:?}: quantized weights have 2 axes or more"),
            )),
        };
        match built {
            Ok(quantizer) => (param, Some(quantizer)),
            Err(e) => {
                self.error = Some(match e {
                    QatError::GroupSize { group_size, dim } => QatError::config(
                        "QuantConfig.granularity",
                        format!("PerGroup {{ size: {group_size} }}"),
                        format!(
                            "a group size that divides the input dimension {dim} of parameter \
                             `{path}`"
                        ),
                    ),
                    // A shape error names the parameter; other errors are returned as they are.
                    other => other.at(path),
                });
                (param, None)
            }
        }
    }
}

/// Whether a parameter of `module` may take `granularity`: a transposed convolution's kernel
/// is not output-first, so only per-tensor scales are right for it.
fn check_transposed(module: &str, path: &str, granularity: Granularity) -> Result<()> {
    if module.starts_with("ConvTranspose") && granularity != Granularity::PerTensor {
        return Err(QatError::unsupported(
            path,
            format!(
                "{granularity:?} scales for a {module} kernel [channels_in, channels_out / \
                 groups, k...]: only PerTensor"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantConfig, QuantFormat};

    #[test]
    fn default_selection_and_exclusions() {
        let r = QatReparameterizer::new(QuantConfig::ternary()).exclude(["head", "layers.0"]);
        assert!(r.selects("fc.weight", &[4, 4]));
        assert!(!r.selects("fc.bias", &[4]));
        assert!(r.selects("conv.weight", &[4, 4, 3, 3]));
        assert!(!r.selects("head.weight", &[4, 4]));
        assert!(r.selects("header.weight", &[4, 4]));
        assert!(!r.selects("layers.0.weight", &[4, 4]));
        assert!(r.selects("layers.01.weight", &[4, 4]));
        let custom = QatReparameterizer::new(QuantConfig::ternary())
            .with_filter(|path, dims| path.starts_with("attn") && dims.len() == 2);
        assert!(custom.selects("attn.q.weight", &[4, 4]));
        assert!(!custom.selects("mlp.weight", &[4, 4]));
    }

    #[test]
    fn a_group_size_that_does_not_divide_a_weight_names_its_path() {
        use crate::quant::Granularity;
        use burn::nn::LinearConfig;
        use burn::tensor::Device;

        let linear = LinearConfig::new(8, 8).init(&Device::flex());
        let quant = QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 3 });
        match QatReparameterizer::new(quant).apply(linear) {
            Err(QatError::Config {
                name,
                value,
                allowed,
            }) => {
                assert_eq!(name, "QuantConfig.granularity");
                assert_eq!(value, "PerGroup { size: 3 }");
                assert!(
                    allowed.contains("dimension 8 of parameter `weight`"),
                    "{allowed}"
                );
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn weights_that_have_a_quantizer_keep_it() {
        use crate::nn::{BitLinear, BitLinearConfig, Quantizer};
        use burn::nn::{Linear, LinearConfig};
        use burn::tensor::Device;

        #[derive(Module, Debug)]
        struct Net {
            bit: BitLinear,
            fc: Linear,
        }
        let device = Device::flex();
        let new_net = || Net {
            bit: BitLinearConfig::new(8, 8)
                .with_weight_quant(QuantConfig::int(4))
                .init(&device)
                .unwrap(),
            fc: LinearConfig::new(8, 8).init(&device),
        };
        let net = new_net();
        let format = |q: Option<&Quantizer>| q.unwrap().effective().0.format;
        let (net, _) = QatReparameterizer::new(QuantConfig::int(8))
            .quantize_head(true)
            .apply(net)
            .unwrap();
        let net = QatReparameterizer::new(QuantConfig::ternary())
            .exclude(["bit"])
            .apply(net);
        // The second call finds nothing left to quantize: the Linear keeps its int8 quantizer.
        assert!(
            matches!(
                &net,
                Err(QatError::Config { name, value, allowed })
                    if name == "QatReparameterizer.filter"
                        && value.contains("[\"bit\"]")
                        && allowed.contains("keep theirs")
            ),
            "{:?}",
            net.map(|_| ())
        );
        let (net, report) = QatReparameterizer::new(QuantConfig::ternary())
            .apply(new_net())
            .unwrap();
        assert_eq!(
            report.get("bit.weight").unwrap().outcome,
            Outcome::KeptQuantizer
        );
        assert_eq!(
            format(net.bit.weight_quantizer()),
            QuantFormat::Int { bits: 4 }
        );
        assert_eq!(
            format(net.fc.weight.reparameterization::<Quantizer>()),
            QuantFormat::Ternary
        );
        assert_eq!(crate::nn::quantizers(&net).len(), 3); // BitLinear's two, the Linear's one
    }
}
