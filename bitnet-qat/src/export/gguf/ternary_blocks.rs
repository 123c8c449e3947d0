//! ggml's ternary block types `TQ2_0` and `TQ1_0` (ggml-org/llama.cpp `ggml-common.h`,
//! `quantize_row_tq{1,2}_0_ref` and `dequantize_row_tq{1,2}_0` of `ggml-quants.c`): blocks of
//! 256 values in `{-1, 0, +1}` with an f16 multiplier `d` (the dequantized value is
//! `value · d`).

use half::f16;

use super::container::TensorType;
use crate::error::{QatError, Result};

/// Values per block.
pub(crate) const BLOCK: usize = 256;

/// Encodes `values` (a whole number of blocks) as `ty` blocks, each with multiplier `d`.
pub(crate) fn encode(ty: TensorType, values: &[i8], d: f16) -> Vec<u8> {
    debug_assert!(values.len().is_multiple_of(BLOCK));
    let mut out = Vec::with_capacity(values.len() / BLOCK * ty.block_bytes());
    for block in values.chunks_exact(BLOCK) {
        match ty {
            TensorType::Tq2_0 => encode_tq2_0(block, &mut out),
            TensorType::Tq1_0 => encode_tq1_0(block, &mut out),
            _ => unreachable!("only ternary types are encoded here"),
        }
        out.extend(d.to_le_bytes());
    }
    out
}

/// Decodes `ty` blocks into their values and one multiplier per block.
///
/// # Errors
/// [`QatError::File`] for a `TQ2_0` code 3 (not a ternary value) or data that is not whole
/// blocks.
pub(crate) fn decode(ty: TensorType, name: &str, data: &[u8]) -> Result<(Vec<i8>, Vec<f32>)> {
    let size = ty.block_bytes();
    if !data.len().is_multiple_of(size) {
        return Err(bad(
            name,
            format!("{} bytes of {} blocks", data.len(), ty.name()),
        ));
    }
    let blocks = data.len() / size;
    let mut values = Vec::with_capacity(blocks * BLOCK);
    let mut d = Vec::with_capacity(blocks);
    for (i, block) in data.chunks_exact(size).enumerate() {
        let (codes, scale) = block.split_at(size - 2);
        match ty {
            TensorType::Tq2_0 => decode_tq2_0(codes, &mut values)
                .map_err(|e| bad(name, format!("block {i}: {e}")))?,
            TensorType::Tq1_0 => decode_tq1_0(codes, &mut values),
            _ => unreachable!("only ternary types are decoded here"),
        }
        d.push(f16::from_le_bytes([scale[0], scale[1]]).to_f32());
    }
    Ok((values, d))
}

fn bad(name: &str, reason: String) -> QatError {
    QatError::File {
        format: "GGUF",
        path: String::new(),
        field: name.to_string(),
        offset: None,
        reason,
    }
}

/// `TQ2_0`: 64 bytes; value `e` of the block is at byte `32 (e / 128) + e % 32`, bits
/// `2 ((e % 128) / 32)`, as `value + 1`.
fn encode_tq2_0(block: &[i8], out: &mut Vec<u8>) {
    for half in 0..2 {
        for m in 0..32 {
            let byte = (0..4).fold(0u8, |q, n| {
                q | (((block[128 * half + m + 32 * n] + 1) as u8 & 3) << (2 * n))
            });
            out.push(byte);
        }
    }
}

fn decode_tq2_0(codes: &[u8], values: &mut Vec<i8>) -> std::result::Result<(), String> {
    let start = values.len();
    values.resize(start + BLOCK, 0);
    for (j, &byte) in codes.iter().enumerate() {
        let (half, m) = (j / 32, j % 32);
        for n in 0..4 {
            let code = (byte >> (2 * n)) & 3;
            if code == 3 {
                return Err(format!("byte {j} holds the code 3, not a ternary value"));
            }
            values[start + 128 * half + m + 32 * n] = code as i8 - 1;
        }
    }
    Ok(())
}

/// The base-3 byte of up to five trits (first most significant), scaled to `⌈q·256/243⌉` so
/// that the decoder reads trit `n` as the top of `3 · (byte · 3^n mod 256)`.
fn trit_byte(trits: impl Iterator<Item = i8>) -> u8 {
    let q = trits.fold(0u16, |q, t| q * 3 + (t + 1) as u16);
    ((q * 256).div_ceil(243)) as u8
}

