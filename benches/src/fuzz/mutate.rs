//! Mutations of valid files: blind byte mutations, and structure-aware ones that set the size,
//! count, offset and layout fields of a file (located by walking its format) to values that
//! stress a reader — zero, one, the limits of each width, 2^40, numbers far larger than the file.

/// SplitMix64: the mutations of input `i` are a function of the run's seed and `i` alone, so a
/// child process that died on an input can be restarted after it, and the input rebuilt.
pub(crate) struct Rng(u64);

impl Rng {
    /// The generator of input `index` of a run seeded with `seed`.
    pub(crate) fn for_input(seed: u64, index: usize) -> Self {
        let mut rng = Self(seed ^ (index as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        rng
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How a field is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// A little-endian unsigned integer of this many bytes (1, 2, 4, 8).
    Le(u8),
    /// A big-endian unsigned integer of this many bytes.
    Be(u8),
    /// A 16-bit piece of a recorded value stored as a little-endian integer of this many bytes
    /// (this crate's recorded layouts and settings: four pieces make a 64-bit value).
    Piece(u8),
    /// A CBOR unsigned integer whose head and argument take this many bytes (1, 2, 3, 5, 9):
    /// rewritten in place with the same width.
    Cbor(u8),
    /// A JSON number token of this many bytes: replaced by another number's text.
    Json(u16),
    /// The bytes of a CBOR text string of this length (a burnpack tensor's dtype or name):
    /// rewritten in place with another text of the same length (another dtype, another name).
    CborText(u8),
}

/// A field of a seed: where it is and how it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Field {
    /// Its first byte.
    pub(crate) at: usize,
    /// Its encoding.
    pub(crate) encoding: Encoding,
}

/// Values that break size arithmetic and bounds checks.
const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    3,
    7,
    255,
    256,
    257,
    0x7FFF,
    0xFFFF,
    0x1_0000,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// Burn's dtype names as burnpack writes them.
const DTYPE_NAMES: [&str; 14] = [
    "F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8", "Bool",
    "Flex32",
];

/// JSON numbers that stress a configuration reader: sizes at and past every limit, negative,
/// fractional, huge and tiny floats.
const JSON_NUMBERS: [&str; 20] = [
    "0",
    "1",
    "2",
    "3",
    "255",
    "256",
    "1024",
    "1025",
    "65536",
    "262145",
    "4294967296",
    "1000000000000",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "0.5",
    "1e308",
    "1e-320",
    "-0",
];

/// A value near one of [`INTERESTING`]: the value, one more or one less.
fn interesting(rng: &mut Rng) -> u64 {
    let v = INTERESTING[rng.below(INTERESTING.len())];
    match rng.below(4) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        _ => v,
    }
}

/// `input` with one to three of `fields` set to stressing values (fields past the end of a
/// shortened input are skipped). JSON numbers change length: fields are rewritten from the
/// last to the first, so earlier positions stay valid.
pub(crate) fn mutate_fields(input: &[u8], fields: &[Field], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    if fields.is_empty() {
        return out;
    }
    let mut chosen: Vec<Field> = (0..1 + rng.below(3))
        .map(|_| fields[rng.below(fields.len())])
        .collect();
    chosen.sort_by_key(|f| std::cmp::Reverse(f.at));
    chosen.dedup_by_key(|f| f.at);
    for field in chosen {
        set_field(&mut out, field, rng);
    }
    out
}

fn set_field(out: &mut Vec<u8>, field: Field, rng: &mut Rng) {
    let at = field.at;
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        if let Some(slot) = out.get_mut(at..at + bytes.len()) {
            slot.copy_from_slice(bytes);
        }
    };
    match field.encoding {
        Encoding::Le(w) => {
            let v = interesting(rng).to_le_bytes();
            put(out, &v[..w as usize]);
        }
        Encoding::Be(w) => {
            let v = interesting(rng).to_be_bytes();
            put(out, &v[8 - w as usize..]);
        }
        Encoding::Piece(w) => {
            // A 16-bit piece: an interesting 16-bit value, or one outside 0..=65535.
            let v: u64 = match rng.below(5) {
                0 => 1 << 16,
                1 => u64::MAX, // -1 in a signed integer
                _ => interesting(rng) & 0xFFFF,
            };
            put(out, &v.to_le_bytes()[..w as usize]);
        }
        Encoding::Cbor(w) => {
            let Some(&head) = out.get(at) else { return };
            let major = head & 0xE0;
            let v = interesting(rng);
            let bytes: Vec<u8> = match w {
                1 => vec![major | (v % 24) as u8],
                2 => vec![major | 24, v as u8],
                3 => [vec![major | 25], (v as u16).to_be_bytes().to_vec()].concat(),
                5 => [vec![major | 26], (v as u32).to_be_bytes().to_vec()].concat(),
                _ => [vec![major | 27], v.to_be_bytes().to_vec()].concat(),
            };
            put(out, &bytes);
        }
        Encoding::CborText(len) => {
            let len = len as usize;
            let same: Vec<&str> = DTYPE_NAMES
                .iter()
                .copied()
                .filter(|n| n.len() == len)
                .collect();
            if let Some(slot) = out.get_mut(at..at + len) {
                if !same.is_empty() && rng.below(4) != 0 {
                    slot.copy_from_slice(same[rng.below(same.len())].as_bytes());
                } else {
                    // Another name of the same length: one character changed.
                    let i = rng.below(len);
                    slot[i] = b"._0a"[rng.below(4)];
                }
            }
        }
        Encoding::Json(len) => {
            let end = at + len as usize;
            if end <= out.len() {
                let number = JSON_NUMBERS[rng.below(JSON_NUMBERS.len())];
                out.splice(at..end, number.bytes());
            }
        }
    }
}

