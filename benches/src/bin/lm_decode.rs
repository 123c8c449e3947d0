//! `lm-decode`: token-by-token generation of a BitNet language model with packed ternary
//! weights (the packed CPU kernels) against the same model in f32 (Burn's matmul), on Flex:
//! greedy decoding through the KV cache, variants interleaved, medians of at least 21 samples.
//! Random weights: the speed does not depend on them. Threads: set `RAYON_NUM_THREADS` (the
//! packed kernels and Flex's matmul both run on rayon's pool).
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release -p bitnet-qat-benches --bin lm-decode -- --json lm-decode-1t.json
//! ```

use std::path::PathBuf;

use bitnet_qat::infer::{pack, record_bytes};
use bitnet_qat::lm::{BitNetLmConfig, Sampling, generate};
use bitnet_qat_benches::{interleaved, load_average, write_atomic};
use burn::module::Module;
use burn::tensor::Device;
use clap::Parser;
use serde::Serialize;

/// Measure packed against f32 decoding.
#[derive(Parser, Debug)]
struct Args {
    /// Width of the model.
    #[arg(long, default_value_t = 1024)]
    d_model: usize,
    /// Decoder blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Query (and key/value) heads.
    #[arg(long, default_value_t = 16)]
    heads: usize,
    /// Feed-forward width (default 8/3 of the width, a multiple of 64).
    #[arg(long)]
    d_ff: Option<usize>,
    /// Vocabulary (a byte-level one by default).
    #[arg(long, default_value_t = 256)]
    vocab: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 16)]
    prompt: usize,
    /// Generated tokens per sample.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Samples per variant.
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Variant {
    name: &'static str,
    weight_bytes: usize,
    median_s: f64,
    p10_s: f64,
    p90_s: f64,
    tokens_per_s: f64,
}

#[derive(Serialize)]
struct Report {
    d_model: usize,
    layers: usize,
    d_ff: usize,
    vocab: usize,
    prompt: usize,
    tokens: usize,
    samples: usize,
    rayon_threads: String,
    load_before: f64,
    load_after: f64,
    variants: Vec<Variant>,
    packed_speedup: f64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex();
    let d_ff = args
        .d_ff
        .unwrap_or_else(|| (args.d_model * 8 / 3).div_ceil(64) * 64);
    let config = BitNetLmConfig::new(args.vocab, args.d_model, args.layers, args.heads, d_ff)
        .with_max_seq_len(args.prompt + args.tokens);
    let ternary = config.init(&device)?.valid();
    let packed = pack(&ternary)?;
    drop(ternary);
    let full = config
        .clone()
        .with_weight_quant(None)
        .with_activation_quant(None)
        .init(&device)?
        .valid();
    let prompt: Vec<usize> = (0..args.prompt)
        .map(|i| (i * 37 + 11) % args.vocab)
        .collect();
    let load_before = load_average();
    let run = |lm: &bitnet_qat::lm::BitNetLm| {
        let out = generate(lm, &prompt, args.tokens, Sampling::Greedy, 0).expect("generation");
        std::hint::black_box(out);
    };
    let stats = interleaved(
        args.samples,
        &mut [&mut || run(&full), &mut || run(&packed)],
    );
    let load_after = load_average();
    let bytes = [record_bytes(full.clone())?, record_bytes(packed.clone())?];
    let names = ["f32 (Burn matmul)", "packed ternary (int8 kernels)"];
    let variants: Vec<Variant> = stats
        .iter()
        .zip(names)
        .zip(bytes)
        .map(|((s, name), weight_bytes)| Variant {
            name,
            weight_bytes,
            median_s: s.median_s,
            p10_s: s.p10_s,
            p90_s: s.p90_s,
            tokens_per_s: args.tokens as f64 / s.median_s,
        })
        .collect();
    let report = Report {
        d_model: args.d_model,
        layers: args.layers,
        d_ff,
        vocab: args.vocab,
        prompt: args.prompt,
        tokens: args.tokens,
        samples: args.samples,
        rayon_threads: std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into()),
        load_before,
        load_after,
        packed_speedup: variants[1].tokens_per_s / variants[0].tokens_per_s,
        variants,
    };
    println!(
        "BitNet LM decode, width {}, {} blocks, d_ff {}, vocab {}: prompt {} + {} tokens, {} samples, \
         RAYON_NUM_THREADS={}, load {:.2} -> {:.2}",
        report.d_model,
        report.layers,
        report.d_ff,
        report.vocab,
        report.prompt,
        report.tokens,
        report.samples,
        report.rayon_threads,
        load_before,
        load_after
    );
    println!("| variant | record (B) | median (s) | p10–p90 (s) | tokens/s |");
    println!("|---|---:|---:|---:|---:|");
    for v in &report.variants {
        println!(
            "| {} | {} | {:.3} | {:.3}–{:.3} | {:.1} |",
            v.name, v.weight_bytes, v.median_s, v.p10_s, v.p90_s, v.tokens_per_s
        );
    }
    println!("packed / f32 tokens/s: {:.2}×", report.packed_speedup);
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    Ok(())
}
