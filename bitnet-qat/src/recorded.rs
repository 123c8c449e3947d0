//! Host values recorded in integer parameters of a model (quantizer settings, packed layouts):
//! encoded as 16-bit pieces, which every device integer type holds exactly, and read through a
//! cache keyed by parameter id, so the forward pass does not wait for a device read-back.
//!
//! The cache is sound because a parameter's id names one value: every write of a recorded value
//! makes a parameter with a fresh id, and loading a record brings the record's id with the
//! record's value. An entry is only a decoded copy, so evicting one costs a read-back, never a
//! wrong value.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use burn::module::{Param, ParamId};
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
    let bad = |msg: String| Err(QatError::Record(format!("{what}: {msg}")));
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

/// A new integer parameter holding `values`, with a fresh id.
pub(crate) fn param_of(values: Vec<i64>, device: &Device) -> Param<Tensor<1, Int>> {
    let n = values.len();
    Param::initialized(
        ParamId::new(),
        Tensor::from_data(TensorData::new(values, [n]), device),
    )
}

/// The values of an integer parameter, read back from its device; `what` names the record.
pub(crate) fn read_back(param: &Param<Tensor<1, Int>>, what: &str) -> Result<Vec<i64>> {
    param
        .val()
        .into_data()
        .convert::<i64>()
        .try_into_vec::<i64>()
        .map_err(|e| QatError::Record(format!("{what}: {e:?}")))
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
