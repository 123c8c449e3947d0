//! Finiteness checks: report NaN and infinite values instead of training a NaN model.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Int, Tensor};

use crate::error::{QatError, Result};
use crate::quant::layout::ScaleLayout;

/// Counts the NaN and infinite values of `tensor`; `Err(QatError::NonFinite)` when there are
/// any. This reads two numbers back from the device.
///
/// # Example
/// ```
/// use bitnet_qat::check::check_finite;
/// use burn::tensor::{Device, Tensor};
///
/// let t = Tensor::<1>::from_data([1.0, f32::NAN, f32::INFINITY], &Device::flex());
/// let err = check_finite(&t, "input").unwrap_err();
/// assert_eq!(err.to_string(), "input contains 1 NaN and 1 infinite values");
/// ```
pub fn check_finite<const D: usize>(tensor: &Tensor<D>, what: &str) -> Result<()> {
    let nan = tensor.clone().is_nan().int().sum().into_scalar::<i64>() as usize;
    let inf = tensor.clone().is_inf().int().sum().into_scalar::<i64>() as usize;
    if nan + inf > 0 {
        return Err(QatError::NonFinite {
            what: what.to_string(),
            nan,
            inf,
        });
    }
    Ok(())
}

/// Checks an RMSNorm epsilon: finite and positive, or [`QatError::NormEpsilon`].
pub(crate) fn check_norm_eps(eps: f64) -> Result<()> {
    if eps.is_finite() && eps > 0.0 {
        Ok(())
    } else {
        Err(QatError::NormEpsilon(eps))
    }
}

/// Checks that the last axis of a layer input has `d_input` elements.
pub(crate) fn check_last_dim<const D: usize>(
    input: &Tensor<D>,
    d_input: usize,
    what: &'static str,
) -> Result<()> {
    if input.dims()[D - 1] != d_input {
        return Err(QatError::Shape {
            what: what.into(),
            expected: format!("[..., {d_input}]"),
            got: input.dims().to_vec(),
        });
    }
    Ok(())
}

