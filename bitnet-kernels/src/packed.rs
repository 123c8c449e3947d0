//! The packed ternary weight format: 2-bit codes in `u32` words, laid out for SIMD decoding.
//!
//! # Layout, byte by byte
//! A weight matrix `W` has `rows = N` outputs and `cols = K` inputs; the kernels compute
//! `y = x · Wᵀ`. Each row is stored on its own, padded to a multiple of [`BLOCK`] = 256 weights
//! (padding weights are 0), in `K_pad / 16` words ([`words_per_row`]).
//!
//! - The **code** of a weight `w ∈ {-1, 0, +1}` is `w + 1 ∈ {0, 1, 2}` (code 3 is invalid).
//! - Block `b` of row `n` holds the weights `k = 256 b .. 256 b + 255` in the 16 words
//!   `words[n * words_per_row + 16 b ..][..16]`, read as 64 little-endian bytes.
//! - Byte `j` (0–63) of a block holds four codes:
//!   bits 7–6: `k = 256 b + j`; bits 5–4: `256 b + 64 + j`; bits 3–2: `256 b + 128 + j`;
//!   bits 1–0: `256 b + 192 + j`.
//!
//! So one shift and one mask of a 64-byte (AVX-512), 32-byte (AVX2) or 16-byte (NEON) load give
//! the codes of consecutive weights, matching a plain load of the activations. The integer dot
//! product of int8 activations `x` with a row is `Σ code·x − Σ x`, which `vpdpbusd` /
//! `vpmaddubsw` compute directly (codes as unsigned bytes).
//!
//! # Scales
//! A quantized weight is `code_value / s` with the multiplier `s` of the quantizer
//! (`s = 1 / max(mean|W|, eps)` for BitNet b1.58): one per tensor, one per row (output
//! channel), or one per group of `G` consecutive inputs of a row (`G` a multiple of 256).

use crate::aligned::AlignedBuf;
use crate::error::{KernelError, Result};

/// Weights per packing block.
pub const BLOCK: usize = 256;
/// Bytes per packing block.
pub const BLOCK_BYTES: usize = BLOCK / 4;
/// Words per packing block.
pub const BLOCK_WORDS: usize = BLOCK / 16;
/// The largest reduction dimension accepted (262,144): the kernels' i32 accumulators hold
/// `Σ 64·code·x ≤ 2^12·K` (see [`crate::cpu`]).
pub const MAX_K: usize = 1 << 18;

/// `K` rounded up to whole blocks.
pub fn padded_cols(cols: usize) -> usize {
    cols.div_ceil(BLOCK) * BLOCK
}

/// Words per packed row.
pub fn words_per_row(cols: usize) -> usize {
    padded_cols(cols) / 16
}

/// The scales of a packed matrix: `w = code_value / s`.
#[derive(Debug, Clone, PartialEq)]
pub enum TernaryScales {
    /// One multiplier for the whole matrix.
    PerTensor(f32),
    /// One multiplier per row (output channel), `[rows]`.
    PerRow(Vec<f32>),
    /// One multiplier per group of `group` consecutive inputs of a row, `[rows, cols / group]`.
    PerGroup {
        /// Inputs per group: a multiple of [`BLOCK`] that divides `cols`.
        group: usize,
        /// The multipliers, row-major.
        scales: Vec<f32>,
    },
}

impl TernaryScales {
    /// All multipliers, flat.
    pub fn values(&self) -> &[f32] {
        match self {
            TernaryScales::PerTensor(s) => core::slice::from_ref(s),
            TernaryScales::PerRow(s) | TernaryScales::PerGroup { scales: s, .. } => s,
        }
    }

    /// A borrowed view.
    pub fn as_ref(&self) -> ScalesRef<'_> {
        match self {
            TernaryScales::PerTensor(s) => ScalesRef::PerTensor(*s),
            TernaryScales::PerRow(s) => ScalesRef::PerRow(s),
            TernaryScales::PerGroup { group, scales } => ScalesRef::PerGroup {
                group: *group,
                scales,
            },
        }
    }
}

/// A borrowed view of [`TernaryScales`] (for example the storage of a Burn tensor).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalesRef<'a> {
    /// One multiplier for the whole matrix.
    PerTensor(f32),
    /// One multiplier per row, `[rows]`.
    PerRow(&'a [f32]),
    /// One multiplier per group of `group` inputs of a row, `[rows, cols / group]`.
    PerGroup {
        /// Inputs per group.
        group: usize,
        /// The multipliers, row-major.
        scales: &'a [f32],
    },
}

