//! CPU ternary matmul: `y = x · Wᵀ` with int8 per-token activations and packed ternary weights.
//!
//! Every variant computes the exact integer `Σ_k code(w_nk)·x_mk` per output and scale group;
//! the true ternary dot product is that minus `Σ_k x_mk` (codes are `w + 1`). The variants are
//! chosen at run time ([`Kernel::best`]): AVX-512 VNNI, AVX2, NEON, and the portable scalar
//! reference, which always exists.
//!
//! # No overflow
//! `|code·x| ≤ 2·128`, so `|Σ code·x| ≤ 256·K ≤ 2^26` for `K ≤` [`MAX_K`]` = 2^18`, and the
//! i32 accumulators cannot overflow. AVX2 adds four `vpmaddubsw` pair sums (each `≤ 512` in
//! magnitude) in i16 before widening: `≤ 2048`, far from the i16 limit. The AVX-512 GEMV
//! form keeps codes scaled by up to 64 (see `avx512::gemv_dot`): `≤ 2^12·K ≤ 2^30`.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
pub mod scalar;

use std::borrow::Cow;

use crate::activation::{QuantizedRows, quantize_rows};
use crate::error::{KernelError, Result};
use crate::packed::{BLOCK, BLOCK_BYTES, MAX_K, PackedRef, ScalesRef, words_per_row};
#[cfg(test)]
use crate::packed::{PackedTernary, TernaryScales};

/// A CPU kernel variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Portable Rust, one weight at a time: the reference.
    Scalar,
    /// x86-64 AVX2 (`vpmaddubsw`).
    Avx2,
    /// x86-64 AVX-512 VNNI (`vpdpbusd`).
    Avx512Vnni,
    /// aarch64 NEON.
    Neon,
}

impl Kernel {
    /// Every variant, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Avx512Vnni,
        Kernel::Avx2,
        Kernel::Neon,
        Kernel::Scalar,
    ];

    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The fastest variant this CPU runs.
    pub fn best() -> Kernel {
        Self::ALL
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Scalar)
    }

    /// Every variant this CPU runs.
    pub fn available() -> Vec<Kernel> {
        Self::ALL.into_iter().filter(|k| k.is_available()).collect()
    }

    /// A short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Scalar => "scalar",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512Vnni => "avx512-vnni",
            Kernel::Neon => "neon",
        }
    }
}

/// How to run a ternary matmul.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatmulOptions {
    /// The kernel variant.
    pub kernel: Kernel,
    /// Threads to split the outputs over (1 = the calling thread only; 0 = automatic: the
    /// threads of the current rayon pool, which `RAYON_NUM_THREADS` sets, once a call has
    /// 16 Mi multiply-accumulates or more, else 1).
    pub threads: usize,
}

impl Default for MatmulOptions {
    /// The best kernel; threads chosen automatically (see [`MatmulOptions::threads`]).
    fn default() -> Self {
        Self {
            kernel: Kernel::best(),
            threads: 0,
        }
    }
}

/// Below this many multiply-accumulates one thread is faster than two (`kernel-bench`: GEMVs
/// of 2048×2048 and 2560×2560 ran faster on one thread, 4096×4096 and 6912×2560 on two).
const PARALLEL_MACS: usize = 1 << 24;

impl MatmulOptions {
    fn threads_for(&self, macs: usize, n: usize) -> usize {
        let wanted = match self.threads {
            // The threads of the rayon pool the call runs in (`RAYON_NUM_THREADS`, or a pool
            // the caller installed), which the parallel path runs on.
            0 if macs >= PARALLEL_MACS => rayon::current_num_threads(),
            0 => 1,
            t => t,
        };
        wanted.clamp(1, n.max(1))
    }
}

