//! The dense route of the ternary matmul for many activation rows: the weights unpacked once to
//! f32 and Burn's autotuned matmul doing the products.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use super::kernels::{self, ROW_THREADS};
use super::matmul::{Operands, group_words};
use super::{empty_like, float_elem, grid};
use crate::burn_ext::ScaleKind;

/// From this many activation rows on, [`ternary_matmul_int8`](super::ternary_matmul_int8)
/// unpacks the weights once to f32 and sums the int8 codes (held exactly in f32) with Burn's
/// tuned matmul: on an H200 through Vulkan the per-row kernel beat Burn's f32 matmul up to
/// M = 128 and lost 2–4× at M = 512.
pub const INT8_DENSE_MIN_M: usize = 256;

/// From this many activation rows on, [`ternary_matmul_float`](super::ternary_matmul_float)
/// unpacks the weights (with their scales folded in) to f32 and runs Burn's matmul: the
/// per-row float kernel lost to it from M = 128 on an H200 (and still won at M = 32).
pub const FLOAT_DENSE_MIN_M: usize = 64;

/// The largest transient f32 copy of the weights the dense route makes (512 MiB: a LLaMA-7B
/// FFN matrix takes 180 MB); larger matrices stay on the per-row kernels.
pub const DENSE_MAX_BYTES: usize = 512 << 20;

/// Whether the f32 copy of a `[rows, cols]` weight fits [`DENSE_MAX_BYTES`].
pub(super) fn dense_fits(rows: usize, cols: usize) -> bool {
    rows.saturating_mul(cols).saturating_mul(4) <= DENSE_MAX_BYTES
}

/// The weights `[rows, cols]` as f32 `code - 1` (divided by their scales when `fold_scale`).
fn unpack_dense(op: &Operands, cols: usize, kind: ScaleKind, fold_scale: bool) -> CubeTensor {
    let client = op.codes.client.clone();
    let dense = empty_like(&op.codes, vec![op.rows, cols], DType::F32);
    kernels::unpack_dense_kernel::launch(
        &client,
        grid((op.rows * cols).div_ceil(ROW_THREADS as usize)),
        CubeDim::new_1d(ROW_THREADS),
        op.codes.clone().into_tensor_arg(),
        op.scales.clone().into_tensor_arg(),
        dense.clone().into_tensor_arg(),
        op.rows as u32,
        cols as u32,
        op.words as u32,
        group_words(kind, op.words) as u32,
        fold_scale,
    );
    dense
}

/// `a [m, cols] · dense [rows, cols]ᵀ` with Burn's matmul, in f32.
fn dense_products(a: CubeTensor, dense: CubeTensor) -> CubeTensor {
    use burn::backend::ops::FloatTensorOps;
    use burn_cubecl::CubeBackend;
    let dense_t = CubeBackend::float_swap_dims(dense, 0, 1);
    CubeBackend::float_matmul(a, dense_t)
}

/// `out = y` (`mode` 0), `y / s_x` (1) or `y / (s_x s_w)` (2) per row, in `out`'s type.
fn finish_rows(y: CubeTensor, row_scale: CubeTensor, op: Operands, mode: u32) -> CubeTensor {
    let dtype = float_elem(op.out.dtype);
    kernels::finish_rows_kernel::launch(
        &op.out.client,
        grid((op.m * op.rows).div_ceil(ROW_THREADS as usize)),
        CubeDim::new_1d(ROW_THREADS),
        y.into_tensor_arg(),
        row_scale.into_tensor_arg(),
        op.scales.into_tensor_arg(),
        op.out.clone().into_tensor_arg(),
        op.m as u32,
        op.rows as u32,
        mode,
        dtype,
    );
    op.out
}

/// The int8 route for many rows: int8 codes as f32 integers, exact integer sums from Burn's
/// f32 matmul (|sums| ≤ 127 K < 2^24 for K < 132,000), then the scales — the same values as
/// the per-row kernel (bit-identical for per-tensor and per-row scales). Per-group scales are
/// folded into the unpacked weights, as float sums.
pub(super) fn dense_int8(x: CubeTensor, op: Operands, cols: usize, kind: ScaleKind) -> CubeTensor {
    let x = into_contiguous(x);
    let client = x.client.clone();
    let codes = empty_like(&x, vec![op.m, cols], DType::F32);
    let row_scale = empty_like(&x, vec![op.m], DType::F32);
    let dtype = float_elem(x.dtype);
    kernels::quantize_rows_float_kernel::launch(
        &client,
        grid(op.m),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        codes.clone().into_tensor_arg(),
        row_scale.clone().into_tensor_arg(),
        op.m as u32,
        cols as u32,
        dtype,
    );
    let per_group =
        matches!(kind, ScaleKind::PerGroup(_)) && op.words != group_words(kind, op.words);
    let dense = unpack_dense(&op, cols, kind, per_group);
    let y = dense_products(codes, dense);
    finish_rows(y, row_scale.clone(), op, if per_group { 1 } else { 2 })
}

/// The float route for many rows: Burn's f32 matmul against the unpacked, scaled weights.
pub(super) fn dense_float(x: CubeTensor, op: Operands, cols: usize, kind: ScaleKind) -> CubeTensor {
    use burn::backend::ops::FloatTensorOps;
    use burn_cubecl::CubeBackend;
    let x = CubeBackend::float_cast(into_contiguous(x), burn::tensor::FloatDType::F32);
    let dense = unpack_dense(&op, cols, kind, true);
    let y = dense_products(x, dense);
    if op.out.dtype == DType::F32 {
        return y;
    }
    let row_scale = op.scales.clone(); // not read in mode 0
    finish_rows(y, row_scale, op, 0)
}
