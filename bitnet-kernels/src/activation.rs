//! 8-bit per-token activation quantization, exactly as BitNet's `activation_quant`.

use crate::aligned::AlignedBuf;
use crate::packed::padded_cols;

/// Activations quantized per row: `codes = clamp(round_half_even(x * s), -128, 127)` with
/// `s = 127 / max(max|x|, 1e-5)`; rows are padded with zero codes to whole blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedRows {
    /// Number of rows (tokens).
    pub rows: usize,
    /// Logical row length (K).
    pub cols: usize,
    /// Padded row length (a multiple of 256).
    pub padded: usize,
    /// `[rows, padded]` int8 codes, 64-byte aligned.
    codes: AlignedBuf<i8>,
    /// The multiplier `s` of each row.
    pub scales: Vec<f32>,
}

/// The BitNet activation epsilon.
pub const ACT_EPS: f32 = 1e-5;

/// Quantizes row-major `x [rows, cols]`.
///
/// # Example
/// ```
/// use bitnet_kernels::activation::quantize_rows;
/// let q = quantize_rows(&[0.5, -1.0, 0.25], 1, 3);
/// assert_eq!(&q.codes()[..3], &[64, -127, 32]); // 63.5 rounds to even
/// assert_eq!(q.scales[0], 127.0);
/// ```
pub fn quantize_rows(x: &[f32], rows: usize, cols: usize) -> QuantizedRows {
    assert_eq!(x.len(), rows * cols, "activations [rows, cols]");
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
    QuantizedRows {
        rows,
        cols,
        padded,
        codes,
        scales,
    }
}

impl QuantizedRows {
    /// The `[rows, padded]` int8 codes.
    pub fn codes(&self) -> &[i8] {
        self.codes.as_slice()
    }

    /// Sum of the codes of row `r` over inputs `[start, end)`.
    pub fn sum(&self, r: usize, start: usize, end: usize) -> i32 {
        self.codes()[r * self.padded + start..r * self.padded + end]
            .iter()
            .map(|&c| c as i32)
            .sum()
    }
}
