//! The prepared GPU check: the CubeCL ternary kernels against the CPU kernels on random shapes
//! (bit-exact integer products, 1e-5 relative otherwise, f16 activations within one f16
//! rounding), the quantizers against Flex at real layer sizes (every element, both the portable
//! path and the fused kernels: [`bitnet_qat_benches::quant_table`]), then ternary GEMV/GEMM
//! against Burn's f16 and f32 `matmul` on the same device, as a table (and JSON).
//!
//! ```text
//! scripts/gpu-check.sh                       # builds with cuda, runs this on Device::cuda(0)
//! cargo run --release -p bitnet-qat-benches --features wgpu --bin gpu-check -- --device wgpu
//! ```

use std::time::Instant;

use bitnet_kernels::burn_ext::{
    ScaleKind, ternary_matmul, ternary_matmul_float, ternary_matmul_with_dot,
};
use bitnet_kernels::int8_dot::Int8Dot;
use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use bitnet_qat_benches::quant_table::{self, Cell};
use bitnet_qat_benches::{Gpu, MS, SHAPES, Stats, load_average};
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorCreationOptions, TensorData};
use clap::Parser;
use serde::Serialize;

/// Correctness of the GPU kernels against the CPU, then their speed against Burn's matmul.
#[derive(Parser, Debug)]
struct Args {
    /// Which GPU runtime.
    #[arg(long, value_enum, default_value = "cuda")]
    device: Gpu,
    /// Fewer shapes and samples.
    #[arg(long)]
    quick: bool,
    /// Only the kernel and quantizer checks, no timings (for a software adapter such as
    /// lavapipe).
    #[arg(long)]
    check_only: bool,
    /// Only the timings (after a `--check-only` run of the same build).
    #[arg(long, conflicts_with = "check_only")]
    skip_checks: bool,
    /// Time these weight shapes `NxK` instead of the benchmark's (repeat the flag).
    #[arg(long = "shape", value_parser = parse_shape)]
    shapes: Vec<(usize, usize)>,
    /// Time these activation row counts M instead of the benchmark's (repeat the flag).
    #[arg(long = "m")]
    ms: Vec<usize>,
    /// Samples per variant (interleaved, medians).
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `NxK`, e.g. `4096x11008`.
fn parse_shape(s: &str) -> Result<(usize, usize), String> {
    let (n, k) = s
        .split_once(['x', 'X', '×'])
        .ok_or_else(|| format!("{s:?}: expected NxK, e.g. 4096x11008"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| format!("{s:?}: {v:?} is not a positive integer"))
    };
    Ok((parse(n)?, parse(k)?))
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Packed random ternary weights `[rows, cols]` as tensors on `device`.
fn weights(
    rows: usize,
    cols: usize,
    kind: ScaleKind,
    seed: u64,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<1>) {
    let mut rng = Lcg(seed);
    let w: Vec<i8> = (0..rows * cols)
        .map(|_| (rng.next() * 3.0) as i8 - 1)
        .collect();
    let (scales, packed) = match kind {
        ScaleKind::PerTensor => (vec![1.0], TernaryScales::PerTensor(1.0)),
        ScaleKind::PerRow => {
            let s: Vec<f32> = (0..rows).map(|_| 0.1 + rng.next()).collect();
            (s.clone(), TernaryScales::PerRow(s))
        }
        ScaleKind::PerGroup(group) => {
            let s: Vec<f32> = (0..rows * cols / group).map(|_| 0.1 + rng.next()).collect();
            (s.clone(), TernaryScales::PerGroup { group, scales: s })
        }
    };
    let p = PackedTernary::pack(&w, rows, cols, packed).expect("valid shape");
    let words = p.words().to_vec();
    let per_row = words.len() / rows;
    let codes = Tensor::<2, Int>::from_data(
        TensorData::new(words, [rows, per_row]),
        TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
    );
    let n = scales.len();
    (
        codes,
        Tensor::from_data(TensorData::new(scales, [n]), device),
    )
}

fn read(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().expect("f32")
}

/// Runs the correctness cases; returns (passed, failed).
fn check(gpu: &Device) -> (usize, usize) {
    let cpu = Device::flex();
    let shapes = [
        (1, 37, 300),
        (1, 64, 256),
        (5, 19, 777),
        (9, 130, 1000),
        (4, 8, 2),
        (33, 200, 4096),
        // Many rows: the dense routes (unpacked weights, Burn's matmul).
        (70, 25, 768),
        (300, 40, 512),
        // Long rows (K past 2^24 / 127, the packed format's longest K) and grids past 65,535
        // cubes (output-row blocks × activation tiles, below the dense routes).
        (1, 16, 140_032),
        (2, 8, 262_143),
        (160, 16_392, 256),
        (63, 32_776, 256),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (i, &(m, rows, cols)) in shapes.iter().enumerate() {
        let mut kinds = vec![ScaleKind::PerTensor, ScaleKind::PerRow];
        if cols % 256 == 0 {
            kinds.push(ScaleKind::PerGroup(256));
        }
        for kind in kinds {
            let variants = [
                (true, true, false),
                (true, false, false),
                (false, false, false),
                (true, false, true),
                (false, false, true),
            ];
            for (int8, integer_x, half) in variants {
                if integer_x && kind != ScaleKind::PerTensor {
                    continue;
                }
                let mut rng = Lcg(1000 + i as u64);
                let x: Vec<f32> = (0..m * cols)
                    .map(|j| match (integer_x, j % cols) {
                        (true, 0) => 127.0,
                        (true, _) => (rng.next() * 255.0).floor() - 127.0,
                        _ => (rng.next() - 0.5) * 4.0,
                    })
                    .collect();
                // f16: the GPU reads the activations in f16, the CPU the same values in f32.
                let x = if half {
                    read(
                        Tensor::<2>::from_data(TensorData::new(x, [m, cols]), gpu).cast(DType::F16),
                    )
                } else {
                    x
                };
                let result = |device: &Device| {
                    let (codes, scales) = weights(rows, cols, kind, i as u64, device);
                    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [m, cols]), device);
                    let xt = if half && device == gpu {
                        xt.cast(DType::F16)
                    } else {
                        xt
                    };
                    read(
                        if int8 {
                            ternary_matmul(xt, codes, scales, cols, kind)
                        } else {
                            ternary_matmul_float(xt, codes, scales, cols, kind)
                        }
                        .expect("operands of one product"),
                    )
                };
                let (want, got) = (result(&cpu), result(gpu));
                // Float sums in another order differ by ulps of Σ|terms| (see tests/integration/gpu.rs).
                let l1_max = x
                    .chunks(cols.max(1))
                    .map(|r| r.iter().map(|v| v.abs()).sum::<f32>())
                    .fold(0.0, f32::max);
                let ok = if integer_x {
                    want == got
                } else {
                    want.iter().zip(&got).all(|(a, b)| {
                        // f16 output: one more rounding, 2^-11 relative.
                        let rel = if half { 1e-3 } else { 1e-5 };
                        (a - b).abs() <= (rel * a.abs().max(1.0)).max(2e-6 * l1_max / 0.1)
                    })
                };
                let what = match (integer_x, int8, half) {
                    (true, _, _) => "int8 exact",
                    (_, true, false) => "int8",
                    (_, true, true) => "int8 from f16",
                    (_, false, false) => "f32 acts",
                    (_, false, true) => "f16 acts",
                };
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                    println!("FAIL {what} {kind:?} m={m} rows={rows} cols={cols}");
                }
            }
        }
    }
    (passed, failed)
}

