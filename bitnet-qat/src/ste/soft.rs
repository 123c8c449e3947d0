//! The soft (temperature) staircase.

use burn::tensor::Tensor;
use burn::tensor::activation::sigmoid;

use crate::quant::QuantFormat;

/// The differentiable staircase of [`Ste::Soft`](super::Ste::Soft), on the integer grid.
///
/// For binary: `2 sigmoid(u / T) - 1`. Otherwise `Q_n + sum_k sigmoid((u - t_k) / T)` over the
/// rounding thresholds `t_k = Q_n + k + 1/2`, `k = 0 .. Q_p - Q_n`; far outside the code range
/// the sum saturates at `Q_n` and `Q_p`, like the clamp of the hard quantizer.
///
/// # Example
/// ```
/// use bitnet_qat::quant::QuantFormat;
/// use bitnet_qat::ste::soft_staircase;
/// use burn::tensor::{Device, Tensor};
///
/// let u = Tensor::<1>::from_data([-1.3, -0.2, 0.7, 3.0], &Device::flex());
/// let s: Vec<f32> = soft_staircase(u, QuantFormat::Ternary, 1e-3).into_data().try_to_vec::<f32>().unwrap();
/// assert_eq!(s, vec![-1.0, 0.0, 1.0, 1.0]);
/// ```
pub fn soft_staircase<const D: usize>(
    u: Tensor<D>,
    format: QuantFormat,
    temperature: f64,
) -> Tensor<D> {
    let inv_t = 1.0 / temperature;
    match format {
        QuantFormat::Binary => sigmoid(u.mul_scalar(inv_t)).mul_scalar(2.0).sub_scalar(1.0),
        QuantFormat::Ternary | QuantFormat::Int { .. } => {
            let (qn, qp) = format.code_range();
            let mut acc = u.zeros_like().add_scalar(qn);
            for k in 0..(qp - qn) {
                let threshold = qn as f64 + k as f64 + 0.5;
                acc = acc + sigmoid(u.clone().sub_scalar(threshold).mul_scalar(inv_t));
            }
            acc
        }
    }
}
