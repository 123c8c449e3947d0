//! The fused QAT fake quantization on the GPU and the backward factors of its STEs.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::kernels::{self, ROW_THREADS};
use super::{float_elem, grid};
use crate::fake_quant::FakeQuant;

/// Elements of a per-tensor partial reduction per cube.
const CHUNK: usize = 16 * ROW_THREADS as usize;

/// Fused fake quantization of a float tensor for QAT: `y = clamp(round_half_even(x s), qn, qp)
/// / s`, or `sign((x - mean(x)) s) / s` when `centered` (see [`FakeQuant`]), in `x`'s type.
/// Per row: one kernel; per tensor: partial reduction, (scale,) apply — two passes over the
/// data; the scale kernel only past `ROW_THREADS` chunks of `CHUNK` elements (1 Mi).
pub fn fake_quantize(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 0, 1.0)
}

/// The clipped STE's gradient mask for [`fake_quantize`] with the same quantizer: 1 where
/// `qn <= u <= qp` for `u = (x - center) s`, 0 elsewhere, in `x`'s type.
pub fn clip_mask(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 1, 1.0)
}

/// The rounding residual of [`fake_quantize`] with the same quantizer, `clamp(u) - code` for
/// `u = (x - center) s` (what the EWGS STE scales its gradient by), in `x`'s type.
pub fn rounding_residual(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 2, 1.0)
}

/// The soft STE's forward value: the staircase `qn + Σ_k σ((u - t_k) / T)` over the thresholds
/// `t_k = qn + k + 1/2` (binary: `2 σ(u / T) - 1`) divided by `s`, with `u = (x - center) s` as
/// in [`fake_quantize`], in `x`'s type.
pub fn soft_quantize(x: CubeTensor, quant: FakeQuant, temperature: f64) -> CubeTensor {
    scaled_elementwise(x, quant, 3, temperature as f32)
}

/// The slope of [`soft_quantize`] with respect to `x` (`Σ_k σ_k (1 - σ_k) / T`, binary
/// `2 σ (1 - σ) / T`): the soft STE's gradient factor.
pub fn soft_slope(x: CubeTensor, quant: FakeQuant, temperature: f64) -> CubeTensor {
    scaled_elementwise(x, quant, 4, temperature as f32)
}

/// [`fake_quantize`] (`output` 0), [`clip_mask`] (1), [`rounding_residual`] (2),
/// [`soft_quantize`] (3) or [`soft_slope`] (4) at temperature `t`.
fn scaled_elementwise(x: CubeTensor, quant: FakeQuant, output: u32, t: f32) -> CubeTensor {
    let FakeQuant {
        qn,
        qp,
        eps,
        abs_mean,
        per_row,
        centered,
    } = quant;
    let x = into_contiguous(x);
    let shape = x.meta.shape().clone();
    let len = shape.num_elements();
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    let dtype = float_elem(x.dtype);
    if len == 0 {
        return out;
    }
    let (qn, qp, eps) = (qn as f32, qp as f32, eps as f32);
    let client = x.client.clone();
    if per_row {
        let row_len = shape[shape.num_dims() - 1].max(1);
        kernels::fake_quant_rows_kernel::launch(
            &client,
            grid(len / row_len),
            CubeDim::new_1d(ROW_THREADS),
            x.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            (len / row_len) as u32,
            row_len as u32,
            qn,
            qp,
            eps,
            t,
            abs_mean,
            centered,
            output,
            dtype,
        );
        return out;
    }
    let chunks = len.div_ceil(CHUNK);
    // Centered (binary): the plain sums follow the statistics, the center the scale.
    let slots = if centered { 2 } else { 1 };
    let partials = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([chunks * slots]),
        DType::F32,
    );
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
        let scale = empty_device_dtype(
            client.clone(),
            x.device.clone(),
            Shape::new([slots]),
            DType::F32,
        );
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
        stats.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        CHUNK as u32,
        chunks as u32,
        qn,
        qp,
        eps,
        t,
        abs_mean,
        centered,
        fold,
        output,
        dtype,
    );
    out
}

/// LSQ's fake quantization on the GPU (`output` 0: `round_half_even(clamp(x / step, qn, qp)) *
/// step`) or its backward factors (1: the inside mask; 2: the step factor, `round(v) - v`
/// inside, `qn` / `qp` outside), with `step` one value per row of the last axis (`per_row`) or
/// one in all, in `x`'s type (`step` must have it too).
pub fn lsq(
    x: CubeTensor,
    step: CubeTensor,
    qn: i32,
    qp: i32,
    per_row: bool,
    output: u32,
) -> CubeTensor {
    let x = into_contiguous(x);
    let step = into_contiguous(step);
    let shape = x.meta.shape().clone();
    let len = shape.num_elements();
    let out = empty_device_dtype(x.client.clone(), x.device.clone(), shape.clone(), x.dtype);
    if len == 0 {
        return out;
    }
    let row_len = shape[shape.num_dims() - 1].max(1);
    let dtype = float_elem(x.dtype);
    let client = x.client.clone();
    kernels::lsq_kernel::launch(
        &client,
        grid(len.div_ceil(ROW_THREADS as usize)),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        step.into_tensor_arg(),
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
