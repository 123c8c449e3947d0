//! The packed-weights file: one ternary matrix, its scales, 2-bit or base-3 codes.
//!
//! # Format (version 1, little-endian)
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `BTQ1` |
//! | 4 | 4 | version `u32` = 1 |
//! | 8 | 8 | rows `u64` (N) |
//! | 16 | 8 | cols `u64` (K) |
//! | 24 | 1 | encoding: 0 = 2-bit words as in memory, 1 = base-3 (5 weights per byte) |
//! | 25 | 1 | scale kind: 0 per tensor, 1 per row, 2 per group |
//! | 26 | 2 | reserved, 0 |
//! | 28 | 8 | group size `u64` (0 unless per group) |
//! | 36 | 8 | scale count `u64` |
//! | 44 | 4 × count | scales `f32` (the multipliers `s`, `w = code_value / s`) |
//! | … | 8 | payload length `u64` |
//! | … | length | payload: the words (`u32` LE) or the base-3 bytes of the row-major values |
//!
//! Nothing may follow the payload. Every field is checked on reading — sizes with overflow
//! checks, the reserved bytes 0, the group size 0 unless the scales are per group — and
//! nothing larger than [`MAX_EXPANSION`] times the file (plus [`SLACK_BYTES`]) is allocated
//! before the payload is decoded: a truncated, inconsistent or hostile file is a
//! [`KernelError`], never a panic, an out-of-bounds read or an outsized allocation. The reader
//! is fuzzed (`benches`: `fuzz-readers`).

use std::io::Write;
use std::path::Path;

use crate::base3;
use crate::error::{KernelError, Result};
use crate::packed::{PackedTernary, TernaryScales, check_dims, words_per_row};

const MAGIC: [u8; 4] = *b"BTQ1";
const VERSION: u32 = 1;

/// How many times its own size a file may expand to when decoded. Words files decode to their
/// payload; base-3 files to at most 1.25 × 8 / 1.6 = 6.25 times theirs (1.25 bytes a weight
/// decoded, 1.6 bits a weight stored) when rows are whole blocks (rows
/// narrower than a 256-weight block pad up to it and expand further: such files are refused
/// past the bound).
pub const MAX_EXPANSION: usize = 8;
/// Bytes any file may decode to whatever its size (small matrices).
pub const SLACK_BYTES: usize = 16 << 20;

/// How the codes are stored in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// The in-memory 2-bit words (2 bits per weight plus row padding); loads without decoding.
    Words,
    /// Base-3, 5 weights per byte (1.6 bits per weight).
    Base3,
}

