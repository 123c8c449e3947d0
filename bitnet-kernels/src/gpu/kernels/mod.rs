//! The `#[cube]` kernels. Layout of the packed codes: see [`crate::packed`]; a `u32` word `i`
//! of block `b` holds, in byte `t` at bits `6 - 2q`, the code of weight `256 b + 64 q + 4 i + t`.
//! So `(word >> (6 - 2q)) & 0x03030303` is four codes of four consecutive weights, one per
//! byte, in the same order as four int8 activations packed in one word: one `dp4a`.

mod activations;
mod dense;
mod fake_quant;
mod matmul;
mod norm_quant;

pub(crate) use activations::{quantize_rows_float_kernel, quantize_rows_kernel};
pub(crate) use dense::{finish_rows_kernel, unpack_dense_kernel};
pub(crate) use fake_quant::{
    abs_partials_kernel, apply_scale_kernel, fake_quant_rows_kernel, lsq_kernel, scale_kernel,
};
pub(crate) use matmul::{ternary_float_kernel, ternary_int8_kernel};
pub(crate) use norm_quant::norm_quant_rows_kernel;

use cubecl::prelude::*;

/// Threads per cube of the row kernels.
pub(crate) const ROW_THREADS: u32 = 256;
/// Lanes splitting the words of one output row.
pub(crate) const LANES: u32 = 32;
/// Output rows per cube of the matmul kernels.
pub(crate) const ROWS_PER_CUBE: u32 = 8;
/// Activation rows each thread of the matmul kernels handles (reusing each weight word).
pub(crate) const TILE_M: u32 = 4;

/// The index of this cube in a grid laid out by `gpu::grid` (x first, then y).
#[cube]
fn cube_index() -> usize {
    (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize
}

/// The element of this thread in a grid of `ROW_THREADS`-thread cubes laid out by `gpu::grid`.
#[cube]
fn elem_index() -> usize {
    cube_index() * ROW_THREADS as usize + UNIT_POS_X as usize
}

/// Tree reduction over the `ROW_THREADS` threads of a cube in shared memory (sum or max);
/// every thread returns the result.
#[cube]
fn reduce_cube(value: f32, #[comptime] is_max: bool) -> f32 {
    let mut shared = Shared::new_slice(ROW_THREADS as usize);
    let t = UNIT_POS_X as usize;
    shared[t] = value;
    sync_cube();
    let mut stride = (CUBE_DIM_X / 2) as usize;
    while stride > 0 {
        if t < stride {
            let other = shared[t + stride];
            if comptime![is_max] {
                shared[t] = max(shared[t], other);
            } else {
                shared[t] += other;
            }
        }
        sync_cube();
        stride /= 2;
    }
    let result = shared[0];
    sync_cube();
    result
}

/// This thread's share of the statistics of `x[start..end)` (its elements `start + UNIT_POS_X`,
/// then every `ROW_THREADS`-th): `Σ |x|`, or `max |x|` when `take_max`, and, `with_sum`, `Σ x`
/// (else 0). Reduce each over the cube with [`reduce_cube`].
#[cube]
fn thread_stats<F: Float>(
    x: &Tensor<F>,
    start: usize,
    end: usize,
    #[comptime] take_max: bool,
    #[comptime] with_sum: bool,
) -> (f32, f32) {
    let mut stat = 0.0f32;
    let mut sum = 0.0f32;
    let mut k = start + UNIT_POS_X as usize;
    while k < end {
        let v = f32::cast_from(x[k]);
        if comptime![take_max] {
            stat = max(stat, v.abs());
        } else {
            stat += v.abs();
        }
        if comptime![with_sum] {
            sum += v;
        }
        k += ROW_THREADS as usize;
    }
    (stat, sum)
}

/// The scale `qp / max(stat, eps)` of a group of `len` elements from the cube-reduced `Σ |x|`
/// (`abs_mean`: the statistic is its mean) or `max |x|`.
#[cube]
fn group_scale(reduced: f32, len: u32, qp: f32, eps: f32, #[comptime] abs_mean: bool) -> f32 {
    let mut stat = reduced;
    if comptime![abs_mean] {
        stat /= f32::cast_from(len);
    }
    qp / max(stat, eps)
}

/// The scale of weight row `j` in group `g` of its `groups` (one scale in all: per tensor).
#[cube]
fn weight_scale(scales: &Tensor<f32>, j: usize, groups: usize, g: usize) -> f32 {
    if scales.len() == 1 {
        scales[0]
    } else if groups == 1 {
        scales[j]
    } else {
        scales[j * groups + g]
    }
}
