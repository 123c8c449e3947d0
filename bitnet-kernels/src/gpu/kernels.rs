//! The `#[cube]` kernels. Layout of the packed codes: see [`crate::packed`]; a `u32` word `i`
//! of block `b` holds, in byte `t` at bits `6 - 2q`, the code of weight `256 b + 64 q + 4 i + t`.
//! So `(word >> (6 - 2q)) & 0x03030303` is four codes of four consecutive weights, one per
//! byte, in the same order as four int8 activations packed in one word: one `dp4a`.

use cubecl::prelude::*;

/// Threads per cube of the row kernels.
pub(crate) const ROW_THREADS: u32 = 256;
/// Lanes splitting the words of one output row.
pub(crate) const LANES: u32 = 32;
/// Output rows per cube of the matmul kernels.
pub(crate) const ROWS_PER_CUBE: u32 = 8;
/// Activation rows each thread of the matmul kernels handles (reusing each weight word).
pub(crate) const TILE_M: u32 = 4;

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

/// BitNet's per-row activation scale `s = 127 / max(max|x|, 1e-5)` of row `row`, computed by
/// the whole cube (every thread returns it).
#[cube]
fn int8_row_scale<F: Float>(x: &Tensor<F>, row: usize, cols: usize) -> f32 {
    let t = UNIT_POS_X as usize;
    let mut local = 0.0f32;
    let mut k = t;
    while k < cols {
        local = max(local, f32::cast_from(x[row * cols + k]).abs());
        k += ROW_THREADS as usize;
    }
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
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
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
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
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
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * ROW_THREADS + UNIT_POS_X) as usize;
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
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * ROW_THREADS + UNIT_POS_X) as usize;
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

/// The sum of the `LANES` partials that the threads of output-row slot `slot` left in `shared`
/// for activation row `row` of their tile of `tile` rows.
#[cube]
fn lanes_total(shared: &Shared<[f32]>, slot: usize, row: u32, #[comptime] tile: u32) -> f32 {
    let mut sum = 0.0f32;
    for l in 0..LANES as usize {
        sum += shared[(slot + l) * tile as usize + row as usize];
    }
    sum
}

/// `(word >> shift) & 0x03030303` holds codes 0..=2; `+ 0x7F` per byte gives 127..=129 (no
/// carry) and `^ 0x80` turns that into the signed bytes -1, 0, 1.
#[cube]
fn signed_codes(word: u32, shift: u32) -> i32 {
    let codes = (word >> shift) & 0x0303_0303u32;
    i32::cast_from((codes + 0x7F7F_7F7Fu32) ^ 0x8080_8080u32)
}

/// `y[r, j] = Σ_k q(x)[r, k] (code[j, k] - 1) / (s_x[r] s_w)` with int8 activations and `dp4a`.
/// Cube: `LANES × ROWS_PER_CUBE` threads; lanes split the words of output row `j`, and each
/// thread applies every weight word it loads to the `tile` activation rows of its tile (1 for a
/// GEMV, [`TILE_M`] otherwise: a compile-time constant, so the accumulators are registers).
/// `group_words`: the words of one scale group (the whole row for per-tensor and per-row
/// scales).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn ternary_int8_kernel<F: Float>(
    xq: &Tensor<u32>,
    row_scale: &Tensor<f32>,
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    out: &mut Tensor<F>,
    m: u32,
    rows: u32,
    words: u32,
    act_words: u32,
    group_words: u32,
    #[comptime] tile: u32,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X as usize;
    let j = (CUBE_POS_X * ROWS_PER_CUBE + UNIT_POS_Y) as usize;
    // Tiles of activation rows run along y, then z (past 65,535 tiles).
    let r0 = ((CUBE_POS_Z * CUBE_COUNT_Y + CUBE_POS_Y) * tile) as usize;
    let m = m as usize;
    let rows = rows as usize;
    let words = words as usize;
    let act_words = act_words as usize;
    let group_words = group_words as usize;
    let mut shared = Shared::new_slice((LANES * ROWS_PER_CUBE * tile) as usize);
    let slot = (UNIT_POS_Y * LANES) as usize;
    // Activation rows of this tile that exist (the same for the whole cube).
    let live = min(m - min(r0, m), tile as usize);

    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile as usize {
        acc[t] = 0.0f32;
    }
    if j < rows {
        let groups = words / group_words;
        for g in 0..groups {
            // Exact integer sums per group.
            let mut dot = Array::<i32>::new(tile as usize);
            #[unroll]
            for t in 0..tile as usize {
                dot[t] = 0i32;
            }
            let mut w = g * group_words + lane;
            while w < (g + 1) * group_words {
                let word = codes[j * words + w];
                let base = (w / 16) * 64 + (w % 16);
                #[unroll]
                for q in 0..4u32 {
                    let c = signed_codes(word, 6 - 2 * q);
                    #[unroll]
                    for t in 0..tile as usize {
                        if t < live {
                            let a = xq[(r0 + t) * act_words + base + 16 * q as usize];
                            dot[t] = dp4a(i32::cast_from(a), c, dot[t]);
                        }
                    }
                }
                w += LANES as usize;
            }
            let sw = weight_scale(scales, j, groups, g);
            #[unroll]
            for t in 0..tile as usize {
                if groups == 1 {
                    // Exact integer partials, summed exactly in the reduction below.
                    acc[t] += f32::cast_from(dot[t]);
                } else if t < live {
                    acc[t] += f32::cast_from(dot[t]) / (row_scale[r0 + t] * sw);
                }
            }
        }
    }
    #[unroll]
    for t in 0..tile as usize {
        shared[(slot + lane) * tile as usize + t] = acc[t];
    }
    sync_cube();
    if lane == 0 && j < rows {
        let groups = words / group_words;
        let mut t = 0u32;
        while (t as usize) < live {
            let r = r0 + t as usize;
            let sum = lanes_total(&shared, slot, t, tile);
            if groups == 1 {
                let sw = weight_scale(scales, j, 1, 0);
                out[r * rows + j] = F::cast_from(sum / (row_scale[r] * sw));
            } else {
                out[r * rows + j] = F::cast_from(sum);
            }
            t += 1;
        }
    }
}

