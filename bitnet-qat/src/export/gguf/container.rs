//! The GGUF v3 container (ggml's file format, `docs/gguf.md` of ggml-org/ggml): a header,
//! typed metadata key/values, tensor descriptions, then the aligned tensor data. Written and
//! read here for the tensor types this crate's models use.

use crate::error::{QatError, Result};

/// The magic bytes that open a GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";
/// The version written and read.
const VERSION: u32 = 3;
/// The data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's largest tensor rank.
const MAX_DIMS: u32 = 4;
/// Arrays nest at most this deep (metadata never needs more).
const MAX_DEPTH: usize = 4;
/// The most metadata array elements a file may hold in all (a 256k-token vocabulary with its
/// scores, types and merges is about a million): 2^21, at most 64 MiB of values in memory
/// whatever the file.
const MAX_ARRAY_ELEMENTS: usize = 1 << 21;

/// A [`QatError::File`] of a GGUF file read from memory: `field` names the key, tensor or
/// header field, `offset` its byte.
fn bad_at(field: impl Into<String>, offset: Option<usize>, reason: impl Into<String>) -> QatError {
    QatError::File {
        format: "GGUF",
        path: String::new(),
        field: field.into(),
        offset: offset.map(|o| o as u64),
        reason: reason.into(),
    }
}

fn bad(reason: impl Into<String>) -> QatError {
    bad_at("", None, reason)
}

/// The type tag of a metadata value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufType {
    /// `u8`.
    U8,
    /// `i8`.
    I8,
    /// `u16`.
    U16,
    /// `i16`.
    I16,
    /// `u32`.
    U32,
    /// `i32`.
    I32,
    /// `f32`.
    F32,
    /// A boolean byte.
    Bool,
    /// A UTF-8 string.
    String,
    /// An array.
    Array,
    /// `u64`.
    U64,
    /// `i64`.
    I64,
    /// `f64`.
    F64,
}

impl GgufType {
    const ALL: [GgufType; 13] = [
        GgufType::U8,
        GgufType::I8,
        GgufType::U16,
        GgufType::I16,
        GgufType::U32,
        GgufType::I32,
        GgufType::F32,
        GgufType::Bool,
        GgufType::String,
        GgufType::Array,
        GgufType::U64,
        GgufType::I64,
        GgufType::F64,
    ];

    fn id(self) -> u32 {
        Self::ALL.iter().position(|&t| t == self).unwrap_or(0) as u32
    }

    fn from_id(id: u32) -> Result<Self> {
        Self::ALL
            .get(id as usize)
            .copied()
            .ok_or_else(|| bad(format!("unknown metadata value type {id}")))
    }

