//! `train-memory`: peak heap memory and time of a BitNet LM training step (forward,
//! cross-entropy, backward, Adam) on Flex, without and with Burn's gradient checkpointing
//! (`Device::autodiff().gradient_checkpointing()`, the balanced strategy: memory-bound ops
//! are recomputed in the backward pass instead of kept). The model is built on each device,
//! as checkpointing requires (the tensors of one op must share the strategy).
//!
//! ```text
//! cargo run --release --bin train-memory -- --json train-memory.json
//! ```
//!
//! Memory is the peak of live heap bytes during a step above the level before it (a counting
//! global allocator: Flex allocates every tensor buffer through it); the variants are
//! interleaved, at least 21 samples each, after a warm-up step.

use std::path::PathBuf;

use bitnet_qat::lm::{BitNetLm, BitNetLmConfig};
use bitnet_qat_benches::heap::{Counting, live, peak_during};
use bitnet_qat_benches::{Stats, interleaved, load_average, write_atomic};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use serde::Serialize;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Measure the memory of an LM training step with and without gradient checkpointing.
#[derive(Parser, Debug)]
struct Args {
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Vocabulary size.
    #[arg(long, default_value_t = 256)]
    vocab: usize,
    /// Model width.
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Feed-forward width (default: 8/3 of the width, a multiple of 64).
    #[arg(long)]
    d_ff: Option<usize>,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Samples per variant (at least 21 for reported figures).
    #[arg(long, default_value_t = 21)]
    samples: usize,
}

#[derive(Serialize)]
struct Variant {
    name: &'static str,
    peak_bytes: usize,
    stats: Stats,
}

#[derive(Serialize)]
struct Report {
    vocab: usize,
    d_model: usize,
    layers: usize,
    heads: usize,
    d_ff: usize,
    seq: usize,
    batch: usize,
    parameter_bytes: usize,
    samples: usize,
    load_before: f64,
    load_after: f64,
    variants: Vec<Variant>,
    /// Peak without checkpointing / peak with it.
    memory_ratio: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let d_ff = args
        .d_ff
        .unwrap_or_else(|| (args.d_model * 8 / 3).div_ceil(64) * 64);
    let config = BitNetLmConfig::new(args.vocab, args.d_model, args.layers, args.heads, d_ff)
        .with_max_seq_len(args.seq);
    let names = ["plain", "checkpointed"];
    let devices = [
        Device::flex().autodiff(),
        Device::flex().autodiff().gradient_checkpointing(),
    ];
    let before_models = live();
    let mut models: Vec<Option<BitNetLm>> = Vec::new();
    for device in &devices {
        models.push(Some(config.init(device)?));
    }
    let parameter_bytes = (live() - before_models) / 2;
    let mut optims: Vec<_> = names.iter().map(|_| AdamConfig::new().init()).collect();
    // Next-token targets of a fixed token stream.
    let n = args.batch * (args.seq + 1);
    let ids: Vec<i64> = (0..n)
        .map(|i| ((i * 37 + 11) % args.vocab) as i64)
        .collect();
    let (b, s, v) = (args.batch, args.seq, args.vocab);
    let loss_fn = CrossEntropyLossConfig::new().init(&devices[0]);
    // The first call of each variant is `interleaved`'s warm-up (it allocates the Adam
    // moments): the peaks are those of the steps after it.
    let mut peaks = [0usize; 2];
    let mut calls = [0usize; 2];
    let mut step = |i: usize| {
        let device = &devices[i];
        let model = models[i].take().expect("model");
        let tokens: Tensor<2, Int> =
            Tensor::from_data(TensorData::new(ids.clone(), [b, s + 1]), device);
        let (model, peak) = peak_during(|| {
            let input = tokens.clone().slice([0..b, 0..s]);
            let target = tokens.clone().slice([0..b, 1..s + 1]).reshape([b * s]);
            let logits = model.forward(input).reshape([b * s, v]);
            let loss = loss_fn.forward(logits, target);
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            optims[i].step(1e-3, model, grads)
        });
        if calls[i] > 0 {
            peaks[i] = peaks[i].max(peak);
        }
        calls[i] += 1;
        models[i] = Some(model);
    };
    let step = std::cell::RefCell::new(&mut step);
    let load_before = load_average();
    let stats = interleaved(
        args.samples,
        &mut [&mut || (step.borrow_mut())(0), &mut || {
            (step.borrow_mut())(1)
        }],
    );
    let load_after = load_average();
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!(
        "BitNet LM d={} layers={} heads={} d_ff={} vocab={} | batch {} x {} tokens | parameters {:.1} MiB | load {load_before:.2} -> {load_after:.2}",
        args.d_model,
        args.layers,
        args.heads,
        d_ff,
        args.vocab,
        args.batch,
        args.seq,
        mib(parameter_bytes)
    );
    println!("{:>14} {:>12} {:>10}", "variant", "peak MiB", "step ms");
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name:>14} {:>12.1} {:>10.1}",
            mib(peaks[i]),
            stats[i].median_s * 1e3
        );
    }
    let memory_ratio = peaks[0] as f64 / peaks[1].max(1) as f64;
    println!("peak without / with checkpointing: {memory_ratio:.2}x");
    let report = Report {
        vocab: args.vocab,
        d_model: args.d_model,
        layers: args.layers,
        heads: args.heads,
        d_ff,
        seq: args.seq,
        batch: args.batch,
        parameter_bytes,
        samples: args.samples,
        load_before,
        load_after,
        variants: names
            .iter()
            .zip(peaks)
            .zip(stats)
            .map(|((name, peak_bytes), stats)| Variant {
                name,
                peak_bytes,
                stats,
            })
            .collect(),
        memory_ratio,
    };
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
