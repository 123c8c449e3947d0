//! 8-bit per-token activation quantization, exactly as BitNet's `activation_quant`.

use crate::aligned::AlignedBuf;
use crate::error::{KernelError, Result};
use crate::packed::padded_cols;

/// Activations quantized per row: `codes = clamp(round_half_even(x * s), -128, 127)` with
/// `s = 127 / max(max|x|, 1e-5)`; rows are padded with zero codes to whole blocks.
///
/// Built only by [`quantize_rows`], so its sizes always describe its codes: the matmul kernels
/// rely on it (the fields are private, readable through the accessors).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    rows: usize,
    cols: usize,
    padded: usize,
    /// `[rows, padded]` int8 codes, 64-byte aligned.
    codes: AlignedBuf<i8>,
    scales: Vec<f32>,
}

/// The BitNet activation epsilon.
pub const ACT_EPS: f32 = 1e-5;

/// Quantizes row-major `x [rows, cols]`.
///
/// # Errors
/// [`KernelError::Size`] when `x` does not hold `rows * cols` values.
///
/// # Example
/// ```
/// use bitnet_kernels::activation::quantize_rows;
/// let q = quantize_rows(&[0.5, -1.0, 0.25], 1, 3).unwrap();
/// assert_eq!(&q.codes()[..3], &[64, -127, 32]); // 63.5 rounds to even
/// assert_eq!(q.scales()[0], 127.0);
/// ```
pub fn quantize_rows(x: &[f32], rows: usize, cols: usize) -> Result<QuantizedRows> {
    let expected = rows.saturating_mul(cols);
    if x.len() != expected {
        return Err(KernelError::Size {
            what: "activations [rows, cols]",
            expected,
            got: x.len(),
        });
    }
    let padded = padded_cols(cols);
    let mut codes = AlignedBuf::filled(0i8, rows * padded);
    let mut scales = Vec::with_capacity(rows);
    for (r, row) in x.chunks(cols.max(1)).enumerate().take(rows) {
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = 127.0 / max.max(ACT_EPS);
        for (c, v) in codes.as_mut_slice()[r * padded..r * padded + cols]
            .iter_mut()
            .zip(row)
        {
            *c = (v * s).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        scales.push(s);
    }
    Ok(QuantizedRows {
        rows,
        cols,
        padded,
        codes,
        scales,
    })
}

impl QuantizedRows {
    /// The `[rows, padded]` int8 codes.
    pub fn codes(&self) -> &[i8] {
        self.codes.as_slice()
    }

    /// Number of rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Logical row length (K).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Padded row length (a multiple of 256).
    pub fn padded(&self) -> usize {
        self.padded
    }

    /// The multiplier `s` of each row.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Sum of the codes of row `r` over inputs `[start, end)` (within the row).
    pub(crate) fn sum(&self, r: usize, start: usize, end: usize) -> i32 {
        self.codes()[r * self.padded + start..r * self.padded + end]
            .iter()
            .map(|&c| c as i32)
            .sum()
    }
}
