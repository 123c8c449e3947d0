//! `kernel-bench`: the packed ternary CPU kernels against OpenBLAS `sgemv`/`sgemm` and Burn's
//! f32 `matmul` (Flex), GEMV and small batches (M <= 8) hot and cold, GEMM hot, 1 and 2 threads.
//! Every cold run is also set against the memory-bandwidth bound measured in the same run: a
//! streaming read of its packed weights (same copies, same rotation, same threads), reported as
//! `bound_fraction`.
//!
//! ```text
//! cargo run --release --bin kernel-bench -- --json kernel-bench.json
//! cargo run --release --bin kernel-bench -- --quick
//! ```
//!
//! Measuring rules: interleaved variants, >= 21 samples, medians, load average before and
//! after, cold = rotating through > 1 GiB of weight copies.

use std::path::PathBuf;

use bitnet_kernels::cpu::{Kernel, MatmulOptions, ternary_matmul};
use bitnet_kernels::file::{Encoding, to_bytes};
use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use bitnet_qat_benches::{MS, SHAPES, Stats, interleaved, load_average, write_atomic};
use burn::tensor::{Device, Tensor, TensorData};
use cblas_sys::{CBLAS_LAYOUT, CBLAS_TRANSPOSE, cblas_sgemm, cblas_sgemv};
use clap::Parser;
use serde::Serialize;

// OpenBLAS (Debian `libopenblas-dev`, installed by scripts/install-deps.sh) provides the CBLAS
// symbols that `cblas-sys` declares.
#[link(name = "openblas")]
unsafe extern "C" {
    fn openblas_set_num_threads(n: std::ffi::c_int);
}

/// Benchmark the ternary kernels against BLAS and Burn.
#[derive(Parser, Debug)]
struct Args {
    /// Write the records as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Samples per variant (at least 21 for reported figures).
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Only the target shapes: M = 1 and 8 at 4096x11008 and 11008x4096, M = 512 at 2048x2048
    /// and 4096x11008.
    #[arg(long)]
    quick: bool,
    /// Bytes of weight copies to rotate through for cold GEMV runs.
    #[arg(long, default_value_t = 1.1 * (1u64 << 30) as f64)]
    cold_bytes: f64,
}

#[derive(Debug, Serialize)]
struct Record {
    n: usize,
    k: usize,
    m: usize,
    mode: &'static str,
    threads: usize,
    variant: &'static str,
    stats: Stats,
    /// Weight bytes the variant reads per call.
    weight_bytes: usize,
    weight_gb_per_s: f64,
    g_weights_per_s: f64,
    gmac_per_s: f64,
    /// BLAS median / this median (how many times faster than BLAS).
    speedup_vs_blas: Option<f64>,
    /// Burn f32 matmul median / this median.
    speedup_vs_burn: Option<f64>,
    /// For the cold ternary GEMV: the streaming-read time of its packed weights (the `stream`
    /// record of the same run and threads) / its time, the fraction of the memory-bandwidth
    /// bound it reaches.
    bound_fraction: Option<f64>,
}

#[derive(Debug, Serialize)]
struct SizeRecord {
    n: usize,
    k: usize,
    f32_bytes: usize,
    packed_bytes: usize,
    base3_file_bytes: usize,
    packed_ratio: f64,
    base3_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: &'static str,
    samples: usize,
    load_average_before: f64,
    load_average_after: f64,
    noisy: bool,
    records: Vec<Record>,
    sizes: Vec<SizeRecord>,
}

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

