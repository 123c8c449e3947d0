//! The fused QAT fake quantization on the GPU and the backward factors of its STEs.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::kernels::{self, ROW_THREADS};
use super::{check_indexable, dims, empty_like, float_elem, grid};
use crate::fake_quant::FakeQuant;

/// Elements of a per-tensor partial reduction per cube.
const CHUNK: usize = 16 * ROW_THREADS as usize;

/// Fused fake quantization of a float tensor for QAT: `y = clamp(round_half_even(x s), qn, qp)
/// / s`, or `sign((x - mean(x)) s) / s` when `centered` (see [`FakeQuant`]), in `x`'s type.
/// Per row: one kernel; per tensor: partial reduction, (scale,) apply — two passes over the
/// data; the scale kernel only past `ROW_THREADS` chunks of `CHUNK` elements (1 Mi).
pub fn fake_quantize(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, None, quant, 0, 1.0)
}

/// The soft STE's forward value: the staircase `qn + Σ_k σ((u - t_k) / T)` over the thresholds
/// `t_k = qn + k + 1/2` (binary: `2 σ(u / T) - 1`) divided by `s`, with `u = (x - center) s` as
/// in [`fake_quantize`], in `x`'s type.
pub fn soft_quantize(x: CubeTensor, quant: FakeQuant, temperature: f64) -> CubeTensor {
    scaled_elementwise(x, None, quant, 3, temperature as f32)
}

/// The clipped STE's gradient of [`fake_quantize`] with the same quantizer: `grad` where
/// `qn <= u <= qp` for `u = (x - center) s`, 0 elsewhere, in `x`'s type (`grad` has `x`'s
/// shape and type).
pub fn clipped_grad(x: CubeTensor, grad: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, Some(grad), quant, 1, 0.0)
}

/// The adaptive (EWGS) STE's gradient of [`fake_quantize`] with the same quantizer:
/// `grad + delta |grad| e`, with `e = clamp(u) - code` the rounding residual of
/// `u = (x - center) s`, in `x`'s type.
pub fn adaptive_grad(x: CubeTensor, grad: CubeTensor, quant: FakeQuant, delta: f64) -> CubeTensor {
    scaled_elementwise(x, Some(grad), quant, 2, delta as f32)
}

/// The soft STE's gradient: `grad` times the slope of [`soft_quantize`] with respect to `x`
/// (`Σ_k σ_k (1 - σ_k) / T`, binary `2 σ (1 - σ) / T`), in `x`'s type.
pub fn soft_grad(
    x: CubeTensor,
    grad: CubeTensor,
    quant: FakeQuant,
    temperature: f64,
) -> CubeTensor {
    scaled_elementwise(x, Some(grad), quant, 4, temperature as f32)
}

/// The operands of an elementwise fake-quantization kernel.
pub(super) struct Elementwise {
    /// The input, contiguous.
    pub(super) x: CubeTensor,
    /// The incoming gradient, contiguous; a forward pass passes `x` in its place, which the
    /// kernels never read.
    pub(super) grad: CubeTensor,
    /// The output: `x`'s shape and type.
    pub(super) out: CubeTensor,
    /// Elements of `x`.
    pub(super) len: usize,
    /// Length of `x`'s last axis (at least 1).
    pub(super) row_len: usize,
    /// Whether `grad` is the incoming gradient (a backward pass).
    pub(super) backward: bool,
}

impl Elementwise {
    /// # Panics
    /// For tensors past the kernels' 32-bit indices.
    pub(super) fn new(x: CubeTensor, grad: Option<CubeTensor>) -> Self {
        check_indexable("fake quantization", &[&x]);
        let x = into_contiguous(x);
        let backward = grad.is_some();
        let grad = grad.map_or_else(|| x.clone(), into_contiguous);
        let shape = dims(&x);
        let row_len = shape.last().copied().unwrap_or(1).max(1);
        let out = empty_like(&x, shape.clone(), x.dtype);
        Self {
            len: shape.iter().product(),
            row_len,
            x,
            grad,
            out,
            backward,
        }
    }
}

