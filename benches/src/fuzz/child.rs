//! Fuzzing in child processes: an input that aborts the process (a failed allocation, an
//! `abort`, a signal) is counted, not fatal. The parent runs the `fuzz-readers` binary again
//! as a child over a range of inputs, under an address-space limit (`setrlimit(RLIMIT_AS)`),
//! and the child reports on its standard output:
//! - `I <index>` before it reads each input (flushed), so the parent knows which input ended
//!   it;
//! - `R <json>` with its cumulative [`Report`] after every [`REPORT_EVERY`] inputs and at the
//!   end.
//!
//! When a child dies, the parent keeps its last report, recounts the inputs between that report
//! and the fatal one in a new child, counts the fatal input as an abort (with the exit status
//! and the last line the child wrote on its standard error), and goes on after it. Inputs are a
//! function of the seed and their index ([`super::input`]), so every count is reproducible.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::{Failure, Report, Target, run_range};

/// A child reports its cumulative counts after this many inputs.
pub const REPORT_EVERY: usize = 10_000;

/// Limits the address space of this process to `bytes` (`setrlimit(RLIMIT_AS)`): an
/// allocation past it fails (Rust aborts), as it would on a machine with that much memory.
///
/// # Errors
/// The operating system's error.
pub fn limit_address_space(bytes: u64) -> std::io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: `setrlimit` reads the `rlimit` struct behind the pointer, which is a valid,
    // initialized local that outlives the call; it has no other memory effects.
    let status = unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) };
    if status == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The child's side: reads inputs `from..to` of `target` and writes the protocol of this
/// module to standard output. `inject_abort` aborts the process before the input of that index
/// (to test the parent's accounting of a real abort).
///
/// # Errors
/// An I/O error writing to standard output.
pub fn child_main(
    target: &Target,
    seed: u64,
    from: usize,
    to: usize,
    inject_abort: Option<usize>,
) -> std::io::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut report = Report {
        target: target.name.to_string(),
        ..Report::default()
    };
    let mut start = from;
    while start < to {
        let end = (start + REPORT_EVERY).min(to);
        let mut io = Ok(());
        run_range(target, seed, start, end, &mut report, |index| {
            if io.is_ok() {
                io = writeln!(out, "I {index}").and_then(|()| out.flush());
            }
            if inject_abort == Some(index) {
                std::process::abort();
            }
        });
        io?;
        report.peak_rss_kib = peak_rss_kib();
        writeln!(
            out,
            "R {}",
            serde_json::to_string(&report).expect("a report")
        )?;
        out.flush()?;
        start = end;
    }
    Ok(())
}

/// How children are started: the binary, the target, the seed, the address-space limit, the
/// longest an input may take, and an optional injected abort (see [`child_main`]).
pub struct Children<'a> {
    /// The `fuzz-readers` binary.
    pub exe: &'a Path,
    /// The target (its inputs are rebuilt to report the size of a fatal one).
    pub target: &'a Target,
    /// The seed of the mutations.
    pub seed: u64,
    /// The address space of each child, MiB.
    pub limit_mib: u64,
    /// Abort before this input (a test of the accounting).
    pub inject_abort: Option<usize>,
    /// An input that takes longer hangs the reader: the child is killed and the input counted
    /// as an abort.
    pub timeout: Duration,
}