/// `y[r, j] = Σ_k x[r, k] (code[j, k] - 1) · w_scale` with float activations (W1.58 A16/A32),
/// summed in f32 whatever the activations' float type `F`. Laid out as the int8 kernel; each
/// code becomes a factor −1, 0 or +1 (no branch per weight).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn ternary_float_kernel<F: Float>(
    x: &Tensor<F>,
    codes: &Tensor<u32>,
    scales: &Tensor<f32>,
    out: &mut Tensor<F>,
    m: u32,
    rows: u32,
    cols: u32,
    words: u32,
    group_words: u32,
    #[comptime] tile: u32,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X as usize;
    let j = (CUBE_POS_X * ROWS_PER_CUBE + UNIT_POS_Y) as usize;
    // Tiles of activation rows run along y, then z (past 65,535 tiles).
    let r0 = ((CUBE_POS_Z * CUBE_COUNT_Y + CUBE_POS_Y) * tile) as usize;
    let m = m as usize;
    let rows = rows as usize;
    let cols = cols as usize;
    let words = words as usize;
    let group_words = group_words as usize;
    let mut shared = Shared::new_slice((LANES * ROWS_PER_CUBE * tile) as usize);
    let slot = (UNIT_POS_Y * LANES) as usize;
    let live = min(m - min(r0, m), tile as usize);

    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile as usize {
        acc[t] = 0.0f32;
    }
    if j < rows {
        let groups = words / group_words;
        for g in 0..groups {
            let mut part = Array::<f32>::new(tile as usize);
            #[unroll]
            for t in 0..tile as usize {
                part[t] = 0.0f32;
            }
            let mut w = g * group_words + lane;
            while w < (g + 1) * group_words {
                let word = codes[j * words + w];
                let base = (w / 16) * 256 + (w % 16) * 4;
                #[unroll]
                for q in 0..4u32 {
                    #[unroll]
                    for b in 0..4u32 {
                        let k = base + 64 * q as usize + b as usize;
                        if k < cols {
                            let code = (word >> (8 * b + 6 - 2 * q)) & 3u32;
                            let sign = f32::cast_from(code) - 1.0f32;
                            #[unroll]
                            for t in 0..tile as usize {
                                if t < live {
                                    part[t] += sign * f32::cast_from(x[(r0 + t) * cols + k]);
                                }
                            }
                        }
                    }
                }
                w += LANES as usize;
            }
            let sw = weight_scale(scales, j, groups, g);
            #[unroll]
            for t in 0..tile as usize {
                acc[t] += part[t] / sw;
            }
        }
    }
    #[unroll]
    for t in 0..tile as usize {
        shared[(slot + lane) * tile as usize + t] = acc[t];
    }
    sync_cube();
    if lane == 0 && j < rows {
        let mut t = 0u32;
        while (t as usize) < live {
            let r = r0 + t as usize;
            out[r * rows + j] = F::cast_from(lanes_total(&shared, slot, t, tile));
            t += 1;
        }
    }
}

