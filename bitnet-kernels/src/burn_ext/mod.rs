//! Burn integration: `y = x · Wᵀ` on packed ternary weights held in ordinary Burn tensors.
//!
//! [`ternary_matmul`] runs the CPU kernels of [`crate::cpu`] on Flex and NdArray devices
//! (through the [`TernaryOps`] backend extension, reading the tensors' storage in place) and a
//! portable tensor-op version ([`ternary_matmul_fallback`]) on every other device. Both quantize
//! the activations to int8 per row exactly as BitNet does and give the same integers.

mod autodiff;
#[cfg(feature = "cube")]
mod cube;
mod fallback;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
mod ops;

use crate::int8_dot::Int8Dot;

pub use fallback::{ternary_matmul_fallback, ternary_matmul_float_fallback, unpack_codes};
pub use ops::{
    TernaryOps, has_kernels, kernel_dtype, ternary_matmul, ternary_matmul_float,
    ternary_matmul_with_dot,
};

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

/// The `activations` argument of the `ternary_matmul` backend op: float activations (0), or
/// int8 activations with the dot products of `dot`.
pub(crate) fn encode_activations(int8: Option<Int8Dot>) -> u8 {
    match int8 {
        None => 0,
        Some(Int8Dot::Auto) => 1,
        Some(Int8Dot::Dp4a) => 2,
        Some(Int8Dot::Swar) => 3,
    }
}

/// The inverse of [`encode_activations`] (unknown codes are taken as the automatic choice).
pub(crate) fn decode_activations(code: u8) -> Option<Int8Dot> {
    match code {
        0 => None,
        2 => Some(Int8Dot::Dp4a),
        3 => Some(Int8Dot::Swar),
        _ => Some(Int8Dot::Auto),
    }
}

/// Runs the CPU kernel on host slices; shared by the Flex and NdArray implementations.
#[cfg(any(feature = "flex", feature = "ndarray"))]
// The backend op's arguments, unpacked from tensors; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_cpu(
    x: &[f32],
    m: usize,
    words: &[u32],
    rows: usize,
    cols: usize,
    scales: &[f32],
    kind: usize,
    activations: u8,
) -> Vec<f32> {
    if decode_activations(activations).is_none() {
        return float_matmul_cpu(
            x,
            m,
            words,
            rows,
            cols,
            ScaleKind::decode(kind).view(scales),
        );
    }
    let view =
        crate::packed::PackedRef::new(rows, cols, words, ScaleKind::decode(kind).view(scales))
            .unwrap_or_else(|e| panic!("ternary_matmul: {e}"));
    crate::cpu::ternary_matmul(x, m, view, &crate::cpu::MatmulOptions::default())
        .unwrap_or_else(|e| panic!("ternary_matmul: {e}"))
}

