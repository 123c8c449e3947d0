#![warn(missing_docs)]
//! # bitnet-kernels
//!
//! Packed ternary weights and the kernels that multiply with them, for
//! [bitnet-qat](https://docs.rs/bitnet-qat).
//!
//! - [`packed`]: the 2-bit format (codes `w + 1` in `u32` words, laid out for SIMD decoding),
//!   with per-tensor, per-row and per-group scales.
//! - [`base3`]: 5 weights per byte for files; [`mod@file`]: the packed-weights file format.
//! - [`activation`]: BitNet's 8-bit per-token activation quantization.
//! - [`cpu`]: `y = x · Wᵀ` with integer accumulation, AVX-512 VNNI / AVX2 / NEON / scalar
//!   variants chosen at run time, two threads for large shapes.
//! - [`burn_ext`] (feature `burn`, on with `flex` or `ndarray`): the `ternary_matmul` Burn
//!   backend extension over packed weights held in ordinary tensors, with a tensor-op fallback.
//! - `gpu` (feature `cube`, on with `wgpu`, `vulkan`, `metal`, `webgpu` or `cuda`): the CubeCL
//!   kernels — ternary GEMV/GEMM, the fused QAT fake quantization and its STEs' gradients;
//!   [`fake_quant`] describes a fused fake quantization, [`int8_dot`] chooses how the int8
//!   kernel forms its dot products.

pub mod activation;
mod aligned;
pub mod base3;
#[cfg(feature = "burn")]
pub mod burn_ext;
pub mod cpu;
pub mod error;
pub mod fake_quant;
pub mod file;
#[cfg(feature = "cube")]
pub mod gpu;
pub mod int8_dot;
pub mod packed;

pub use error::{KernelError, Result};
