//! GPU kernels (CubeCL) for packed ternary weights, run by the [`TernaryOps`] backend extension
//! on Burn's `CubeBackend` (wgpu — Vulkan, Metal, DX12, WebGPU —, CUDA, ROCm) and, through
//! the generated lazy operation, on `Fusion<CubeBackend>`.
//!
//! - [`ternary_matmul_int8`]: BitNet's int8 per-row activations (one cube per row: absmax,
//!   scale, round half to even, four codes per `u32`), then `dp4a` against the packed codes
//!   (native on CUDA and SPIR-V, a portable byte polyfill in WGSL). Integer results are exact;
//!   the float output equals the CPU kernels' to float rounding.
//! - [`ternary_matmul_float`]: float activations times ternary weights, no multiplication.
//!
//! Both read the packed words of [`crate::packed`] as stored in a `[rows, words]` `u32` tensor.
//!
//! [`TernaryOps`]: crate::burn_ext::TernaryOps

mod kernels;

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

use crate::burn_ext::ScaleKind;
use crate::packed::{BLOCK, BLOCK_WORDS, padded_cols, words_per_row};
use kernels::{LANES, ROW_THREADS, ROWS_PER_CUBE, TILE_M};

fn dims(t: &CubeTensor) -> Vec<usize> {
    t.meta.shape().to_vec()
}

/// Words of one scale group (the whole row for per-tensor and per-row scales).
fn group_words(kind: ScaleKind, words: usize) -> usize {
    match kind {
        ScaleKind::PerTensor | ScaleKind::PerRow => words,
        ScaleKind::PerGroup(group) => (group / BLOCK) * BLOCK_WORDS,
    }
}

/// The checked weight operands of a ternary matmul and its (uninitialized) output.
struct Operands {
    m: usize,
    rows: usize,
    words: usize,
    codes: CubeTensor,
    scales: CubeTensor,
    out: CubeTensor,
}

impl Operands {
    /// Nothing to compute: the output is empty or every product is a sum of nothing.
    fn is_trivial(&self) -> bool {
        self.m == 0 || self.rows == 0 || self.words == 0
    }

    /// Activation rows per thread: 1 for a GEMV, [`TILE_M`] otherwise.
    fn tile(&self) -> u32 {
        if self.m == 1 { 1 } else { TILE_M }
    }

    fn grid(&self) -> (CubeCount, CubeDim) {
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
    let out = empty_device_dtype(
        codes.client.clone(),
        codes.device.clone(),
        Shape::new([m, rows]),
        x.dtype,
    );
    Operands {
        m,
        rows,
        words,
        codes: into_contiguous(codes),
        scales: into_contiguous(scales),
        out,
    }
}

/// Cubes of `ROWS_PER_CUBE` output rows along x, tiles of `tile` activation rows along y and,
/// past 65,535 tiles, z.
fn matmul_grid(m: usize, rows: usize, tile: u32) -> (CubeCount, CubeDim) {
    let tiles = m.div_ceil(tile as usize).max(1);
    let y = tiles.min(65_535);
    (
        CubeCount::Static(
            rows.div_ceil(ROWS_PER_CUBE as usize) as u32,
            y as u32,
            tiles.div_ceil(y) as u32,
        ),
        CubeDim::new_2d(LANES, ROWS_PER_CUBE),
    )
}

/// Quantizes `x [m, cols]` (f32) to int8 per row: returns the packed activations
/// `[m, padded_cols / 4]` (`u32`, zero past `cols`) and the row scales `s_x [m]`.
pub fn quantize_rows(x: CubeTensor, cols: usize) -> (CubeTensor, CubeTensor) {
    let x = into_contiguous(x);
    let m = dims(&x)[0];
    let act_words = padded_cols(cols) / 4;
    let packed = empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([m, act_words]),
        DType::U32,
    );
    let scale = empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([m]),
        DType::F32,
    );
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

/// `y = q(x) · Wᵀ` with BitNet's int8 per-row activations: `x [m, cols]` f32, `codes
/// [rows, words_per_row(cols)]` u32, `scales` as `kind` says. Returns `[m, rows]` f32.
///
/// # Panics
/// On operands of the wrong shapes.
pub fn ternary_matmul_int8(
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
    if op.m >= INT8_DENSE_MIN_M && dense_fits(op.rows, cols) {
        return dense_int8(x, op, cols, kind);
    }
    let dtype = float_elem(x.dtype);
    let (xq, row_scale) = quantize_rows(x, cols);
    let (count, dim) = op.grid();
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
        tile,
        dtype,
    );
    op.out
}

/// `y = x · Wᵀ` with float activations and ternary weights (no activation quantization).
///
/// # Panics
/// On operands of the wrong shapes.
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
    if op.m >= FLOAT_DENSE_MIN_M && dense_fits(op.rows, cols) {
        return dense_float(x, op, cols, kind);
    }
    let (count, dim) = op.grid();
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
        tile,
        dtype,
    );
    op.out
}