/// Exact integer products `Σ_k w_nk · x_mk` for every row `m`, output `n` and scale group
/// `g`, laid out `[m, n, groups]`.
pub fn int_matmul(
    acts: &QuantizedRows,
    w: PackedRef<'_>,
    options: &MatmulOptions,
) -> Result<Vec<i32>> {
    check(acts, w, options)?;
    let (m, n) = (acts.rows(), w.rows());
    if m == 0 || n == 0 {
        return Ok(Vec::new());
    }
    let (groups, bpg) = group_blocks(w);
    let threads = options.threads_for(m * n * acts.padded(), n);
    let bytes = le_bytes(w.words());
    let row_bytes = words_per_row(w.cols()) * 4;
    // Codes are w + 1: each product gives back Σ x over its group.
    let glen = group_len(w);
    let sums: Vec<i32> = (0..m * groups)
        .map(|i| {
            let (r, g) = (i / groups, i % groups);
            acts.sum(r, g * glen, ((g + 1) * glen).min(acts.cols()))
        })
        .collect();
    let run = |n0: usize, n1: usize| -> Vec<i32> {
        let mut out = vec![0i32; m * (n1 - n0) * groups];
        compute(
            options.kernel,
            acts,
            &sums,
            &bytes,
            row_bytes,
            n0..n1,
            groups,
            bpg,
            &mut out,
        );
        out
    };
    let out = if threads <= 1 {
        run(0, n)
    } else {
        // Rayon's pool stays alive between calls: no thread start per matmul.
        use rayon::prelude::*;
        let chunk = n.div_ceil(threads);
        let starts: Vec<usize> = (0..n).step_by(chunk).collect();
        let parts: Vec<(usize, Vec<i32>)> = starts
            .into_par_iter()
            .map(|n0| (n0, run(n0, (n0 + chunk).min(n))))
            .collect();
        let mut out = vec![0i32; m * n * groups];
        for (n0, part) in parts {
            let width = part.len() / (m * groups).max(1);
            for r in 0..m {
                let src = &part[r * width * groups..(r + 1) * width * groups];
                out[(r * n + n0) * groups..(r * n + n0 + width) * groups].copy_from_slice(src);
            }
        }
        out
    };
    Ok(out)
}

/// `y = x · Wᵀ` for row-major `x [m, K]`: quantizes `x` per row to int8, multiplies in
/// integers and scales back: `y_mn = Σ_g dot_mng / (s_x,m · s_w,ng)`. Returns `[m, N]`.
///
/// # Example
/// ```
/// use bitnet_kernels::cpu::{MatmulOptions, ternary_matmul};
/// use bitnet_kernels::packed::{PackedTernary, TernaryScales};
///
/// // W = [[1, 0, -1], [1, 1, 1]] with s_w = 2 (weights ±0.5).
/// let w = PackedTernary::pack(&[1, 0, -1, 1, 1, 1], 2, 3, TernaryScales::PerTensor(2.0)).unwrap();
/// let y = ternary_matmul(&[1.0, 2.0, -1.0], 1, w.view(), &MatmulOptions::default()).unwrap();
/// assert!((y[0] - 1.0).abs() < 1e-2 && (y[1] - 1.0).abs() < 1e-2);
/// ```
pub fn ternary_matmul(
    x: &[f32],
    m: usize,
    w: PackedRef<'_>,
    options: &MatmulOptions,
) -> Result<Vec<f32>> {
    let acts = quantize_rows(x, m, w.cols())?;
    let dots = int_matmul(&acts, w, options)?;
    Ok(scale_back(dots, &acts, w))
}

/// Scales integer products `[m, n, groups]` back to floats `[m, n]`.
///
/// # Errors
/// [`KernelError::Size`] for products or activations of other sizes than `w` implies.
pub fn dequantize(dots: &[i32], acts: &QuantizedRows, w: PackedRef<'_>) -> Result<Vec<f32>> {
    let (m, n) = (acts.rows(), w.rows());
    let (groups, _) = group_blocks(w);
    check_k(acts, w)?;
    if dots.len() != m * n * groups {
        return Err(KernelError::Size {
            what: "integer products [m, n, groups]",
            expected: m * n * groups,
            got: dots.len(),
        });
    }
    Ok(match group_blocks(w).0 {
        1 => scale_back(dots.to_vec(), acts, w),
        _ => scale_back_groups(dots, acts, w),
    })
}

