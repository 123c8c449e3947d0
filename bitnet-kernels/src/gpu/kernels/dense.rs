//! The dense route's kernels: unpacked weights and the scaled output.

use cubecl::prelude::*;

use super::{elem_index, weight_scale};

/// Dense weights `[rows, cols]` in f32 from the packed codes: `code - 1`, divided by the
/// weight's scale when `fold_scale` (per tensor, per row, or per group of `group_words` words).
/// One element per thread.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn unpack_dense_kernel(
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    out: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    words: u32,
    group_words: u32,
    #[comptime] fold_scale: bool,
) {
    let i = elem_index();
    let cols = cols as usize;
    let words = words as usize;
    if i >= rows as usize * cols {
        terminate!();
    }
    let j = i / cols;
    let k = i % cols;
    // Weight 256 b + 64 q + 4 w + t sits in byte t, bits 6 - 2q, of word 16 b + w.
    let w = (k / 256) * 16 + (k % 64) / 4;
    let shift = u32::cast_from(8 * (k % 4) + 6 - 2 * ((k % 256) / 64));
    let code = (codes[j * words + w] >> shift) & 3u32;
    let mut v = f32::cast_from(code) - 1.0f32;
    if comptime![fold_scale] {
        let group_words = group_words as usize;
        v /= weight_scale(scales, j, words / group_words, w / group_words);
    }
    out[i] = v;
}

/// The last step of the dense route: `out[r, j] = y[r, j]` (`mode` 0), `/ s_x[r]` (1) or
/// `/ (s_x[r] s_w)` with a per-tensor or per-row `s_w` (2), in the output's type.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_rows_kernel<F: Float>(
    y: &Tensor<f32>,
    row_scale: &Tensor<f32>,
    scales: &Tensor<f32>,
    out: &mut Tensor<F>,
    m: u32,
    rows: u32,
    #[comptime] mode: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = elem_index();
    let rows = rows as usize;
    if i >= m as usize * rows {
        terminate!();
    }
    let r = i / rows;
    let j = i % rows;
    let v = if comptime![mode == 0] {
        y[i]
    } else if comptime![mode == 1] {
        y[i] / row_scale[r]
    } else {
        y[i] / (row_scale[r] * weight_scale(scales, j, 1, 0))
    };
    out[i] = F::cast_from(v);
}