    /// The fewest bytes a value of this type takes (strings and arrays: their length fields).
    fn min_size(self) -> usize {
        match self {
            GgufType::U8 | GgufType::I8 | GgufType::Bool => 1,
            GgufType::U16 | GgufType::I16 => 2,
            GgufType::U32 | GgufType::I32 | GgufType::F32 => 4,
            GgufType::U64 | GgufType::I64 | GgufType::F64 | GgufType::String => 8,
            GgufType::Array => 12,
        }
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// A boolean.
    Bool(bool),
    /// A string.
    String(String),
    /// An array of values of one type (`elem`, which an empty array needs too).
    Array {
        /// The type of every element.
        elem: GgufType,
        /// The elements.
        values: Vec<GgufValue>,
    },
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

impl GgufValue {
    /// The value's type tag.
    pub fn ty(&self) -> GgufType {
        match self {
            GgufValue::U8(_) => GgufType::U8,
            GgufValue::I8(_) => GgufType::I8,
            GgufValue::U16(_) => GgufType::U16,
            GgufValue::I16(_) => GgufType::I16,
            GgufValue::U32(_) => GgufType::U32,
            GgufValue::I32(_) => GgufType::I32,
            GgufValue::F32(_) => GgufType::F32,
            GgufValue::Bool(_) => GgufType::Bool,
            GgufValue::String(_) => GgufType::String,
            GgufValue::Array { .. } => GgufType::Array,
            GgufValue::U64(_) => GgufType::U64,
            GgufValue::I64(_) => GgufType::I64,
            GgufValue::F64(_) => GgufType::F64,
        }
    }

    /// An array of strings.
    pub fn strings(values: impl IntoIterator<Item = String>) -> Self {
        GgufValue::Array {
            elem: GgufType::String,
            values: values.into_iter().map(GgufValue::String).collect(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            GgufValue::U8(v) => out.push(*v),
            GgufValue::I8(v) => out.extend(v.to_le_bytes()),
            GgufValue::U16(v) => out.extend(v.to_le_bytes()),
            GgufValue::I16(v) => out.extend(v.to_le_bytes()),
            GgufValue::U32(v) => out.extend(v.to_le_bytes()),
            GgufValue::I32(v) => out.extend(v.to_le_bytes()),
            GgufValue::F32(v) => out.extend(v.to_le_bytes()),
            GgufValue::Bool(v) => out.push(*v as u8),
            GgufValue::String(s) => write_str(out, s),
            GgufValue::Array { elem, values } => {
                out.extend(elem.id().to_le_bytes());
                out.extend((values.len() as u64).to_le_bytes());
                for v in values {
                    v.write(out);
                }
            }
            GgufValue::U64(v) => out.extend(v.to_le_bytes()),
            GgufValue::I64(v) => out.extend(v.to_le_bytes()),
            GgufValue::F64(v) => out.extend(v.to_le_bytes()),
        }
    }
}

/// The type of a tensor's data (ggml's `ggml_type`), for the types this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorType {
    /// 32-bit floats.
    F32,
    /// IEEE half floats.
    F16,
    /// bfloat16.
    Bf16,
    /// Ternary, 1.6875 bits a weight: blocks of 256 in base 3 with an f16 scale.
    Tq1_0,
    /// Ternary, 2.0625 bits a weight: blocks of 256 as 2-bit codes with an f16 scale.
    Tq2_0,
}

impl TensorType {
    /// ggml's type id.
    pub fn id(self) -> u32 {
        match self {
            TensorType::F32 => 0,
            TensorType::F16 => 1,
            TensorType::Bf16 => 30,
            TensorType::Tq1_0 => 34,
            TensorType::Tq2_0 => 35,
        }
    }

    fn from_id(id: u32) -> Result<Self> {
        [
            TensorType::F32,
            TensorType::F16,
            TensorType::Bf16,
            TensorType::Tq1_0,
            TensorType::Tq2_0,
        ]
        .into_iter()
        .find(|t| t.id() == id)
        .ok_or_else(|| {
            bad(format!(
                "tensor type {id} is not one this crate reads (F32, F16, BF16, TQ1_0, TQ2_0)"
            ))
        })
    }

    /// Elements per block (along the innermost dimension).
    pub fn block_len(self) -> usize {
        match self {
            TensorType::F32 | TensorType::F16 | TensorType::Bf16 => 1,
            TensorType::Tq1_0 | TensorType::Tq2_0 => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 | TensorType::Bf16 => 2,
            TensorType::Tq1_0 => 54,
            TensorType::Tq2_0 => 66,
        }
    }

    /// ggml's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Tq1_0 => "TQ1_0",
            TensorType::Tq2_0 => "TQ2_0",
        }
    }

    /// The data bytes of a tensor of `dims` (innermost first), checked: the innermost size must
    /// be a whole number of blocks and the total must fit in memory.
    fn data_len(self, name: &str, dims: &[u64]) -> Result<usize> {
        let block = self.block_len() as u64;
        let ne0 = dims.first().copied().unwrap_or(1);
        if !ne0.is_multiple_of(block) {
            return Err(bad_at(
                name,
                None,
                format!(
                    "{} needs rows that are a multiple of {block}, got {ne0}",
                    self.name()
                ),
            ));
        }
        let blocks = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .map(|n| n / block);
        blocks
            .and_then(|b| b.checked_mul(self.block_bytes() as u64))
            .and_then(|b| usize::try_from(b).ok())
            .filter(|&b| b <= isize::MAX as usize)
            .ok_or_else(|| bad_at(name, None, format!("shape {dims:?} is too large")))
    }
}