#[derive(Debug, Serialize)]
struct Row {
    n: usize,
    k: usize,
    m: usize,
    /// int8 activations quantized from f32, f32 output, dot products as the runtime's default
    /// (`Int8Dot::Auto`: the faster of the two below where `dp4a` is a polyfill).
    ternary: Stats,
    /// The same, forced to `dp4a` (native or polyfilled).
    ternary_dp4a: Stats,
    /// The same, forced to the SWAR masks.
    ternary_swar: Stats,
    /// int8 activations quantized from f16, f16 output (the like-for-like of the f16 matmul).
    ternary_f16: Stats,
    /// f32 activations, no activation quantization.
    ternary_f32_acts: Stats,
    f16: Stats,
    f32: Stats,
    speedup_vs_f16: f64,
    speedup_vs_f32: f64,
    weight_gbs: f64,
}

fn time(
    samples: usize,
    device: &Device,
    reps: usize,
    variants: &mut [&mut dyn FnMut() -> Tensor<2>],
) -> Vec<Stats> {
    let run = |v: &mut dyn FnMut() -> Tensor<2>| {
        let outs: Vec<Tensor<2>> = (0..reps).map(|_| v()).collect();
        device.sync().expect("device sync");
        drop(outs);
    };
    for v in variants.iter_mut() {
        run(&mut **v);
    }
    let mut times = vec![Vec::new(); variants.len()];
    for _ in 0..samples {
        for (v, t) in variants.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            run(&mut **v);
            t.push(start.elapsed().as_secs_f64() / reps as f64);
        }
    }
    times.into_iter().map(Stats::from_samples).collect()
}

