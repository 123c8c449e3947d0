//! GPU kernels (CubeCL) for packed ternary weights, run by the [`TernaryOps`] backend extension
//! on Burn's `CubeBackend` (wgpu — Vulkan, Metal, DX12, WebGPU —, CUDA, ROCm) and, through
//! the generated lazy operation, on `Fusion<CubeBackend>`.
//!
//! - [`ternary_matmul_int8`]: BitNet's int8 per-row activations (one cube per row: absmax,
//!   scale, round half to even, four codes per `u32`), then `dp4a` against the packed codes
//!   where the runtime has it natively (CUDA, SPIR-V) and SWAR byte masks where `dp4a` would be
//!   a byte-by-byte polyfill (WGSL, MSL; see [`Int8Dot`](crate::int8_dot::Int8Dot)). Integer results are exact; the float
//!   output equals the CPU kernels' to float rounding.
//! - [`ternary_matmul_float`]: float activations times ternary weights, no multiplication.
//! - Many activation rows ([`INT8_DENSE_MIN_M`], [`FLOAT_DENSE_MIN_M`]): the dense route,
//!   Burn's matmul on the unpacked weights.
//! - [`fake_quantize`], [`soft_quantize`], [`lsq`]: the fused QAT fake quantization, and its
//!   STEs' backward passes ([`clipped_grad`], [`adaptive_grad`], [`soft_grad`], [`lsq_grad`]),
//!   each one kernel over the incoming gradient.
//! - [`norm_quantize`]: RMSNorm fused with the fake quantization (BitLinear's input), and its
//!   gradients ([`norm_quantize_grad`]), one kernel each.
//!
//! The matmuls read the packed words of [`crate::packed`] as stored in a `[rows, words]` `u32`
//! tensor.
//!
//! [`TernaryOps`]: crate::burn_ext::TernaryOps

mod dense;
mod fake_quant;
mod kernels;
mod matmul;
mod norm_quant;

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

pub use crate::fake_quant::FakeQuant;
pub use dense::{DENSE_MAX_BYTES, FLOAT_DENSE_MIN_M, INT8_DENSE_MIN_M};
pub use fake_quant::{
    adaptive_grad, clipped_grad, fake_quantize, lsq, lsq_grad, soft_grad, soft_quantize,
};
pub use matmul::{quantize_rows, ternary_matmul_float, ternary_matmul_int8};
pub use norm_quant::{norm_quantize, norm_quantize_grad};

/// The shape of `t`.
pub(crate) fn dims(t: &CubeTensor) -> Vec<usize> {
    t.meta.shape().to_vec()
}

/// A new uninitialized tensor of `shape` and `dtype` on `like`'s device.
pub(crate) fn empty_like(like: &CubeTensor, shape: Vec<usize>, dtype: DType) -> CubeTensor {
    burn_cubecl::ops::numeric::empty_device_dtype(
        like.client.clone(),
        like.device.clone(),
        burn::tensor::Shape::from(shape),
        dtype,
    )
}

/// Panics, naming `what`, unless every tensor of a launch holds at most `u32::MAX` elements: the
/// kernels index with 32 bits (CubeCL's `u32` address type, and the sizes they take), so a
/// larger tensor would be read at wrapped indices. Launchers check their inputs with this and
/// the outputs they allocate with [`check_index`] before allocating them; every size a launcher
/// passes as `u32` is at most one of these element counts.
pub(crate) fn check_indexable(what: &str, tensors: &[&CubeTensor]) {
    for t in tensors {
        check_index(what, t.meta.shape().num_elements());
    }
}

/// Panics, naming `what`, unless a tensor of `elements` elements fits 32-bit indices (see
/// [`check_indexable`]).
pub(crate) fn check_index(what: &str, elements: usize) {
    assert!(
        u32::try_from(elements).is_ok(),
        "{what}: a tensor of {elements} elements exceeds the GPU kernels' 32-bit indices"
    );
}

/// A grid of at least `cubes` cubes within the 65,535-per-dimension limit, balanced so that
/// fewer than `y` of them (the number of rows of the grid) are surplus.
pub(crate) fn grid(cubes: usize) -> CubeCount {
    let y = cubes.div_ceil(65_535).max(1);
    let x = cubes.div_ceil(y).max(1);
    CubeCount::Static(x as u32, y as u32, 1)
}

/// The kernel element type of a float tensor: f32, f16 or bf16 (what the runtime supports).
///
/// # Panics
/// On a tensor that is not f32, f16 or bf16.
pub(crate) fn float_elem(dtype: DType) -> ElemType {
    use cubecl::ir::FloatKind;
    ElemType::Float(match dtype {
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        other => panic!("the GPU kernels take f32, f16 or bf16 tensors, not {other:?}"),
    })
}
