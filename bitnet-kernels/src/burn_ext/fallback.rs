//! The portable tensor-op ternary matmul, for every device without the CPU kernels.

use burn::tensor::{Int, Tensor};

use super::ScaleKind;
use super::ops::check_operands;
use crate::activation::ACT_EPS;
use crate::error::{KernelError, Result};
use crate::packed::{BLOCK, BLOCK_WORDS, MAX_K, words_per_row};

/// Unpacks `codes [rows, words_per_row(cols)]` into the ternary values `[rows, cols]` as
/// floats (`-1.0`, `0.0`, `1.0`; a code 3, which no valid packed matrix holds, gives `2.0`),
/// with Burn tensor operations only.
///
/// # Errors
/// [`KernelError::Size`] for codes that are not `words_per_row(cols)` words per row, or no
/// columns.
pub fn unpack_codes(codes: Tensor<2, Int>, cols: usize) -> Result<Tensor<2>> {
    let [rows, words] = codes.dims();
    if cols == 0 || cols > MAX_K || words != words_per_row(cols) {
        return Err(KernelError::Size {
            what: "code words per row (for 1..=2^18 columns)",
            expected: words_per_row(cols.clamp(1, MAX_K)),
            got: words,
        });
    }
    let blocks = words / BLOCK_WORDS;
    // Word i of block b, byte t, quarter q holds weight k = 256 b + 64 q + 4 i + t at bit
    // 8 t + 6 - 2 q: gather the codes in (b, q, i, t) order, which is k order.
    let codes = codes.reshape([rows, blocks, BLOCK_WORDS]);
    let quarters: Vec<Tensor<4, Int>> = (0..4)
        .map(|q| {
            let bytes: Vec<Tensor<3, Int>> = (0..4)
                .map(|t| {
                    codes
                        .clone()
                        .bitwise_right_shift_scalar((8 * t + 6 - 2 * q) as u32)
                        .bitwise_and_scalar(3u32)
                })
                .collect();
            Tensor::stack(bytes, 3)
        })
        .collect();
    let all: Tensor<5, Int> = Tensor::stack(quarters, 2);
    Ok(all
        .reshape([rows, blocks * BLOCK])
        .narrow(1, 0, cols)
        .float()
        .sub_scalar(1.0))
}

/// `y = x · Wᵀ` with Burn tensor operations only: the codes are unpacked with shifts and masks,
/// the activations quantized to int8 per row with BitNet's formula, the integer-valued product
/// formed with `matmul` (exact below 2^24) and scaled back as the CPU kernels do.
///
/// # Example
/// ```
/// use bitnet_kernels::burn_ext::{ScaleKind, ternary_matmul, ternary_matmul_fallback};
/// use bitnet_kernels::packed::{PackedTernary, TernaryScales};
/// use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
///
/// let device = Device::flex();
/// let p = PackedTernary::pack(&[1, 0, -1, 1, 1, 1], 2, 3, TernaryScales::PerTensor(2.0)).unwrap();
/// let words = p.words().to_vec();
/// let codes = Tensor::<2, Int>::from_data(
///     TensorData::new(words, [2, 16]),
///     TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
/// );
/// let scales = Tensor::<1>::from_data([2.0], &device);
/// let x = Tensor::<2>::from_data([[1.0, 2.0, -1.0]], &device);
/// let a = ternary_matmul(x.clone(), codes.clone(), scales.clone(), 3, ScaleKind::PerTensor)?;
/// let b = ternary_matmul_fallback(x, codes, scales, 3, ScaleKind::PerTensor)?;
/// a.into_data().assert_eq(&b.into_data(), true);
/// # Ok::<(), bitnet_kernels::KernelError>(())
/// ```
///
/// # Errors
/// As [`ternary_matmul`](super::ternary_matmul).
pub fn ternary_matmul_fallback(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Result<Tensor<2>> {
    check_operands(&x, &codes, &scales, cols, kind)?;
    let weights = unpack_codes(codes, cols)?;

    // BitNet's activation quantizer: s = 127 / max(max|x|, eps).
    let x = x.cast(burn::tensor::DType::F32);
    let max = x.clone().abs().max_dim(1).clamp_min(ACT_EPS);
    let sx = max.ones_like().mul_scalar(127.0) / max;
    let xq = (x * sx.clone()).round().clamp(-128.0, 127.0);

    Ok(scaled_products(xq, weights, scales, kind, Some(sx)))
}

/// `y = x · Wᵀ` with float activations (no activation quantization), with Burn tensor
/// operations only: the codes are unpacked and multiplied in floats, then divided by the
/// weight scales.
///
/// # Errors
/// As [`ternary_matmul`](super::ternary_matmul).
pub fn ternary_matmul_float_fallback(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Result<Tensor<2>> {
    check_operands(&x, &codes, &scales, cols, kind)?;
    let weights = unpack_codes(codes, cols)?;
    Ok(scaled_products(
        x.cast(burn::tensor::DType::F32),
        weights,
        scales,
        kind,
        None,
    ))
}

/// `Σ_k a[r, k] w[j, k] / (s_a[r] · s_w)` per scale group, summed over the groups: `a` the
/// (quantized) activations `[m, cols]`, `weights` the unpacked codes `[rows, cols]`, `row_scale`
/// the activations' per-row scales `[m, 1]` (`None`: float activations).
fn scaled_products(
    a: Tensor<2>,
    weights: Tensor<2>,
    scales: Tensor<1>,
    kind: ScaleKind,
    row_scale: Option<Tensor<2>>,
) -> Tensor<2> {
    let [m, cols] = a.dims();
    let [rows, _] = weights.dims();
    // One float type for all: the activations' (the unpacked codes and the scales may be in
    // the device's, or f32).
    let weights = weights.cast(a.dtype());
    let scales = scales.cast(a.dtype());
    let row_scale = row_scale.map(|s| s.cast(a.dtype()));
    match kind {
        ScaleKind::PerTensor | ScaleKind::PerRow => {
            let dots = a.matmul(weights.transpose());
            let sw: Tensor<2> = match kind {
                ScaleKind::PerTensor => scales.reshape([1, 1]),
                _ => scales.reshape([1, rows]),
            };
            match row_scale {
                Some(sx) => dots / (sx * sw),
                None => dots / sw,
            }
        }
        ScaleKind::PerGroup(group) => {
            let groups = cols / group;
            let ag = a.reshape([m, groups, group]).swap_dims(0, 1);
            let wg = weights.reshape([rows, groups, group]).swap_dims(0, 1);
            let dots = ag.matmul(wg.swap_dims(1, 2)); // [groups, m, rows]
            let sw: Tensor<3> = scales
                .reshape([rows, groups])
                .transpose()
                .reshape([groups, 1, rows]);
            let scaled = match row_scale {
                Some(sx) => dots / (sx.reshape([1, m, 1]) * sw),
                None => dots / sw,
            };
            scaled.sum_dim(0).reshape([m, rows])
        }
    }
}