/// One tensor: its name, shape (ggml's order: `dims[0]` is the innermost, contiguous axis),
/// type and raw data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    /// The tensor name.
    pub name: String,
    /// The shape, innermost first.
    pub dims: Vec<u64>,
    /// The data type.
    pub ty: TensorType,
    /// The raw data, `ty`'s blocks.
    pub data: Vec<u8>,
}

/// A GGUF file: metadata in order and tensors in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufFile {
    /// The metadata key/values.
    pub metadata: Vec<(String, GgufValue)>,
    /// The tensors.
    pub tensors: Vec<GgufTensor>,
}

impl GgufFile {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The tensor named `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The file's bytes (alignment 32).
    ///
    /// # Errors
    /// [`QatError::File`] for a tensor whose data does not have the size of its shape and type,
    /// or a rank above 4.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = DEFAULT_ALIGNMENT as usize;
        let mut out = Vec::new();
        out.extend(MAGIC);
        out.extend(VERSION.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend(value.ty().id().to_le_bytes());
            value.write(&mut out);
        }
        let mut offset = 0usize;
        for t in &self.tensors {
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS as usize {
                return Err(bad(format!(
                    "tensor `{}`: rank {} (1 to {MAX_DIMS})",
                    t.name,
                    t.dims.len()
                )));
            }
            let len = t.ty.data_len(&t.name, &t.dims)?;
            if len != t.data.len() {
                return Err(bad(format!(
                    "tensor `{}`: {} bytes of data for {} {:?} ({len} bytes)",
                    t.name,
                    t.data.len(),
                    t.ty.name(),
                    t.dims
                )));
            }
            write_str(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ty.id().to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offset += len.next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for t in &self.tensors {
            out.extend(&t.data);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        Ok(out)
    }

    /// Parses a GGUF v3 file.
    ///
    /// # Errors
    /// [`QatError::File`] naming the problem: another magic or version, a truncated file,
    /// an unknown value or tensor type, a count or size larger than the file, a repeated key
    /// or tensor, metadata arrays of more than 2^21 elements in all, a string that is not
    /// UTF-8, a bad alignment, tensors not laid out one after the other as ggml writes them, or
    /// tensor data outside the file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader {
            bytes,
            pos: 0,
            array_elements: 0,
        };
        if r.take(4, "magic")? != MAGIC {
            return Err(bad_at("magic", Some(0), "not a GGUF file (no GGUF magic)"));
        }
        let version = r.u32("version")?;
        if version != VERSION {
            return Err(bad_at(
                "version",
                Some(4),
                format!("{version}; this reader reads version {VERSION}"),
            ));
        }
        let n_tensors = r.count(8 + 4 + 8 + 4 + 8, "tensor count")?;
        let n_kv = r.count(8 + 4 + 1, "metadata count")?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut key_offsets = Vec::with_capacity(n_kv);
        for _ in 0..n_kv {
            let at = r.pos;
            let key = r.string("metadata key")?;
            let ty = GgufType::from_id(r.u32(&key)?).map_err(|e| e.at_gguf(&key, r.pos - 4))?;
            let value = r.value(ty, 0, &key)?;
            key_offsets.push(at);
            metadata.push((key, value));
        }
        // Repeated keys, found without a copy of each (a hostile file of tiny entries must not
        // cost many times its size).
        if let Some((i, _)) = first_repeat(metadata.iter().map(|(k, _)| k.as_str())) {
            return Err(bad_at(
                metadata[i].0.clone(),
                Some(key_offsets[i]),
                "the key appears twice",
            ));
        }
        let align = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, GgufValue::U32(a))) if a.is_power_of_two() => *a as u64,
            Some((_, v)) => {
                return Err(bad_at(
                    "general.alignment",
                    None,
                    format!("{v:?}: a power-of-two u32"),
                ));
            }
        };
        let mut infos = Vec::with_capacity(n_tensors);
        let mut name_offsets = Vec::with_capacity(n_tensors);
        let mut running = 0u64;
        for _ in 0..n_tensors {
            let at = r.pos;
            let name = r.string("tensor name")?;
            let n_dims = r.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(bad_at(
                    &name,
                    Some(r.pos - 4),
                    format!("rank {n_dims} (1 to {MAX_DIMS})"),
                ));
            }
            let dims_at = r.pos;
            let dims = (0..n_dims)
                .map(|_| r.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            if dims.contains(&0) {
                return Err(bad_at(
                    &name,
                    Some(dims_at),
                    format!("a zero dimension in {dims:?}"),
                ));
            }
            let ty = TensorType::from_id(r.u32(&name)?).map_err(|e| e.at_gguf(&name, r.pos - 4))?;
            let offset_at = r.pos;
            let offset = r.u64(&name)?;
            let len = ty
                .data_len(&name, &dims)
                .map_err(|e| e.at_gguf(&name, dims_at))?;
            // As ggml requires: each tensor right after the one before, padded to the
            // alignment (so no two tensors share bytes, and the data read is the file's size).
            if offset != running {
                return Err(bad_at(
                    &name,
                    Some(offset_at),
                    format!(
                        "data offset {offset}, expected {running} (the padded end of the \
                         tensors before it)"
                    ),
                ));
            }
            running = running
                .checked_add((len as u64).next_multiple_of(align))
                .ok_or_else(|| bad_at(&name, Some(offset_at), "offsets overflow"))?;
            name_offsets.push(at);
            infos.push((name, dims, ty, offset, len));
        }
        if let Some((i, _)) = first_repeat(infos.iter().map(|(n, ..)| n.as_str())) {
            return Err(bad_at(
                infos[i].0.clone(),
                Some(name_offsets[i]),
                "the tensor appears twice",
            ));
        }
        let data_start = (r.pos as u64).next_multiple_of(align);
        let mut tensors = Vec::with_capacity(n_tensors);
        for (name, dims, ty, offset, len) in infos {
            let range = data_start
                .checked_add(offset)
                .and_then(|start| Some((start, start.checked_add(len as u64)?)))
                .filter(|&(_, end)| end <= bytes.len() as u64);
            let Some((start, end)) = range else {
                return Err(bad_at(
                    &name,
                    usize::try_from(data_start.saturating_add(offset)).ok(),
                    format!(
                        "its {len} bytes at data offset {offset} run past the end of the file \
                         ({} bytes; truncated?)",
                        bytes.len()
                    ),
                ));
            };
            tensors.push(GgufTensor {
                name,
                dims,
                ty,
                data: bytes[start as usize..end as usize].to_vec(),
            });
        }
        Ok(Self { metadata, tensors })
    }
}

impl QatError {
    /// A GGUF error found without its place, given the field and byte it concerns.
    fn at_gguf(self, field: &str, offset: usize) -> Self {
        match self {
            QatError::File {
                format,
                path,
                field: f,
                offset: None,
                reason,
            } => QatError::File {
                format,
                path,
                field: if f.is_empty() { field.to_string() } else { f },
                offset: Some(offset as u64),
                reason,
            },
            other => other,
        }
    }
}

/// The index of the second occurrence of the first name that appears twice, found by sorting
/// references (16 bytes a name, no copies).
fn first_repeat<'a>(names: impl Iterator<Item = &'a str>) -> Option<(usize, &'a str)> {
    let mut sorted: Vec<(&str, usize)> = names.enumerate().map(|(i, n)| (n, i)).collect();
    sorted.sort_unstable();
    sorted
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| (w[0].1.max(w[1].1), w[0].0))
        .min_by_key(|(i, _)| *i)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// A bounds-checked cursor over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Metadata array elements read so far.
    array_elements: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    /// The next `n` bytes of `field`.
    fn take(&mut self, n: usize, field: &str) -> Result<&[u8]> {
        if n > self.left() {
            return Err(bad_at(
                field,
                Some(self.pos),
                format!(
                    "truncated: {n} bytes needed, {} left of {}",
                    self.left(),
                    self.bytes.len()
                ),
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A count of items that take at least `min_size` bytes each: no larger than the rest of
    /// the file allows, so a hostile count cannot ask for a huge allocation.
    fn count(&mut self, min_size: usize, field: &str) -> Result<usize> {
        let at = self.pos;
        let n = self.u64(field)?;
        match usize::try_from(n) {
            Ok(n) if n <= self.left() / min_size.max(1) => Ok(n),
            _ => Err(bad_at(
                field,
                Some(at),
                format!(
                    "{n} cannot fit in the {} bytes left of the file",
                    self.left()
                ),
            )),
        }
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let len = self.count(1, field)?;
        let at = self.pos;
        String::from_utf8(self.take(len, field)?.to_vec())
            .map_err(|_| bad_at(field, Some(at), "a string that is not UTF-8"))
    }

    /// A metadata value of type `ty` for the key `key`.
    fn value(&mut self, ty: GgufType, depth: usize, key: &str) -> Result<GgufValue> {
        Ok(match ty {
            GgufType::U8 => GgufValue::U8(self.array::<1>(key)?[0]),
            GgufType::I8 => GgufValue::I8(i8::from_le_bytes(self.array(key)?)),
            GgufType::U16 => GgufValue::U16(u16::from_le_bytes(self.array(key)?)),
            GgufType::I16 => GgufValue::I16(i16::from_le_bytes(self.array(key)?)),
            GgufType::U32 => GgufValue::U32(self.u32(key)?),
            GgufType::I32 => GgufValue::I32(i32::from_le_bytes(self.array(key)?)),
            GgufType::F32 => GgufValue::F32(f32::from_le_bytes(self.array(key)?)),
            GgufType::Bool => match self.array::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => {
                    return Err(bad_at(
                        key,
                        Some(self.pos - 1),
                        format!("boolean byte {b} (0 or 1)"),
                    ));
                }
            },
            GgufType::String => GgufValue::String(self.string(key)?),
            GgufType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(bad_at(
                        key,
                        Some(self.pos),
                        format!("arrays nested deeper than {MAX_DEPTH}"),
                    ));
                }
                let elem =
                    GgufType::from_id(self.u32(key)?).map_err(|e| e.at_gguf(key, self.pos - 4))?;
                let at = self.pos;
                let n = self.count(elem.min_size(), key)?;
                // A value takes up to 32 bytes in memory for 1 in the file: bound the total.
                self.array_elements += n;
                if self.array_elements > MAX_ARRAY_ELEMENTS {
                    return Err(bad_at(
                        key,
                        Some(at),
                        format!(
                            "metadata arrays of more than {MAX_ARRAY_ELEMENTS} elements in all"
                        ),
                    ));
                }
                let values = (0..n)
                    .map(|_| self.value(elem, depth + 1, key))
                    .collect::<Result<Vec<_>>>()?;
                GgufValue::Array { elem, values }
            }
            GgufType::U64 => GgufValue::U64(self.u64(key)?),
            GgufType::I64 => GgufValue::I64(i64::from_le_bytes(self.array(key)?)),
            GgufType::F64 => GgufValue::F64(f64::from_le_bytes(self.array(key)?)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GgufFile {
        GgufFile {
            metadata: vec![
                (
                    "general.architecture".into(),
                    GgufValue::String("bitnet".into()),
                ),
                ("a.u32".into(), GgufValue::U32(7)),
                ("a.f32".into(), GgufValue::F32(1e-5)),
                ("a.bool".into(), GgufValue::Bool(true)),
                (
                    "a.tokens".into(),
                    GgufValue::strings(["x".into(), "ĠĊ".into()]),
                ),
                (
                    "a.empty".into(),
                    GgufValue::Array {
                        elem: GgufType::String,
                        values: vec![],
                    },
                ),
            ],
            tensors: vec![
                GgufTensor {
                    name: "n.weight".into(),
                    dims: vec![3],
                    ty: TensorType::F32,
                    data: [1.0f32, 2.0, 3.0]
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect(),
                },
                GgufTensor {
                    name: "w.weight".into(),
                    dims: vec![256, 2],
                    ty: TensorType::Tq2_0,
                    data: vec![0x55; 2 * 66],
                },
            ],
        }
    }

    #[test]
    fn files_round_trip_with_aligned_offsets() {
        let file = sample();
        let bytes = file.to_bytes().unwrap();
        assert_eq!(&bytes[..4], b"GGUF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        assert_eq!(bytes.len() % 32, 0);
        assert_eq!(GgufFile::from_bytes(&bytes).unwrap(), file);
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let bytes = sample().to_bytes().unwrap();
        // The last tensor's data ends 132 + 12 (n.weight) bytes before the padded end.
        let data_end = bytes.len() - (132usize.next_multiple_of(32) - 132);
        for len in 0..data_end {
            assert!(
                matches!(
                    GgufFile::from_bytes(&bytes[..len]),
                    Err(QatError::File { format: "GGUF", .. })
                ),
                "truncated to {len} bytes"
            );
        }
    }

    #[test]
    fn hostile_headers_are_named() {
        let good = sample().to_bytes().unwrap();
        // (field, offset, reason) of the error.
        let error = |bytes: &[u8]| match GgufFile::from_bytes(bytes) {
            Err(QatError::File {
                format: "GGUF",
                field,
                offset,
                reason,
                ..
            }) => (field, offset, reason),
            other => panic!("expected a file error, got {other:?}"),
        };
        let mut v = good.clone();
        v[4] = 2;
        let (field, offset, reason) = error(&v);
        assert_eq!((field.as_str(), offset), ("version", Some(4)));
        assert!(
            reason.contains("2; this reader reads version 3"),
            "{reason}"
        );
        let mut n = good.clone();
        n[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let (field, offset, reason) = error(&n);
        assert_eq!((field.as_str(), offset), ("tensor count", Some(8)));
        assert!(reason.contains("cannot fit"), "{reason}");
        let mut k = good.clone();
        k[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let (field, offset, _) = error(&k);
        assert_eq!((field.as_str(), offset), ("metadata count", Some(16)));
        // The first key's value type (after the 8-byte length and 20 bytes of key).
        let mut t = good.clone();
        t[24 + 8 + 20..24 + 8 + 24].copy_from_slice(&99u32.to_le_bytes());
        let (field, offset, reason) = error(&t);
        assert_eq!(offset, Some(24 + 8 + 20), "{field}");
        assert!(
            reason.contains("unknown metadata value type 99"),
            "{reason}"
        );
        assert_eq!(error(b"GGML\x03\0\0\0").0, "magic");
        // The second tensor's offset (the last 8 bytes of the tensor infos) pointed back at the
        // first tensor's data: tensors must follow each other, as ggml writes them.
        let mut o = good.clone();
        let name = good
            .windows(8)
            .position(|w| w == b"w.weight")
            .expect("the second tensor's name");
        let at = name + 8 + 4 + 2 * 8 + 4; // name, rank, two dimensions, type
        o[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
        let (field, offset, reason) = error(&o);
        assert_eq!((field.as_str(), offset), ("w.weight", Some(at as u64)));
        assert!(reason.contains("offset 0, expected 32"), "{reason}");
    }

    #[test]
    fn bad_tensor_sizes_are_refused_when_writing() {
        let mut file = sample();
        file.tensors[1].dims = vec![100, 2];
        assert!(matches!(file.to_bytes(), Err(QatError::File { .. })));
        let mut file = sample();
        file.tensors[0].data.pop();
        assert!(matches!(file.to_bytes(), Err(QatError::File { .. })));
    }
}