/// What the fake-quantization kernels write per element, for `u = (v - center) s` (`center` 0
/// unless `centered`, the binary format): 0, the dequantized code — `clamp(round_half_even(u),
/// qn, qp) / s`, or `sign(u) / s` (`sign(0) = -1`) when centered; 1, the clipped STE's mask (1
/// where `qn <= u <= qp`, else 0); 2, the rounding residual `clamp(u) - code` that EWGS scales
/// its gradient by.
#[cube]
fn scaled_output(
    v: f32,
    center: f32,
    s: f32,
    qn: f32,
    qp: f32,
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
    } else if comptime![centered] {
        sign / s
    } else {
        clamp(u, qn, qp).round() / s
    }
}

/// Fake quantization with one scale per row: `s = qp / max(stat, eps)` with `stat` the mean or
/// max of `|x|` over the row, `y = clamp(round_half_even(x s), qn, qp) / s` (or another `output` of [`scaled_output`]).
/// One cube per row.
#[cube(launch)]
pub(crate) fn fake_quant_rows_kernel<F: Float>(
    x: &Tensor<F>,
    out: &mut Tensor<F>,
    rows: u32,
    row_len: u32,
    qn: f32,
    qp: f32,
    eps: f32,
    #[comptime] abs_mean: bool,
    #[comptime] centered: bool,
    #[comptime] output: u32,
    #[define(F)] _dtype: ElemType,
) {
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if row >= rows as usize {
        terminate!();
    }
    let t = UNIT_POS_X as usize;
    let len = row_len as usize;
    let mut local = 0.0f32;
    let mut local_sum = 0.0f32;
    let mut k = t;
    while k < len {
        let x_k = f32::cast_from(x[row * len + k]);
        let v = x_k.abs();
        if comptime![abs_mean] {
            local += v;
        } else {
            local = max(local, v);
        }
        local_sum += x_k;
        k += ROW_THREADS as usize;
    }
    let mut stat = reduce_cube(local, !abs_mean);
    if comptime![abs_mean] {
        stat /= f32::cast_from(row_len);
    }
    let mut center = 0.0f32;
    if comptime![centered] {
        center = reduce_cube(local_sum, false) / f32::cast_from(row_len);
    }
    let s = qp / max(stat, eps);
    let mut k = t;
    while k < len {
        let i = row * len + k;
        let v = f32::cast_from(x[i]);
        out[i] = F::cast_from(scaled_output(v, center, s, qn, qp, centered, output));
        k += ROW_THREADS as usize;
    }
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
    let c = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    let t = UNIT_POS_X as usize;
    let len = len as usize;
    let start = c * chunk as usize;
    let end = min(start + chunk as usize, len);
    let mut local = 0.0f32;
    let mut local_sum = 0.0f32;
    let mut k = start + t;
    while k < end {
        let x_k = f32::cast_from(x[k]);
        let v = x_k.abs();
        if comptime![abs_mean] {
            local += v;
        } else {
            local = max(local, v);
        }
        local_sum += x_k;
        k += ROW_THREADS as usize;
    }
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

/// Reduces the partials to the scale `qp / max(stat, eps)` in `scale[0]`. One cube.
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
    let t = UNIT_POS_X as usize;
    let mut local = 0.0f32;
    let mut local_sum = 0.0f32;
    let mut k = t;
    while k < count as usize {
        if comptime![abs_mean] {
            local += partials[k];
        } else {
            local = max(local, partials[k]);
        }
        if comptime![centered] {
            local_sum += partials[count as usize + k];
        }
        k += ROW_THREADS as usize;
    }
    let mut stat = reduce_cube(local, !abs_mean);
    if comptime![abs_mean] {
        stat /= f32::cast_from(len);
    }
    if t == 0 {
        scale[0] = qp / max(stat, eps);
    }
    if comptime![centered] {
        let center = reduce_cube(local_sum, false) / f32::cast_from(len);
        if t == 0 {
            scale[1] = center;
        }
    }
}

/// `y = clamp(round_half_even(x s), qn, qp) / s` with `s = scale[0]`, one element per thread.
#[cube(launch)]
pub(crate) fn apply_scale_kernel<F: Float>(
    x: &Tensor<F>,
    scale: &Tensor<f32>,
    out: &mut Tensor<F>,
    len: u32,
    qn: f32,
    qp: f32,
    #[comptime] centered: bool,
    #[comptime] output: u32,
    #[define(F)] _dtype: ElemType,
) {
    let i = ((CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) * ROW_THREADS + UNIT_POS_X) as usize;
    if i < len as usize {
        let s = scale[0];
        let mut center = 0.0f32;
        if comptime![centered] {
            center = scale[1];
        }
        let v = f32::cast_from(x[i]);
        out[i] = F::cast_from(scaled_output(v, center, s, qn, qp, centered, output));
    }
}