/// Serializes a packed matrix.
pub fn to_bytes(packed: &PackedTernary, encoding: Encoding) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(packed.rows() as u64).to_le_bytes());
    out.extend_from_slice(&(packed.cols() as u64).to_le_bytes());
    out.push(match encoding {
        Encoding::Words => 0,
        Encoding::Base3 => 1,
    });
    let (kind, group) = match packed.scales() {
        TernaryScales::PerTensor(_) => (0u8, 0u64),
        TernaryScales::PerRow(_) => (1, 0),
        TernaryScales::PerGroup { group, .. } => (2, *group as u64),
    };
    out.push(kind);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&group.to_le_bytes());
    let scales = packed.scales().values();
    out.extend_from_slice(&(scales.len() as u64).to_le_bytes());
    for s in scales {
        out.extend_from_slice(&s.to_le_bytes());
    }
    let payload = match encoding {
        Encoding::Words => packed
            .words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect(),
        Encoding::Base3 => base3::encode(&packed.unpack())?,
    };
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Parses a packed matrix, checking every field.
pub fn from_bytes(bytes: &[u8]) -> Result<PackedTernary> {
    let mut r = Reader { bytes, pos: 0 };
    let magic: [u8; 4] = r.take(4, "magic")?.try_into().expect("4 bytes");
    if magic != MAGIC {
        return Err(KernelError::BadMagic(magic));
    }
    let version = r.u32("version")?;
    if version != VERSION {
        return Err(KernelError::Version(version));
    }
    let rows = r.usize("rows")?;
    let cols = r.usize("cols")?;
    // K within the kernels' limit, no zero size, and no size below overflows.
    check_dims(rows, cols)?;
    let encoding = match r.take(1, "encoding")?[0] {
        0 => Encoding::Words,
        1 => Encoding::Base3,
        e => return Err(KernelError::Inconsistent(format!("unknown encoding {e}"))),
    };
    let kind = r.take(1, "scale kind")?[0];
    let reserved = r.take(2, "reserved")?;
    if reserved != [0, 0] {
        return Err(KernelError::Inconsistent(format!(
            "reserved bytes {reserved:?} are not zero"
        )));
    }
    let group = r.usize("group size")?;
    if kind != 2 && group != 0 {
        return Err(KernelError::Inconsistent(format!(
            "group size {group} with scale kind {kind} (only per-group scales have one)"
        )));
    }
    let count = r.usize("scale count")?;
    let numel = rows * cols;
    let expected_count = match kind {
        0 => 1,
        1 => rows,
        2 if group > 0 && cols % group == 0 => numel / group,
        2 => {
            return Err(KernelError::Inconsistent(format!(
                "group {group} for {cols} cols"
            )));
        }
        k => return Err(KernelError::Inconsistent(format!("unknown scale kind {k}"))),
    };
    if count != expected_count {
        return Err(KernelError::Inconsistent(format!(
            "{count} scales, expected {expected_count}"
        )));
    }
    let scale_bytes = r.take(count.saturating_mul(4), "scales")?;
    let values: Vec<f32> = scale_bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    let scales = match kind {
        0 => TernaryScales::PerTensor(values[0]),
        1 => TernaryScales::PerRow(values),
        _ => TernaryScales::PerGroup {
            group,
            scales: values,
        },
    };
    let len = r.usize("payload length")?;
    let payload = r.take(len, "payload")?;
    if r.pos != bytes.len() {
        return Err(KernelError::Inconsistent(format!(
            "{} bytes after the payload",
            bytes.len() - r.pos
        )));
    }
    // The packed words (and, for base-3, the decoded values) must fit the allocation bound.
    let words_bytes = rows * words_per_row(cols) * 4;
    let decoded = match encoding {
        Encoding::Words => words_bytes,
        Encoding::Base3 => words_bytes.saturating_add(numel),
    };
    let bound = bytes
        .len()
        .saturating_mul(MAX_EXPANSION)
        .saturating_add(SLACK_BYTES);
    if decoded > bound {
        return Err(KernelError::Inconsistent(format!(
            "a {rows} x {cols} matrix would take {decoded} bytes, more than {MAX_EXPANSION} \
             times the {}-byte file",
            bytes.len()
        )));
    }
    match encoding {
        Encoding::Words => {
            if len != words_bytes {
                return Err(KernelError::Inconsistent(format!(
                    "payload of {len} bytes, expected {words_bytes}"
                )));
            }
            let words = payload
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect();
            PackedTernary::from_parts(rows, cols, words, scales)
        }
        Encoding::Base3 => {
            let values = base3::decode(payload, numel)?;
            PackedTernary::pack(&values, rows, cols, scales)
        }
    }
}

/// Writes a packed matrix to `path` atomically (a temporary file in the same folder, then a
/// rename), so a crash never leaves a half-written file under the final name.
pub fn write_file(path: &Path, packed: &PackedTernary, encoding: Encoding) -> Result<()> {
    let bytes = to_bytes(packed, encoding)?;
    write_atomic(path, &bytes).map_err(|e| KernelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, then
/// renamed over `path`, so a crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            std::fs::remove_file(&tmp).ok();
            Err(e)
        }
    }
}

