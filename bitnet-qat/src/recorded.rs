//! Host values recorded in integer parameters of a model (quantizer settings, packed layouts):
//! encoded as 16-bit pieces, which every device integer type holds exactly, and read through a
//! cache keyed by parameter id, so the forward pass does not wait for a device read-back.
//!
//! The cache is sound because a [`Recorded`] parameter's id names one value: every write makes
//! a parameter with a fresh id, and so does every load. Burn's loader keeps the record's
//! persisted id, or the skeleton's own id when the format has none (safetensors, PyTorch), so
//! an id alone says nothing about a loaded value: a corrupted file keeps the id of the
//! checkpoint it came from, and a skeleton and the model loaded into it would share one.
//! [`Recorded`] therefore gives a parameter a fresh id whenever a load wrote it (its load
//! mapper counts the loads of the thread). An entry is only a decoded copy, so evicting one
//! costs a read-back, never a wrong value.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::ops::Deref;
use std::sync::Mutex;

use burn::module::{
    Content, Devices, Module, ModuleDisplay, ModuleDisplayDefault, ModuleMapper, ModuleVisitor,
    Param, ParamId,
};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{QatError, Result};

/// Appends `v` as four 16-bit pieces, least significant first.
pub(crate) fn push_u64(out: &mut Vec<i64>, v: u64) {
    out.extend((0..4).map(|k| ((v >> (16 * k)) & 0xFFFF) as i64));
}

/// The `u64` of the four 16-bit pieces at `values[i..i + 4]` (checked to be 16-bit first).
pub(crate) fn u64_at(values: &[i64], i: usize) -> u64 {
    (0..4).fold(0u64, |acc, k| {
        acc | (((values[i + k] & 0xFFFF) as u64) << (16 * k))
    })
}

/// Checks that `values` has `len` entries, each a 16-bit piece, starting with `tag` and
/// `version`; `what` names the record in the error.
pub(crate) fn check_header(
    values: &[i64],
    len: usize,
    tag: i64,
    version: i64,
    what: &str,
) -> Result<()> {
    let bad = |msg: String| Err(QatError::record("", format!("{what}: {msg}")));
    if values.len() != len {
        return bad(format!("{} values, expected {len}", values.len()));
    }
    if values.iter().any(|v| !(0..=0xFFFF).contains(v)) {
        return bad("a value outside 0..=65535".into());
    }
    if values[0] != tag || values[1] != version {
        return bad(format!(
            "not this record (tag {:#x}, version {})",
            values[0], values[1]
        ));
    }
    Ok(())
}

/// A new recorded parameter holding `values`, with a fresh id.
pub(crate) fn param_of(values: Vec<i64>, device: &Device) -> Recorded {
    let n = values.len();
    Recorded::new(Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(values, [n]), device),
    ))
}

thread_local! {
    /// How many recorded parameters a load wrote on this thread.
    static LOADS: Cell<u64> = const { Cell::new(0) };
}

/// The load mapper of a recorded parameter: counts the load, keeps the value.
fn note_load<T>(value: T) -> T {
    LOADS.with(|n| n.set(n.get().wrapping_add(1)));
    value
}

/// An integer parameter holding a recorded host value, whose id changes whenever its value may
/// have: at every write (a new parameter) and at every load (see the module documentation).
/// It is the parameter to Burn (same record key, same visitors and mappers).
#[derive(Clone, Debug)]
pub(crate) struct Recorded(Param<Tensor<1, Int>>);

impl Recorded {
    /// Wraps `param`, whose id must name its value (a parameter this crate made, or found in a
    /// model).
    pub(crate) fn new(param: Param<Tensor<1, Int>>) -> Self {
        Self(param.load_mapper(note_load))
    }
}

