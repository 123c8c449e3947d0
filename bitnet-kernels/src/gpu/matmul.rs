//! The ternary matmul launchers: operand checks, the int8 activation quantizer, the per-row
//! kernels (GEMV and small GEMM) and the hand-off to the dense route for many rows.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::dense::{FLOAT_DENSE_MIN_M, INT8_DENSE_MIN_M, dense_fits, dense_float, dense_int8};
use super::kernels::{self, LANES, ROW_THREADS, ROWS_PER_CUBE, TILE_M};
use super::{check_index, check_indexable, dims, empty_like, float_elem, grid};
use crate::burn_ext::ScaleKind;
use crate::int8_dot::Int8Dot;
use crate::packed::{BLOCK, BLOCK_WORDS, padded_cols, words_per_row};

/// Words of one scale group (the whole row for per-tensor and per-row scales).
pub(super) fn group_words(kind: ScaleKind, words: usize) -> usize {
    match kind {
        ScaleKind::PerTensor | ScaleKind::PerRow => words,
        ScaleKind::PerGroup(group) => (group / BLOCK) * BLOCK_WORDS,
    }
}

/// The checked weight operands of a ternary matmul and its (uninitialized) output.
pub(super) struct Operands {
    pub(super) m: usize,
    pub(super) rows: usize,
    pub(super) words: usize,
    pub(super) codes: CubeTensor,
    pub(super) scales: CubeTensor,
    pub(super) out: CubeTensor,
}

impl Operands {
    /// Nothing to compute: the output is empty or every product is a sum of nothing.
    fn is_trivial(&self) -> bool {
        self.m == 0 || self.rows == 0 || self.words == 0
    }

    /// Whether the product takes the dense route: at least `min_m` activation rows, and an f32
    /// copy of the weights within `DENSE_MAX_BYTES`.
    fn takes_dense_route(&self, min_m: usize, cols: usize) -> bool {
        self.m >= min_m && dense_fits(self.rows, cols)
    }

    /// Activation rows per thread: 1 for a GEMV, [`TILE_M`] otherwise.
    fn tile(&self) -> u32 {
        if self.m == 1 { 1 } else { TILE_M }
    }

    fn grid(&self) -> (CubeCount, CubeDim, u32) {
        matmul_grid(self.m, self.rows, self.tile())
    }
}

/// Checks the operands of a ternary matmul, makes the weights contiguous and allocates the
/// `[m, rows]` output.
fn operands(
    x: &CubeTensor,
    codes: CubeTensor,
    scales: CubeTensor,
    cols: usize,
    kind: ScaleKind,
) -> Operands {
    let (xd, cd) = (dims(x), dims(&codes));
    assert!(
        xd.len() == 2 && xd[1] == cols,
        "ternary_matmul: x must be [m, {cols}], got {xd:?}"
    );
    let words = words_per_row(cols);
    assert!(
        cd.len() == 2 && cd[1] == words,
        "ternary_matmul: codes must be [rows, {words}], got {cd:?}"
    );
    let rows = cd[0];
    let expected = match kind {
        ScaleKind::PerTensor => 1,
        ScaleKind::PerRow => rows,
        ScaleKind::PerGroup(group) => {
            assert!(
                group.is_multiple_of(BLOCK) && cols.is_multiple_of(group),
                "ternary_matmul: group {group} must be a multiple of {BLOCK} dividing {cols}"
            );
            rows * cols / group
        }
    };
    let n = scales.meta.shape().num_elements();
    assert_eq!(
        n, expected,
        "ternary_matmul: {expected} scales expected for {kind:?}, got {n}"
    );
    let m = xd[0];
    check_indexable("ternary matmul", &[x, &codes, &scales]);
    check_index("ternary matmul output", m.saturating_mul(rows));
    let out = empty_like(&codes, vec![m, rows], x.dtype);
    Operands {
        m,
        rows,
        words,
        codes: into_contiguous(codes),
        scales: into_contiguous(scales),
        out,
    }
}

/// The launch of a per-row matmul kernel: `row_blocks` blocks of `ROWS_PER_CUBE` output rows
/// times the tiles of `tile` activation rows, one cube each, spread by [`grid`] over as many
/// grid dimensions as the count needs (any `rows` and `m`).
fn matmul_grid(m: usize, rows: usize, tile: u32) -> (CubeCount, CubeDim, u32) {
    let row_blocks = rows.div_ceil(ROWS_PER_CUBE as usize).max(1);
    let tiles = m.div_ceil(tile as usize).max(1);
    (
        grid(row_blocks * tiles),
        CubeDim::new_2d(LANES, ROWS_PER_CUBE),
        row_blocks as u32,
    )
}