/// Reads a packed matrix from `path`.
pub fn read_file(path: &Path) -> Result<PackedTernary> {
    let bytes = std::fs::read(path).map_err(|e| KernelError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    from_bytes(&bytes)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let available = self.bytes.len() - self.pos;
        if n > available {
            return Err(KernelError::Truncated {
                what,
                needed: n,
                available,
            });
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }

    fn usize(&mut self, what: &'static str) -> Result<usize> {
        let v = u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes"));
        usize::try_from(v).map_err(|_| KernelError::Inconsistent(format!("{what} {v} too large")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packed::MAX_K;

    fn sample() -> PackedTernary {
        let w: Vec<i8> = (0..3 * 512).map(|i| ((i * 7 % 3) as i8) - 1).collect();
        let scales = TernaryScales::PerGroup {
            group: 256,
            scales: (0..6).map(|i| 1.0 + i as f32).collect(),
        };
        PackedTernary::pack(&w, 3, 512, scales).unwrap()
    }

    #[test]
    fn both_encodings_round_trip_and_base3_is_denser() {
        let p = sample();
        let words = to_bytes(&p, Encoding::Words).unwrap();
        let base3 = to_bytes(&p, Encoding::Base3).unwrap();
        assert_eq!(from_bytes(&words).unwrap(), p);
        assert_eq!(from_bytes(&base3).unwrap(), p);
        assert!(base3.len() < words.len() * 85 / 100);
        let dir = std::env::temp_dir().join(format!("btq-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("w.btq");
        write_file(&path, &p, Encoding::Base3).unwrap();
        assert_eq!(read_file(&path).unwrap(), p);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        for encoding in [Encoding::Words, Encoding::Base3] {
            let bytes = to_bytes(&sample(), encoding).unwrap();
            for len in 0..bytes.len() {
                assert!(
                    matches!(
                        from_bytes(&bytes[..len]),
                        Err(KernelError::Truncated { .. } | KernelError::BadMagic(_))
                    ),
                    "{encoding:?} cut at {len}"
                );
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(matches!(
                from_bytes(&longer),
                Err(KernelError::Inconsistent(_))
            ));
        }
    }

    #[test]
    fn corrupt_headers_are_typed_errors() {
        let bytes = to_bytes(&sample(), Encoding::Words).unwrap();
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(from_bytes(&bad), Err(KernelError::BadMagic(_))));
        let mut bad = bytes.clone();
        bad[4] = 9;
        assert!(matches!(from_bytes(&bad), Err(KernelError::Version(9))));
        // A huge row count must not allocate or read out of bounds.
        let mut bad = bytes.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            from_bytes(&bad),
            Err(KernelError::Inconsistent(_))
        ));
        // A huge column count (found by the fuzzer: padding it overflowed).
        let mut bad = bytes.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            from_bytes(&bad),
            Err(KernelError::KTooLarge { k, max: MAX_K }) if k == usize::MAX
        ));
        // Reserved bytes, and a group size where the scales are not per group.
        for (at, value) in [(26, 1u8), (27, 0x80)] {
            let mut bad = bytes.clone();
            bad[at] = value;
            assert!(
                matches!(from_bytes(&bad), Err(KernelError::Inconsistent(m)) if m.contains("reserved")),
                "byte {at}"
            );
        }
        let per_row =
            PackedTernary::pack(&[1, 0, -1, 1], 2, 2, TernaryScales::PerRow(vec![1.0, 2.0]))
                .unwrap();
        let mut bad = to_bytes(&per_row, Encoding::Words).unwrap();
        bad[28..36].copy_from_slice(&256u64.to_le_bytes());
        assert!(
            matches!(from_bytes(&bad), Err(KernelError::Inconsistent(m)) if m.contains("group size"))
        );
        // A base-3 file claiming a huge narrow matrix: refused before anything is allocated.
        let narrow = PackedTernary::pack(&[1; 50], 50, 1, TernaryScales::PerTensor(1.0)).unwrap();
        let mut bad = to_bytes(&narrow, Encoding::Base3).unwrap();
        bad[8..16].copy_from_slice(&(50u64 << 30).to_le_bytes());
        assert!(matches!(
            from_bytes(&bad),
            Err(KernelError::Inconsistent(_))
        ));
        // A scale count that disagrees with the shape.
        let mut bad = bytes.clone();
        bad[36..44].copy_from_slice(&5u64.to_le_bytes());
        assert!(matches!(
            from_bytes(&bad),
            Err(KernelError::Inconsistent(_))
        ));
        // A zero scale.
        let mut bad = bytes;
        bad[44..48].copy_from_slice(&0f32.to_le_bytes());
        assert!(matches!(
            from_bytes(&bad),
            Err(KernelError::BadScale { .. })
        ));
    }
}
