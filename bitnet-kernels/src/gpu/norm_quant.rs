//! RMSNorm fused with the QAT fake quantization on the GPU (BitLinear's input), and its
//! gradients.

use super::fake_quant::Elementwise;
use super::kernels::{self, ROW_THREADS};
use super::{float_elem, grid};
use crate::fake_quant::NormQuant;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// RMSNorm then fake quantization per group, in `x`'s type: for each row of `x`'s last axis
/// (`gamma`'s length), `n = (x / rms) γ` with `rms = sqrt(Σ x² / d + norm_eps)`, then the
/// fake quantization of `spec.quant` of `n` with one scale per `spec.group` elements. One kernel,
/// one cube per row.
///
/// # Panics
/// For tensors past the kernels' 32-bit indices, a `gamma` whose length is not the row's, or a
/// group that does not divide the row.
pub fn norm_quantize(x: CubeTensor, gamma: CubeTensor, spec: NormQuant) -> CubeTensor {
    launch(x, gamma, None, spec, 0, false)
}

/// The gradient of [`norm_quantize`] for the incoming gradient `grad` (`x`'s shape and type)
/// through the standard STE, or the clipped one (`clipped`: `grad` is masked where
/// `qn <= u <= qp` fails): `g_n` that gradient, for `x` (`of_gamma` false)
/// `γ g_n / rms - x Σ(γ g_n x) / (d rms³)`, for `gamma` the terms `g_n x / rms` (`x`'s shape),
/// which the caller sums over the rows. One kernel.
///
/// # Panics
/// As [`norm_quantize`].
pub fn norm_quantize_grad(
    x: CubeTensor,
    gamma: CubeTensor,
    grad: CubeTensor,
    spec: NormQuant,
    clipped: bool,
    of_gamma: bool,
) -> CubeTensor {
    let output = if of_gamma { 2 } else { 1 };
    launch(x, gamma, Some(grad), spec, output, clipped)
}

fn launch(
    x: CubeTensor,
    gamma: CubeTensor,
    grad: Option<CubeTensor>,
    spec: NormQuant,
    output: u32,
    clipped: bool,
) -> CubeTensor {
    let Elementwise {
        x,
        grad,
        out,
        len,
        row_len,
        ..
    } = Elementwise::new(x, grad);
    let gamma_len = gamma.meta.shape().num_elements();
    assert_eq!(
        gamma_len, row_len,
        "norm quantization: a gain of {gamma_len} values for rows of {row_len}"
    );
    assert!(
        spec.group > 0 && row_len.is_multiple_of(spec.group),
        "norm quantization: groups of {} do not divide rows of {row_len}",
        spec.group
    );
    if len == 0 {
        return out;
    }
    let gamma = into_contiguous(gamma);
    let dtype = float_elem(x.dtype);
    let client = x.client.clone();
    let q = spec.quant;
    kernels::norm_quant_rows_kernel::launch(
        &client,
        grid(len / row_len),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        gamma.into_tensor_arg(),
        grad.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        (len / row_len) as u32,
        row_len as u32,
        spec.group as u32,
        spec.norm_eps as f32,
        q.qn as f32,
        q.qp as f32,
        q.eps as f32,
        q.abs_mean,
        q.centered,
        output,
        clipped,
        dtype,
    );
    out
}
