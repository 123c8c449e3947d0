//! The fused fake-quantization kernels: per row, or per tensor in partial reduction, scale and
//! apply.

use cubecl::prelude::*;

use super::{ROW_THREADS, cube_index, elem_index, group_scale, reduce_cube, thread_stats};

/// What the fake-quantization kernels write per element, for `u = (v - center) s` (`center` 0
/// unless `centered`, the binary format): 0, the dequantized code — `clamp(round_half_even(u),
/// qn, qp) / s`, or `sign(u) / s` (`sign(0) = -1`) when centered; 1, the clipped STE's mask (1
/// where `qn <= u <= qp`, else 0); 2, the rounding residual `clamp(u) - code` that EWGS scales
/// its gradient by; 3, the soft STE's staircase at temperature `t`, dequantized; 4, its slope
/// with respect to `v`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn scaled_output(
    v: f32,
    center: f32,
    s: f32,
    qn: f32,
    qp: f32,
    t: f32,
    #[comptime] centered: bool,
    #[comptime] output: u32,
) -> f32 {
    let u = (v - center) * s;
    let sign = if u > 0.0f32 { 1.0f32 } else { -1.0f32 };
    if comptime![output == 1] {
        f32::cast_from(u >= qn && u <= qp)
    } else if comptime![output == 2] {
        let c = clamp(u, qn, qp);
        if comptime![centered] {
            c - sign
        } else {
            c - c.round()
        }
    } else if comptime![output >= 3] {
        // qn + Σ_k σ((u - t_k) / t) over t_k = qn + k + 1/2 (binary: 2 σ(u / t) - 1), and its
        // slope Σ_k σ_k (1 - σ_k) / t (binary: 2 σ (1 - σ) / t).
        let mut value = qn;
        let mut slope = 0.0f32;
        if comptime![centered] {
            let p = 1.0f32 / (1.0f32 + (-u / t).exp());
            value = 2.0f32 * p - 1.0f32;
            slope = 2.0f32 * p * (1.0f32 - p) / t;
        } else {
            let mut threshold = qn + 0.5f32;
            while threshold < qp {
                let p = 1.0f32 / (1.0f32 + (-(u - threshold) / t).exp());
                value += p;
                slope += p * (1.0f32 - p) / t;
                threshold += 1.0f32;
            }
        }
        if comptime![output == 3] {
            value / s
        } else {
            slope
        }
    } else if comptime![centered] {
        sign / s
    } else {
        clamp(u, qn, qp).round() / s
    }
}

/// The STE's input gradient from the incoming gradient `g` and the factor `a` that
/// [`scaled_output`] wrote for `output`: EWGS (2, the rounding residual) `g + (|g| a) delta`,
/// otherwise (1, the clip mask; 4, the soft slope) `g a`.
#[cube]
fn with_gradient(a: f32, g: f32, delta: f32, #[comptime] output: u32) -> f32 {
    if comptime![output == 2] {
        g + g.abs() * a * delta
    } else {
        g * a
    }
}

/// Writes `out[k]` for `k` in `[start, end)` (this thread's elements: `start + UNIT_POS_X`, then
/// every `ROW_THREADS`-th): [`scaled_output`] of `x[k]`, or with `backward` the gradient
/// [`with_gradient`] makes of it and `grad[k]`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn write_outputs<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    start: usize,
    end: usize,
    center: f32,
    s: f32,
    qn: f32,
    qp: f32,
    param: f32,
    #[comptime] centered: bool,
    #[comptime] output: u32,
    #[comptime] backward: bool,
) {
    let mut i = start + UNIT_POS_X as usize;
    while i < end {
        let v = f32::cast_from(x[i]);
        let mut a = scaled_output(v, center, s, qn, qp, param, centered, output);
        if comptime![backward] {
            a = with_gradient(a, f32::cast_from(grad[i]), param, output);
        }
        out[i] = F::cast_from(a);
        i += ROW_THREADS as usize;
    }
}

/// Fake quantization with one scale per row: `s = qp / max(stat, eps)` with `stat` the mean or
/// max of `|x|` over the row, `y = clamp(round_half_even(x s), qn, qp) / s` (or another
/// `output` of [`scaled_output`]; with `backward`, that output applied to the gradient `grad`
/// by [`write_outputs`]). `param`: the soft STE's temperature, or EWGS's delta. One cube per
/// row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn fake_quant_rows_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    row_len: u32,
    qn: f32,
    qp: f32,
    eps: f32,
    param: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
    #[comptime] output: u32,
    #[comptime] backward: bool,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    if row >= rows as usize {
        terminate!();
    }
    let len = row_len as usize;
    let (local, local_sum) = thread_stats::<F>(x, row * len, (row + 1) * len, !abs_mean, centered);
    let s = group_scale(reduce_cube(local, !abs_mean), row_len, qp, eps, abs_mean);
    let mut center = 0.0f32;
    if comptime![centered] {
        center = reduce_cube(local_sum, false) / f32::cast_from(row_len);
    }
    write_outputs(
        x,
        grad,
        out,
        row * len,
        (row + 1) * len,
        center,
        s,
        qn,
        qp,
        param,
        centered,
        output,
        backward,
    );
}

