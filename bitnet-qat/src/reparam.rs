//! Quantization-aware training for any Burn model in one call.
//!
//! [`QatReparameterizer`] attaches a [`Quantizer`] to the weights of an existing model through
//! Burn's [`Module::apply_reparameterization`]. After that, `param.val()` (what the model's own
//! layers read) is the fake-quantized weight, and the latent weight (`param.base()`) receives
//! the STE gradient. No layer code changes.
//!
//! # What it does not do
//! - It quantizes **weights only**. The activations of an arbitrary model are not quantized,
//!   because a parameter hook cannot see them. For the full BitNet W1.58A8 recipe (RMSNorm,
//!   8-bit per-token activations, ternary weights) build the model with
//!   [`BitLinear`](crate::nn::BitLinear).
//! - Scales assume Burn's `[d_input, d_output]` weight layout (`Linear`): `PerChannel` is one
//!   scale per output and `PerGroup` groups consecutive inputs. For other 2-D weights, use
//!   `PerTensor` (the default of [`QuantConfig::ternary`](crate::quant::QuantConfig::ternary)).
//! - Embeddings and output heads are quantized unless excluded; keep them in full precision
//!   with [`QatReparameterizer::exclude`].

use burn::module::{Module, Param, Reparameterizer};
use burn::tensor::Tensor;

use crate::error::{QatError, Result};
use crate::nn::{Quantizer, QuantizerConfig};

/// A custom parameter filter: `(path, shape) -> quantize?`.
pub type ParamFilter = fn(&str, &[usize]) -> bool;

/// Makes the weights of any Burn model quantization-aware.
///
/// By default every 2-D parameter whose name is `weight` is quantized.
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantConfig;
/// use bitnet_qat::reparam::QatReparameterizer;
/// use burn::module::Module;
/// use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
/// use burn::tensor::Device;
///
/// #[derive(Module, Debug)]
/// struct Net {
///     embedding: Embedding,
///     hidden: Linear,
///     head: Linear,
/// }
///
/// let device = Device::flex().autodiff();
/// let net = Net {
///     embedding: EmbeddingConfig::new(100, 16).init(&device),
///     hidden: LinearConfig::new(16, 16).init(&device),
///     head: LinearConfig::new(16, 100).init(&device),
/// };
/// // Ternary hidden layers; embedding and output head stay in full precision.
/// let net = QatReparameterizer::new(QuantConfig::ternary())
///     .exclude(["embedding", "head"])
///     .apply(net)
///     .unwrap();
/// assert!(net.hidden.weight.reparameterization::<bitnet_qat::nn::Quantizer>().is_some());
/// assert!(net.head.weight.reparameterization::<bitnet_qat::nn::Quantizer>().is_none());
/// ```
#[derive(Debug, Clone)]
pub struct QatReparameterizer {
    config: QuantizerConfig,
    exclude: Vec<String>,
    filter: Option<ParamFilter>,
    quantized: Vec<String>,
    /// Weights that already carry a quantizer (a `BitLinear`'s): they keep it.
    attached: Vec<String>,
    error: Option<QatError>,
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
            quantized: Vec::new(),
            attached: Vec::new(),
            error: None,
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

    /// Replaces the default selection (2-D parameters named `weight`) with `filter`.
    /// Exclusions still apply.
    pub fn with_filter(mut self, filter: ParamFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Applies the reparameterization to `model`. Weights that already carry a quantizer (a
    /// [`BitLinear`](crate::nn::BitLinear)'s, or one attached by an earlier call) keep it.
    ///
    /// Returns the first configuration error (an invalid quantizer, a group size that does not
    /// divide a selected weight's input dimension), or an error if no parameter was selected.
    ///
    /// # Errors
    /// As [`Ste::validate`](crate::ste::Ste::validate) for an invalid quantizer;
    /// [`QatError::Config`] of `QuantConfig.granularity` for a group size that does not divide
    /// a selected weight's input dimension (naming the parameter path in `allowed`);
    /// [`QatError::Shape`] naming the parameter for a selected parameter that is not 2-D;
    /// [`QatError::Config`] of `QatReparameterizer.filter` when no parameter was selected.
    pub fn apply<M: Module>(mut self, model: M) -> Result<M> {
        self.config.ste.validate(&self.config.quant)?;
        self.attached = crate::nn::quantizers(&model)
            .iter()
            .filter_map(|found| found.weight_path().map(str::to_string))
            .collect();
        let model = model.apply_reparameterization(&mut self);
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.quantized.is_empty() {
            let filter = if self.filter.is_some() {
                "a custom filter"
            } else {
                "the default filter (2-D parameters named `weight`)"
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
        Ok(model)
    }

    /// Whether the parameter at `path` with shape `dims` is quantized.
    pub fn selects(&self, path: &str, dims: &[usize]) -> bool {
        let excluded = self.exclude.iter().any(|p| {
            path == p
                || path
                    .strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
        });
        if excluded {
            return false;
        }
        match self.filter {
            Some(filter) => filter(path, dims),
            None => dims.len() == 2 && path.rsplit('.').next() == Some("weight"),
        }
    }
}

impl Reparameterizer for &mut QatReparameterizer {
    type Reparam = Quantizer;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Quantizer>) {
        let dims = param.shape().dims::<D>();
        if self.error.is_some()
            || !self.selects(path, &dims)
            || self.attached.iter().any(|p| p == path)
        {
            return (param, None);
        }
        let built = match D {
            2 => {
                let weight: Tensor<2> = param.val().reshape([dims[0], dims[1]]);
                self.config.init_weight(&weight)
            }
            _ => Err(QatError::Shape {
                what: "reparameterized parameter".into(),
                expected: "a 2-D weight [d_input, d_output]".into(),
                got: dims.to_vec(),
            }),
        };
        match built {
            Ok(quantizer) => {
                self.quantized.push(path.to_string());
                (param, Some(quantizer))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantConfig, QuantFormat};

    #[test]
    fn default_selection_and_exclusions() {
        let r = QatReparameterizer::new(QuantConfig::ternary()).exclude(["head", "layers.0"]);
        assert!(r.selects("fc.weight", &[4, 4]));
        assert!(!r.selects("fc.bias", &[4]));
        assert!(!r.selects("conv.weight", &[4, 4, 3, 3]));
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
        let net = QatReparameterizer::new(QuantConfig::int(8))
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
        let net = QatReparameterizer::new(QuantConfig::ternary())
            .apply(new_net())
            .unwrap();
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
