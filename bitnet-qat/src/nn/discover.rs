//! Finding and updating the quantizers of any Burn model through its parameters.
//!
//! A [`Quantizer`] records its settings in an integer parameter (`settings`), so Burn's own
//! traversals ([`ModuleVisitor`], [`ModuleMapper`]) reach every quantizer of every model —
//! fields of a [`BitLinear`](super::BitLinear), reparameterizations of any layer's weights,
//! inside `Vec`s, `Option`s, enums and burn-nn's own modules — with no trait to implement.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, Reparameterization};
use burn::tensor::{Int, Tensor};

use super::Quantizer;
use super::settings::QuantizerSettings;
use crate::error::Result;

/// The container type Burn's traversals report for the fields of a [`Quantizer`].
pub(crate) const QUANTIZER: &str = "Struct:Quantizer";
/// The container type Burn reports when it enters a parameter's reparameterization.
const REPARAMETERIZATION: &str = "Reparameterization";

/// A quantizer found in a model by [`quantizers`].
#[derive(Debug, Clone)]
pub struct FoundQuantizer {
    /// The module path of the quantizer: `"fc.weight.qat"` for the quantizer of a weight,
    /// `"fc.activation_quantizer"` for a field.
    pub path: String,
    /// The quantizer (its parameters are shared with the model's, not copied).
    pub quantizer: Quantizer,
    /// The latent weight it quantizes, as its linear view `[d_input, d_output]`, when it is
    /// attached to a parameter (a weight quantizer of a [`BitLinear`](super::BitLinear), a
    /// drop-in layer or a reparameterized layer): a 2-D weight as it is, a convolution kernel
    /// `[channels_out, channels_in / groups, k...]` as [`linear_view`](super::linear_view)
    /// gives it, `[channels_in / groups · k..., channels_out]` — the tensor its quantizer
    /// quantizes along axis 0 either way.
    pub weight: Option<Tensor<2>>,
}

impl FoundQuantizer {
    /// The path of the weight parameter this quantizer is attached to (`"fc.weight"` for
    /// `"fc.weight.qat"`), `None` for an activation quantizer.
    pub fn weight_path(&self) -> Option<&str> {
        self.weight.as_ref()?;
        self.path
            .strip_suffix(<Quantizer as Reparameterization>::NAME)?
            .strip_suffix('.')
    }
}

/// Every quantizer of `model`, in traversal order, with the weight it quantizes.
///
/// # Example
/// ```
/// use bitnet_qat::nn::{BitLinearConfig, quantizers};
/// use burn::tensor::Device;
///
/// let layers = vec![
///     BitLinearConfig::new(8, 8).init(&Device::flex()).unwrap(),
///     BitLinearConfig::new(8, 2).init(&Device::flex()).unwrap(),
/// ];
/// let found = quantizers(&layers);
/// // Each layer: its weight quantizer, then its activation quantizer.
/// let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
/// assert_eq!(paths, ["0.weight.qat", "0.activation_quantizer", "1.weight.qat", "1.activation_quantizer"]);
/// assert_eq!(found[2].weight.as_ref().unwrap().dims(), [8, 2]);
/// ```
pub fn quantizers<M: Module>(model: &M) -> Vec<FoundQuantizer> {
    let mut finder = Finder::default();
    model.visit(&mut finder);
    finder.found
}