/// Checks every float parameter of `model` (the latent values of reparameterized ones; the
/// values of packed weights, not their empty structural bases) and names the first one that
/// holds NaN or infinite values.
///
/// # Example
/// ```
/// use bitnet_qat::check::check_model_finite;
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::tensor::Device;
///
/// let layer = BitLinearConfig::new(4, 2).init(&Device::flex()).unwrap();
/// assert!(check_model_finite(&layer).is_ok());
/// ```
pub fn check_model_finite<M: Module>(model: &M) -> Result<()> {
    let mut visitor = FiniteVisitor::default();
    model.visit(&mut visitor);
    visitor.flush();
    match visitor.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Checks everything a loaded model's forward pass relies on, so that a corrupted, truncated or
/// mismatched checkpoint is an error here rather than a panic later: every parameter finite
/// ([`check_model_finite`]), the recorded settings of every [`Quantizer`](crate::nn::Quantizer)
/// well formed (a weight quantizer's also fitting its weight), and the recorded layout of every
/// [`PackedWeight`](crate::infer::PackedWeight) well formed and consistent with its codes and
/// scales, which hold only codes 0 to 2 and finite positive scales.
///
/// # Errors
/// The first problem found: [`QatError::NonFinite`] naming the parameter, [`QatError::Record`]
/// naming the parameter path for malformed settings, layouts, codes or scales.
///
/// # Example
/// ```
/// use bitnet_qat::check::check_model;
/// use bitnet_qat::nn::BitLinearConfig;
/// use burn::tensor::Device;
///
/// let layers = vec![BitLinearConfig::new(256, 8).init(&Device::flex()).unwrap()];
/// assert!(check_model(&layers).is_ok());
/// assert!(check_model(&bitnet_qat::infer::pack(&layers).unwrap()).is_ok());
/// ```
pub fn check_model<M: Module>(model: &M) -> Result<()> {
    check_model_finite(model)?;
    for found in crate::nn::quantizers(model) {
        let settings_path = format!("{}.settings", found.path);
        let settings = found
            .quantizer
            .try_settings()
            .map_err(|e| e.at(&settings_path))?;
        // A weight quantizer's scales must fit its weight (a group that divides the inputs),
        // and a learned step must hold one value per scale.
        if let Some(weight) = &found.weight {
            let quant = settings.effective().0;
            crate::quant::validate_shape(&quant, &weight.dims(), 0).map_err(|e| {
                QatError::record(
                    &settings_path,
                    format!("settings that do not fit the weight: {e}"),
                )
            })?;
            if let Some(step) = &found.quantizer.step {
                let scales = ScaleLayout::new(quant.granularity, 0, weight.dims()).num_scales();
                let got = step.shape().dims::<1>()[0];
                if got != scales {
                    return Err(QatError::record(
                        format!("{}.step", found.path),
                        format!(
                            "a learned step of {got} values for {scales} scales ({:?} over a \
                             weight of {:?})",
                            quant.granularity,
                            weight.dims()
                        ),
                    ));
                }
            }
        }
    }
    let mut packed = PackedVisitor::default();
    model.visit(&mut packed);
    packed.error.map_or(Ok(()), Err)
}

/// Checks every packed weight (visited in field order: codes, scales, layout): its recorded
/// layout against the shapes of its codes and scales, and its values — codes 0 to 2 with zero
/// padding, scales finite and positive — as the kernels require (read back once).
#[derive(Default)]
struct PackedVisitor {
    path: Vec<(String, String)>,
    codes: Option<Tensor<2, Int>>,
    scales: Option<Tensor<1>>,
    error: Option<QatError>,
}

impl PackedVisitor {
    fn field(&self) -> Option<&str> {
        self.path
            .last()
            .filter(|(_, ty)| ty == "Struct:PackedWeight")
            .map(|(name, _)| name.as_str())
    }

    fn check(&mut self, layout: &Param<Tensor<1, Int>>) -> Result<()> {
        let (Some(codes), Some(scales)) = (self.codes.take(), self.scales.take()) else {
            return Err(QatError::record(
                "",
                "a packed weight without its codes or scales",
            ));
        };
        let layout =
            crate::infer::recorded_layout(layout, codes.dims(), scales.shape().num_elements())?;
        crate::infer::host_packed(layout, codes, scales).map(|_| ())
    }
}

impl ModuleVisitor for PackedVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.field() == Some("scales") {
            self.scales = Some(param.val().reshape([param.shape().num_elements()]));
        }
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        match self.field() {
            Some("codes") if D == 2 => {
                let dims = param.shape().dims::<D>();
                self.codes = Some(param.val().reshape([dims[0], dims[1]]));
            }
            Some("layout") if D == 1 && self.error.is_none() => {
                let layout = Param::initialized(
                    param.id,
                    param.val().reshape([param.shape().num_elements()]),
                );
                if let Err(e) = self.check(&layout) {
                    // The weight's path: the packed weight's fields are its codes, scales and
                    // layout.
                    let path: Vec<&str> = self.path[..self.path.len() - 1]
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect();
                    self.error = Some(e.at(&path.join(".")));
                }
            }
            _ => {}
        }
    }
}

/// Checks every float parameter for NaN and infinite values, except the structural bases of
/// packed weights (a zero broadcast to the weight's shape: checking it would allocate the f32
/// weight that packing removed). A parameter is checked when the next event shows it is not
/// one: Burn visits a packed weight's base just before it enters its `packed`
/// reparameterization.
#[derive(Default)]
struct FiniteVisitor {
    path: Vec<String>,
    /// The last float parameter visited, not yet checked: its path and its check.
    pending: Option<PendingCheck>,
    error: Option<QatError>,
}

/// A deferred check of one parameter.
type PendingCheck = Box<dyn FnOnce() -> Result<()>>;

impl FiniteVisitor {
    /// Runs the pending check, if any.
    fn flush(&mut self) {
        if let Some(check) = self.pending.take()
            && self.error.is_none()
            && let Err(e) = check()
        {
            self.error = Some(e);
        }
    }
}

impl ModuleVisitor for FiniteVisitor {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        if container_type == "Reparameterization"
            && name == <crate::infer::PackedWeight as burn::module::Reparameterization>::NAME
        {
            // The parameter visited last is the base of this packed weight: not checked.
            self.pending = None;
        } else {
            self.flush();
        }
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.flush();
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.flush();
        if self.error.is_none() {
            let base = param.base();
            let what = format!("parameter `{}`", self.path.join("."));
            self.pending = Some(Box::new(move || check_finite(&base, &what)));
        }
    }

    fn visit_int<const D: usize>(&mut self, _param: &Param<Tensor<D, Int>>) {
        self.flush();
    }
}