impl Deref for Recorded {
    type Target = Param<Tensor<1, Int>>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Module for Recorded {
    fn collect_devices(&self, devices: Devices) -> Devices {
        self.0.collect_devices(devices)
    }

    fn fork(self, device: &Device) -> Self {
        Self(self.0.fork(device))
    }

    fn to_device(self, device: &Device) -> Self {
        Self(self.0.to_device(device))
    }

    fn train(self) -> Self {
        Self(self.0.train())
    }

    fn valid(&self) -> Self {
        Self(self.0.valid())
    }

    fn materialize(self) -> Self {
        Self(self.0.materialize())
    }

    fn visit<V: ModuleVisitor>(&self, visitor: &mut V) {
        self.0.visit(visitor)
    }

    fn map<M: ModuleMapper>(self, mapper: &mut M) -> Self {
        let loads = LOADS.with(Cell::get);
        let param = Module::map(self.0, mapper);
        if LOADS.with(Cell::get) == loads {
            // Kept, or replaced by a new parameter (which has its own id): re-wrapped, since a
            // mapper may return a parameter without the load mapper.
            return Self::new(param);
        }
        // Loaded: the value may be new under an old id.
        let (_, value, param_mapper) = param.consume();
        Self(Param::from_mapped_value(
            ParamId::new(),
            value,
            param_mapper,
        ))
    }
}

impl ModuleDisplayDefault for Recorded {
    fn content(&self, content: Content) -> Option<Content> {
        self.0.content(content)
    }
}

impl ModuleDisplay for Recorded {}

/// The values of an integer parameter, read back from its device; `what` names the record.
///
/// # Errors
/// [`QatError::Record`] (without a path) for values of a non-integer type or outside `i64`
/// (a loaded record holds what its file says).
pub(crate) fn read_back(param: &Param<Tensor<1, Int>>, what: &str) -> Result<Vec<i64>> {
    int_values(&param.val().into_data()).map_err(|e| QatError::record("", format!("{what}: {e}")))
}

/// The values of integer tensor data as `i64`, whatever its integer type; an error naming the
/// type for data of another type (floats, booleans, quantized) or a `u64` value past
/// `i64::MAX`. Burn's own conversions panic on those; data read from a file may be anything.
pub(crate) fn int_values(data: &TensorData) -> core::result::Result<Vec<i64>, String> {
    fn widen<T: burn::tensor::Element + Copy>(
        data: &TensorData,
        f: impl Fn(T) -> Option<i64>,
    ) -> core::result::Result<Vec<i64>, String> {
        let values = data.as_slice::<T>().map_err(|e| format!("{e:?}"))?;
        values
            .iter()
            .map(|&v| f(v).ok_or_else(|| "a value past i64::MAX".to_string()))
            .collect()
    }
    use burn::tensor::DType;
    match data.dtype() {
        DType::I64 => widen::<i64>(data, Some),
        DType::I32 => widen::<i32>(data, |v| Some(v.into())),
        DType::I16 => widen::<i16>(data, |v| Some(v.into())),
        DType::I8 => widen::<i8>(data, |v| Some(v.into())),
        DType::U64 => widen::<u64>(data, |v| i64::try_from(v).ok()),
        DType::U32 => widen::<u32>(data, |v| Some(v.into())),
        DType::U16 => widen::<u16>(data, |v| Some(v.into())),
        DType::U8 => widen::<u8>(data, |v| Some(v.into())),
        other => Err(format!("values of type {other:?}, not integers")),
    }
}

/// Decoded recorded values by parameter id, the oldest evicted past `capacity` entries.
pub(crate) struct IdCache<T> {
    inner: Mutex<(HashMap<ParamId, T>, VecDeque<ParamId>)>,
    capacity: usize,
}

impl<T: Clone> IdCache<T> {
    /// An empty cache of at most `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
            capacity,
        }
    }

    /// The value cached for `id`.
    pub(crate) fn recall(&self, id: ParamId) -> Option<T> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.get(&id).cloned()
    }

    /// Caches `value` for `id`.
    pub(crate) fn remember(&self, id: ParamId, value: T) {
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(id, value).is_none() {
            order.push_back(id);
            while order.len() > self.capacity {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_round_trip_and_the_cache_evicts_the_oldest() {
        for v in [0u64, 1, 0xFFFF, 0x1_0000, u64::MAX, 1e-5f64.to_bits()] {
            let mut out = vec![7];
            push_u64(&mut out, v);
            assert_eq!(u64_at(&out, 1), v);
        }
        let cache = IdCache::new(2);
        let ids: Vec<ParamId> = (0..3).map(|_| ParamId::new()).collect();
        for (i, id) in ids.iter().enumerate() {
            cache.remember(*id, i);
        }
        assert_eq!(
            ids.iter().map(|id| cache.recall(*id)).collect::<Vec<_>>(),
            [None, Some(1), Some(2)]
        );
    }
}