/// `y_mn = Σ_g dot_mng / (s_x,m · s_w,ng)` for products of the checked sizes: with one group,
/// in the products' own buffer (no second allocation of the output's size).
fn scale_back(dots: Vec<i32>, acts: &QuantizedRows, w: PackedRef<'_>) -> Vec<f32> {
    let n = w.rows();
    let scales = w.scales();
    if group_blocks(w).0 > 1 {
        return scale_back_groups(&dots, acts, w);
    }
    // Converted where they lie (an in-place `collect`), then divided row by row.
    let mut y: Vec<f32> = dots.into_iter().map(|d| d as f32).collect();
    for (row, &sx) in y.chunks_mut(n.max(1)).zip(acts.scales()) {
        match scales {
            ScalesRef::PerTensor(sw) => row.iter_mut().for_each(|v| *v /= sx * sw),
            _ => row
                .iter_mut()
                .zip(scales.values())
                .for_each(|(v, sw)| *v /= sx * sw),
        }
    }
    y
}

/// [`scale_back`] for per-group scales: the groups' quotients added in order.
fn scale_back_groups(dots: &[i32], acts: &QuantizedRows, w: PackedRef<'_>) -> Vec<f32> {
    let n = w.rows();
    let (groups, _) = group_blocks(w);
    let scales = w.scales();
    dots.chunks(groups)
        .enumerate()
        .map(|(i, d)| {
            let (sx, j) = (acts.scales()[i / n], i % n);
            (0..groups)
                .map(|g| d[g] as f32 / (sx * scales.get(j, g, groups)))
                .sum()
        })
        .collect()
}

fn check(acts: &QuantizedRows, w: PackedRef<'_>, options: &MatmulOptions) -> Result<()> {
    check_k(acts, w)?;
    if w.cols() > MAX_K {
        return Err(KernelError::KTooLarge {
            k: w.cols(),
            max: MAX_K,
        });
    }
    if !options.kernel.is_available() {
        return Err(KernelError::Inconsistent(format!(
            "kernel {} is not available on this CPU",
            options.kernel.name()
        )));
    }
    Ok(())
}

/// The activation rows are as long as the weight rows.
fn check_k(acts: &QuantizedRows, w: PackedRef<'_>) -> Result<()> {
    if acts.cols() != w.cols() {
        return Err(KernelError::Size {
            what: "activation row length (K)",
            expected: w.cols(),
            got: acts.cols(),
        });
    }
    Ok(())
}

fn group_len(w: PackedRef<'_>) -> usize {
    w.scales().group_len(w.cols())
}

/// `(groups per row, blocks per group)`.
fn group_blocks(w: PackedRef<'_>) -> (usize, usize) {
    match w.scales() {
        ScalesRef::PerGroup { group, .. } => (w.cols() / group, group / BLOCK),
        _ => (1, words_per_row(w.cols()) * 16 / BLOCK),
    }
}

/// The words as little-endian bytes (borrowed on little-endian targets).
fn le_bytes(words: &[u32]) -> Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        // SAFETY: u32 has no padding and any byte pattern is a valid u8; the length is exact.
        Cow::Borrowed(unsafe {
            core::slice::from_raw_parts(words.as_ptr() as *const u8, words.len() * 4)
        })
    } else {
        Cow::Owned(words.iter().flat_map(|w| w.to_le_bytes()).collect())
    }
}