/// [`fake_quantize`] (`output` 0) or [`soft_quantize`] (3), or with `grad` the gradients of
/// [`clipped_grad`] (1), [`adaptive_grad`] (2) and [`soft_grad`] (4); `param` is the
/// temperature or EWGS's delta.
fn scaled_elementwise(
    x: CubeTensor,
    grad: Option<CubeTensor>,
    quant: FakeQuant,
    output: u32,
    param: f32,
) -> CubeTensor {
    let FakeQuant {
        qn,
        qp,
        eps,
        abs_mean,
        per_row,
        centered,
    } = quant;
    let Elementwise {
        x,
        grad,
        out,
        len,
        row_len,
        backward,
    } = Elementwise::new(x, grad);
    let dtype = float_elem(x.dtype);
    if len == 0 {
        return out;
    }
    let (qn, qp, eps) = (qn as f32, qp as f32, eps as f32);
    let client = x.client.clone();
    if per_row {
        kernels::fake_quant_rows_kernel::launch(
            &client,
            grid(len / row_len),
            CubeDim::new_1d(ROW_THREADS),
            x.into_tensor_arg(),
            grad.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (len / row_len) as u32,
            row_len as u32,
            qn,
            qp,
            eps,
            param,
            abs_mean,
            centered,
            output,
            backward,
            dtype,
        );
        return out;
    }
    let chunks = len.div_ceil(CHUNK);
    // Centered (binary): the plain sums follow the statistics, the center the scale.
    let slots = if centered { 2 } else { 1 };
    let partials = empty_like(&x, vec![chunks * slots], DType::F32);
    kernels::abs_partials_kernel::launch(
        &client,
        grid(chunks),
        CubeDim::new_1d(ROW_THREADS),
        x.clone().into_tensor_arg(),
        partials.clone().into_tensor_arg(),
        len as u32,
        CHUNK as u32,
        chunks as u32,
        abs_mean,
        centered,
        dtype,
    );
    // Up to one partial per thread, each cube of the apply pass reduces them itself.
    let fold = chunks <= ROW_THREADS as usize;
    let stats = if fold {
        partials
    } else {
        let scale = empty_like(&x, vec![slots], DType::F32);
        kernels::scale_kernel::launch(
            &client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(ROW_THREADS),
            partials.into_tensor_arg(),
            scale.clone().into_tensor_arg(),
            chunks as u32,
            len as u32,
            qp,
            eps,
            abs_mean,
            centered,
        );
        scale
    };
    kernels::apply_scale_kernel::launch(
        &client,
        grid(chunks),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        grad.into_tensor_arg(),
        stats.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        CHUNK as u32,
        chunks as u32,
        qn,
        qp,
        eps,
        param,
        abs_mean,
        centered,
        fold,
        output,
        backward,
        dtype,
    );
    out
}

/// LSQ's fake quantization on the GPU, `round_half_even(clamp(x / step, qn, qp)) * step`, with
/// `step` one value per row of the last axis (`per_row`) or one in all, in `x`'s type (`step`
/// must have it too).
pub fn lsq(x: CubeTensor, step: CubeTensor, qn: i32, qp: i32, per_row: bool) -> CubeTensor {
    lsq_elementwise(x, step, None, qn, qp, per_row, 0)
}

/// The terms of LSQ's gradients for the incoming gradient `grad` of [`lsq`] (same shape and
/// type as `x`), with `v = x / step`: for `x` (`of_step` false) `grad` where `qn <= v <= qp`,
/// else 0; for the step (`of_step`) `grad` times `round(v) - v` inside and `qn` / `qp`
/// outside, which the caller sums per step.
pub fn lsq_grad(
    x: CubeTensor,
    step: CubeTensor,
    grad: CubeTensor,
    qn: i32,
    qp: i32,
    per_row: bool,
    of_step: bool,
) -> CubeTensor {
    let output = if of_step { 2 } else { 1 };
    lsq_elementwise(x, step, Some(grad), qn, qp, per_row, output)
}

/// [`lsq`] (`output` 0) or [`lsq_grad`] (1: of `x`, 2: the step's terms).
fn lsq_elementwise(
    x: CubeTensor,
    step: CubeTensor,
    grad: Option<CubeTensor>,
    qn: i32,
    qp: i32,
    per_row: bool,
    output: u32,
) -> CubeTensor {
    let Elementwise {
        x,
        grad,
        out,
        len,
        row_len,
        ..
    } = Elementwise::new(x, grad);
    if len == 0 {
        return out;
    }
    let step = into_contiguous(step);
    let dtype = float_elem(x.dtype);
    let client = x.client.clone();
    kernels::lsq_kernel::launch(
        &client,
        grid(len.div_ceil(ROW_THREADS as usize)),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        step.into_tensor_arg(),
        grad.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        row_len as u32,
        qn as f32,
        qp as f32,
        per_row,
        output,
        dtype,
    );
    out
}