/// From this many activation rows on, [`ternary_matmul_int8`] unpacks the weights once to f32
/// and sums the int8 codes (held exactly in f32) with Burn's tuned matmul: on an H200 through
/// Vulkan the per-row kernel beats Burn's f32 matmul up to M = 128 and loses 2–4× at M = 512.
pub const INT8_DENSE_MIN_M: usize = 256;

/// From this many activation rows on, [`ternary_matmul_float`] unpacks the weights (with their
/// scales folded in) to f32 and runs Burn's matmul: the per-row float kernel loses to it from
/// M = 128 on an H200 (and still wins at M = 32).
pub const FLOAT_DENSE_MIN_M: usize = 64;

/// The largest transient f32 copy of the weights the dense route makes (512 MiB: a LLaMA-7B
/// FFN matrix takes 180 MB); larger matrices stay on the per-row kernels.
pub const DENSE_MAX_BYTES: usize = 512 << 20;

/// Whether the f32 copy of a `[rows, cols]` weight fits [`DENSE_MAX_BYTES`].
fn dense_fits(rows: usize, cols: usize) -> bool {
    rows.saturating_mul(cols).saturating_mul(4) <= DENSE_MAX_BYTES
}

/// The weights `[rows, cols]` as f32 `code - 1` (divided by their scales when `fold_scale`).
fn unpack_dense(op: &Operands, cols: usize, kind: ScaleKind, fold_scale: bool) -> CubeTensor {
    let client = op.codes.client.clone();
    let dense = empty_device_dtype(
        client.clone(),
        op.codes.device.clone(),
        Shape::new([op.rows, cols]),
        DType::F32,
    );
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
fn dense_int8(x: CubeTensor, op: Operands, cols: usize, kind: ScaleKind) -> CubeTensor {
    let x = into_contiguous(x);
    let client = x.client.clone();
    let codes = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([op.m, cols]),
        DType::F32,
    );
    let row_scale = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([op.m]),
        DType::F32,
    );
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
fn dense_float(x: CubeTensor, op: Operands, cols: usize, kind: ScaleKind) -> CubeTensor {
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

/// A grid of `cubes` cubes within the 65,535-per-dimension limit.
fn grid(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, 65_535);
    CubeCount::Static(x as u32, cubes.div_ceil(x).max(1) as u32, 1)
}

/// Elements of a per-tensor partial reduction per cube.
const CHUNK: usize = 16 * ROW_THREADS as usize;

/// The quantizer of the fused fake-quantization kernels: codes `qn..=qp`, the scale
/// `s = qp / max(stat, eps)` with `stat` the mean (`abs_mean`) or max of `|x|` over the whole
/// tensor or over each row of the last axis (`per_row`); `centered` is the binary format
/// (`sign(x - mean(x))`, with the mean over the same group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FakeQuant {
    /// The smallest code.
    pub qn: i32,
    /// The largest code.
    pub qp: i32,
    /// The lower bound of the statistic.
    pub eps: f64,
    /// `true`: `mean |x|`; `false`: `max |x|`.
    pub abs_mean: bool,
    /// `true`: one scale per row of the last axis; `false`: one per tensor.
    pub per_row: bool,
    /// `true`: the binary format, codes `sign((x - mean(x)) s)` with `sign(0) = -1`.
    pub centered: bool,
}

/// Fused fake quantization of a float tensor for QAT: `y = clamp(round_half_even(x s), qn, qp)
/// / s`, or `sign((x - mean(x)) s) / s` when `centered` (see [`FakeQuant`]), in `x`'s type.
/// Per row: one kernel; per tensor: partial reduction, scale, apply (two passes over the data).
pub fn fake_quantize(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 0)
}

/// The clipped STE's gradient mask for [`fake_quantize`] with the same quantizer: 1 where
/// `qn <= u <= qp` for `u = (x - center) s`, 0 elsewhere, in `x`'s type.
pub fn clip_mask(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 1)
}

/// The rounding residual of [`fake_quantize`] with the same quantizer, `clamp(u) - code` for
/// `u = (x - center) s` (what the EWGS STE scales its gradient by), in `x`'s type.
pub fn rounding_residual(x: CubeTensor, quant: FakeQuant) -> CubeTensor {
    scaled_elementwise(x, quant, 2)
}

/// [`fake_quantize`] (`output` 0), [`clip_mask`] (1) or [`rounding_residual`] (2).
fn scaled_elementwise(x: CubeTensor, quant: FakeQuant, output: u32) -> CubeTensor {
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
    let scale = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([slots]),
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
    kernels::apply_scale_kernel::launch(
        &client,
        grid(len.div_ceil(ROW_THREADS as usize)),
        CubeDim::new_1d(ROW_THREADS),
        x.into_tensor_arg(),
        scale.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        len as u32,
        qn,
        qp,
        centered,
        output,
        dtype,
    );
    out
}

/// The kernel element type of a float tensor: f32, f16 or bf16 (what the runtime supports).
///
/// # Panics
/// On a tensor that is not f32, f16 or bf16.
fn float_elem(dtype: DType) -> ElemType {
    use cubecl::ir::FloatKind;
    ElemType::Float(match dtype {
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        other => panic!("the GPU kernels take f32, f16 or bf16 tensors, not {other:?}"),
    })
}
