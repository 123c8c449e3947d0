//! AVX-512 VNNI: `vpdpbusd` (u8 codes × i8 activations, accumulated in i32) on whole blocks.

#[cfg(target_arch = "x86_64")]
use core::arch::x86_64::*;

use crate::packed::{BLOCK, BLOCK_BYTES};

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
    let mut acc = [[_mm512_setzero_si512(); NT]; MT];
    for b in 0..nblocks {
        let mut c = [[_mm512_setzero_si512(); 4]; NT];
        for (j, cj) in codes.iter().enumerate() {
            let p = unsafe { cj.as_ptr().add(b * BLOCK_BYTES) };
            if prefetch {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(4096) as *const i8);
            }
            let v = unsafe { _mm512_loadu_si512(p as *const __m512i) };
            c[j] = [
                _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask),
                _mm512_and_si512(v, mask),
            ];
        }
        for (i, xi) in x.iter().enumerate() {
            let xp = unsafe { xi.as_ptr().add(b * BLOCK) };
            for q in 0..4 {
                let xv = unsafe { _mm512_loadu_si512(xp.add(q * BLOCK_BYTES) as *const __m512i) };
                for j in 0..NT {
                    acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], c[j][q], xv);
                }
            }
        }
    }
    let mut out = [[0i32; NT]; MT];
    for i in 0..MT {
        for j in 0..NT {
            out[i][j] = _mm512_reduce_add_epi32(acc[i][j]);
        }
    }
    out
}