/// Quantizes `x [m, cols]` (f32, f16 or bf16) to int8 per row: returns the packed activations
/// `[m, padded_cols / 4]` (`u32`, zero past `cols`) and the row scales `s_x [m]`.
pub fn quantize_rows(x: CubeTensor, cols: usize) -> (CubeTensor, CubeTensor) {
    check_indexable("int8 activation quantizer", &[&x]);
    let x = into_contiguous(x);
    let m = dims(&x)[0];
    let act_words = padded_cols(cols) / 4;
    // For rows under 256 the packed activations outnumber `x`.
    check_index(
        "int8 activation quantizer output",
        m.saturating_mul(act_words),
    );
    let packed = empty_like(&x, vec![m, act_words], DType::U32);
    let scale = empty_like(&x, vec![m], DType::F32);
    if m > 0 {
        let dtype = float_elem(x.dtype);
        kernels::quantize_rows_kernel::launch(
            &x.client,
            grid(m),
            CubeDim::new_1d(ROW_THREADS),
            x.clone().into_tensor_arg(),
            packed.clone().into_tensor_arg(),
            scale.clone().into_tensor_arg(),
            m as u32,
            cols as u32,
            act_words as u32,
            dtype,
        );
    }
    (packed, scale)
}

/// `y = q(x) · Wᵀ` with BitNet's int8 per-row activations: `x [m, cols]` (f32, f16 or bf16),
/// `codes [rows, words_per_row(cols)]` u32, `scales` as `kind` says; the dot products formed as
/// `dot` says. Returns `[m, rows]` in `x`'s type.
///
/// # Panics
/// On operands of the wrong shapes, or tensors of more than `u32::MAX` elements (the kernels'
/// 32-bit indices).
pub fn ternary_matmul_int8(
    x: CubeTensor,
    codes: CubeTensor,
    scales: CubeTensor,
    cols: usize,
    kind: ScaleKind,
    dot: Int8Dot,
) -> CubeTensor {
    let op = operands(&x, codes, scales, cols, kind);
    if op.is_trivial() {
        return op.out;
    }
    if op.takes_dense_route(INT8_DENSE_MIN_M, cols) {
        return dense_int8(x, op, cols, kind);
    }
    let dtype = float_elem(x.dtype);
    let swar = dot.takes_swar(op.codes.client.name());
    let (xq, row_scale) = quantize_rows(x, cols);
    let (count, dim, row_blocks) = op.grid();
    let tile = op.tile();
    kernels::ternary_int8_kernel::launch(
        &op.codes.client,
        count,
        dim,
        xq.into_tensor_arg(),
        row_scale.into_tensor_arg(),
        op.codes.clone().into_tensor_arg(),
        op.scales.into_tensor_arg(),
        op.out.clone().into_tensor_arg(),
        op.m as u32,
        op.rows as u32,
        op.words as u32,
        (padded_cols(cols) / 4) as u32,
        group_words(kind, op.words) as u32,
        row_blocks,
        tile,
        swar,
        dtype,
    );
    op.out
}

/// `y = x · Wᵀ` with float activations (f32, f16 or bf16) and ternary weights (no activation
/// quantization). Returns `[m, rows]` in `x`'s type.
///
/// # Panics
/// On operands of the wrong shapes, or tensors of more than `u32::MAX` elements (the kernels'
/// 32-bit indices).
pub fn ternary_matmul_float(
    x: CubeTensor,
    codes: CubeTensor,
    scales: CubeTensor,
    cols: usize,
    kind: ScaleKind,
) -> CubeTensor {
    let op = operands(&x, codes, scales, cols, kind);
    if op.is_trivial() {
        return op.out;
    }
    if op.takes_dense_route(FLOAT_DENSE_MIN_M, cols) {
        return dense_float(x, op, cols, kind);
    }
    let (count, dim, row_blocks) = op.grid();
    let tile = op.tile();
    let dtype = float_elem(x.dtype);
    kernels::ternary_float_kernel::launch(
        &op.codes.client,
        count,
        dim,
        into_contiguous(x).into_tensor_arg(),
        op.codes.clone().into_tensor_arg(),
        op.scales.into_tensor_arg(),
        op.out.clone().into_tensor_arg(),
        op.m as u32,
        op.rows as u32,
        cols as u32,
        op.words as u32,
        group_words(kind, op.words) as u32,
        row_blocks,
        tile,
        dtype,
    );
    op.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_holds_any_number_of_output_rows_and_tiles() {
        // 600,000 output rows are 75,000 blocks: more than one grid dimension holds (a layout
        // with one row block per x position could not launch them).
        for (m, rows, tile, cubes) in [
            (1, 600_000, 1, 75_000),
            (160, 16_392, TILE_M, 2_049 * 40),
            (1, 8, 1, 1),
        ] {
            let (count, dim, blocks) = matmul_grid(m, rows, tile);
            assert_eq!(blocks as usize, rows.div_ceil(ROWS_PER_CUBE as usize));
            assert_eq!((dim.x, dim.y), (LANES, ROWS_PER_CUBE));
            let CubeCount::Static(x, y, z) = count else {
                panic!("a static grid")
            };
            assert!(x <= 65_535 && y <= 65_535 && z == 1, "{x} {y} {z}");
            let launched = x as usize * y as usize;
            assert!(
                launched >= cubes && launched < cubes + x as usize,
                "{launched} cubes for {cubes}"
            );
            // Balanced: fewer surplus cubes than grid rows.
            assert!(
                launched < cubes + y as usize,
                "{launched} cubes for {cubes}"
            );
        }
    }
}