/// The parent's side: runs inputs `0..inputs` of a target in children of the binary (started
/// as `exe --child --target <name> --seed <seed> --from <i> --to <j> --limit-mib <limit>`),
/// and adds up what they found.
///
/// # Errors
/// An I/O error starting a child, or a child that fails without reading any input.
pub fn run_isolated(children: &Children<'_>, inputs: usize) -> std::io::Result<Report> {
    let name = children.target.name;
    let mut total = Report {
        target: name.to_string(),
        ..Report::default()
    };
    let mut from = 0;
    while from < inputs {
        let run = spawn(children, from, inputs)?;
        let covered = from + run.report.as_ref().map_or(0, |r| r.inputs);
        if let Some(report) = &run.report {
            merge(&mut total, report);
        }
        if run.success && covered == inputs {
            break;
        }
        // The child died on input `fatal` (not before reading one, nor after its last report:
        // that would be no input's fault).
        let fatal = match run.last_index {
            Some(fatal) if !run.success && fatal >= covered => fatal,
            _ => {
                return Err(std::io::Error::other(format!(
                    "the child for {name} ({from}..{inputs}) stopped outside an input after \
                     {covered}: {}; {}",
                    run.status, run.stderr_tail
                )));
            }
        };
        if covered < fatal {
            // Recount the inputs between its last report and the fatal one.
            let recount = spawn(children, covered, fatal)?;
            match (&recount.report, recount.success) {
                (Some(r), true) if covered + r.inputs == fatal => merge(&mut total, r),
                _ => {
                    return Err(std::io::Error::other(format!(
                        "{name}: inputs {covered}..{fatal} passed once and failed when rerun \
                         ({})",
                        recount.status
                    )));
                }
            }
        }
        total.inputs += 1;
        total.aborts += 1;
        if total.first_failure.is_none() {
            total.first_failure = Some(Failure {
                index: fatal,
                len: super::input(children.target, children.seed, fatal).len(),
                what: format!("{}: {}", run.status, run.stderr_tail),
            });
        }
        from = fatal + 1;
    }
    Ok(total)
}

/// What one child did.
struct ChildRun {
    /// Its last cumulative report.
    report: Option<Report>,
    /// The last input it started.
    last_index: Option<usize>,
    /// Whether it exited with status 0.
    success: bool,
    /// Its exit status, in words.
    status: String,
    /// The last line of its standard error.
    stderr_tail: String,
}

fn spawn(children: &Children<'_>, from: usize, to: usize) -> std::io::Result<ChildRun> {
    let mut command = Command::new(children.exe);
    command
        .args(["--child", "--target", children.target.name])
        .args(["--seed", &children.seed.to_string()])
        .args(["--from", &from.to_string(), "--to", &to.to_string()])
        .args(["--limit-mib", &children.limit_mib.to_string()]);
    if let Some(index) = children.inject_abort {
        command.args(["--inject-abort", &index.to_string()]);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut run = ChildRun {
        report: None,
        last_index: None,
        success: false,
        status: String::new(),
        stderr_tail: String::new(),
    };
    // The child's lines through a channel, so that an input that never ends is noticed.
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut hung = false;
    loop {
        match received.recv_timeout(children.timeout) {
            Ok(line) => {
                let line = line?;
                if let Some(index) = line.strip_prefix("I ") {
                    run.last_index = index.parse().ok();
                } else if let Some(json) = line.strip_prefix("R ") {
                    // A line cut short by a dying child keeps the last good report.
                    if let Ok(report) = serde_json::from_str(json) {
                        run.report = Some(report);
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                hung = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    run.success = status.success() && !hung;
    run.status = if hung {
        format!(
            "no progress for {} s (a hang; killed)",
            children.timeout.as_secs()
        )
    } else {
        status.to_string()
    };
    run.stderr_tail = errors
        .join()
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    Ok(run)
}

/// Adds `part` (a child's cumulative report) to `total`.
fn merge(total: &mut Report, part: &Report) {
    total.inputs += part.inputs;
    total.accepted += part.accepted;
    total.panics += part.panics;
    total.aborts += part.aborts;
    total.oversize += part.oversize;
    total.rejected_seeds += part.rejected_seeds;
    if part.peak_bytes > total.peak_bytes {
        total.peak_bytes = part.peak_bytes;
        total.peak_input_len = part.peak_input_len;
    }
    total.peak_rss_kib = total.peak_rss_kib.max(part.peak_rss_kib);
    if total.first_failure.is_none() {
        total.first_failure = part.first_failure.clone();
    }
}

/// This process's peak resident memory in KiB (Linux `VmHWM`), or 0 where it cannot be read.
pub fn peak_rss_kib() -> u64 {
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
