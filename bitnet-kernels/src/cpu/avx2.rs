//! AVX2: `vpmaddubsw` (u8 codes × i8 activations) over 32-byte halves of each block.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::packed::{BLOCK, BLOCK_BYTES};

/// `Σ code·x` for up to `MT` activation rows against one packed row. `prefetch` (bytes, 0 =
/// none) is how far ahead of each code read to prefetch.
///
/// # Safety
/// The CPU must support AVX2; `codes` must hold `nblocks * 64` bytes and every `x[i]`
/// `nblocks * 256` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub unsafe fn code_dot<const MT: usize>(
    codes: &[u8],
    x: [&[i8]; MT],
    nblocks: usize,
    prefetch: usize,
) -> [i32; MT] {
    debug_assert!(codes.len() >= nblocks * BLOCK_BYTES);
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_si256(); MT];
    let cp = codes.as_ptr();
    for b in 0..nblocks {
        if prefetch > 0 {
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(b * BLOCK_BYTES + prefetch) as *const i8);
        }
        for half in 0..2 {
            // SAFETY: the caller guarantees (# Safety) `nblocks * 64` code bytes; `b < nblocks`
            // and `half < 2`: the 32 bytes at `64 b + 32 half` are in the slice.
            let v = unsafe {
                _mm256_loadu_si256(cp.add(b * BLOCK_BYTES + half * 32) as *const __m256i)
            };
            let c = [
                _mm256_and_si256(_mm256_srli_epi16::<6>(v), mask),
                _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask),
                _mm256_and_si256(_mm256_srli_epi16::<2>(v), mask),
                _mm256_and_si256(v, mask),
            ];
            for (i, xi) in x.iter().enumerate() {
                // SAFETY: the caller guarantees `nblocks * 256` activation bytes per row; the
                // loads below read 32 bytes at `256 b + 32 half + 64 q`, `q < 4`, in the slice.
                let xp = unsafe { xi.as_ptr().add(b * BLOCK + half * 32) };
                let mut s = _mm256_setzero_si256();
                for (q, cq) in c.iter().enumerate() {
                    let xv =
                        // SAFETY: as above.
                        unsafe { _mm256_loadu_si256(xp.add(q * BLOCK_BYTES) as *const __m256i) };
                    // |pair| <= 2 * 2 * 128 = 512; four of them fit i16 easily.
                    s = _mm256_add_epi16(s, _mm256_maddubs_epi16(*cq, xv));
                }
                acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(s, ones));
            }
        }
    }
    // SAFETY: AVX2 is present (this function's own contract).
    acc.map(|a| unsafe { hsum(a) })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}
