//! The `ternary_matmul` backend extension and its `Tensor` API.
// NdArray is deprecated in Burn 0.22 but still supported; the macro expands to code naming it.
#![allow(deprecated)]
// Without a backend feature the generated dispatch never reads its arguments.
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "cube")),
    allow(unused_variables)
)]

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, backend_extension};
use burn::tensor::{Int, Tensor};

use super::ScaleKind;
use super::encode_activations;
use super::fallback::{ternary_matmul_fallback, ternary_matmul_float_fallback};
use crate::error::{KernelError, Result};
use crate::int8_dot::Int8Dot;
use crate::packed::{BLOCK, MAX_K, words_per_row};

/// Ternary matmul supplied by a backend extension.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Autodiff,
)]
pub trait TernaryOps: Backend {
    /// `y = x · Wᵀ`: `x [m, cols]` (f32; f16 or bf16 too on CubeCL devices), `codes [rows,
    /// words_per_row(cols)]` u32 packed codes, `scales` f32 laid out as `kind` says
    /// ([`ScaleKind::encode`]). `activations` (see `burn_ext::encode_activations`): 0, float
    /// activations; otherwise they are first quantized to int8 per row (BitNet), and on GPUs
    /// the dot products are formed as the code says. Returns `[m, rows]` in `x`'s float type.
    #[fusion(dtype = x, shape = burn::tensor::Shape::new([x[0], codes[0]]))]
    fn ternary_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        cols: usize,
        kind: usize,
        activations: u8,
    ) -> FloatTensor<Self>;
}

