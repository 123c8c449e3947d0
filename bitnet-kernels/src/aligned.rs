//! Cache-line-aligned buffers, so 64-byte SIMD loads never straddle two cache lines.

/// One 64-byte cache line.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A growable-once buffer of `T` (`u32` or `i8`) whose start is 64-byte aligned and whose
/// capacity is a whole number of cache lines.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct AlignedBuf<T: Pod> {
    lines: Vec<Line>,
    len: usize,
    _t: core::marker::PhantomData<T>,
}

/// Plain integer types whose every byte pattern is valid.
pub(crate) trait Pod: Copy + 'static {}
impl Pod for u32 {}
impl Pod for i8 {}

impl<T: Pod> AlignedBuf<T> {
    /// `len` copies of `value`.
    pub fn filled(value: T, len: usize) -> Self {
        let bytes = len * core::mem::size_of::<T>();
        let mut buf = Self {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            _t: core::marker::PhantomData,
        };
        buf.as_mut_slice().fill(value);
        buf
    }

    /// Copies `values` into a new aligned buffer.
    pub fn from_slice(values: &[T]) -> Self {
        let mut buf = Self {
            lines: vec![Line([0; 64]); core::mem::size_of_val(values).div_ceil(64)],
            len: values.len(),
            _t: core::marker::PhantomData,
        };
        buf.as_mut_slice().copy_from_slice(values);
        buf
    }

    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the lines hold at least `len * size_of::<T>()` initialised bytes, Line is
        // 64-byte aligned (more than T needs), and T accepts every byte pattern.
        unsafe { core::slice::from_raw_parts(self.lines.as_ptr() as *const T, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as above, with unique access through `&mut self`.
        unsafe { core::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut T, self.len) }
    }
}

impl<T: Pod + core::fmt::Debug> core::fmt::Debug for AlignedBuf<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_list()
            .entries(self.as_slice().iter().take(16))
            .finish()?;
        write!(f, " ({} values)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_hold_their_values() {
        let b = AlignedBuf::from_slice(&[1u32, 2, 3]);
        assert_eq!(b.as_slice(), &[1, 2, 3]);
        assert_eq!(b.as_slice().as_ptr() as usize % 64, 0);
        let f = AlignedBuf::filled(-3i8, 130);
        assert!(f.as_slice().iter().all(|v| *v == -3));
        assert_eq!(f.as_slice().as_ptr() as usize % 64, 0);
    }
}
