//! AVX-512 VNNI: `vpdpbusd` (u8 codes × i8 activations, accumulated in i32) on whole blocks.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::packed::{BLOCK, BLOCK_BYTES};

/// Software prefetch distance in the weight stream (measured best of 1–24 KiB here).
const PREFETCH: usize = 8192;

/// `Σ code·x` for `MT` activation rows against `NT` packed rows.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512 VNNI; every `codes[j]` must hold
/// `nblocks * 64` bytes and every `x[i]` `nblocks * 256` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn code_dot<const MT: usize, const NT: usize>(
    codes: [&[u8]; NT],
    x: [&[i8]; MT],
    nblocks: usize,
    prefetch: bool,
) -> [[i32; NT]; MT] {
    let mask = _mm512_set1_epi8(3);
    // With one activation row the four quarter products of a block go to four independent
    // accumulators, so the `vpdpbusd` latency chain does not limit throughput; with four rows
    // the tile already has 4 * NT independent chains.
    let split = if MT == 1 { 3 } else { 0 };
    let mut acc = [[[_mm512_setzero_si512(); 4]; NT]; MT];
    for b in 0..nblocks {
        let mut c = [[_mm512_setzero_si512(); 4]; NT];
        for (j, cj) in codes.iter().enumerate() {
            // SAFETY: the caller guarantees (# Safety) `nblocks` blocks of codes per row and
            // `b < nblocks`: the 64 bytes of block `b` are in the slice.
            let p = unsafe { cj.as_ptr().add(b * BLOCK_BYTES) };
            if prefetch {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
            }
            // SAFETY: as above (an unaligned load of those 64 bytes).
            let v = unsafe { _mm512_loadu_si512(p as *const __m512i) };
            c[j] = [
                _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
                _mm512_and_si512(v, mask),
            ];
        }
        for (i, xi) in x.iter().enumerate() {
            // SAFETY: the caller guarantees `nblocks` blocks of activations per row, `b <
            // nblocks` and `q < 4`: the 64 bytes at `256 b + 64 q` are in the slice.
            let xp = unsafe { xi.as_ptr().add(b * BLOCK) };
            for q in 0..4 {
                // SAFETY: as above.
                let xv = unsafe { _mm512_loadu_si512(xp.add(q * BLOCK_BYTES) as *const __m512i) };
                for j in 0..NT {
                    acc[i][j][q & split] = _mm512_dpbusd_epi32(acc[i][j][q & split], c[j][q], xv);
                }
            }
        }
    }
    let mut out = [[0i32; NT]; MT];
    for i in 0..MT {
        for j in 0..NT {
            let a = acc[i][j];
            let sum = _mm512_add_epi32(_mm512_add_epi32(a[0], a[1]), _mm512_add_epi32(a[2], a[3]));
            out[i][j] = _mm512_reduce_add_epi32(sum);
        }
    }
    out
}

/// GEMV form: `Σ code·x` for one activation row against `NT` packed rows, without decoding.
///
/// Each code byte is masked four times (`0xC0`, `0x30`, `0x0C`, `0x03`), which leaves
/// `64·code`, `16·code`, `4·code` and `code` in place; `vpdpbusd` multiplies those with the
/// activations into four accumulators, and the scale factors are divided out at the end
/// (exactly: every product of accumulator `q` is a multiple of its factor). This saves the
/// three shifts per code vector that [`code_dot`] spends. Per lane, an accumulator holds at
/// most `128·128·K/64 = 2^8 K`, and the reduced sum `2^12 K / 4^q`, within i32 for
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
    prefetch: bool,
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
            if prefetch {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH) as *const i8);
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
        out[j] = (_mm512_reduce_add_epi32(acc[j][0]) >> 6)
            + (_mm512_reduce_add_epi32(acc[j][1]) >> 4)
            + (_mm512_reduce_add_epi32(acc[j][2]) >> 2)
            + _mm512_reduce_add_epi32(acc[j][3]);
    }
    out
}