/// Float activations times ternary weights on the host: `y[r, j] = Σ_k x[r, k] w[j, k] / s_w`,
/// adds and subtracts only.
#[cfg(any(feature = "flex", feature = "ndarray"))]
fn float_matmul_cpu(
    x: &[f32],
    m: usize,
    words: &[u32],
    rows: usize,
    cols: usize,
    scales: crate::packed::ScalesRef<'_>,
) -> Vec<f32> {
    use crate::packed::{BLOCK, BLOCK_WORDS, ScalesRef, words_per_row};
    let per_row = words_per_row(cols);
    let group = match scales {
        ScalesRef::PerGroup { group, .. } => group,
        _ => cols.max(1),
    };
    let groups = cols.div_ceil(group).max(1);
    let mut y = vec![0f32; m * rows];
    for j in 0..rows {
        let row = &words[j * per_row..(j + 1) * per_row];
        for r in 0..m {
            let xr = &x[r * cols..(r + 1) * cols];
            let mut parts = vec![0f32; groups];
            for (w, &word) in row.iter().enumerate() {
                let (b, i) = (w / BLOCK_WORDS, w % BLOCK_WORDS);
                for q in 0..4 {
                    for t in 0..4 {
                        let k = b * BLOCK + 64 * q + 4 * i + t;
                        let code = (word >> (8 * t + 6 - 2 * q)) & 3;
                        if k < cols && code != 1 {
                            let v = if code == 2 { xr[k] } else { -xr[k] };
                            parts[k / group] += v;
                        }
                    }
                }
            }
            y[r * rows + j] = match scales {
                ScalesRef::PerTensor(s) => parts[0] / s,
                ScalesRef::PerRow(s) => parts[0] / s[j],
                ScalesRef::PerGroup { scales: s, .. } => {
                    (0..groups).map(|g| parts[g] / s[j * groups + g]).sum()
                }
            };
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "flex")]
    #[test]
    fn inconsistent_operands_are_typed_errors_not_panics() {
        use crate::KernelError;
        use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};
        let device = Device::flex();
        let codes = |rows: usize, words: usize| {
            Tensor::<2, Int>::from_data(
                TensorData::new(vec![0x5555_5555u32; rows * words], [rows, words]),
                TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
            )
        };
        let scales = |v: Vec<f32>| {
            let n = v.len();
            Tensor::<1>::from_data(TensorData::new(v, [n]), &device)
        };
        let x = Tensor::<2>::ones([2, 512], &device);
        let run = |x: Tensor<2>, c, s, cols, kind| ternary_matmul(x, c, s, cols, kind).map(|_| ());
        // Valid: 3 rows of 512 inputs (32 words), per-row scales.
        assert!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0; 3]),
                512,
                ScaleKind::PerRow
            )
            .is_ok()
        );
        assert_eq!(
            run(
                x.clone(),
                codes(3, 16),
                scales(vec![1.0; 3]),
                512,
                ScaleKind::PerRow
            ),
            Err(KernelError::Size {
                what: "ternary_matmul code words per row",
                expected: 32,
                got: 16
            })
        );
        assert_eq!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0; 2]),
                512,
                ScaleKind::PerRow
            ),
            Err(KernelError::Size {
                what: "ternary_matmul scales",
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0; 3]),
                256,
                ScaleKind::PerRow
            ),
            Err(KernelError::Size {
                what: "ternary_matmul activation width",
                expected: 256,
                got: 512
            })
        );
        assert!(matches!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0; 6]),
                512,
                ScaleKind::PerGroup(100)
            ),
            Err(KernelError::GroupSize { group: 100, .. })
        ));
        assert!(matches!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0, 0.0, 1.0]),
                512,
                ScaleKind::PerRow
            ),
            Err(KernelError::BadScale { index: 1, .. })
        ));
        assert!(matches!(
            run(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0]),
                1 << 19,
                ScaleKind::PerTensor
            ),
            Err(KernelError::KTooLarge { .. })
        ));
        // The float product and the fallbacks check the same way.
        assert!(matches!(
            ternary_matmul_float(
                x.clone(),
                codes(3, 32),
                scales(vec![1.0; 2]),
                512,
                ScaleKind::PerRow
            ),
            Err(KernelError::Size { .. })
        ));
        assert!(matches!(
            ternary_matmul_fallback(
                x,
                codes(3, 31),
                scales(vec![1.0; 3]),
                512,
                ScaleKind::PerRow
            ),
            Err(KernelError::Size { .. })
        ));
        assert!(matches!(
            unpack_codes(codes(3, 31), 512),
            Err(KernelError::Size { .. })
        ));
        // Codes of another integer type (a record may bring them): the kernels read u32 words.
        let i64_codes = Tensor::<2, Int>::from_data(
            TensorData::new(vec![0x5555_5555i64; 3 * 32], [3, 32]),
            TensorCreationOptions::new(device.clone()).with_dtype(DType::I64),
        );
        assert!(matches!(
            run(Tensor::<2>::ones([2, 512], &device), i64_codes, scales(vec![1.0; 3]), 512, ScaleKind::PerRow),
            Err(KernelError::Inconsistent(m)) if m.contains("I64")
        ));
    }

    #[test]
    fn the_activations_argument_round_trips() {
        for mode in [
            None,
            Some(Int8Dot::Auto),
            Some(Int8Dot::Dp4a),
            Some(Int8Dot::Swar),
        ] {
            assert_eq!(decode_activations(encode_activations(mode)), mode);
        }
    }
}
