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

/// Round half to even for `|v| <= 2^22` (NaN stays NaN), as `f32::round_ties_even` does, but
/// in two additions that vectorize (`round_ties_even` is a libm call on baseline x86-64):
/// adding and subtracting `1.5 · 2^23` leaves no fraction bits, so the FPU's default rounding
/// (to nearest, ties to even) does the rounding.
#[inline(always)]
pub fn round_half_even_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    (v + MAGIC) - MAGIC
}

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
        let s = 127.0 / abs_max(row).max(ACT_EPS);
        for (c, v) in codes.as_mut_slice()[r * padded..r * padded + cols]
            .iter_mut()
            .zip(row)
        {
            let u = round_half_even_small((v * s).clamp(-128.0, 127.0));
            // A NaN's code is 0 (as an `as` cast makes it); a select, which vectorizes.
            let u = if u.is_nan() { 0.0 } else { u };
            // SAFETY: `u` is an integer in [-128, 127] (clamped, rounded, not NaN): finite and
            // within i32, which is what `to_int_unchecked` requires. (The checked `as` cast
            // does not vectorize.)
            *c = unsafe { u.to_int_unchecked::<i32>() } as i8;
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

/// `max |v|` over `row` (NaNs ignored, as `f32::max` does), in 16 lanes that vectorize.
fn abs_max(row: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(chunk) {
            *l = l.max(v.abs());
        }
    }
    (lanes.iter().chain(chunks.remainder())).fold(0f32, |m, v| m.max(v.abs()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_rounding_is_half_to_even() {
        for v in [
            -128.0f32, -2.5, -1.5, -0.5, -0.49, 0.0, 0.5, 1.5, 2.5, 2.51, 126.5, 127.0,
        ] {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
        let mut x = -130.0f32;
        while x < 130.0 {
            assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            x += 0.0371;
        }
        assert!(round_half_even_small(f32::NAN).is_nan());
    }

    #[test]
    fn codes_are_bitnets_rounded_and_clamped_products() {
        // A row maximum of 127 makes s = 1: the halves are exact ties; beside them a NaN.
        let cols = 300;
        let x: Vec<f32> = (0..cols)
            .map(|i| match i {
                0 => 127.0,
                1 => f32::NAN,
                _ => (i as f32 - 150.0) * 0.5,
            })
            .collect();
        let q = quantize_rows(&x, 1, cols).unwrap();
        assert_eq!(q.scales(), &[1.0]);
        assert_eq!(&q.codes()[147..154], &[-2, -1, 0, 0, 0, 1, 2]);
        for (i, v) in x.iter().enumerate() {
            let want = if v.is_nan() {
                0
            } else {
                v.round_ties_even().clamp(-128.0, 127.0) as i8
            };
            assert_eq!(q.codes()[i], want, "{i}: {v}");
        }
        assert!(q.codes()[cols..].iter().all(|c| *c == 0));
    }
}