impl<'a> ScalesRef<'a> {
    /// All multipliers, flat.
    pub fn values(&self) -> &'a [f32] {
        match *self {
            ScalesRef::PerTensor(_) => &[],
            ScalesRef::PerRow(s) | ScalesRef::PerGroup { scales: s, .. } => s,
        }
    }

    /// The multiplier of row `n`, group `g`.
    #[inline]
    pub fn get(&self, n: usize, g: usize, groups_per_row: usize) -> f32 {
        match *self {
            ScalesRef::PerTensor(s) => s,
            ScalesRef::PerRow(s) => s[n],
            ScalesRef::PerGroup { scales, .. } => scales[n * groups_per_row + g],
        }
    }

    /// Inputs per scale group for a row of `cols` inputs.
    pub fn group_len(&self, cols: usize) -> usize {
        match *self {
            ScalesRef::PerGroup { group, .. } => group,
            _ => cols.max(1),
        }
    }

    /// Checks the number of scales and that each is finite and positive.
    pub fn validate(&self, rows: usize, cols: usize) -> Result<()> {
        let expected = match *self {
            ScalesRef::PerTensor(s) => {
                return if s.is_finite() && s > 0.0 {
                    Ok(())
                } else {
                    Err(KernelError::BadScale { index: 0, value: s })
                };
            }
            ScalesRef::PerRow(_) => rows,
            ScalesRef::PerGroup { group, .. } => {
                if group == 0 || !group.is_multiple_of(BLOCK) || !cols.is_multiple_of(group) {
                    return Err(KernelError::GroupSize {
                        group,
                        block: BLOCK,
                        k: cols,
                    });
                }
                rows * (cols / group)
            }
        };
        let values = self.values();
        if values.len() != expected {
            return Err(KernelError::Size {
                what: "scales",
                expected,
                got: values.len(),
            });
        }
        match values.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            Some(index) => Err(KernelError::BadScale {
                index,
                value: values[index],
            }),
            None => Ok(()),
        }
    }
}

/// A borrowed packed matrix: what the kernels read. Build it from a [`PackedTernary`] with
/// [`PackedTernary::view`], or from tensor storage with [`PackedRef::new`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedRef<'a> {
    rows: usize,
    cols: usize,
    words: &'a [u32],
    scales: ScalesRef<'a>,
}

impl<'a> PackedRef<'a> {
    /// Checks the sizes and the scales (not every code: a code 3 would read as weight +2, so
    /// words should come from [`PackedTernary`] or [`PackedTernary::from_parts`]).
    pub fn new(rows: usize, cols: usize, words: &'a [u32], scales: ScalesRef<'a>) -> Result<Self> {
        check_dims(rows, cols)?;
        let expected = rows * words_per_row(cols);
        if words.len() != expected {
            return Err(KernelError::Size {
                what: "packed words",
                expected,
                got: words.len(),
            });
        }
        scales.validate(rows, cols)?;
        Ok(Self {
            rows,
            cols,
            words,
            scales,
        })
    }

    /// Number of rows (outputs, N).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs, K).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed words.
    pub fn words(&self) -> &'a [u32] {
        self.words
    }

    /// The scales.
    pub fn scales(&self) -> ScalesRef<'a> {
        self.scales
    }
}

/// A ternary weight matrix `[rows = N, cols = K]` in the packed 2-bit format.
///
/// # Example
/// ```
/// use bitnet_kernels::packed::{PackedTernary, TernaryScales};
///
/// let w: Vec<i8> = vec![1, 0, -1, 1, -1, 0]; // 2 rows x 3 inputs
/// let p = PackedTernary::pack(&w, 2, 3, TernaryScales::PerTensor(2.0)).unwrap();
/// assert_eq!(p.words().len(), 2 * 16); // each row padded to one 256-weight block
/// assert_eq!(p.unpack(), w);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PackedTernary {
    rows: usize,
    cols: usize,
    /// 64-byte aligned, so block loads never straddle cache lines.
    words: AlignedBuf<u32>,
    scales: TernaryScales,
}

/// Position of weight `k` within its block: (byte in block, bit shift).
#[inline]
pub fn code_position(k_in_block: usize) -> (usize, u32) {
    let quarter = k_in_block / BLOCK_BYTES;
    (k_in_block % BLOCK_BYTES, 6 - 2 * quarter as u32)
}

