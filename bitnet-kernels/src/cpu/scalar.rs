//! The portable reference kernel: one weight at a time.

use crate::packed::{BLOCK, BLOCK_BYTES};

/// `Σ code·x` over `nblocks` blocks of one packed row (`codes`, the little-endian bytes of its
/// words) and one activation row (`x`).
pub fn code_dot(codes: &[u8], x: &[i8], nblocks: usize) -> i32 {
    let mut acc = 0i32;
    for b in 0..nblocks {
        let block = &codes[b * BLOCK_BYTES..(b + 1) * BLOCK_BYTES];
        let xb = &x[b * BLOCK..(b + 1) * BLOCK];
        for (j, &byte) in block.iter().enumerate() {
            for q in 0..4 {
                let code = (byte >> (6 - 2 * q)) & 3;
                acc += code as i32 * xb[q * BLOCK_BYTES + j] as i32;
            }
        }
    }
    acc
}
