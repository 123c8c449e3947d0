//! Backend extension: the operations that need a custom backward pass.
//!
//! Laid out like Burn's `burn-signal`: this file is the trait, `backends/` holds one
//! implementation per backend, and the `Tensor<D>` functions that call it live next to their
//! users ([`crate::ste`]).
// NdArray is deprecated in Burn 0.22 but still supported; the macro expands to code naming it.
#![allow(deprecated)]
// Without a backend feature the generated dispatch never reads its arguments.
#![cfg_attr(
    not(any(feature = "flex", feature = "ndarray", feature = "cube")),
    allow(unused_variables)
)]

use burn::backend::{Backend, backend_extension, tensor::FloatTensor};

/// Quantization-aware-training operations supplied by a backend extension.
///
/// Plain backends (Flex, NdArray, CubeCL) compute the forward pass; `Autodiff<B, C>` adds the custom
/// backward pass.
#[backend_extension(
    Flex: cfg(feature = "flex"),
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(feature = "cube"),
    Fusion: cfg(feature = "cube"),
    Autodiff,
)]
pub trait QatBackend: Backend {
    /// Element-wise gradient scaling (EWGS, Lee et al., CVPR 2021).
    ///
    /// The forward pass returns `q`, the dequantized tensor. The backward pass sends
    /// `g_x = g * (1 + delta * sign(g) * e)` to `x`, where `g` is the incoming gradient and
    /// `e` the (detached) distance between `x` and `q` on the integer grid. `q` and `e` receive
    /// no gradient.
    #[fusion(default)]
    fn ewgs_ste(
        x: FloatTensor<Self>,
        q: FloatTensor<Self>,
        e: FloatTensor<Self>,
        delta: f64,
    ) -> FloatTensor<Self> {
        let _ = (x, e, delta);
        q
    }
}