/// Fills `out [m, n1 - n0, groups]` with `Σ code·x − sums[m, groups]`, the exact
/// ternary products.
#[allow(clippy::too_many_arguments)]
fn compute(
    kernel: Kernel,
    acts: &QuantizedRows,
    sums: &[i32],
    bytes: &[u8],
    row_bytes: usize,
    ns: core::ops::Range<usize>,
    groups: usize,
    bpg: usize,
    out: &mut [i32],
) {
    let m = acts.rows();
    let width = ns.len();
    let codes = acts.codes();
    // The first K chunk of a group writes its sum less Σ x, the others add theirs.
    let mut put = |r: usize, j: usize, g: usize, v: i32, first: bool| {
        let o = &mut out[(r * width + (j - ns.start)) * groups + g];
        *o = if first {
            v - sums[r * groups + g]
        } else {
            *o + v
        };
    };
    // Up to `batch_rows` activation rows (decode, small-batch decode) form one tile that meets
    // every weight block once: the weights stream from memory once, decoded once, and the
    // K chunk of the rows stays in L1 (`X_CHUNK_BYTES`). Larger GEMMs are cache-blocked: a
    // chunk of `K_CHUNK` blocks of 4 activation rows stays in L1 while it meets `N_CHUNK`
    // weight rows, which stay in L2 while every activation tile passes.
    let batch = m <= kernel.batch_rows();
    let (tile_rows, k_chunk, n_chunk) = if batch {
        let k_chunk = if m == 1 {
            bpg
        } else {
            (X_CHUNK_BYTES / (m * BLOCK)).max(1)
        };
        (m, k_chunk, width.max(1))
    } else {
        (4, K_CHUNK, N_CHUNK)
    };
    for g in 0..groups {
        for kb in (0..bpg).step_by(k_chunk) {
            let nb = k_chunk.min(bpg - kb);
            // Streaming weights are prefetched at the same K offset, ⌈PREFETCH / chunk⌉ rows
            // ahead of the row being read (about `PREFETCH` bytes of the stream).
            let prefetch = if batch {
                PREFETCH.div_ceil(nb * BLOCK_BYTES) * row_bytes
            } else {
                0
            };
            // Exactly the `nb` blocks a tile reads (bounds-checked slicing: what makes the SIMD
            // kernels' reads sound).
            let wrow = |j: usize| {
                &bytes[j * row_bytes + (g * bpg + kb) * BLOCK_BYTES..][..nb * BLOCK_BYTES]
            };
            let xrow =
                |r: usize| &codes[r * acts.padded() + (g * bpg + kb) * BLOCK..][..nb * BLOCK];
            for j0 in (ns.start..ns.end).step_by(n_chunk) {
                let j_end = (j0 + n_chunk).min(ns.end);
                let mut r = 0;
                while r < m {
                    let mt = tile_rows.min(m - r);
                    let mut j = j0;
                    while j < j_end {
                        // Tile widths are powers of two: the widest that fits.
                        let mut nt = kernel.tile_cols();
                        while nt > j_end - j {
                            nt /= 2;
                        }
                        let tile = tile(kernel, &wrow, &xrow, j, nt, r, mt, nb, prefetch);
                        for (i, row) in tile.iter().enumerate().take(mt) {
                            for (k, v) in row.iter().enumerate().take(nt) {
                                put(r + i, j + k, g, *v, kb == 0);
                            }
                        }
                        j += nt;
                    }
                    r += mt;
                }
            }
        }
    }
}

/// Blocks per K chunk of the cache-blocked GEMM (4,096 weights: 16 KiB of 4 activation rows).
const K_CHUNK: usize = 16;
/// Weight rows per N chunk of the cache-blocked GEMM (128 KiB of packed K chunks).
const N_CHUNK: usize = 128;
/// Bytes of activation rows a small-batch K chunk keeps in L1.
const X_CHUNK_BYTES: usize = 32 << 10;
/// Software prefetch distance in the weight stream (the best of one row, 2–32 KiB measured).
const PREFETCH: usize = 8192;

impl Kernel {
    /// The most activation rows one tile of this variant takes: a call with at most this many
    /// rows streams the weights once.
    fn batch_rows(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 8,
            Kernel::Avx2 => 4,
            _ => 1,
        }
    }

    /// The most weight rows one tile takes (a power of two; four streams lost to two in
    /// `kernel-bench`).
    fn tile_cols(self) -> usize {
        match self {
            Kernel::Avx512Vnni => 2,
            _ => 1,
        }
    }
}

