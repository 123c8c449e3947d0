//! AVX-512 VNNI: `vpdpbusd` (u8 codes × i8 activations, accumulated in i32) on whole blocks.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::packed::{BLOCK, BLOCK_BYTES};

/// `Σ code·x` for `MT` activation rows against `NT` packed rows; each weight block is decoded
/// once for all the rows. `prefetch` (bytes, 0 = none) is how far ahead of each code read to
/// prefetch. `Q` accumulators per (row, output) take the four quarter products of a block in
/// turn: [`quarters`] gives enough independent `vpdpbusd` chains to hide its latency.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI; every `codes[j]` must hold
/// `nblocks * 64` bytes and every `x[i]` `nblocks * 256` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn code_dot<const MT: usize, const NT: usize, const Q: usize>(
    codes: [&[u8]; NT],
    x: [&[i8]; MT],
    nblocks: usize,
    prefetch: usize,
) -> [[i32; NT]; MT] {
    let mask = _mm512_set1_epi8(3);
    let mut acc = [[[_mm512_setzero_si512(); Q]; NT]; MT];
    // Plain loops: closures would not inherit this function's target features (and then not
    // inline the intrinsics).
    for b in 0..nblocks {
        let mut v = [_mm512_setzero_si512(); NT];
        for j in 0..NT {
            // SAFETY: the caller guarantees (# Safety) `nblocks` blocks of codes per row and
            // `b < nblocks`: the 64 bytes of block `b` are in the slice.
            let p = unsafe { codes[j].as_ptr().add(b * BLOCK_BYTES) };
            if prefetch > 0 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(prefetch) as *const i8);
            }
            // SAFETY: as above (an unaligned load of those 64 bytes).
            v[j] = unsafe { _mm512_loadu_si512(p as *const __m512i) };
        }
        // One quarter at a time: its codes (bits 7-6, 5-4, 3-2, 1-0 of every byte) stay in
        // registers while every activation row passes.
        for q in 0..4 {
            let mut c = [_mm512_setzero_si512(); NT];
            for j in 0..NT {
                let shifted = match q {
                    0 => _mm512_srli_epi16::<6>(v[j]),
                    1 => _mm512_srli_epi16::<4>(v[j]),
                    2 => _mm512_srli_epi16::<2>(v[j]),
                    _ => v[j],
                };
                c[j] = _mm512_and_si512(shifted, mask);
            }
            for i in 0..MT {
                // SAFETY: the caller guarantees `nblocks` blocks of activations per row, `b <
                // nblocks` and `q < 4`: the 64 bytes at `256 b + 64 q` are in the slice.
                let xv = unsafe {
                    _mm512_loadu_si512(
                        x[i].as_ptr().add(b * BLOCK + q * BLOCK_BYTES) as *const __m512i
                    )
                };
                for j in 0..NT {
                    acc[i][j][q % Q] = _mm512_dpbusd_epi32(acc[i][j][q % Q], c[j], xv);
                }
            }
        }
    }
    let mut out = [[0i32; NT]; MT];
    for i in 0..MT {
        for j in 0..NT {
            let mut sum = acc[i][j][0];
            for a in &acc[i][j][1..] {
                sum = _mm512_add_epi32(sum, *a);
            }
            out[i][j] = _mm512_reduce_add_epi32(sum);
        }
    }
    out
}

/// Accumulators per (row, output) that [`code_dot`] needs for `pairs` (row, output) pairs to
/// keep at least four `vpdpbusd` chains in flight: 4, 2 or 1.
pub const fn quarters(pairs: usize) -> usize {
    match pairs {
        0..=1 => 4,
        2..=3 => 2,
        _ => 1,
    }
}

/// GEMV form: `Σ code·x` for one activation row against `NT` packed rows, without decoding.
///
/// Each code byte is masked four times (`0xC0`, `0x30`, `0x0C`, `0x03`), which leaves
/// `64·code`, `16·code`, `4·code` and `code` in place; `vpdpbusd` multiplies those with the
/// activations into four accumulators, and the factors are shifted out of every lane before
/// the one reduction (exactly: every product of accumulator `q` is a multiple of its factor). This saves the
/// three shifts per code vector that [`code_dot`] spends. Per lane, an accumulator holds at
/// most `128·128·K/64 = 2^8 K`, and the reduced sum at most `2^8 K`, within i32 for
/// `K ≤ 2^18` ([`crate::packed::MAX_K`]).
///
/// # Safety
/// As for [`code_dot`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn gemv_dot<const NT: usize>(
    codes: [&[u8]; NT],
    x: &[i8],
    nblocks: usize,
    prefetch: usize,
) -> [i32; NT] {
    let masks = [
        _mm512_set1_epi8(0xC0u8 as i8),
        _mm512_set1_epi8(0x30),
        _mm512_set1_epi8(0x0C),
        _mm512_set1_epi8(0x03),
    ];
    let mut acc = [[_mm512_setzero_si512(); 4]; NT];
    let xp = x.as_ptr();
    for b in 0..nblocks {
        let mut v = [_mm512_setzero_si512(); NT];
        for (j, cj) in codes.iter().enumerate() {
            // SAFETY: the caller guarantees (# Safety) `nblocks` blocks of codes per row and
            // `b < nblocks`: the 64 bytes of block `b` are in the slice.
            let p = unsafe { cj.as_ptr().add(b * BLOCK_BYTES) };
            if prefetch > 0 {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(prefetch) as *const i8);
            }
            // SAFETY: as above (an unaligned load of those 64 bytes).
            v[j] = unsafe { _mm512_loadu_si512(p as *const __m512i) };
        }
        for q in 0..4 {
            // SAFETY: the caller guarantees `nblocks` blocks of activations, `b < nblocks`,
            // `q < 4`: the 64 bytes at `256 b + 64 q` are in the slice.
            let xv = unsafe {
                _mm512_loadu_si512(xp.add(b * BLOCK + q * BLOCK_BYTES) as *const __m512i)
            };
            for j in 0..NT {
                acc[j][q] = _mm512_dpbusd_epi32(acc[j][q], _mm512_and_si512(v[j], masks[q]), xv);
            }
        }
    }
    let mut out = [0i32; NT];
    for j in 0..NT {
        // Every lane of accumulator `q` is a multiple of its factor: the arithmetic shifts
        // are exact divisions, and one reduction per output remains.
        let a = acc[j];
        let sum = _mm512_add_epi32(
            _mm512_add_epi32(_mm512_srai_epi32::<6>(a[0]), _mm512_srai_epi32::<4>(a[1])),
            _mm512_add_epi32(_mm512_srai_epi32::<2>(a[2]), a[3]),
        );
        out[j] = _mm512_reduce_add_epi32(sum);
    }
    out
}
