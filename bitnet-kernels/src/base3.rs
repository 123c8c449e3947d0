//! Base-3 storage: 5 ternary values per byte (≈ 1.6 bits per weight), for files.
//!
//! Values `w ∈ {-1, 0, +1}` become trits `t = w + 1`; five consecutive values (row-major) make
//! the byte `t0 + 3 t1 + 9 t2 + 27 t3 + 81 t4 ≤ 242`. A last partial group is padded with
//! zeros (trit 1). Bytes above 242 are invalid.

use crate::error::{KernelError, Result};

/// Values per byte.
pub const TRITS_PER_BYTE: usize = 5;

/// Encodes ternary values.
///
/// # Example
/// ```
/// use bitnet_kernels::base3::{decode, encode};
/// let w = [1i8, -1, 0, 0, 1, -1, 1];
/// let bytes = encode(&w).unwrap();
/// assert_eq!(bytes.len(), 2);
/// assert_eq!(decode(&bytes, w.len()).unwrap(), w);
/// ```
pub fn encode(values: &[i8]) -> Result<Vec<u8>> {
    values
        .chunks(TRITS_PER_BYTE)
        .enumerate()
        .map(|(c, chunk)| {
            let mut byte = 0u32;
            for i in (0..TRITS_PER_BYTE).rev() {
                let v = chunk.get(i).copied().unwrap_or(0);
                if !(-1..=1).contains(&v) {
                    return Err(KernelError::NotTernary {
                        index: c * TRITS_PER_BYTE + i,
                        value: v as i32,
                    });
                }
                byte = byte * 3 + (v + 1) as u32;
            }
            Ok(byte as u8)
        })
        .collect()
}

/// Decodes `count` values; fails on a byte above 242, a wrong length, or non-zero padding.
pub fn decode(bytes: &[u8], count: usize) -> Result<Vec<i8>> {
    let expected = count.div_ceil(TRITS_PER_BYTE);
    if bytes.len() != expected {
        return Err(KernelError::Size {
            what: "base-3 bytes",
            expected,
            got: bytes.len(),
        });
    }
    let mut out = Vec::with_capacity(expected * TRITS_PER_BYTE);
    for (i, &b) in bytes.iter().enumerate() {
        if b > 242 {
            return Err(KernelError::Inconsistent(format!(
                "base-3 byte {i} is {b} (> 242)"
            )));
        }
        let mut v = b;
        for _ in 0..TRITS_PER_BYTE {
            out.push((v % 3) as i8 - 1);
            v /= 3;
        }
    }
    if out[count..].iter().any(|v| *v != 0) {
        return Err(KernelError::Inconsistent(
            "base-3 padding is not zero".into(),
        ));
    }
    out.truncate(count);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_243_patterns_round_trip() {
        for b in 0u8..=242 {
            let values = decode(&[b], 5).unwrap();
            assert_eq!(encode(&values).unwrap(), vec![b]);
        }
    }

    #[test]
    fn bad_bytes_and_lengths_are_errors() {
        assert!(matches!(
            decode(&[243], 5),
            Err(KernelError::Inconsistent(_))
        ));
        assert!(matches!(decode(&[0, 0], 5), Err(KernelError::Size { .. })));
        // 3 values: the two padding trits must be 1 (value 0). Byte 0 = five -1 values.
        assert!(matches!(decode(&[0], 3), Err(KernelError::Inconsistent(_))));
        assert!(matches!(
            encode(&[0, 3]),
            Err(KernelError::NotTernary { index: 1, value: 3 })
        ));
    }
}
