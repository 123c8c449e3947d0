//! Autodiff: the ternary matmul is inference-only, so it runs on the inner backend and
//! returns an untracked tensor.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend};

use super::ops::TernaryOps;

impl<B: Backend + TernaryOps, C: CheckpointStrategy> TernaryOps for Autodiff<B, C> {
    fn ternary_matmul(
        x: FloatTensor<Self>,
        codes: IntTensor<Self>,
        scales: FloatTensor<Self>,
        cols: usize,
        kind: usize,
        activations: u8,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::ternary_matmul(
            Self::inner(x),
            codes,
            Self::inner(scales),
            cols,
            kind,
            activations,
        ))
    }
}
