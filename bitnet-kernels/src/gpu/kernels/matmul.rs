//! The per-row ternary matmul kernels (GEMV and small GEMM): int8 activations with `dp4a`, and
//! float activations.

use cubecl::prelude::*;

use super::{LANES, ROWS_PER_CUBE, cube_index, weight_scale};

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

/// This thread's output row and the first activation row of its cube's tile of `tile` rows.
/// Cubes (laid out by `gpu::grid`, so any count fits the per-dimension limits) run over the
/// `row_blocks` blocks of `ROWS_PER_CUBE` output rows first, then over the tiles; a cube past
/// the last tile gets a first row past `m` and writes nothing.
#[cube]
fn output_and_tile_row(row_blocks: u32, #[comptime] tile: u32) -> (usize, usize) {
    let c = cube_index();
    let blocks = row_blocks as usize;
    let j = (c % blocks) * ROWS_PER_CUBE as usize + UNIT_POS_Y as usize;
    (j, (c / blocks) * tile as usize)
}

/// `tile` f32 accumulators set to 0.
#[cube]
fn zeros(#[comptime] tile: u32) -> Array<f32> {
    let mut acc = Array::<f32>::new(tile as usize);
    #[unroll]
    for t in 0..tile as usize {
        acc[t] = 0.0f32;
    }
    acc
}

/// Leaves the thread's partial sums `acc` (one per activation row of the tile) in `shared` at
/// `slot`, for [`lanes_total`].
#[cube]
fn store_partials(
    shared: &mut Shared<[f32]>,
    acc: &Array<f32>,
    slot: usize,
    #[comptime] tile: u32,
) {
    #[unroll]
    for t in 0..tile as usize {
        shared[slot * tile as usize + t] = acc[t];
    }
}

/// `(word >> shift) & 0x03030303` holds codes 0..=2; `+ 0x7F` per byte gives 127..=129 (no
/// carry) and `^ 0x80` turns that into the signed bytes -1, 0, 1.
#[cube]
fn signed_codes(word: u32, shift: u32) -> i32 {
    let codes = (word >> shift) & 0x0303_0303u32;
    i32::cast_from((codes + 0x7F7F_7F7Fu32) ^ 0x8080_8080u32)
}

/// Byte masks of the four codes `(word >> shift) & 0x03030303` for [`ternary_int8_kernel`]'s
/// SWAR path: `(keep, flip)` with `keep` 0xFF where the code is 0 or 2 (weight -1 or +1) and
/// `flip` 0x80 where it is 2, 0x7F where it is 0. For an int8 activation byte `a`,
/// `(a ^ flip) & keep` is `a + 128` under a +1, `127 - a` under a -1 and 0 under a 0.
#[cube]
fn swar_masks(word: u32, shift: u32) -> (u32, u32) {
    let codes = (word >> shift) & 0x0303_0303u32;
    let low = codes & 0x0101_0101u32;
    let keep = (low ^ 0x0101_0101u32) * 0xFFu32;
    let negative = ((codes | (codes >> 1u32)) & 0x0101_0101u32) ^ 0x0101_0101u32;
    (keep, (negative * 0xFFu32) ^ 0x8080_8080u32)
}

/// The sum of the four bytes of `(a ^ flip) & keep` ([`swar_masks`]) as two 16-bit lanes:
/// summed over up to 32 words (4 codes × 4 bytes each, at most 510 per lane and code) before
/// a lane can overflow.
#[cube]
fn swar_lanes(a: u32, keep: u32, flip: u32) -> u32 {
    let selected = (a ^ flip) & keep;
    (selected & 0x00FF_00FFu32) + ((selected >> 8u32) & 0x00FF_00FFu32)
}

/// `y[r, j] = Σ_k q(x)[r, k] (code[j, k] - 1) / (s_x[r] s_w)` with int8 activations and `dp4a`.
/// Cube: `LANES × ROWS_PER_CUBE` threads; lanes split the words of output row `j`, and each
/// thread applies every weight word it loads to the `tile` activation rows of its tile (1 for a
/// GEMV, `TILE_M` otherwise: a compile-time constant, so the accumulators are registers).
/// `group_words`: the words of one scale group (the whole row for per-tensor and per-row
/// scales).
///
/// `swar`, for runtimes whose `dp4a` is a byte-by-byte polyfill (WGSL, MSL): the same exact
/// sums with SIMD-within-a-register masks instead of `dp4a` — per word of 16 weights, the
/// selected bytes ([`swar_masks`], [`swar_lanes`]) summed in two 16-bit lanes, less
/// `128 n₊ + 127 n₋` for the `n₊` codes 2 and `n₋` codes 0 of the word (popcounts: code 3
/// never occurs, so `n₊ = popcount(word & 0xAAAAAAAA)`, `n₋ = 16 - popcount(word)`): in the
/// generated WGSL GEMV loop 123 operations per weight word against the polyfill's 195.
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
    row_blocks: u32,
    #[comptime] tile: u32,
    #[comptime] swar: bool,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X as usize;
    let (j, r0) = output_and_tile_row(row_blocks, tile);
    let m = m as usize;
    let rows = rows as usize;
    let words = words as usize;
    let act_words = act_words as usize;
    let group_words = group_words as usize;
    let mut shared = Shared::new_slice((LANES * ROWS_PER_CUBE * tile) as usize);
    let slot = (UNIT_POS_Y * LANES) as usize;
    // Activation rows of this tile that exist (the same for the whole cube).
    let live = min(m - min(r0, m), tile as usize);

    let mut acc = zeros(tile);
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
                if comptime![swar] {
                    let mut lanes = Array::<u32>::new(tile as usize);
                    #[unroll]
                    for t in 0..tile as usize {
                        lanes[t] = 0u32;
                    }
                    #[unroll]
                    for q in 0..4u32 {
                        let (keep, flip) = swar_masks(word, 6 - 2 * q);
                        #[unroll]
                        for t in 0..tile as usize {
                            if t < live {
                                let a = xq[(r0 + t) * act_words + base + 16 * q as usize];
                                lanes[t] += swar_lanes(a, keep, flip);
                            }
                        }
                    }
                    let positive = i32::cast_from((word & 0xAAAA_AAAAu32).count_ones());
                    let negative = 16i32 - i32::cast_from(word.count_ones());
                    let bias = 128i32 * positive + 127i32 * negative;
                    #[unroll]
                    for t in 0..tile as usize {
                        let sum = (lanes[t] & 0xFFFFu32) + (lanes[t] >> 16u32);
                        dot[t] += i32::cast_from(sum) - bias;
                    }
                } else {
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
    store_partials(&mut shared, &acc, slot + lane, tile);
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
    row_blocks: u32,
    #[comptime] tile: u32,
    #[define(F)] _dtype: ElemType,
) {
    let lane = UNIT_POS_X as usize;
    let (j, r0) = output_and_tile_row(row_blocks, tile);
    let m = m as usize;
    let rows = rows as usize;
    let cols = cols as usize;
    let words = words as usize;
    let group_words = group_words as usize;
    let mut shared = Shared::new_slice((LANES * ROWS_PER_CUBE * tile) as usize);
    let slot = (UNIT_POS_Y * LANES) as usize;
    let live = min(m - min(r0, m), tile as usize);

    let mut acc = zeros(tile);
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
    store_partials(&mut shared, &acc, slot + lane, tile);
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