/// Up to 8 tile rows by 2 weight rows of integer sums.
type Tile = [[i32; 2]; 8];

/// One tile of `mt` activation rows (at most 8; AVX-512 and AVX2 take them in one pass, the
/// others row by row) by `nt ∈ {1, 2}` weight rows.
#[allow(clippy::too_many_arguments)]
// `nt` and `prefetch` only steer the x86-64 variants.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn tile<'a>(
    kernel: Kernel,
    wrow: &impl Fn(usize) -> &'a [u8],
    xrow: &impl Fn(usize) -> &'a [i8],
    j: usize,
    nt: usize,
    r: usize,
    mt: usize,
    nblocks: usize,
    prefetch: usize,
) -> Tile {
    let mut out = [[0i32; 2]; 8];
    // What the SIMD kernels read: `nblocks` whole blocks from the start of every row they get.
    // The row closures of `compute` (the only caller) return slices of exactly that length.
    debug_assert!(
        (0..nt).all(|k| wrow(j + k).len() == nblocks * BLOCK_BYTES)
            && (0..mt).all(|i| xrow(r + i).len() == nblocks * BLOCK),
        "ternary matmul: row slices of other than {nblocks} blocks"
    );
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => {
            // SAFETY (every call below): `check` verified that the CPU has the kernel's
            // instructions, and every row slice holds the `nblocks` blocks the kernel reads:
            // `compute`'s row closures slice exactly that many, with bounds checks.
            macro_rules! rows {
                ($mt:literal) => {{
                    let x: [&[i8]; $mt] = core::array::from_fn(|i| xrow(r + i));
                    if nt == 2 {
                        let t = unsafe {
                            avx512::code_dot::<$mt, 2, { avx512::quarters($mt * 2) }>(
                                [wrow(j), wrow(j + 1)],
                                x,
                                nblocks,
                                prefetch,
                            )
                        };
                        out[..$mt].copy_from_slice(&t);
                    } else {
                        let t = unsafe {
                            avx512::code_dot::<$mt, 1, { avx512::quarters($mt) }>(
                                [wrow(j)],
                                x,
                                nblocks,
                                prefetch,
                            )
                        };
                        for (o, ti) in out.iter_mut().zip(t) {
                            o[0] = ti[0];
                        }
                    }
                }};
            }
            match mt {
                1 if nt == 2 => {
                    out[0] = unsafe {
                        avx512::gemv_dot::<2>([wrow(j), wrow(j + 1)], xrow(r), nblocks, prefetch)
                    }
                }
                1 => {
                    out[0][0] =
                        unsafe { avx512::gemv_dot::<1>([wrow(j)], xrow(r), nblocks, prefetch)[0] }
                }
                2 => rows!(2),
                3 => rows!(3),
                4 => rows!(4),
                5 => rows!(5),
                6 => rows!(6),
                7 => rows!(7),
                _ => rows!(8),
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY (every call below): as for AVX-512: `check` (instructions) and `compute`'s
            // row slices (lengths).
            macro_rules! rows {
                ($mt:literal) => {{
                    let x: [&[i8]; $mt] = core::array::from_fn(|i| xrow(r + i));
                    let t = unsafe { avx2::code_dot::<$mt>(wrow(j), x, nblocks, prefetch) };
                    for (o, ti) in out.iter_mut().zip(t) {
                        o[0] = ti;
                    }
                }};
            }
            match mt {
                1 => rows!(1),
                2 => rows!(2),
                3 => rows!(3),
                _ => rows!(4),
            }
        }
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => {
            for (i, o) in out.iter_mut().enumerate().take(mt) {
                // SAFETY: `check` (NEON is present) and `compute`'s row slices (lengths).
                o[0] = unsafe { neon::code_dot(wrow(j), xrow(r + i), nblocks) };
            }
        }
        _ => {
            for (i, o) in out.iter_mut().enumerate().take(mt) {
                o[0] = scalar::code_dot(wrow(j), xrow(r + i), nblocks);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn automatic_threads_follow_the_rayon_pool() {
        let auto = MatmulOptions::default();
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let three = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        assert_eq!(one.install(|| auto.threads_for(PARALLEL_MACS, 64)), 1);
        assert_eq!(three.install(|| auto.threads_for(PARALLEL_MACS, 64)), 3);
        // Below the cut-over, and never more threads than outputs.
        assert_eq!(three.install(|| auto.threads_for(PARALLEL_MACS - 1, 64)), 1);
        assert_eq!(three.install(|| auto.threads_for(PARALLEL_MACS, 2)), 2);
        // An explicit count is kept.
        let two = MatmulOptions { threads: 2, ..auto };
        assert_eq!(one.install(|| two.threads_for(1, 64)), 2);
    }

    use super::*;

    fn lcg(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            s >> 33
        }
    }

    /// The naive product from unpacked values: no layout, no SIMD.
    fn naive(acts: &QuantizedRows, values: &[i8], n: usize, k: usize, glen: usize) -> Vec<i32> {
        let groups = k / glen;
        let mut out = vec![0; acts.rows() * n * groups];
        for r in 0..acts.rows() {
            for j in 0..n {
                for kk in 0..k {
                    let v = values[j * k + kk] as i32 * acts.codes()[r * acts.padded() + kk] as i32;
                    out[(r * n + j) * groups + kk / glen] += v;
                }
            }
        }
        out
    }

    fn random_case(m: usize, n: usize, k: usize, seed: u64) -> (QuantizedRows, Vec<i8>) {
        let mut next = lcg(seed);
        let values: Vec<i8> = (0..n * k).map(|_| (next() % 3) as i8 - 1).collect();
        let x: Vec<f32> = (0..m * k)
            .map(|_| (next() % 20001) as f32 / 1000.0 - 10.0)
            .collect();
        (quantize_rows(&x, m, k).unwrap(), values)
    }

    #[test]
    fn every_available_kernel_gives_the_reference_integers() {
        let kernels = Kernel::available();
        assert!(kernels.contains(&Kernel::Scalar));
        let shapes = [
            (1, 1, 1),
            (1, 7, 100),
            (3, 5, 256),
            (4, 3, 257),
            (5, 9, 700),
            (9, 4, 1024),
            (1, 33, 4099),
            // A GEMM spanning two K chunks and two N chunks of the cache blocking.
            (12, 130, 5000),
            // Every small-batch tile height, each crossing its K chunk (32 KiB of rows).
            (2, 5, 17000),
            (3, 4, 11008),
            (4, 3, 9000),
            (5, 3, 7000),
            (6, 130, 5500),
            (7, 3, 5000),
            (8, 7, 4500),
            (8, 2, 11008),
        ];
        for (i, &(m, n, k)) in shapes.iter().enumerate() {
            let (acts, values) = random_case(m, n, k, i as u64);
            let w = PackedTernary::pack(&values, n, k, TernaryScales::PerTensor(1.0)).unwrap();
            let expected = naive(&acts, &values, n, k, k);
            for &kernel in &kernels {
                for threads in [1, 2] {
                    let got =
                        int_matmul(&acts, w.view(), &MatmulOptions { kernel, threads }).unwrap();
                    assert_eq!(
                        got,
                        expected,
                        "{} {m}x{n}x{k} threads {threads}",
                        kernel.name()
                    );
                }
            }
        }
    }

    #[test]
    fn grouped_scales_give_per_group_integers() {
        // Groups within one K chunk, and groups of 18 blocks that a small-batch K chunk of 8
        // rows (16 blocks) splits.
        for (m, n, k, group) in [(5, 6, 1024, 256), (8, 3, 9216, 4608), (1, 3, 9216, 4608)] {
            let (acts, values) = random_case(m, n, k, 99);
            let scales = TernaryScales::PerGroup {
                group,
                scales: vec![1.0; n * k / group],
            };
            let w = PackedTernary::pack(&values, n, k, scales).unwrap();
            let expected = naive(&acts, &values, n, k, group);
            for kernel in Kernel::available() {
                for threads in [1, 2] {
                    let got =
                        int_matmul(&acts, w.view(), &MatmulOptions { kernel, threads }).unwrap();
                    assert_eq!(got, expected, "{} m {m} group {group}", kernel.name());
                }
            }
        }
    }

    #[test]
    fn the_largest_k_does_not_overflow() {
        // |x| codes of 127 against +1 and -1 weights at K = MAX_K: the largest sums accepted,
        // in a GEMV and in a small-batch tile (8 rows, K chunks of 16 blocks).
        let k = MAX_K;
        for m in [1, 8] {
            for (x, w, expected) in [(1.0, 1i8, 127), (-1.0, 1, -127), (1.0, -1, -127)] {
                let acts = quantize_rows(&vec![x; m * k], m, k).unwrap();
                let w =
                    PackedTernary::pack(&vec![w; k], 1, k, TernaryScales::PerTensor(1.0)).unwrap();
                for kernel in Kernel::available() {
                    let got =
                        int_matmul(&acts, w.view(), &MatmulOptions { kernel, threads: 1 }).unwrap();
                    assert_eq!(got, vec![expected * k as i32; m], "{} m {m}", kernel.name());
                }
            }
        }
    }

    #[test]
    fn extreme_activations_do_not_overflow() {
        // All codes -127 against all +1 weights.
        let k = 8192;
        let acts = quantize_rows(&vec![-1.0; k], 1, k).unwrap();
        assert!(acts.codes()[..k].iter().all(|c| *c == -127));
        let w = PackedTernary::pack(&vec![1; k], 1, k, TernaryScales::PerTensor(1.0)).unwrap();
        for kernel in Kernel::available() {
            let got = int_matmul(&acts, w.view(), &MatmulOptions { kernel, threads: 1 }).unwrap();
            assert_eq!(got, vec![-127 * k as i32], "{}", kernel.name());
        }
    }

    #[test]
    fn float_result_matches_dequantized_reference() {
        let (m, n, k) = (3, 10, 300);
        let mut next = lcg(5);
        let values: Vec<i8> = (0..n * k).map(|_| (next() % 3) as i8 - 1).collect();
        let x: Vec<f32> = (0..m * k)
            .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        let sw: Vec<f32> = (0..n).map(|j| 1.0 + j as f32 * 0.1).collect();
        let w = PackedTernary::pack(&values, n, k, TernaryScales::PerRow(sw.clone())).unwrap();
        let y = ternary_matmul(&x, m, w.view(), &MatmulOptions::default()).unwrap();
        let acts = quantize_rows(&x, m, k).unwrap();
        for r in 0..m {
            for j in 0..n {
                let expected: f64 = (0..k)
                    .map(|kk| {
                        (acts.codes()[r * acts.padded() + kk] as f64 / acts.scales()[r] as f64)
                            * (values[j * k + kk] as f64 / sw[j] as f64)
                    })
                    .sum();
                let got = y[r * n + j] as f64;
                assert!(
                    (got - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                    "{got} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn no_rows_give_empty_products() {
        // An empty batch (before the small-batch tiles, which size their K chunks by the row
        // count, it was the one-row path).
        let w = PackedTernary::pack(&[1; 300], 1, 300, TernaryScales::PerTensor(1.0)).unwrap();
        for kernel in Kernel::available() {
            for threads in [0, 1, 2] {
                let options = MatmulOptions { kernel, threads };
                let y = ternary_matmul(&[], 0, w.view(), &options).unwrap();
                assert_eq!(y, Vec::<f32>::new(), "{}", kernel.name());
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let w = PackedTernary::pack(&[0; 8], 2, 4, TernaryScales::PerTensor(1.0)).unwrap();
        assert!(matches!(
            ternary_matmul(&[0.0; 5], 1, w.view(), &MatmulOptions::default()),
            Err(KernelError::Size { .. })
        ));
    }
}