impl PackedTernary {
    /// Packs row-major ternary values `[rows, cols]`.
    pub fn pack(values: &[i8], rows: usize, cols: usize, scales: TernaryScales) -> Result<Self> {
        check_dims(rows, cols)?;
        if values.len() != rows * cols {
            return Err(KernelError::Size {
                what: "ternary values",
                expected: rows * cols,
                got: values.len(),
            });
        }
        scales.as_ref().validate(rows, cols)?;
        let wpr = words_per_row(cols);
        // Every code starts as 1 (the weight 0): 0b01 in each 2-bit field.
        let mut words = AlignedBuf::filled(0x5555_5555u32, rows * wpr);
        for (n, row) in values.chunks(cols.max(1)).enumerate().take(rows) {
            let row_words = &mut words.as_mut_slice()[n * wpr..(n + 1) * wpr];
            for (k, &v) in row.iter().enumerate() {
                if !(-1..=1).contains(&v) {
                    return Err(KernelError::NotTernary {
                        index: n * cols + k,
                        value: v as i32,
                    });
                }
                set_code(row_words, k, (v + 1) as u32);
            }
        }
        Ok(Self {
            rows,
            cols,
            words,
            scales,
        })
    }

    /// Rebuilds a packed matrix from its parts, checking every invariant (sizes, scales, no
    /// code 3 anywhere, zero padding).
    pub fn from_parts(
        rows: usize,
        cols: usize,
        words: Vec<u32>,
        scales: TernaryScales,
    ) -> Result<Self> {
        check_dims(rows, cols)?;
        let wpr = words_per_row(cols);
        if words.len() != rows * wpr {
            return Err(KernelError::Size {
                what: "packed words",
                expected: rows * wpr,
                got: words.len(),
            });
        }
        scales.as_ref().validate(rows, cols)?;
        if let Some(i) = words.iter().position(|w| w & (w >> 1) & 0x5555_5555 != 0) {
            return Err(KernelError::Inconsistent(format!(
                "word {i} holds the invalid code 3"
            )));
        }
        let packed = Self {
            rows,
            cols,
            words: AlignedBuf::from_slice(&words),
            scales,
        };
        for n in 0..rows {
            for k in cols..padded_cols(cols) {
                if packed.code(n, k) != 1 {
                    return Err(KernelError::Inconsistent(format!(
                        "row {n}: padding weight {k} is not zero"
                    )));
                }
            }
        }
        Ok(packed)
    }

    /// Unpacks to row-major values `[rows, cols]` in `{-1, 0, +1}`.
    pub fn unpack(&self) -> Vec<i8> {
        let mut out = Vec::with_capacity(self.rows * self.cols);
        for n in 0..self.rows {
            for k in 0..self.cols {
                out.push(self.code(n, k) as i8 - 1);
            }
        }
        out
    }

    /// The code (`w + 1`) of weight `(n, k)`; `k` may index the padding.
    #[inline]
    pub fn code(&self, n: usize, k: usize) -> u32 {
        let row = &self.words.as_slice()[n * words_per_row(self.cols)..];
        get_code(row, k)
    }

    /// Number of rows (outputs, N).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns (inputs, K).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The packed words, `rows * words_per_row(cols)`.
    pub fn words(&self) -> &[u32] {
        self.words.as_slice()
    }

    /// The scales.
    pub fn scales(&self) -> &TernaryScales {
        &self.scales
    }

    /// A borrowed view for the kernels.
    pub fn view(&self) -> PackedRef<'_> {
        PackedRef {
            rows: self.rows,
            cols: self.cols,
            words: self.words.as_slice(),
            scales: self.scales.as_ref(),
        }
    }

    /// Bytes of codes plus scales held in memory.
    pub fn size_bytes(&self) -> usize {
        self.words().len() * 4 + self.scales.values().len() * 4
    }

    /// Splits into `(rows, cols, words, scales)`.
    pub fn into_parts(self) -> (usize, usize, Vec<u32>, TernaryScales) {
        let words = self.words().to_vec();
        (self.rows, self.cols, words, self.scales)
    }
}

/// Checks a matrix size: `0 < cols <= MAX_K`, `rows > 0`, and the padded matrix's weight count
/// fits a `usize` (so no size derived from it overflows).
pub(crate) fn check_dims(rows: usize, cols: usize) -> Result<()> {
    if cols > MAX_K {
        return Err(KernelError::KTooLarge {
            k: cols,
            max: MAX_K,
        });
    }
    if rows == 0 || cols == 0 {
        return Err(KernelError::Size {
            what: "rows and cols (must be > 0)",
            expected: 1,
            got: 0,
        });
    }
    // With `cols <= MAX_K` the padded row never overflows; the whole matrix may.
    if rows.checked_mul(padded_cols(cols)).is_none() {
        return Err(KernelError::Inconsistent(format!(
            "{rows} x {cols} weights overflow the address space"
        )));
    }
    Ok(())
}

#[inline]
fn word_and_shift(k: usize) -> (usize, u32) {
    let block = k / BLOCK;
    let (byte, shift) = code_position(k % BLOCK);
    let word = block * BLOCK_WORDS + byte / 4;
    (word, 8 * (byte % 4) as u32 + shift)
}

#[inline]
fn get_code(row: &[u32], k: usize) -> u32 {
    let (word, shift) = word_and_shift(k);
    (row[word] >> shift) & 3
}

