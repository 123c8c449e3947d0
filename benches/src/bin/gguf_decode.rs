//! `gguf-decode`: greedy generation from one GGUF file by this crate's packed model
//! ([`bitnet_qat::export::import_gguf`], the packed CPU kernels on Flex) and by llama.cpp
//! (llama-cpp-python in the export tests' virtual environment, `benches/python/llama_decode.py`,
//! one process that loads the file once), side by side: the same prompt and number of tokens,
//! samples interleaved (ours, llama.cpp, ours, ...), medians, for each thread count (our rayon
//! pool and llama.cpp's `n_threads`).
//!
//! Without `--gguf` it exports a random SiLU model of the given shape first (the speed does not
//! depend on the weights). It also compares the two engines' logits of every position of the
//! prompt followed by our greedy tokens (the largest difference against
//! `1e-3 · (1 + max|logit|)`, and whether the argmax agrees everywhere).
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin gguf-decode -- --json benches/results/gguf-decode.json
//! cargo run --release -p bitnet-qat-benches --bin gguf-decode -- --gguf model.gguf
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use bitnet_qat::export::{GgufTernary, export_gguf, import_gguf};
use bitnet_qat::lm::CharTokenizer;
use bitnet_qat::lm::{BitNetLmConfig, FfnActivation, Sampling, generate};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat_benches::{Stats, load_average, write_atomic};
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::Parser;
use serde::Serialize;

/// Measure our packed generation against llama.cpp on the same GGUF file.
#[derive(Parser, Debug)]
struct Args {
    /// The GGUF file (default: a random model of the shape below, exported first).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// Width of the random model.
    #[arg(long, default_value_t = 1024)]
    d_model: usize,
    /// Blocks of the random model.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Heads of the random model.
    #[arg(long, default_value_t = 16)]
    heads: usize,
    /// Feed-forward width of the random model (a multiple of 256).
    #[arg(long, default_value_t = 2816)]
    d_ff: usize,
    /// Prompt tokens.
    #[arg(long, default_value_t = 16)]
    prompt: usize,
    /// Generated tokens per sample.
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    /// Seed of the random model.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Samples per engine and thread count.
    #[arg(long, default_value_t = 21)]
    samples: usize,
    /// Thread counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// The Python of the export tests' environment (default: $BITNET_QAT_VENV or
    /// ~/.cache/bitnet-qat-venv, bin/python).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Serialize)]
struct Row {
    threads: usize,
    ours: Stats,
    llama_cpp: Stats,
    ours_tokens_per_s: f64,
    llama_cpp_tokens_per_s: f64,
    ratio: f64,
    same_tokens: bool,
}

/// The two engines' logits of one sequence.
#[derive(Serialize)]
struct Agreement {
    positions: usize,
    max_abs_logit: f32,
    max_difference: f32,
    tolerance: f32,
    /// Positions whose largest difference exceeds the tolerance.
    positions_over_tolerance: Vec<usize>,
    /// The largest difference of the other positions.
    max_difference_elsewhere: f32,
    /// The largest difference of each position.
    per_position: Vec<f32>,
    same_argmax: bool,
}

#[derive(Serialize)]
struct Report {
    gguf: String,
    gguf_bytes: u64,
    d_model: usize,
    layers: usize,
    d_ff: usize,
    vocab: usize,
    prompt: usize,
    tokens: usize,
    samples: usize,
    load_before: f64,
    load_after: f64,
    logits: Agreement,
    rows: Vec<Row>,
}

/// llama.cpp in a Python process: one request per sample.
struct Llama {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Llama {
    fn start(python: &Path, gguf: &Path, threads: usize, context: usize) -> std::io::Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/llama_decode.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(gguf)
            .arg(threads.to_string())
            .arg(context.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut ready = String::new();
        out.read_line(&mut ready)?;
        if !ready.contains("ready") {
            return Err(std::io::Error::other(format!(
                "llama_decode.py did not start: {ready:?}"
            )));
        }
        Ok(Self { child, out })
    }

    /// One request (`n` new tokens after `tokens`; 0 for the logits of `tokens`) and its
    /// answer.
    fn request(&mut self, tokens: &[usize], n: usize) -> std::io::Result<serde_json::Value> {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{}\t{n}", serde_json::to_string(tokens)?)?;
        stdin.flush()?;
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        serde_json::from_str(&line)
            .map_err(|e| std::io::Error::other(format!("llama_decode.py answered {line:?}: {e}")))
    }

