//! Burn integration: `y = x · Wᵀ` on packed ternary weights held in ordinary Burn tensors.
//!
//! [`ternary_matmul`] runs the CPU kernels of [`crate::cpu`] on Flex and NdArray devices
//! (through the [`TernaryOps`] backend extension, reading the tensors' storage in place) and a
//! portable tensor-op version ([`ternary_matmul_fallback`]) on every other device. Both quantize
//! the activations to int8 per row exactly as BitNet does and give the same integers.

mod autodiff;
mod fallback;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
mod ops;

pub use fallback::{ternary_matmul_fallback, unpack_codes};
pub use ops::{TernaryOps, ternary_matmul};

/// How the scales tensor of a packed matrix is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleKind {
    /// `[1]`: one multiplier.
    PerTensor,
    /// `[rows]`: one multiplier per output.
    PerRow,
    /// `[rows * cols / group]`: one multiplier per group of `group` inputs of a row.
    PerGroup(usize),
}

impl ScaleKind {
    /// Encodes the kind as the `group` argument of the backend op (0, `usize::MAX`, or `G`).
    pub fn encode(self) -> usize {
        match self {
            ScaleKind::PerTensor => 0,
            ScaleKind::PerRow => usize::MAX,
            ScaleKind::PerGroup(g) => g,
        }
    }

    /// The inverse of [`ScaleKind::encode`].
    pub fn decode(code: usize) -> Self {
        match code {
            0 => ScaleKind::PerTensor,
            usize::MAX => ScaleKind::PerRow,
            g => ScaleKind::PerGroup(g),
        }
    }

    #[cfg_attr(not(any(feature = "flex", feature = "ndarray")), allow(dead_code))]
    pub(crate) fn view(self, scales: &[f32]) -> crate::packed::ScalesRef<'_> {
        use crate::packed::ScalesRef;
        match self {
            ScaleKind::PerTensor => {
                ScalesRef::PerTensor(scales.first().copied().unwrap_or(f32::NAN))
            }
            ScaleKind::PerRow => ScalesRef::PerRow(scales),
            ScaleKind::PerGroup(group) => ScalesRef::PerGroup { group, scales },
        }
    }
}

/// Runs the CPU kernel on host slices; shared by the Flex and NdArray implementations.
#[cfg(any(feature = "flex", feature = "ndarray"))]
pub(crate) fn run_cpu(
    x: &[f32],
    m: usize,
    words: &[u32],
    rows: usize,
    cols: usize,
    scales: &[f32],
    kind: usize,
) -> Vec<f32> {
    let view =
        crate::packed::PackedRef::new(rows, cols, words, ScaleKind::decode(kind).view(scales))
            .unwrap_or_else(|e| panic!("ternary_matmul: {e}"));
    crate::cpu::ternary_matmul(x, m, view, &crate::cpu::MatmulOptions::default())
        .unwrap_or_else(|e| panic!("ternary_matmul: {e}"))
}