#[inline]
fn set_code(row: &mut [u32], k: usize, code: u32) {
    let (word, shift) = word_and_shift(k);
    row[word] = (row[word] & !(3 << shift)) | (code << shift);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<i8> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) % 3) as i8 - 1
            })
            .collect()
    }

    #[test]
    fn layout_matches_the_documentation() {
        // One row of 256 weights, all zero except k = 0, 64, 128 and 193.
        let mut w = vec![0i8; 256];
        w[0] = 1; // byte 0 bits 7-6 = code 2
        w[64] = -1; // byte 0 bits 5-4 = code 0
        w[128] = 1; // byte 0 bits 3-2 = code 2
        w[193] = -1; // byte 1 bits 1-0 = code 0
        let p = PackedTernary::pack(&w, 1, 256, TernaryScales::PerTensor(1.0)).unwrap();
        let bytes: Vec<u8> = p.words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes[0], 0b10_00_10_01);
        assert_eq!(bytes[1], 0b01_01_01_00);
        assert!(bytes[2..].iter().all(|b| *b == 0b01_01_01_01));
    }

    #[test]
    fn round_trips_over_random_shapes() {
        for (i, (rows, cols)) in [
            (1, 1),
            (3, 5),
            (2, 255),
            (4, 256),
            (5, 257),
            (3, 1000),
            (7, 4099),
        ]
        .into_iter()
        .enumerate()
        {
            let w = lcg(rows * cols, i as u64);
            let p = PackedTernary::pack(&w, rows, cols, TernaryScales::PerRow(vec![1.5; rows]))
                .unwrap();
            assert_eq!(p.unpack(), w, "{rows}x{cols}");
            assert_eq!(p.words().len(), rows * words_per_row(cols));
            let (r, c, words, scales) = p.clone().into_parts();
            assert_eq!(PackedTernary::from_parts(r, c, words, scales).unwrap(), p);
        }
    }

    #[test]
    fn round_trips_over_200_random_shapes() {
        let mut s = 12345u64;
        let mut next = move |m: u64| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) % m
        };
        for case in 0..200 {
            let rows = 1 + next(6) as usize;
            let cols = 1 + next(1100) as usize;
            let w = lcg(rows * cols, 1000 + case);
            let p = PackedTernary::pack(&w, rows, cols, TernaryScales::PerTensor(1.0)).unwrap();
            assert_eq!(p.unpack(), w, "{rows}x{cols}");
            for n in 0..rows {
                for k in 0..cols {
                    assert_eq!(p.code(n, k) as i8 - 1, w[n * cols + k]);
                }
                for k in cols..padded_cols(cols) {
                    assert_eq!(p.code(n, k), 1, "padding is zero");
                }
            }
        }
    }

    #[test]
    fn invalid_input_is_a_typed_error() {
        let s = TernaryScales::PerTensor(1.0);
        assert!(matches!(
            PackedTernary::pack(&[0, 2, 0], 1, 3, s.clone()),
            Err(KernelError::NotTernary { index: 1, value: 2 })
        ));
        assert!(matches!(
            PackedTernary::pack(&[0, 1], 1, 3, s.clone()),
            Err(KernelError::Size { .. })
        ));
        assert!(matches!(
            PackedTernary::pack(&[], 1, MAX_K + 1, s.clone()),
            Err(KernelError::KTooLarge { .. })
        ));
        assert!(matches!(
            PackedTernary::from_parts(usize::MAX / 8, 256, vec![], s.clone()),
            Err(KernelError::Inconsistent(m)) if m.contains("overflow")
        ));
        assert!(matches!(
            PackedTernary::pack(&[0; 3], 1, 3, TernaryScales::PerTensor(f32::NAN)),
            Err(KernelError::BadScale { .. })
        ));
        assert!(matches!(
            PackedTernary::pack(
                &[0; 512],
                1,
                512,
                TernaryScales::PerGroup {
                    group: 128,
                    scales: vec![1.0; 4]
                }
            ),
            Err(KernelError::GroupSize { .. })
        ));
        // Code 3 and non-zero padding are caught when parts are reassembled.
        let mut words = vec![0x5555_5555u32; 16];
        words[3] = 0xFFFF_FFFF;
        assert!(matches!(
            PackedTernary::from_parts(1, 256, words, s.clone()),
            Err(KernelError::Inconsistent(_))
        ));
        let mut words = vec![0x5555_5555u32; 16];
        words[15] = 0x5555_5556; // a padding weight of a 200-wide row set to +1... or -1
        assert!(matches!(
            PackedTernary::from_parts(1, 200, words, s),
            Err(KernelError::Inconsistent(_))
        ));
    }
}