    /// The logits `[len][vocab]` of every position of `tokens`.
    fn logits(&mut self, tokens: &[usize]) -> std::io::Result<Vec<Vec<f32>>> {
        let v = self.request(tokens, 0)?;
        let rows = v["logits"]
            .as_array()
            .ok_or_else(|| std::io::Error::other(format!("no logits in {v}")))?;
        Ok(rows
            .iter()
            .map(|r| {
                r.as_array()
                    .map(|r| {
                        r.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Seconds and tokens of one greedy run.
    fn run(&mut self, prompt: &[usize], n: usize) -> std::io::Result<(f64, Vec<usize>)> {
        let v = self.request(prompt, n)?;
        let seconds = v["seconds"]
            .as_f64()
            .ok_or_else(|| std::io::Error::other(format!("no seconds in {v}")))?;
        let tokens = v["tokens"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_u64())
                    .map(|t| t as usize)
                    .collect()
            })
            .unwrap_or_default();
        Ok((seconds, tokens))
    }
}

impl Drop for Llama {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Our logits of `tokens` against llama.cpp's.
fn agreement(
    lm: &bitnet_qat::lm::BitNetLm,
    tokens: &[usize],
    theirs: &[Vec<f32>],
    device: &Device,
) -> Result<Agreement, Box<dyn std::error::Error>> {
    let ids: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
    let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, tokens.len()]), device);
    let ours = lm
        .try_forward(x)?
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| format!("{e:?}"))?;
    let vocab = ours.len() / tokens.len();
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j]));
    let max_abs_logit = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tolerance = 1e-3 * (1.0 + max_abs_logit);
    let mut same_argmax = theirs.len() == tokens.len();
    let (mut max_difference, mut max_difference_elsewhere) = (0f32, 0f32);
    let mut positions_over_tolerance = Vec::new();
    let mut per_position = Vec::with_capacity(tokens.len());
    for (t, (row, mine)) in theirs.iter().zip(ours.chunks(vocab)).enumerate() {
        same_argmax &= row.len() == vocab && argmax(row) == argmax(mine);
        let diff = row
            .iter()
            .zip(mine)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        max_difference = max_difference.max(diff);
        per_position.push(diff);
        if diff > tolerance {
            positions_over_tolerance.push(t);
        } else {
            max_difference_elsewhere = max_difference_elsewhere.max(diff);
        }
    }
    Ok(Agreement {
        positions: tokens.len(),
        max_abs_logit,
        max_difference,
        tolerance,
        positions_over_tolerance,
        max_difference_elsewhere,
        per_position,
        same_argmax,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = Device::flex();
    let python = args
        .python
        .clone()
        .or_else(|| {
            std::env::var_os("BITNET_QAT_VENV")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/bitnet-qat-venv"))
                })
                .map(|v| v.join("bin/python"))
        })
        .ok_or("no Python environment: run scripts/install-python.sh or pass --python")?;
    let gguf = match &args.gguf {
        Some(path) => path.clone(),
        None => {
            let text: String = (0u8..=255)
                .filter(|b| b.is_ascii_graphic() || *b == b' ' || *b == b'\n')
                .map(char::from)
                .collect();
            let tokenizer = CharTokenizer::from_text(&text);
            let config = BitNetLmConfig::new(
                tokenizer.vocab_size(),
                args.d_model,
                args.layers,
                args.heads,
                args.d_ff,
            )
            .with_activation(FfnActivation::Silu)
            // What llama.cpp computes: int8 activations per block of 256.
            .with_activation_quant(Some(
                QuantConfig::activation_int8()
                    .with_granularity(Granularity::PerGroup { size: 256 }),
            ))
            .with_max_seq_len(args.prompt + args.tokens + 8);
            device.seed(args.seed);
            let lm = config.init(&device)?;
            let path =
                std::env::temp_dir().join(format!("gguf-decode-{}.gguf", std::process::id()));
            export_gguf(&lm, &config, &tokenizer, &path, GgufTernary::Tq2_0)?;
            path
        }
    };
    let imported = import_gguf(&gguf)?;
    let config = imported.config().clone();
    let lm = imported.packed(&device)?;
    let prompt: Vec<usize> = (0..args.prompt)
        .map(|i| 1 + (i * 37 + 11) % (config.vocab_size - 1))
        .collect();
    let context = args.prompt + args.tokens + 8;
    let logits = {
        let mut llama = Llama::start(&python, &gguf, 1, context)?;
        let mut sequence = prompt.clone();
        sequence.extend(generate(&lm, &prompt, args.tokens, Sampling::Greedy, 0)?);
        agreement(&lm, &sequence, &llama.logits(&sequence)?, &device)?
    };
    let load_before = load_average();
    let mut rows = Vec::new();
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        let mut llama = Llama::start(&python, &gguf, threads, context)?;
        let ours = || pool.install(|| generate(&lm, &prompt, args.tokens, Sampling::Greedy, 0));
        // One warm-up each.
        let our_tokens = ours()?;
        let (_, their_tokens) = llama.run(&prompt, args.tokens)?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..args.samples {
            let start = Instant::now();
            std::hint::black_box(ours()?);
            a.push(start.elapsed().as_secs_f64());
            b.push(llama.run(&prompt, args.tokens)?.0);
        }
        let (ours, llama_cpp) = (Stats::from_samples(a), Stats::from_samples(b));
        let per_s = |s: &Stats| args.tokens as f64 / s.median_s;
        rows.push(Row {
            threads,
            ours_tokens_per_s: per_s(&ours),
            llama_cpp_tokens_per_s: per_s(&llama_cpp),
            ratio: llama_cpp.median_s / ours.median_s,
            same_tokens: our_tokens == their_tokens,
            ours,
            llama_cpp,
        });
    }
    let load_after = load_average();
    let report = Report {
        gguf_bytes: std::fs::metadata(&gguf)?.len(),
        gguf: gguf.display().to_string(),
        d_model: config.d_model,
        layers: config.n_layers,
        d_ff: config.d_ff,
        vocab: config.vocab_size,
        prompt: args.prompt,
        tokens: args.tokens,
        samples: args.samples,
        load_before,
        load_after,
        logits,
        rows,
    };
    println!(
        "GGUF decode, {} ({} B): width {}, {} blocks, d_ff {}, vocab {}; prompt {} + {} tokens, \
         {} samples, load {:.2} -> {:.2}",
        report.gguf,
        report.gguf_bytes,
        report.d_model,
        report.layers,
        report.d_ff,
        report.vocab,
        report.prompt,
        report.tokens,
        report.samples,
        load_before,
        load_after
    );
    println!(
        "| threads | ours tokens/s | llama.cpp tokens/s | ours / llama.cpp | same greedy tokens |"
    );
    println!("|---:|---:|---:|---:|---|");
    for r in &report.rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2}× | {} |",
            r.threads, r.ours_tokens_per_s, r.llama_cpp_tokens_per_s, r.ratio, r.same_tokens
        );
    }
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    if args.gguf.is_none() {
        std::fs::remove_file(&gguf)?;
    }
    Ok(())
}