/// `model` with the settings of every quantizer replaced by `f(path, settings)` (the path as
/// [`quantizers`] reports it), in one pass: what [`QatScheduler`](crate::schedule::QatScheduler)
/// does for all quantizers, for your own per-layer choices. Only the schedule values (`lambda`,
/// `temperature`, `format`) may change; the configuration is the quantizer's.
///
/// # Errors
/// The first error of `f`; [`crate::QatError::Unsupported`] (naming the quantizer's path) if
/// `f` changes a quantizer's configuration; [`crate::QatError::Record`] (naming the settings
/// parameter) for a quantizer whose recorded settings are malformed. The model is dropped
/// then.
///
/// # Example
/// ```
/// use bitnet_qat::nn::{BitLinearConfig, update_quantizers};
/// use burn::tensor::Device;
///
/// let layers = vec![BitLinearConfig::new(8, 8).init(&Device::flex()).unwrap()];
/// // Full precision for the first layer's weights only.
/// let layers = update_quantizers(layers, |path, s| {
///     Ok(if path == "0.weight.qat" { s.clone().with_lambda(0.0) } else { s.clone() })
/// })
/// .unwrap();
/// assert_eq!(layers[0].weight_quantizer().unwrap().settings().lambda, 0.0);
/// assert_eq!(layers[0].activation_quantizer.as_ref().unwrap().settings().lambda, 1.0);
/// ```
pub fn update_quantizers<M: Module>(
    model: M,
    f: impl FnMut(&str, &QuantizerSettings) -> Result<QuantizerSettings>,
) -> Result<M> {
    let mut mapper = SettingsMapper {
        path: Vec::new(),
        f,
        error: None,
    };
    let model = model.map(&mut mapper);
    match mapper.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// Whether the innermost entered module is the `settings` field of a [`Quantizer`].
fn at_settings(path: &[(String, String)]) -> bool {
    path.last()
        .is_some_and(|(name, ty)| name == "settings" && ty == QUANTIZER)
}

/// A visited weight: a 2-D parameter as it is stored (its linear view for a
/// [`QuantAxis::Weight`](super::QuantAxis::Weight) quantizer, transposed for an output-first
/// one), or the linear view of a parameter of 3 axes or more.
#[derive(Clone)]
struct Weight {
    tensor: Tensor<2>,
    /// Whether `tensor` is a 2-D parameter as it is stored (not a view).
    stored: bool,
}

#[derive(Default)]
struct Finder {
    /// `(name, container type)` of every module entered.
    path: Vec<(String, String)>,
    /// The last float parameter visited, with the depth it was visited at: the base of a
    /// reparameterized parameter is visited just before Burn enters its reparameterization.
    last_float: Option<(usize, Option<Weight>)>,
    /// The weight of the reparameterization being visited, by the depth it was entered at.
    weights: Vec<(usize, Weight)>,
    /// The `step` of the quantizer being visited (it comes before `settings`), by the depth of
    /// its quantizer.
    step: Option<(usize, Param<Tensor<1>>)>,
    found: Vec<FoundQuantizer>,
}

impl ModuleVisitor for Finder {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == REPARAMETERIZATION
            && name == <Quantizer as Reparameterization>::NAME
            && let Some((depth, Some(weight))) = self.last_float.take()
            && depth == self.path.len()
        {
            self.weights.push((depth + 1, weight));
        }
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.weights.retain(|(depth, _)| *depth < self.path.len());
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let in_quantizer = self
            .path
            .last()
            .is_some_and(|(name, ty)| name == "step" && ty == QUANTIZER);
        if D == 1 && in_quantizer {
            let step = param.val();
            let step: Tensor<1> = step.reshape([param.shape().num_elements()]);
            let param = Param::initialized(param.id, step);
            self.step = Some((self.path.len() - 1, param));
            return;
        }
        let weight = match D {
            2 => {
                let dims = param.shape().dims::<D>().to_vec();
                Some(Weight {
                    tensor: param.base().reshape([dims[0], dims[1]]),
                    stored: true,
                })
            }
            3.. => Some(Weight {
                tensor: super::linear_view(param.base()),
                stored: false,
            }),
            _ => None,
        };
        self.last_float = Some((self.path.len(), weight));
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        if D != 1 || !at_settings(&self.path) {
            return;
        }
        let depth = self.path.len() - 1;
        let settings: Tensor<1, Int> = param.val().reshape([param.shape().num_elements()]);
        let settings = Param::initialized(param.id, settings);
        let step = match self.step.take() {
            Some((d, step)) if d == depth => Some(step),
            _ => None,
        };
        let quantizer = Quantizer::from_params(step, settings);
        let weight = match self.weights.last() {
            Some((d, w)) if *d == depth => {
                let w = w.clone();
                // Malformed settings are reported by whoever reads them; the weight is then
                // given as it is stored.
                let output_first = w.stored
                    && quantizer
                        .try_settings()
                        .is_ok_and(|s| s.axis == super::QuantAxis::OutputFirst);
                let tensor = if output_first {
                    w.tensor.transpose()
                } else {
                    w.tensor
                };
                Some(tensor)
            }
            _ => None,
        };
        let path = self.path[..depth]
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(".");
        self.found.push(FoundQuantizer {
            path,
            quantizer,
            weight,
        });
    }
}

struct SettingsMapper<F> {
    path: Vec<(String, String)>,
    f: F,
    error: Option<crate::QatError>,
}

impl<F: FnMut(&str, &QuantizerSettings) -> Result<QuantizerSettings>> ModuleMapper
    for SettingsMapper<F>
{
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        if D != 1 || self.error.is_some() || !at_settings(&self.path) {
            return param;
        }
        let device = param.lazy_device();
        let current = Param::initialized(
            param.id,
            param.val().reshape([param.shape().num_elements()]),
        );
        let path = self.path[..self.path.len() - 1]
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(".");
        let updated = QuantizerSettings::of(&current)
            .map_err(|e| e.at(&format!("{path}.settings")))
            .and_then(|old| {
                let new = (self.f)(&path, &old)?;
                if (&new.quant, new.ste, new.axis, new.learned_step)
                    != (&old.quant, old.ste, old.axis, old.learned_step)
                {
                    return Err(crate::QatError::unsupported(
                        path.as_str(),
                        "update_quantizers may change lambda, temperature and format, not the \
                         quantizer's configuration (quantizer, STE, axis, learned step)",
                    ));
                }
                Ok((new != *old).then_some(new))
            });
        match updated {
            // Unchanged: the same parameter (same id, no new tensor).
            Ok(None) => param,
            Ok(Some(settings)) => {
                let new = settings.to_param(&device);
                let id = new.id;
                let value: Tensor<1, Int> = new.val();
                Param::initialized(id, value.reshape(param.shape()))
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::QatError;
    use crate::nn::BitLinearConfig;
    use crate::ste::Ste;
    use burn::tensor::Device;

    #[test]
    fn changing_a_quantizer_configuration_is_unsupported() {
        let layers = vec![BitLinearConfig::new(8, 8).init(&Device::flex()).unwrap()];
        let paths: Vec<String> = quantizers(&layers).into_iter().map(|q| q.path).collect();
        let result = update_quantizers(layers, |_, s| {
            let mut s = s.clone();
            s.ste = Ste::Clipped;
            Ok(s)
        });
        match result {
            Err(QatError::Unsupported { layer, reason }) => {
                assert!(paths.contains(&layer), "{layer} in {paths:?}");
                assert!(
                    reason.contains("lambda, temperature and format"),
                    "{reason}"
                );
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
}
