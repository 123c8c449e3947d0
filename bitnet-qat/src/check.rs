//! Finiteness checks: report NaN and infinite values instead of training a NaN model.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

use crate::error::{QatError, Result};

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

/// Checks that the last axis of a layer input has `d_input` elements.
pub(crate) fn check_last_dim<const D: usize>(
    input: &Tensor<D>,
    d_input: usize,
    what: &'static str,
) -> Result<()> {
    if input.dims()[D - 1] != d_input {
        return Err(QatError::Shape {
            what,
            expected: format!("[..., {d_input}]"),
            got: input.dims().to_vec(),
        });
    }
    Ok(())
}

/// Checks every float parameter of `model` (the latent values of reparameterized ones) and
/// names the first one that holds NaN or infinite values.
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
    match visitor.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[derive(Default)]
struct FiniteVisitor {
    path: Vec<String>,
    error: Option<QatError>,
}

impl ModuleVisitor for FiniteVisitor {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.error.is_none()
            && let Err(e) = check_finite(
                &param.base(),
                &format!("parameter `{}`", self.path.join(".")),
            )
        {
            self.error = Some(e);
        }
    }
}
