//! `fuzz-readers`: the fuzzer of `bitnet_qat_benches::fuzz` for many inputs, with the figures
//! a closing note asks for: inputs, inputs accepted, panics, seconds, and the process's peak
//! resident memory.
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin fuzz-readers -- --target packed-file --inputs 10000000
//! ```

use std::time::Instant;

use bitnet_qat_benches::fuzz::{quietly, run, targets};
use bitnet_qat_benches::write_atomic;
use clap::Parser;

/// Fuzzes the readers of untrusted bytes.
#[derive(Parser, Debug)]
struct Args {
    /// Which reader (`packed-file`, `idx`, `idx-gz`, `record`); all of them by default.
    #[arg(long)]
    target: Option<String>,
    /// Inputs per reader.
    #[arg(long, default_value_t = 10_000_000)]
    inputs: usize,
    /// The seed of the mutations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The process's peak resident memory in KiB (Linux `VmHWM`), or 0 where it cannot be read.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args = Args::parse();
    let chosen: Vec<_> = targets()
        .into_iter()
        .filter(|t| args.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if chosen.is_empty() {
        eprintln!("no target {:?}", args.target);
        std::process::exit(2);
    }
    println!(
        "| reader | inputs | accepted | panics | seconds | peak RSS (MiB) |\n|---|---|---|---|---|---|"
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for target in &chosen {
        let start = Instant::now();
        let report = quietly(|| run(target, args.inputs, args.seed));
        let seconds = start.elapsed().as_secs_f64();
        let peak_mib = peak_rss_kib() as f64 / 1024.0;
        println!(
            "| {} | {} | {} | {} | {seconds:.0} | {peak_mib:.1} |",
            report.target, report.inputs, report.accepted, report.panics
        );
        if let Some((input, message)) = &report.first_panic {
            eprintln!("first panic ({} bytes): {message}", input.len());
            failed = true;
        }
        rows.push(serde_json::json!({
            "report": report,
            "seconds": seconds,
            "peak_rss_mib": peak_mib,
        }));
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({ "seed": args.seed, "targets": rows });
        write_atomic(
            path,
            serde_json::to_string_pretty(&json)
                .expect("json")
                .as_bytes(),
        )
        .expect("write json");
    }
    std::process::exit(if failed { 1 } else { 0 });
}
