//! Editing a burnpack file's tensor table (its CBOR metadata) to craft files that a writer
//! would never produce: tensors that share bytes, another dtype, another shape.

use ciborium::Value;

/// A burnpack file split into its metadata and its data section.
pub struct Burnpack {
    /// The CBOR metadata: `{"tensors": {name: {"dtype", "shape", "data_offsets", ..}}, ..}`.
    pub metadata: Value,
    /// The data section (offsets are relative to it).
    pub data: Vec<u8>,
}

/// The header: magic (4 bytes), version (2), metadata size (4).
const HEADER: usize = 10;

impl Burnpack {
    /// Splits `bytes` (a valid file).
    pub fn parse(bytes: &[u8]) -> Self {
        let size = u32::from_le_bytes(bytes[6..10].try_into().unwrap()) as usize;
        let metadata: Value = ciborium::from_reader(&bytes[HEADER..HEADER + size]).unwrap();
        let start = (HEADER + size).div_ceil(256) * 256;
        Self {
            metadata,
            data: bytes[start..].to_vec(),
        }
    }

    /// The file again, with its metadata re-encoded.
    pub fn to_bytes(&self, original: &[u8]) -> Vec<u8> {
        let mut metadata = Vec::new();
        ciborium::into_writer(&self.metadata, &mut metadata).unwrap();
        let mut out = original[..6].to_vec();
        out.extend((metadata.len() as u32).to_le_bytes());
        out.extend(&metadata);
        out.resize((HEADER + metadata.len()).div_ceil(256) * 256, 0);
        out.extend(&self.data);
        out
    }

    /// The descriptor of tensor `name` (a map), to edit.
    pub fn tensor(&mut self, name: &str) -> &mut Vec<(Value, Value)> {
        let tensors = field(&mut self.metadata, "tensors");
        let Value::Map(descriptor) = field(tensors, name) else {
            panic!("tensor {name} is not a map");
        };
        descriptor
    }

    /// The names of the tensors.
    pub fn names(&mut self) -> Vec<String> {
        match field(&mut self.metadata, "tensors") {
            Value::Map(entries) => entries
                .iter()
                .map(|(k, _)| k.as_text().unwrap().to_string())
                .collect(),
            _ => panic!("no tensor map"),
        }
    }
}

/// The value of key `key` of a CBOR map.
pub fn field<'a>(map: &'a mut Value, key: &str) -> &'a mut Value {
    let Value::Map(entries) = map else {
        panic!("not a map");
    };
    &mut entries
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap_or_else(|| panic!("no key {key}"))
        .1
}

/// Sets key `key` of a descriptor.
pub fn set(descriptor: &mut [(Value, Value)], key: &str, value: Value) {
    let slot = descriptor
        .iter_mut()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap_or_else(|| panic!("no key {key}"));
    slot.1 = value;
}

/// The value of key `key` of a descriptor.
pub fn get<'a>(descriptor: &'a [(Value, Value)], key: &str) -> &'a Value {
    &descriptor
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .unwrap_or_else(|| panic!("no key {key}"))
        .1
}
