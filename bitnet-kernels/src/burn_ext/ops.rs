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
use crate::int8_dot::Int8Dot;

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
/// The shapes are not checked here; `bitnet_qat::infer::TernaryLinear` checks them.
///
/// The output has `x`'s float type. The GPU kernels read f16 and bf16 activations as they are
/// and sum in f32; the CPU kernels and the fallback compute in f32 and cast the result.
pub fn ternary_matmul(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Tensor<2> {
    run(x, codes, scales, cols, kind, Some(Int8Dot::Auto))
}

/// [`ternary_matmul`] with the GPU's int8 dot products formed as `dot` says (for benchmarks and
/// tests that compare the two ways; the sums are identical, only the speed differs). The CPU
/// kernels ignore it.
pub fn ternary_matmul_with_dot(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
    dot: Int8Dot,
) -> Tensor<2> {
    run(x, codes, scales, cols, kind, Some(dot))
}

/// `y = x · Wᵀ` with float activations (W1.58 A16/A32: no activation quantization) against a
/// packed ternary matrix; see [`ternary_matmul`] for the operands. CPU kernels on Flex and
/// NdArray, the CubeCL kernel on GPU devices, tensor operations elsewhere.
pub fn ternary_matmul_float(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
) -> Tensor<2> {
    run(x, codes, scales, cols, kind, None)
}

fn run(
    x: Tensor<2>,
    codes: Tensor<2, Int>,
    scales: Tensor<1>,
    cols: usize,
    kind: ScaleKind,
    int8: Option<Int8Dot>,
) -> Tensor<2> {
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
        ternary_matmul_fallback(x, codes, scales, cols, kind)
    } else {
        ternary_matmul_float_fallback(x, codes, scales, cols, kind)
    };
    y.cast(dtype)
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
