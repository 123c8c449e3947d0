//! BitNet's int8 per-row activation quantizer, packed for `dp4a` or as f32 codes.

use cubecl::prelude::*;

use super::{ROW_THREADS, cube_index, reduce_cube, thread_stats};

/// BitNet's per-row activation scale `s = 127 / max(max|x|, 1e-5)` of row `row`, computed by
/// the whole cube (every thread returns it).
#[cube]
fn int8_row_scale<F: Float>(x: &Tensor<F>, row: usize, cols: usize) -> f32 {
    let (local, _) = thread_stats::<F>(x, row * cols, (row + 1) * cols, true, false);
    let absmax = reduce_cube(local, true);
    127.0f32 / max(absmax, 1e-5f32)
}

/// The int8 code `clamp(round_half_even(v s), -128, 127)`, as a float.
#[cube]
fn int8_code(v: f32, s: f32) -> f32 {
    clamp((v * s).round(), -128.0f32, 127.0f32)
}

/// BitNet's per-row int8 activation quantizer: `s = 127 / max(max|x|, 1e-5)`,
/// `q = clamp(round_half_even(x s), -128, 127)`, packed four per `u32` (byte `t` of word `w`
/// is column `4w + t`, zero past `cols`). One cube per row.
#[cube(launch)]
pub(crate) fn quantize_rows_kernel<F: Float>(
    x: &Tensor<F>,
    packed: &mut Tensor<u32>,
    row_scale: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    words: u32,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    if row >= rows as usize {
        terminate!();
    }
    let t = UNIT_POS_X as usize;
    let cols = cols as usize;
    let words = words as usize;
    let s = int8_row_scale::<F>(x, row, cols);

    let mut w = t;
    while w < words {
        let mut word = 0u32;
        for b in 0..4u32 {
            let c = w * 4 + b as usize;
            if c < cols {
                let q = int8_code(f32::cast_from(x[row * cols + c]), s);
                let byte = u32::cast_from(i32::cast_from(q)) & 0xFFu32;
                word |= byte << (8 * b);
            }
        }
        packed[row * words + w] = word;
        w += ROW_THREADS as usize;
    }
    if t == 0 {
        row_scale[row] = s;
    }
}

/// The same quantizer with the codes written as f32 integers `[rows, cols]` (for the dense
/// GEMM route, where Burn's matmul sums them exactly). One cube per row.
#[cube(launch)]
pub(crate) fn quantize_rows_float_kernel<F: Float>(
    x: &Tensor<F>,
    codes: &mut Tensor<f32>,
    row_scale: &mut Tensor<f32>,
    rows: u32,
    cols: u32,
    #[define(F)] _dtype: ElemType,
) {
    let row = cube_index();
    if row >= rows as usize {
        terminate!();
    }
    let t = UNIT_POS_X as usize;
    let cols = cols as usize;
    let s = int8_row_scale::<F>(x, row, cols);
    let mut k = t;
    while k < cols {
        let i = row * cols + k;
        codes[i] = int8_code(f32::cast_from(x[i]), s);
        k += ROW_THREADS as usize;
    }
    if t == 0 {
        row_scale[row] = s;
    }
}