/// `y = x · Wᵀ` for `x [m, cols]` against a packed ternary matrix held in tensors:
/// `codes [rows, words_per_row(cols)]` (u32 words of [`crate::packed`]) and its scales.
///
/// On Flex and NdArray devices this runs the SIMD CPU kernels in place, on CubeCL devices (wgpu,
/// CUDA, …, with the `cube` feature) the GPU kernels of [`crate::gpu`]; elsewhere it runs
/// [`ternary_matmul_fallback`]. No gradient flows through it: it is for inference.
///
/// The shapes are checked before anything runs, and on CPU devices the scales too (read in
/// place). The codes' values are the caller's contract, as [`PackedTernary::from_parts`]
/// checks them: a code 3 gives an unspecified (finite) result on every device, never undefined
/// behaviour. On GPU devices a scale that is not finite and positive gives non-finite outputs:
/// `bitnet_qat`'s packed weights check their scales when they are built or loaded.
///
/// The output has `x`'s float type. The GPU kernels read f16 and bf16 activations as they are
/// and sum in f32; the CPU kernels and the fallback compute in f32 and cast the result.
///
/// # Errors
/// [`KernelError::Inconsistent`] for codes that are not u32; [`KernelError::Size`] for `x`,
/// codes or scales of other shapes than `cols`, the codes' rows and `kind` give; [`KernelError::KTooLarge`] for `cols` above [`MAX_K`];
/// [`KernelError::GroupSize`] for a group that is not a positive multiple of 256 dividing
/// `cols`; [`KernelError::BadScale`] for a scale that is not finite and positive (CPU devices).
///
/// [`PackedTernary::from_parts`]: crate::packed::PackedTernary::from_parts
pub fn ternary_matmul(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Result<Tensor<2>> {
    run(x, codes, scales, cols, kind, Some(Int8Dot::Auto))
}

/// [`ternary_matmul`] with the GPU's int8 dot products formed as `dot` says (for benchmarks and
/// tests that compare the two ways; the sums are identical, only the speed differs). The CPU
/// kernels ignore it.
///
/// # Errors
/// As [`ternary_matmul`].
pub fn ternary_matmul_with_dot(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
    dot: Int8Dot,
) -> Result<Tensor<2>> {
    run(x, codes, scales, cols, kind, Some(dot))
}

/// `y = x · Wᵀ` with float activations (W1.58 A16/A32: no activation quantization) against a
/// packed ternary matrix; see [`ternary_matmul`] for the operands. CPU kernels on Flex and
/// NdArray, the CubeCL kernel on GPU devices, tensor operations elsewhere.
///
/// # Errors
/// As [`ternary_matmul`].
pub fn ternary_matmul_float(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Result<Tensor<2>> {
    run(x, codes, scales, cols, kind, None)
}

/// Checks that `x`, `codes` and `scales` are the operands of one packed product of `cols`
/// inputs with scales laid out as `kind` (and, on CPU devices, that the scales are finite and
/// positive).
pub(crate) fn check_operands(
    x: &Tensor<2>,
    codes: &Tensor<2, Int>,
    scales: &Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Result<()> {
    if cols > MAX_K {
        return Err(KernelError::KTooLarge {
            k: cols,
            max: MAX_K,
        });
    }
    let size = |what, expected, got| {
        if expected == got {
            Ok(())
        } else {
            Err(KernelError::Size {
                what,
                expected,
                got,
            })
        }
    };
    let [rows, words] = codes.dims();
    if codes.dtype() != burn::tensor::DType::U32 {
        return Err(KernelError::Inconsistent(format!(
            "ternary_matmul codes of type {:?}: the packed words are u32",
            codes.dtype()
        )));
    }
    size("ternary_matmul inputs (cols > 0)", 1, usize::from(cols > 0))?;
    size("ternary_matmul activation width", cols, x.dims()[1])?;
    size(
        "ternary_matmul code words per row",
        words_per_row(cols),
        words,
    )?;
    size("ternary_matmul code rows (> 0)", 1, usize::from(rows > 0))?;
    let expected = match kind {
        ScaleKind::PerTensor => 1,
        ScaleKind::PerRow => rows,
        ScaleKind::PerGroup(group) => {
            if group == 0 || !group.is_multiple_of(BLOCK) || !cols.is_multiple_of(group) {
                return Err(KernelError::GroupSize {
                    group,
                    block: BLOCK,
                    k: cols,
                });
            }
            rows * (cols / group)
        }
    };
    size("ternary_matmul scales", expected, scales.dims()[0])?;
    if has_cpu_kernels(&x.device()) {
        let values = scales
            .clone()
            .into_data()
            .try_cast_as::<f32>()
            .and_then(|d| d.try_into_vec::<f32>())
            .unwrap_or_default();
        if let Some(index) = values.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(KernelError::BadScale {
                index,
                value: values[index],
            });
        }
    }
    Ok(())
}

fn run(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
    int8: Option<Int8Dot>,
) -> Result<Tensor<2>> {
    check_operands(&x, &codes, &scales, cols, kind)?;
    let dtype = x.dtype();
    let y = if has_kernels(&x.device()) {
        use burn::backend::Dispatch;
        let native = kernel_dtype(&x.device(), dtype);
        let x = x.cast(native);
        // The kernels read f32 scales (a record loaded on a bf16 device may hold others).
        let scales = scales.cast(burn::tensor::DType::F32);
        Tensor::from_dispatch(<Dispatch as TernaryOps>::ternary_matmul(
            x.into_dispatch(),
            codes.into_dispatch(),
            scales.into_dispatch(),
            cols,
            kind.encode(),
            encode_activations(int8),
        ))
    } else if int8.is_some() {
        ternary_matmul_fallback(x, codes, scales, cols, kind)?
    } else {
        ternary_matmul_float_fallback(x, codes, scales, cols, kind)?
    };
    Ok(y.cast(dtype))
}

/// The float type the kernels read on `device` for activations of type `dtype`: the GPU
/// kernels take f16 and bf16 as they are (and sum in f32), everything else is read as f32.
///
/// # Example
/// ```
/// use bitnet_kernels::burn_ext::kernel_dtype;
/// use burn::tensor::{DType, Device};
///
/// assert_eq!(kernel_dtype(&Device::flex(), DType::F16), DType::F32);
/// assert_eq!(kernel_dtype(&Device::flex(), DType::F32), DType::F32);
/// ```
pub fn kernel_dtype(
    device: &burn::tensor::Device,
    dtype: burn::tensor::DType,
) -> burn::tensor::DType {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    use burn::tensor::DType;
    #[allow(unreachable_patterns)]
    match (device.clone().inner().as_dispatch(), dtype) {
        #[cfg(feature = "cube")]
        (DispatchDevice::Cube(_), DType::F16 | DType::BF16) => dtype,
        _ => DType::F32,
    }
}

/// Whether the device's backend runs our CPU kernels (Flex, NdArray).
fn has_cpu_kernels(device: &burn::tensor::Device) -> bool {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    #[allow(unreachable_patterns)]
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        _ => false,
    }
}

/// Whether the device's backend has our kernels (CPU or CubeCL).
pub fn has_kernels(device: &burn::tensor::Device) -> bool {
    #[allow(unused_imports)]
    use burn::backend::DispatchDevice;
    #[allow(unreachable_patterns)]
    match device.clone().inner().as_dispatch() {
        #[cfg(feature = "flex")]
        DispatchDevice::Flex(_) => true,
        #[cfg(feature = "ndarray")]
        DispatchDevice::NdArray(_) => true,
        #[cfg(feature = "cube")]
        DispatchDevice::Cube(_) => true,
        _ => false,
    }
}
