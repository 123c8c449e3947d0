//! `dropin-forward`: a burn-nn model against the same model built from the drop-in layers,
//! trained as W1.58A8 and packed (`infer::pack`: the `Linear`s run the int8 × ternary kernels) —
//! forward time at batch 1 and 64 on Flex with 1 and 2 threads, and the size of the saved model.
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin dropin-forward -- --json dropin-forward.json
//! ```
//!
//! The model is an MLP 784-H-H-10 (H = `--hidden`, 1024 by default) of burn-nn `Linear`s with
//! biases; the drop-in model is the same with `bitnet_qat::nn::Linear` (BitNet b1.58: int8
//! activations per token, ternary weights). Weights are random: the time of a forward pass does
//! not depend on them. Variants are interleaved in one process, each in a rayon pool of its
//! thread count (Flex and the packed kernels both run in it); medians of `--samples` calls.

use std::path::PathBuf;

use bitnet_qat::infer::{pack, record_bytes};
use bitnet_qat_benches::{Stats, interleaved, load_average, write_atomic};
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use serde::Serialize;

/// Measure the packed drop-in model against the burn-nn model.
#[derive(Parser, Debug)]
struct Args {
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Samples per variant.
    #[arg(long, default_value_t = 41)]
    samples: usize,
    /// Width of the two hidden layers.
    #[arg(long, default_value_t = 1024)]
    hidden: usize,
}

#[derive(Module, Debug)]
struct FloatMlp {
    layers: Vec<burn::nn::Linear>,
}

#[derive(Module, Debug)]
struct DropInMlp {
    layers: Vec<bitnet_qat::nn::Linear>,
}

fn forward(layers: &[impl Fn(Tensor<2>) -> Tensor<2>], x: Tensor<2>) -> Tensor<2> {
    let last = layers.len() - 1;
    layers.iter().enumerate().fold(x, |x, (i, layer)| {
        let y = layer(x);
        if i < last { relu(y) } else { y }
    })
}

/// One forward pass of `layers` on `x` in `pool`, to the end of its device work.
fn run(
    pool: &rayon::ThreadPool,
    layers: &[impl Fn(Tensor<2>) -> Tensor<2> + Sync],
    x: &Tensor<2>,
    device: &Device,
) {
    pool.install(|| {
        let y = forward(layers, x.clone());
        device.sync().expect("device sync");
        drop(y);
    })
}

#[derive(Serialize)]
struct Row {
    batch: usize,
    threads: usize,
    float: Stats,
    packed: Stats,
    /// `float / packed` median time: above 1, the packed model is faster.
    speedup: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    hidden: usize,
    samples: usize,
    float_bytes: usize,
    packed_bytes: usize,
    size_ratio: f64,
    load_average_before: f64,
    load_average_after: f64,
    rows: Vec<Row>,
}

/// The CPU's model name, family and model numbers (`/proc/cpuinfo`).
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} (family {}, model {}, avx512_vnni: {})",
        field("model name"),
        field("cpu family"),
        field("model\t"),
        info.contains("avx512_vnni")
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let load_before = load_average();
    let device = Device::flex();
    device.seed(7);
    let sizes = [784, args.hidden, args.hidden, 10];
    let float = FloatMlp {
        layers: sizes
            .windows(2)
            .map(|w| burn::nn::LinearConfig::new(w[0], w[1]).init(&device))
            .collect(),
    };
    let dropin = DropInMlp {
        layers: float
            .layers
            .iter()
            .map(|l| {
                bitnet_qat::nn::Linear::from_float(
                    l.clone(),
                    &bitnet_qat::nn::QuantScheme::bitnet(),
                )
            })
            .collect::<bitnet_qat::Result<_>>()?,
    };
    let packed = pack(&dropin)?;
    let float_bytes = record_bytes(float.clone())?;
    let packed_bytes = record_bytes(packed.clone())?;
    let mut rows = Vec::new();
    for batch in [1, 64] {
        let x = Tensor::<2>::random([batch, 784], Distribution::Uniform(0.0, 1.0), &device);
        // The packed model computes what the QAT model computes.
        let valid = dropin.valid();
        let same = forward(
            &packed
                .layers
                .iter()
                .map(|l| |x| l.forward(x))
                .collect::<Vec<_>>(),
            x.clone(),
        )
        .into_data()
            == forward(
                &valid
                    .layers
                    .iter()
                    .map(|l| |x| l.forward(x))
                    .collect::<Vec<_>>(),
                x.clone(),
            )
            .into_data();
        assert!(same, "the packed model's outputs differ from valid()'s");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let float_layers: Vec<_> = float.layers.iter().map(|l| |x| l.forward(x)).collect();
            let packed_layers: Vec<_> = packed.layers.iter().map(|l| |x| l.forward(x)).collect();
            let stats = interleaved(
                args.samples,
                &mut [&mut || run(&pool, &float_layers, &x, &device), &mut || {
                    run(&pool, &packed_layers, &x, &device)
                }],
            );
            let speedup = stats[0].median_s / stats[1].median_s;
            println!(
                "batch {batch:>2} | {threads} thread(s) | burn-nn f32 {:.3} ms | packed W1.58A8 {:.3} ms | {speedup:.2}x",
                stats[0].median_s * 1e3,
                stats[1].median_s * 1e3
            );
            rows.push(Row {
                batch,
                threads,
                float: stats[0].clone(),
                packed: stats[1].clone(),
                speedup,
            });
        }
    }
    let report = Report {
        cpu: cpu(),
        hidden: args.hidden,
        samples: args.samples,
        float_bytes,
        packed_bytes,
        size_ratio: float_bytes as f64 / packed_bytes as f64,
        load_average_before: load_before,
        load_average_after: load_average(),
        rows,
    };
    println!(
        "{} | MLP 784-{h}-{h}-10 | saved: {} bytes f32, {} bytes packed ({:.1}x smaller) | load {:.2} -> {:.2}",
        report.cpu,
        report.float_bytes,
        report.packed_bytes,
        report.size_ratio,
        report.load_average_before,
        report.load_average_after,
        h = args.hidden
    );
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