/// One to eight blind mutations of `input`: bit flips, interesting values in 1-, 4- and 8-byte
/// fields at random places, truncation, extension, deleted or duplicated ranges.
pub(crate) fn mutate_bytes(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = interesting(rng) as u8;
            }
            2 | 3 if len >= 8 => {
                // A 4- or 8-byte field (little or big endian) set to an interesting value.
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let i = rng.below(len - width + 1);
                let v = interesting(rng);
                let little = rng.below(2) == 0;
                let bytes: Vec<u8> = match (width, little) {
                    (4, true) => (v as u32).to_le_bytes().to_vec(),
                    (4, false) => (v as u32).to_be_bytes().to_vec(),
                    (_, true) => v.to_le_bytes().to_vec(),
                    (_, false) => v.to_be_bytes().to_vec(),
                };
                out[i..i + width].copy_from_slice(&bytes);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 => {
                let extra = 1 + rng.below(64);
                out.extend((0..extra).map(|_| rng.next() as u8));
            }
            6 if len > 1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                out.drain(start..end);
            }
            7 if len > 1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                let copy = out[start..end].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, copy);
            }
            _ => {}
        }
    }
    out
}

/// The number tokens of JSON text (integers and floats outside strings).
pub(crate) fn json_numbers(text: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let (mut i, mut in_string) = (0, false);
    while i < text.len() {
        let c = text[i];
        if in_string {
            if c == b'\\' {
                i += 1;
            } else if c == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
            i += 1;
        } else if c == b'-' || c.is_ascii_digit() {
            let start = i;
            while i < text.len()
                && matches!(text[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
            {
                i += 1;
            }
            fields.push(Field {
                at: start,
                encoding: Encoding::Json((i - start).min(u16::MAX as usize) as u16),
            });
        } else {
            i += 1;
        }
    }
    fields
}

/// Every unsigned integer (major type 0) of a definite-length CBOR item starting at `at`, with
/// the byte after it; `None` for CBOR this walker does not read (indefinite lengths, tags).
pub(crate) fn cbor_ints(bytes: &[u8], at: usize, out: &mut Vec<Field>) -> Option<usize> {
    let head = *bytes.get(at)?;
    let (major, info) = (head >> 5, head & 0x1F);
    let (arg, width) = match info {
        0..=23 => (info as u64, 1),
        24 => (*bytes.get(at + 1)? as u64, 2),
        25 => (
            u16::from_be_bytes(bytes.get(at + 1..at + 3)?.try_into().ok()?) as u64,
            3,
        ),
        26 => (
            u32::from_be_bytes(bytes.get(at + 1..at + 5)?.try_into().ok()?) as u64,
            5,
        ),
        27 => (
            u64::from_be_bytes(bytes.get(at + 1..at + 9)?.try_into().ok()?),
            9,
        ),
        _ => return None,
    };
    let next = at + width;
    match major {
        0 | 1 => {
            if major == 0 {
                out.push(Field {
                    at,
                    encoding: Encoding::Cbor(width as u8),
                });
            }
            Some(next)
        }
        2 => next.checked_add(usize::try_from(arg).ok()?),
        3 => {
            let len = usize::try_from(arg).ok()?;
            if (1..=16).contains(&len) {
                out.push(Field {
                    at: next,
                    encoding: Encoding::CborText(len as u8),
                });
            }
            next.checked_add(len)
        }
        4 | 5 => {
            let items = usize::try_from(arg)
                .ok()?
                .checked_mul(if major == 5 { 2 } else { 1 })?;
            let mut pos = next;
            for _ in 0..items {
                pos = cbor_ints(bytes, pos, out)?;
            }
            Some(pos)
        }
        7 => Some(match info {
            25 => at + 3,
            26 => at + 5,
            27 => at + 9,
            _ => next,
        }),
        _ => None,
    }
}

/// The fields of a burnpack file: every integer of its CBOR metadata (tensor shapes, data
/// offsets, dtypes, counts) and the 16-bit pieces of the recorded values stored in its tensors
/// (this crate's packed layouts and quantizer settings: tensors whose first two values are a
/// record's tag and version).
pub(crate) fn burnpack_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = vec![Field {
        at: 6,
        encoding: Encoding::Le(4),
    }];
    let Some(size) = bytes.get(6..10) else {
        return fields;
    };
    let metadata = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
    let mut ints = Vec::new();
    if cbor_ints(&bytes[..(10 + metadata).min(bytes.len())], 10, &mut ints).is_some() {
        fields.extend(ints);
    }
    // Recorded values: a tag (0x5057 "PW" layouts, 0x5153 "QS" settings) then version 1, as
    // 8- or 4-byte little-endian integers.
    for width in [8usize, 4] {
        for (tag, len) in [(0x5057u64, 16), (0x5153, 30)] {
            let mut pattern = tag.to_le_bytes()[..width].to_vec();
            pattern.extend_from_slice(&1u64.to_le_bytes()[..width]);
            let mut from = 0;
            while let Some(p) = find(&bytes[from..], &pattern) {
                let start = from + p;
                fields.extend((2..len).map(|k| Field {
                    at: start + k * width,
                    encoding: Encoding::Piece(width as u8),
                }));
                from = start + 1;
            }
        }
    }
    fields.retain(|f| f.at < bytes.len());
    fields
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The fields of a GGUF file: the tensor and metadata counts, every string length, value
/// type, array type and length, integer value, tensor rank, dimension, type and data offset.
pub(crate) fn gguf_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    let le = |at: usize, w: u8| Field {
        at,
        encoding: Encoding::Le(w),
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(n_tensors), Some(n_kv)) = (u64_at(8), u64_at(16)) else {
        return fields;
    };
    fields.extend([le(4, 4), le(8, 8), le(16, 8)]);
    let mut pos = 24usize;
    // A string: its length field, then skip it.
    let string = |pos: usize, fields: &mut Vec<Field>| -> Option<usize> {
        let len = u64_at(pos)?;
        fields.push(le(pos, 8));
        pos.checked_add(8)?.checked_add(usize::try_from(len).ok()?)
    };
    fn value(
        bytes: &[u8],
        ty: u32,
        pos: usize,
        fields: &mut Vec<Field>,
        depth: usize,
    ) -> Option<usize> {
        let le = |at: usize, w: u8| Field {
            at,
            encoding: Encoding::Le(w),
        };
        let u64_at = |at: usize| {
            bytes
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        };
        match ty {
            0 | 1 | 7 => Some(pos + 1),
            2 | 3 => {
                fields.push(le(pos, 2));
                Some(pos + 2)
            }
            4..=6 => {
                fields.push(le(pos, 4));
                Some(pos + 4)
            }
            10..=12 => {
                fields.push(le(pos, 8));
                Some(pos + 8)
            }
            8 => {
                let len = u64_at(pos)?;
                fields.push(le(pos, 8));
                pos.checked_add(8)?.checked_add(usize::try_from(len).ok()?)
            }
            9 if depth < 4 => {
                let elem = u32::from_le_bytes(bytes.get(pos..pos + 4)?.try_into().ok()?);
                let n = u64_at(pos + 4)?;
                fields.push(le(pos, 4));
                fields.push(le(pos + 4, 8));
                let mut p = pos + 12;
                // Walk at most a few thousand elements (vocabularies), then stop.
                for _ in 0..n.min(4096) {
                    p = value(bytes, elem, p, fields, depth + 1)?;
                }
                (n <= 4096).then_some(p)
            }
            _ => None,
        }
    }
    for _ in 0..n_kv.min(1024) {
        let Some(p) = string(pos, &mut fields) else {
            return fields;
        };
        let Some(ty) = u32_at(p) else { return fields };
        fields.push(le(p, 4));
        let Some(p) = value(bytes, ty, p + 4, &mut fields, 0) else {
            return fields;
        };
        pos = p;
    }
    for _ in 0..n_tensors.min(1024) {
        let Some(p) = string(pos, &mut fields) else {
            return fields;
        };
        let Some(rank) = u32_at(p) else { return fields };
        fields.push(le(p, 4));
        let mut p = p + 4;
        for _ in 0..rank.min(4) {
            fields.push(le(p, 8));
            p += 8;
        }
        fields.push(le(p, 4)); // type
        fields.push(le(p + 4, 8)); // data offset
        pos = p + 12;
    }
    fields.retain(|f| f.at < bytes.len());
    fields
}

/// The fields of a safetensors file: its header length and every number of its JSON header
/// (shapes and data offsets).
pub(crate) fn safetensors_fields(bytes: &[u8]) -> Vec<Field> {
    let mut fields = vec![Field {
        at: 0,
        encoding: Encoding::Le(8),
    }];
    if let Some(len) = bytes.get(..8) {
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        if let Some(header) = bytes.get(8..8usize.saturating_add(len)) {
            fields.extend(
                json_numbers(header)
                    .into_iter()
                    .map(|f| Field { at: f.at + 8, ..f }),
            );
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_found_outside_strings_and_replaced() {
        let text = br#"{"a": 12, "b": "3x", "c": [-1.5e3, 0]}"#;
        let fields = json_numbers(text);
        let found: Vec<&[u8]> = fields
            .iter()
            .map(|f| match f.encoding {
                Encoding::Json(n) => &text[f.at..f.at + n as usize],
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(found, [&b"12"[..], b"-1.5e3", b"0"]);
        let mut rng = Rng::for_input(1, 0);
        let out = mutate_fields(text, &fields[..1], &mut rng);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["a"].is_number(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn cbor_integers_are_found_and_rewritten_with_their_width() {
        // {"s": [3, 300], "t": "x"}
        let bytes = [
            0xA2, 0x61, b's', 0x82, 0x03, 0x19, 0x01, 0x2C, 0x61, b't', 0x61, b'x',
        ];
        let mut fields = Vec::new();
        assert_eq!(cbor_ints(&bytes, 0, &mut fields), Some(bytes.len()));
        // The three texts ("s", "t", "x") are fields too.
        let texts: Vec<usize> = fields
            .iter()
            .filter(|f| f.encoding == Encoding::CborText(1))
            .map(|f| f.at)
            .collect();
        assert_eq!(texts, [2, 9, 11]);
        let ints: Vec<Field> = fields
            .into_iter()
            .filter(|f| matches!(f.encoding, Encoding::Cbor(_)))
            .collect();
        assert_eq!(
            ints,
            [
                Field {
                    at: 4,
                    encoding: Encoding::Cbor(1)
                },
                Field {
                    at: 5,
                    encoding: Encoding::Cbor(3)
                }
            ]
        );
        let mut rng = Rng::for_input(3, 9);
        let out = mutate_fields(&bytes, &ints, &mut rng);
        let mut again = Vec::new();
        assert_eq!(cbor_ints(&out, 0, &mut again), Some(bytes.len()));
        again.retain(|f| matches!(f.encoding, Encoding::Cbor(_)));
        assert_eq!(again, ints);
    }

    #[test]
    fn inputs_are_a_function_of_seed_and_index() {
        let data = vec![7u8; 64];
        let a = mutate_bytes(&data, &mut Rng::for_input(5, 1000));
        let b = mutate_bytes(&data, &mut Rng::for_input(5, 1000));
        let c = mutate_bytes(&data, &mut Rng::for_input(5, 1001));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
