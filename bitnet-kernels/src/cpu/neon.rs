//! NEON (aarch64): widening `i8 × i8` multiplies of 16-byte slices of each block.

#[cfg(target_arch = "aarch64")]
use core::arch::aarch64::*;

use crate::packed::{BLOCK, BLOCK_BYTES};

/// `Σ code·x` for one activation row against one packed row.
///
/// # Safety
/// `codes` must hold `nblocks * 64` bytes and `x` `nblocks * 256` bytes.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub unsafe fn code_dot(codes: &[u8], x: &[i8], nblocks: usize) -> i32 {
    let mask = vdupq_n_u8(3);
    let mut acc = vdupq_n_s32(0);
    for b in 0..nblocks {
        for part in 0..4 {
            // SAFETY: the caller guarantees (# Safety) `nblocks * 64` code bytes; `b < nblocks`,
            // `part < 4`: the 16 bytes at `64 b + 16 part` are in the slice.
            let v = unsafe { vld1q_u8(codes.as_ptr().add(b * BLOCK_BYTES + part * 16)) };
            let c = [
                vandq_u8(vshrq_n_u8::<6>(v), mask),
                vandq_u8(vshrq_n_u8::<4>(v), mask),
                vandq_u8(vshrq_n_u8::<2>(v), mask),
                vandq_u8(v, mask),
            ];
            for (q, cq) in c.iter().enumerate() {
                // SAFETY: the caller guarantees `nblocks * 256` activation bytes; the 16 bytes at
                // `256 b + 64 q + 16 part` (`q, part < 4`) are in the slice.
                let xv =
                    unsafe { vld1q_s8(x.as_ptr().add(b * BLOCK + q * BLOCK_BYTES + part * 16)) };
                let cs = vreinterpretq_s8_u8(*cq); // codes 0..=2 fit i8
                let lo = vmull_s8(vget_low_s8(cs), vget_low_s8(xv));
                let hi = vmull_high_s8(cs, xv);
                acc = vpadalq_s16(acc, lo);
                acc = vpadalq_s16(acc, hi);
            }
        }
    }
    vaddvq_s32(acc)
}