fn trit(byte: u8, n: u32) -> i8 {
    let q = byte.wrapping_mul(3u8.pow(n)) as u16;
    ((q * 3) >> 8) as i8 - 1
}

/// `TQ1_0`: 48 bytes `qs` of five trits (values `m + 32 n` for bytes 0..32, then
/// `160 + m + 16 n` for bytes 32..48) and 4 bytes `qh` of four trits (`240 + j + 4 m`, padded
/// with a zero trit).
fn encode_tq1_0(block: &[i8], out: &mut Vec<u8>) {
    for m in 0..32 {
        out.push(trit_byte((0..5).map(|n| block[m + 32 * n])));
    }
    for m in 0..16 {
        out.push(trit_byte((0..5).map(|n| block[160 + m + 16 * n])));
    }
    for j in 0..4 {
        out.push(trit_byte(
            (0..4).map(|m| block[240 + j + 4 * m]).chain([-1]),
        ));
    }
}

fn decode_tq1_0(codes: &[u8], values: &mut Vec<i8>) {
    let start = values.len();
    values.resize(start + BLOCK, 0);
    let v = &mut values[start..];
    for m in 0..32 {
        for n in 0..5 {
            v[m + 32 * n] = trit(codes[m], n as u32);
        }
    }
    for m in 0..16 {
        for n in 0..5 {
            v[160 + m + 16 * n] = trit(codes[32 + m], n as u32);
        }
    }
    for j in 0..4 {
        for m in 0..4 {
            v[240 + j + 4 * m] = trit(codes[48 + j], m as u32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(blocks: usize) -> Vec<i8> {
        (0..blocks * BLOCK)
            .map(|i| ((i * 7 + i / 3) % 3) as i8 - 1)
            .collect()
    }

    #[test]
    fn both_types_round_trip_every_value() {
        for ty in [TensorType::Tq2_0, TensorType::Tq1_0] {
            let v = values(3);
            let bytes = encode(ty, &v, f16::from_f32(0.5));
            assert_eq!(bytes.len(), 3 * ty.block_bytes());
            let (back, d) = decode(ty, "w", &bytes).unwrap();
            assert_eq!(back, v, "{ty:?}");
            assert_eq!(d, vec![0.5; 3]);
        }
    }

    #[test]
    fn tq2_0_matches_ggml_layout() {
        // Value e of a block: byte 32 (e / 128) + e % 32, shift 2 ((e % 128) / 32).
        let mut v = vec![0i8; BLOCK];
        v[0] = 1; // byte 0, shift 0: code 2
        v[32] = -1; // byte 0, shift 2: code 0
        v[129] = 1; // byte 33, shift 0: code 2
        v[255] = -1; // byte 63, shift 6: code 0
        let bytes = encode(TensorType::Tq2_0, &v, f16::ONE);
        assert_eq!(bytes[0], 0b0101_0010);
        assert_eq!(bytes[33], 0b0101_0110);
        assert_eq!(bytes[63], 0b0001_0101);
        assert_eq!(&bytes[64..], &[0x00, 0x3C]);
    }

    #[test]
    fn tq1_0_matches_ggml_bytes() {
        // All zeros: every trit is code 1, q = 121 (11111 in base 3), ⌈121·256/243⌉ = 128;
        // qh: 1111 then the zero pad trit 0 → 3·40 = 120, ⌈120·256/243⌉ = 127.
        let bytes = encode(TensorType::Tq1_0, &[0; BLOCK], f16::ONE);
        assert!(bytes[..48].iter().all(|&b| b == 128));
        assert!(bytes[48..52].iter().all(|&b| b == 127));
        // All +1: q = 242 → ⌈242·256/243⌉ = 255; qh 2222 0 → 240 → 253.
        let bytes = encode(TensorType::Tq1_0, &[1; BLOCK], f16::ONE);
        assert!(bytes[..48].iter().all(|&b| b == 255));
        assert!(bytes[48..52].iter().all(|&b| b == 253));
    }

    #[test]
    fn code_three_is_a_typed_error() {
        let mut bytes = encode(TensorType::Tq2_0, &values(1), f16::ONE);
        bytes[5] = 0xFF;
        assert!(matches!(
            decode(TensorType::Tq2_0, "w", &bytes),
            Err(QatError::File { reason, .. }) if reason.contains("byte 5 holds the code 3")
        ));
        assert!(decode(TensorType::Tq2_0, "w", &bytes[..65]).is_err_and(
            |e| matches!(e, QatError::File { reason, .. } if reason.contains("65 bytes"))
        ));
    }
}