/// Sums the words of `w` (a streaming read: what a GEMV of these weights cannot beat), on
/// `threads` threads (1 or 2 halves).
fn stream(w: &[u32], threads: usize) -> u32 {
    let sum = |part: &[u32]| part.iter().fold(0u32, |a, &b| a.wrapping_add(b));
    if threads <= 1 {
        return sum(w);
    }
    let (a, b) = w.split_at(w.len() / 2);
    let (x, y) = rayon::join(|| sum(a), || sum(b));
    x.wrapping_add(y)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let kernel = Kernel::best();
    let load_before = load_average();
    let device = Device::flex();
    let mut records = Vec::new();
    let mut sizes = Vec::new();
    println!(
        "kernel {} | samples {} | load average {load_before:.2}",
        kernel.name(),
        args.samples
    );
    println!(
        "{:>12} {:>4} {:>5} {:>3} {:>10} {:>10} {:>10} {:>7} {:>7} {:>8} {:>8} {:>8}",
        "N x K",
        "M",
        "mode",
        "thr",
        "ours ms",
        "blas ms",
        "burn ms",
        "x blas",
        "x burn",
        "GB/s",
        "Gw/s",
        "bound"
    );
    let shapes: Vec<(usize, usize)> = if args.quick {
        vec![(4096, 11008), (11008, 4096), (2048, 2048)]
    } else {
        SHAPES.to_vec()
    };
    for (n, k) in shapes {
        let mut next = lcg((n * 31 + k) as u64);
        let values: Vec<i8> = (0..n * k).map(|_| (next() % 3) as i8 - 1).collect();
        let packed = PackedTernary::pack(&values, n, k, TernaryScales::PerTensor(40.0))?;
        let w_f32: Vec<f32> = values.iter().map(|v| *v as f32 / 40.0).collect();
        let f32_bytes = n * k * 4;
        let base3 = to_bytes(&packed, Encoding::Base3)?.len();
        sizes.push(SizeRecord {
            n,
            k,
            f32_bytes,
            packed_bytes: packed.size_bytes(),
            base3_file_bytes: base3,
            packed_ratio: f32_bytes as f64 / packed.size_bytes() as f64,
            base3_ratio: f32_bytes as f64 / base3 as f64,
        });
        // Burn's f32 matmul: x [m, k] @ W^T stored [k, n].
        let w_burn =
            Tensor::<2>::from_data(TensorData::new(w_f32.clone(), [n, k]), &device).transpose();
        let w_burn = Tensor::<2>::from_data(w_burn.into_data(), &device);
        let ms: Vec<usize> = match (args.quick, n, k) {
            (false, ..) => MS.to_vec(),
            (true, 4096, 11008) => vec![1, 8, 512],
            (true, 11008, 4096) => vec![1, 8],
            (true, ..) => vec![512],
        };
        for m in ms {
            let x: Vec<f32> = (0..m * k)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let x_burn = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, k]), &device);
            // Decode-sized calls run hot and cold; the GEMMs hot.
            let modes: &[&str] = if m <= 8 { &["hot", "cold"] } else { &["hot"] };
            for &mode in modes {
                let copies = |bytes: usize| {
                    if mode == "cold" {
                        ((args.cold_bytes / bytes as f64).ceil() as usize).max(2)
                    } else {
                        1
                    }
                };
                let packed_copies: Vec<PackedTernary> = (0..copies(packed.size_bytes()))
                    .map(|_| packed.clone())
                    .collect();
                let f32_copies: Vec<Vec<f32>> =
                    (0..copies(f32_bytes)).map(|_| w_f32.clone()).collect();
                for threads in [1usize, 2] {
                    let options = MatmulOptions { kernel, threads };
                    let (mut pi, mut fi) = (0usize, 0usize);
                    let mut y = vec![0f32; m * n];
                    let mut ours = || {
                        let w = &packed_copies[pi % packed_copies.len()];
                        pi += 1;
                        let out = ternary_matmul(&x, m, w.view(), &options).expect("kernel");
                        std::hint::black_box(out);
                    };
                    let mut blas = || {
                        let w = &f32_copies[fi % f32_copies.len()];
                        fi += 1;
                        // SAFETY: the buffers have the sizes the BLAS calls are given.
                        unsafe {
                            openblas_set_num_threads(threads as i32);
                            if m == 1 {
                                cblas_sgemv(
                                    CBLAS_LAYOUT::CblasRowMajor,
                                    CBLAS_TRANSPOSE::CblasNoTrans,
                                    n as i32,
                                    k as i32,
                                    1.0,
                                    w.as_ptr(),
                                    k as i32,
                                    x.as_ptr(),
                                    1,
                                    0.0,
                                    y.as_mut_ptr(),
                                    1,
                                );
                            } else {
                                cblas_sgemm(
                                    CBLAS_LAYOUT::CblasRowMajor,
                                    CBLAS_TRANSPOSE::CblasNoTrans,
                                    CBLAS_TRANSPOSE::CblasTrans,
                                    m as i32,
                                    n as i32,
                                    k as i32,
                                    1.0,
                                    x.as_ptr(),
                                    k as i32,
                                    w.as_ptr(),
                                    k as i32,
                                    0.0,
                                    y.as_mut_ptr(),
                                    n as i32,
                                );
                            }
                        }
                        std::hint::black_box(&y);
                    };
                    // Burn's matmul runs hot and on its own thread pool: once, with threads = 1.
                    let with_burn = mode == "hot" && threads == 1;
                    let mut burn = || {
                        let out = x_burn.clone().matmul(w_burn.clone());
                        std::hint::black_box(out.into_data());
                    };
                    // The bound of a GEMV: reading its packed weights once, same copies, same
                    // rotation, same threads.
                    let mut si = 0usize;
                    let mut read = || {
                        let w = &packed_copies[si % packed_copies.len()];
                        si += 1;
                        std::hint::black_box(stream(w.words(), threads));
                    };
                    let (stats, names): (Vec<Stats>, &[&str]) = if with_burn {
                        let stats =
                            interleaved(args.samples, &mut [&mut ours, &mut blas, &mut burn]);
                        (stats, &["ternary", "blas-f32", "burn-flex-f32"])
                    } else if mode == "cold" {
                        let stats =
                            interleaved(args.samples, &mut [&mut ours, &mut blas, &mut read]);
                        (stats, &["ternary", "blas-f32", "stream"])
                    } else {
                        (
                            interleaved(args.samples, &mut [&mut ours, &mut blas]),
                            &["ternary", "blas-f32"],
                        )
                    };
                    let (ours_s, blas_s) = (stats[0].median_s, stats[1].median_s);
                    let at = |name: &str| {
                        names
                            .iter()
                            .position(|v| *v == name)
                            .map(|i| stats[i].median_s)
                    };
                    let (burn_s, stream_s) = (at("burn-flex-f32"), at("stream"));
                    let packed_bytes = packed.size_bytes();
                    for (s, &name) in stats.iter().zip(names) {
                        let t = s.median_s;
                        let bytes = if matches!(name, "ternary" | "stream") {
                            packed_bytes
                        } else {
                            f32_bytes
                        };
                        records.push(Record {
                            n,
                            k,
                            m,
                            mode,
                            threads: if name == "burn-flex-f32" { 0 } else { threads },
                            variant: name,
                            stats: s.clone(),
                            weight_bytes: bytes,
                            weight_gb_per_s: bytes as f64 / t / 1e9,
                            g_weights_per_s: (n * k) as f64 / t / 1e9,
                            gmac_per_s: (m * n * k) as f64 / t / 1e9,
                            speedup_vs_blas: Some(blas_s / t),
                            speedup_vs_burn: burn_s.map(|b| b / t),
                            bound_fraction: (name == "ternary")
                                .then_some(stream_s)
                                .flatten()
                                .map(|r| r / t),
                        });
                    }
                    println!(
                        "{:>12} {:>4} {:>5} {:>3} {:>10.3} {:>10.3} {:>10} {:>7.2} {:>7} {:>8.1} {:>8.1} {:>8}",
                        format!("{n}x{k}"),
                        m,
                        mode,
                        threads,
                        ours_s * 1e3,
                        blas_s * 1e3,
                        burn_s.map_or("-".into(), |b| format!("{:.3}", b * 1e3)),
                        blas_s / ours_s,
                        burn_s.map_or("-".into(), |b| format!("{:.2}", b / ours_s)),
                        packed_bytes as f64 / ours_s / 1e9,
                        (n * k) as f64 / ours_s / 1e9,
                        stream_s.map_or("-".into(), |r| format!("{:.0} %", 100.0 * r / ours_s)),
                    );
                }
            }
        }
    }
    let load_after = load_average();
    println!("\nload average before {load_before:.2}, after {load_after:.2}");
    println!(
        "{:>12} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "N x K", "f32 B", "packed B", "base-3 B", "x packed", "x base3"
    );
    for s in &sizes {
        println!(
            "{:>12} {:>12} {:>12} {:>12} {:>8.2} {:>8.2}",
            format!("{}x{}", s.n, s.k),
            s.f32_bytes,
            s.packed_bytes,
            s.base3_file_bytes,
            s.packed_ratio,
            s.base3_ratio
        );
    }
    let report = Report {
        kernel: kernel.name(),
        samples: args.samples,
        load_average_before: load_before,
        load_average_after: load_after,
        noisy: load_before > 1.0 || load_after > 1.0,
        records,
        sizes,
    };
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
