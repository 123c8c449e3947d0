//! RMSNorm fused with the fake quantization per group: the forward pass and both gradients, one
//! cube per row. Thread `t` handles the row's elements `j ≡ t (mod ROW_THREADS)` in every pass,
//! so a thread reads back only what it wrote itself.

use cubecl::prelude::*;

use super::fake_quant::scaled_output;
use super::{ROW_THREADS, cube_index, group_scale, reduce_cube};

/// This thread's first element at or after `start` (of a row): the one `≡ UNIT_POS_X (mod
/// ROW_THREADS)`.
#[cube]
fn first_of_thread(start: usize) -> usize {
    let threads = ROW_THREADS as usize;
    start + (UNIT_POS_X as usize + threads - start % threads) % threads
}

/// The normalized value `(x[base + j] / rms) γ[j]`.
#[cube]
fn normalized<F: Float>(x: &Tensor<F>, gamma: &Tensor<F>, base: usize, j: usize, rms: f32) -> f32 {
    (f32::cast_from(x[base + j]) / rms) * f32::cast_from(gamma[j])
}

/// The scale and center of the group `[start, end)` of the normalized row at `base` (reduced
/// over the cube; every thread returns them).
#[cube]
#[allow(clippy::too_many_arguments)]
fn group_scale_center<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    base: usize,
    start: usize,
    end: usize,
    rms: f32,
    qp: f32,
    eps: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
) -> (f32, f32) {
    let mut stat = 0.0f32;
    let mut sum = 0.0f32;
    let mut j = first_of_thread(start);
    while j < end {
        let v = normalized(x, gamma, base, j, rms);
        if comptime![abs_mean] {
            stat += v.abs();
        } else {
            stat = max(stat, v.abs());
        }
        if comptime![centered] {
            sum += v;
        }
        j += ROW_THREADS as usize;
    }
    let len = (end - start) as u32;
    let s = group_scale(reduce_cube(stat, !abs_mean), len, qp, eps, abs_mean);
    let mut center = 0.0f32;
    if comptime![centered] {
        center = reduce_cube(sum, false) / f32::cast_from(len);
    }
    (s, center)
}

/// RMSNorm (`n = (x / rms) γ`, `rms = sqrt(Σ x² / row_len + norm_eps)`) then, per `group`
/// elements of the row, the fake quantization `clamp(round_half_even(n s), qn, qp) / s` (binary
/// when `centered`); `output` 0 writes it, 1 the gradient of `x` and 2 the terms of `γ`'s
/// gradient for the incoming gradient `grad`, through the standard STE (`clipped`: its mask
/// where `qn <= u <= qp` fails). One cube per row.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn norm_quant_rows_kernel<F: Float>(
    x: &Tensor<F>,
    gamma: &Tensor<F>,
    grad: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    row_len: u32,
    group: u32,
    norm_eps: f32,
    qn: f32,
    qp: f32,
    eps: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
    #[comptime] output: u32,
    #[comptime] clipped: bool,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    if row >= rows as usize {
        terminate!();
    }
    let len = row_len as usize;
    let base = row * len;
    let mut squares = 0.0f32;
    let mut j = UNIT_POS_X as usize;
    while j < len {
        let v = f32::cast_from(x[base + j]);
        squares += v * v;
        j += ROW_THREADS as usize;
    }
    let rms = (reduce_cube(squares, false) / f32::cast_from(row_len) + norm_eps).sqrt();
    let mut dot = 0.0f32;
    let mut start = 0usize;
    while start < len {
        let end = start + group as usize;
        let mut s = 1.0f32;
        let mut center = 0.0f32;
        if comptime![output == 0 || clipped] {
            let (gs, gc) =
                group_scale_center(x, gamma, base, start, end, rms, qp, eps, abs_mean, centered);
            s = gs;
            center = gc;
        }
        let mut j = first_of_thread(start);
        while j < end {
            let k = base + j;
            let v = normalized(x, gamma, base, j, rms);
            if comptime![output == 0] {
                out[k] = F::cast_from(scaled_output(v, center, s, qn, qp, 0.0f32, centered, 0u32));
            } else {
                let mut gn = f32::cast_from(grad[k]);
                if comptime![clipped] {
                    gn *= scaled_output(v, center, s, qn, qp, 0.0f32, centered, 1u32);
                }
                let xv = f32::cast_from(x[k]);
                if comptime![output == 2] {
                    out[k] = F::cast_from(gn * xv / rms);
                } else {
                    dot += f32::cast_from(gamma[j]) * gn * xv;
                    // `g_n` is `grad` or 0: exact in `F`; read back below by this thread.
                    out[k] = F::cast_from(gn);
                }
            }
            j += ROW_THREADS as usize;
        }
        start = end;
    }
    if comptime![output == 1] {
        let c = reduce_cube(dot, false) / (f32::cast_from(row_len) * rms * rms * rms);
        let mut j = UNIT_POS_X as usize;
        while j < len {
            let k = base + j;
            let gn = f32::cast_from(out[k]);
            out[k] = F::cast_from(f32::cast_from(gamma[j]) * gn / rms - f32::cast_from(x[k]) * c);
            j += ROW_THREADS as usize;
        }
    }
}