/// Partial sums (or maxima) of `|x|` over chunks of `chunk` elements, one cube per chunk.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn abs_partials_kernel<F: Float>(
    x: &Tensor<F>,
    partials: &mut Tensor<f32>,
    len: u32,
    chunk: u32,
    chunks: u32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
    #[define(F)] _dtype: ElemType,
) {
    let c = cube_index();
    let t = UNIT_POS_X as usize;
    let len = len as usize;
    let start = c * chunk as usize;
    let end = min(start + chunk as usize, len);
    let (local, local_sum) = thread_stats::<F>(x, start, end, !abs_mean, centered);
    let total = reduce_cube(local, !abs_mean);
    if t == 0 && start < len {
        partials[c] = total;
    }
    if comptime![centered] {
        // The plain sums follow the statistics: `partials[chunks + c]`.
        let sum = reduce_cube(local_sum, false);
        if t == 0 && start < len {
            partials[chunks as usize + c] = sum;
        }
    }
}

/// Reduces `count` partials from `offset` over the cube (sum, or max when `take_max`); every
/// thread returns the result.
#[cube]
fn reduce_partials(
    partials: &Tensor<f32>,
    offset: usize,
    count: usize,
    #[comptime] take_max: bool,
) -> f32 {
    let mut local = 0.0f32;
    let mut k = UNIT_POS_X as usize;
    while k < count {
        let p = partials[offset + k];
        if comptime![take_max] {
            local = max(local, p);
        } else {
            local += p;
        }
        k += ROW_THREADS as usize;
    }
    reduce_cube(local, take_max)
}

/// The per-tensor scale `qp / max(stat, eps)` from the `count` partials of
/// [`abs_partials_kernel`] over `len` elements.
#[cube]
fn tensor_scale(
    partials: &Tensor<f32>,
    count: usize,
    len: u32,
    qp: f32,
    eps: f32,
    #[comptime] abs_mean: bool,
) -> f32 {
    group_scale(
        reduce_partials(partials, 0, count, !abs_mean),
        len,
        qp,
        eps,
        abs_mean,
    )
}

/// The mean of the tensor from the plain sums that follow the statistics in the partials of a
/// centered [`abs_partials_kernel`].
#[cube]
fn tensor_center(partials: &Tensor<f32>, count: usize, len: u32) -> f32 {
    reduce_partials(partials, count, count, false) / f32::cast_from(len)
}

/// Reduces the partials to the scale `qp / max(stat, eps)` in `scale[0]` (and the center in
/// `scale[1]` when `centered`). One cube.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn scale_kernel(
    partials: &Tensor<f32>,
    scale: &mut Tensor<f32>,
    count: u32,
    len: u32,
    qp: f32,
    eps: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
) {
    let s = tensor_scale(partials, count as usize, len, qp, eps, abs_mean);
    if UNIT_POS_X == 0 {
        scale[0] = s;
    }
    if comptime![centered] {
        let center = tensor_center(partials, count as usize, len);
        if UNIT_POS_X == 0 {
            scale[1] = center;
        }
    }
}

/// `y = clamp(round_half_even(x s), qn, qp) / s` (or another `output` of [`scaled_output`]) over
/// the chunks of `chunk` elements of [`abs_partials_kernel`], one cube per chunk. `stats` holds
/// `[s, center]` from [`scale_kernel`], or — `fold`, at most `ROW_THREADS` chunks — the
/// `chunks` partials themselves, which every cube reduces to the scale (one launch fewer).
/// `grad`, `param`, `backward`: as in [`fake_quant_rows_kernel`].
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn apply_scale_kernel<F: Float>(
    x: &Tensor<F>,
    grad: &Tensor<F>,
    stats: &Tensor<f32>,
    out: &mut Tensor<F>,
    len: u32,
    chunk: u32,
    chunks: u32,
    qn: f32,
    qp: f32,
    eps: f32,
    param: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
    #[comptime] fold: bool,
    #[comptime] output: u32,
    #[comptime] backward: bool,
    #[define(F)] _dtype: ElemType,
) {
    let mut s = stats[0];
    let mut center = 0.0f32;
    if comptime![fold] {
        s = tensor_scale(stats, chunks as usize, len, qp, eps, abs_mean);
        if comptime![centered] {
            center = tensor_center(stats, chunks as usize, len);
        }
    } else if comptime![centered] {
        center = stats[1];
    }
    let start = cube_index() * chunk as usize;
    let end = min(start + chunk as usize, len as usize);
    write_outputs(
        x, grad, out, start, end, center, s, qn, qp, param, centered, output, backward,
    );
}

/// LSQ, one element per thread: `v = x / step` with `step[row]` (`per_row`, rows of `row_len`)
/// or `step[0]`; `output` 0, `round_half_even(clamp(v, qn, qp)) * step`; 1, `grad` where
/// `qn <= v <= qp`, else 0 (the gradient of `x`); 2, `grad` times the step factor
/// `round(v) - v` inside, `qn` / `qp` outside (the terms of the step's gradient).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn lsq_kernel<F: Float>(
    x: &Tensor<F>,
    step: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    len: u32,
    row_len: u32,
    qn: f32,
    qp: f32,
    #[comptime] per_row: bool,
    #[comptime] output: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = elem_index();
    if i < len as usize {
        let mut st = f32::cast_from(step[0]);
        if comptime![per_row] {
            st = f32::cast_from(step[i / row_len as usize]);
        }
        let v = f32::cast_from(x[i]) / st;
        let c = clamp(v, qn, qp);
        let mut r = c.round() * st;
        if comptime![output == 1] {
            r = f32::cast_from(grad[i]) * f32::cast_from(v >= qn && v <= qp);
        } else if comptime![output == 2] {
            let mut factor = c.round() - v;
            if v < qn {
                factor = qn;
            }
            if v > qp {
                factor = qp;
            }
            r = f32::cast_from(grad[i]) * factor;
        }
        out[i] = F::cast_from(r);
    }
}
