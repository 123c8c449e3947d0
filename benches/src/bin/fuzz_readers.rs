//! `fuzz-readers`: the fuzzer of `bitnet_qat_benches::fuzz` for many inputs, with the figures
//! a closing note asks for: inputs, inputs accepted, panics, aborts, inputs that allocated more
//! than 4× their size plus 64 MiB, the largest heap peak of one input, the peak resident memory,
//! and seconds. Each target runs in child processes limited to `--limit-mib` of address space
//! (2 GiB by default), so an abort or an out-of-memory kill is counted, not fatal.
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin fuzz-readers -- --target load-packed --inputs 10000000
//! ```

use std::time::Instant;

use bitnet_qat_benches::fuzz::child::{Children, child_main, limit_address_space, run_isolated};
use bitnet_qat_benches::fuzz::{Report, quietly, run, targets};
use bitnet_qat_benches::heap::Counting;
use bitnet_qat_benches::write_atomic;
use clap::Parser;

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Fuzzes the readers of untrusted bytes.
#[derive(Parser, Debug)]
struct Args {
    /// Which reader (`packed-file`, `idx`, `idx-gz`, `record`, `load-packed`, `float-checkpoint`, `saved-lm`,
    /// `gguf`, `hf`); all of them by default.
    #[arg(long)]
    target: Option<String>,
    /// Inputs per reader.
    #[arg(long, default_value_t = 10_000_000)]
    inputs: usize,
    /// The seed of the mutations.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The address space of each child process, MiB.
    #[arg(long, default_value_t = 2048)]
    limit_mib: u64,
    /// The longest one input may take, seconds (a child past it is killed: a hang).
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Run in this process, without children (an abort ends the run).
    #[arg(long)]
    in_process: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Internal: run as a child over inputs `--from..--to`.
    #[arg(long, hide = true)]
    child: bool,
    /// Internal: the child's first input.
    #[arg(long, hide = true, default_value_t = 0)]
    from: usize,
    /// Internal: the child's end.
    #[arg(long, hide = true, default_value_t = 0)]
    to: usize,
    /// Abort the child before this input (tests the accounting of aborts).
    #[arg(long, hide = true)]
    inject_abort: Option<usize>,
}

fn main() {
    let args = Args::parse();
    if args.child {
        let name = args.target.as_deref().unwrap_or_default();
        if let Err(e) = limit_address_space(args.limit_mib << 20) {
            eprintln!("setrlimit: {e}");
            std::process::exit(3);
        }
        let target = targets().into_iter().find(|t| t.name == name);
        let Some(target) = target else {
            eprintln!("no target {name:?}");
            std::process::exit(2);
        };
        let done =
            quietly(|| child_main(&target, args.seed, args.from, args.to, args.inject_abort));
        std::process::exit(if done.is_ok() { 0 } else { 1 });
    }
    let names: Vec<&'static str> = targets().iter().map(|t| t.name).collect();
    let chosen: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| args.target.as_deref().is_none_or(|t| t == *n))
        .collect();
    if chosen.is_empty() {
        eprintln!("no target {:?}; the targets are {names:?}", args.target);
        std::process::exit(2);
    }
    let exe = std::env::current_exe().expect("the path of this binary");
    println!(
        "| reader | inputs | accepted | panics | aborts | > 4x + 64 MiB | seeds rejected | largest heap peak of one input | peak RSS (MiB) | seconds |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut rows = Vec::new();
    let mut failed = false;
    for name in chosen {
        let start = Instant::now();
        let report: Report = if args.in_process {
            let target = targets()
                .into_iter()
                .find(|t| t.name == name)
                .expect("listed");
            let mut r = quietly(|| run(&target, args.inputs, args.seed));
            r.peak_rss_kib = bitnet_qat_benches::fuzz::child::peak_rss_kib();
            r
        } else {
            let target = targets()
                .into_iter()
                .find(|t| t.name == name)
                .expect("listed");
            let children = Children {
                exe: &exe,
                target: &target,
                seed: args.seed,
                limit_mib: args.limit_mib,
                inject_abort: args.inject_abort,
                timeout: std::time::Duration::from_secs(args.timeout_s),
            };
            match run_isolated(&children, args.inputs) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{name}: {e}");
                    failed = true;
                    continue;
                }
            }
        };
        let seconds = start.elapsed().as_secs_f64();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.2} MiB ({}-byte input) | {:.1} | {seconds:.0} |",
            report.target,
            report.inputs,
            report.accepted,
            report.panics,
            report.aborts,
            report.oversize,
            report.rejected_seeds,
            report.peak_bytes as f64 / (1 << 20) as f64,
            report.peak_input_len,
            report.peak_rss_kib as f64 / 1024.0,
        );
        if let Some(failure) = &report.first_failure {
            eprintln!(
                "{name}: first failing input #{} ({} bytes): {}",
                failure.index, failure.len, failure.what
            );
            failed = true;
        }
        rows.push(serde_json::json!({ "report": report, "seconds": seconds }));
    }
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "seed": args.seed,
            "limit_mib": args.limit_mib,
            "memory_bound": "4 x input + 64 MiB per input",
            "targets": rows,
        });
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