fn main() {
    let args = Args::parse();
    let gpu = args.device.device();
    let load = load_average();
    println!("device: {:?} ({:?}), load {load:.2}", gpu, args.device);
    let (passed, failed, quantizers) = if args.skip_checks {
        (0, 0, Vec::new())
    } else {
        let (passed, failed) = check(&gpu);
        println!("kernel checks against the CPU: {passed} passed, {failed} failed");
        let quantizers: Vec<Cell> = quant_table::measure(&gpu);
        (passed, failed, quantizers)
    };
    let quant_failed = quantizers.iter().filter(|c| c.failed()).count();
    if !args.skip_checks {
        println!(
            "quantizers against Flex: {} cells, {quant_failed} with more differing elements \
             than rounding ties explain",
            quantizers.len()
        );
    }
    // Which way `Int8Dot::Auto` forms the int8 dot products on this runtime.
    let auto_swar = Int8Dot::Auto.takes_swar(match args.device {
        Gpu::Cuda => "cuda",
        // The `wgpu` feature compiles WGSL whatever the platform's graphics API.
        Gpu::Wgpu => "wgpu<wgsl>",
        Gpu::Vulkan => "wgpu<spirv>",
    });
    let write_json = |rows: &[Row], done: bool| {
        let Some(path) = &args.json else { return };
        let json = serde_json::json!({
            "device": format!("{gpu:?}"),
            "int8_dot_default": if auto_swar { "swar" } else { "dp4a" },
            "checks_passed": passed,
            "checks_failed": failed,
            "quantizers_failed": quant_failed,
            "quantizers": quantizers,
            "load_before": load,
            "load_after": load_average(),
            "complete": done,
            "rows": rows,
        });
        bitnet_kernels::file::write_atomic(
            path,
            serde_json::to_string_pretty(&json)
                .expect("json")
                .as_bytes(),
        )
        .expect("write json");
        if done {
            println!("wrote {}", path.display());
        }
    };
    if args.check_only {
        write_json(&[], true);
        std::process::exit(if failed + quant_failed > 0 { 1 } else { 0 });
    }

    let shapes: Vec<(usize, usize)> = if !args.shapes.is_empty() {
        args.shapes.clone()
    } else if args.quick {
        vec![(4096, 11008), (11008, 4096)]
    } else {
        SHAPES.to_vec()
    };
    let ms: &[usize] = if !args.ms.is_empty() {
        &args.ms
    } else if args.quick {
        &[1, 512]
    } else {
        &MS
    };
    let samples = if args.quick {
        args.samples.min(11)
    } else {
        args.samples
    };
    println!(
        "int8 dot products by default: {}",
        if auto_swar { "SWAR masks" } else { "dp4a" }
    );
    println!(
        "\n| N×K | M | ternary int8 dp4a µs | ternary int8 SWAR µs | ternary int8 (f16 in/out) µs | ternary f32-acts µs | f16 matmul µs | f32 matmul µs | × f16 | × f32 | weights GB/s |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut rows = Vec::new();
    for &(n, k) in &shapes {
        let (codes, scales) = weights(n, k, ScaleKind::PerTensor, 1, &gpu);
        let w32 = Tensor::<2>::random([k, n], Distribution::Uniform(-1.0, 1.0), &gpu);
        let w16 = w32.clone().cast(DType::F16);
        for &m in ms {
            let x = Tensor::<2>::random([m, k], Distribution::Normal(0.0, 1.0), &gpu);
            let x16 = x.clone().cast(DType::F16);
            let reps = if m == 1 { 50 } else { 5 };
            // The int8 product with each way of forming the dot products.
            let int8 = |dot: Int8Dot| {
                ternary_matmul_with_dot(
                    x.clone(),
                    codes.clone(),
                    scales.clone(),
                    k,
                    ScaleKind::PerTensor,
                    dot,
                )
                .expect("operands of one product")
            };
            let stats = time(
                samples,
                &gpu,
                reps,
                &mut [
                    &mut || int8(Int8Dot::Dp4a),
                    &mut || int8(Int8Dot::Swar),
                    &mut || {
                        ternary_matmul(
                            x16.clone(),
                            codes.clone(),
                            scales.clone(),
                            k,
                            ScaleKind::PerTensor,
                        )
                        .expect("operands of one product")
                    },
                    &mut || {
                        ternary_matmul_float(
                            x.clone(),
                            codes.clone(),
                            scales.clone(),
                            k,
                            ScaleKind::PerTensor,
                        )
                        .expect("operands of one product")
                    },
                    &mut || x16.clone().matmul(w16.clone()),
                    &mut || x.clone().matmul(w32.clone()),
                ],
            );
            let [dp4a, swar, t16, tf, h, f]: [Stats; 6] = stats.try_into().expect("six variants");
            let t = if auto_swar {
                swar.clone()
            } else {
                dp4a.clone()
            };
            let row = Row {
                n,
                k,
                m,
                ternary_dp4a: dp4a,
                ternary_swar: swar,
                speedup_vs_f16: h.median_s / t16.median_s,
                speedup_vs_f32: f.median_s / t.median_s,
                weight_gbs: (n * k) as f64 / 4.0 / t.median_s / 1e9,
                ternary: t,
                ternary_f16: t16,
                ternary_f32_acts: tf,
                f16: h,
                f32: f,
            };
            println!(
                "| {n}×{k} | {m} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} |",
                row.ternary_dp4a.median_s * 1e6,
                row.ternary_swar.median_s * 1e6,
                row.ternary_f16.median_s * 1e6,
                row.ternary_f32_acts.median_s * 1e6,
                row.f16.median_s * 1e6,
                row.f32.median_s * 1e6,
                row.speedup_vs_f16,
                row.speedup_vs_f32,
                row.weight_gbs
            );
            rows.push(row);
            // After every row, so that a run cut short keeps what it measured.
            write_json(&rows, false);
        }
    }
    write_json(&rows, true);
    if failed > 0 {
        std::process::exit(1);
    }
}
