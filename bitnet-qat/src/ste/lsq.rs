//! Learned step size quantization (LSQ).

use burn::tensor::Tensor;

/// LSQ's gradient scale `1 / sqrt(N * Q_p)` for a step shared by `n` elements.
///
/// # Example
/// ```
/// assert_eq!(bitnet_qat::ste::lsq_grad_scale(64, 1), 0.125);
/// ```
pub fn lsq_grad_scale(n: usize, qp: i32) -> f64 {
    1.0 / ((n.max(1) as f64) * (qp.max(1) as f64)).sqrt()
}

/// LSQ fake quantization: `round(clamp(x / step, Q_n, Q_p)) * step`.
///
/// `step` must broadcast against `x` (one value per scale). The gradients are LSQ's:
/// `dq/dx = 1` inside the code range and 0 outside; `dq/dstep = round(v) - v` inside
/// (`v = x / step`), `Q_n` below and `Q_p` above, multiplied by `grad_scale`.
///
/// # Example
/// ```
/// use bitnet_qat::ste::lsq_quantize;
/// use burn::tensor::{Device, Tensor};
///
/// let device = Device::flex().autodiff();
/// let x = Tensor::<1>::from_data([0.3, -2.0], &device).require_grad();
/// let step = Tensor::<1>::from_data([0.5], &device).require_grad();
/// let q = lsq_quantize(x.clone(), step.clone(), -1, 1, 1.0);
/// let grads = q.sum().backward();
/// let gs: Vec<f32> = step.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap();
/// // 0.3/0.5 = 0.6 -> round 1, gradient 1 - 0.6; -4 clamps to -1, gradient -1.
/// assert!((gs[0] - (0.4 - 1.0)).abs() < 1e-6);
/// ```
pub fn lsq_quantize<const D: usize>(
    x: Tensor<D>,
    step: Tensor<D>,
    qn: i32,
    qp: i32,
    grad_scale: f64,
) -> Tensor<D> {
    // Forward value `step`, gradient `grad_scale * dstep`.
    let scaled = step.clone().mul_scalar(grad_scale);
    let step = scaled.clone() + (step - scaled).detach();
    let v = (x / step.clone()).clamp(qn, qp);
    // Round with an identity gradient; the value is exactly round(v).
    let rounded = v.clone().detach().round() + (v.clone() - v.detach());
    rounded * step
}
