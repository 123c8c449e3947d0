//! A stable-Rust fuzzer for the readers of untrusted bytes: the packed-weights file
//! (`bitnet_kernels::file`), the IDX dataset files (plain and gzip), Burn model records
//! (checkpoints), packed models loaded by `bitnet_qat::infer::load_packed`, saved language
//! models (`SavedLm`: `lm.json`, `tokenizer.json` and the weights), and the imported
//! language-model formats (GGUF; Hugging Face `config.json` with `model.safetensors`); each
//! accepted model is checked and run.
//!
//! Each input is a valid file mutated: blindly (bit flips, interesting values at random places,
//! truncation, extension, deleted or duplicated ranges) and structure-aware — the size, count,
//! offset and layout fields of the file, found by walking its format (the CBOR metadata and the
//! recorded layouts of a burnpack file, the GGUF header and tensor infos, the numbers of a JSON
//! configuration or safetensors header), set to values that break size arithmetic. A reader may
//! accept or reject an input; it must never panic, abort, or allocate more than
//! [`memory_bound`] of its input. [`child`] runs a target in a child process under an
//! address-space limit, so that an abort or an out-of-memory kill is counted, not fatal.

pub mod child;
mod mutate;
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde::{Deserialize, Serialize};

use crate::heap::peak_during;
use mutate::{Field, Rng, mutate_bytes, mutate_fields};
pub use targets::targets;

/// Reads one input: `true` if it was accepted.
type Reader = Box<dyn Fn(&[u8]) -> bool>;

/// A valid input and the fields of its format.
pub(crate) struct Seed {
    bytes: Vec<u8>,
    fields: Vec<Field>,
}

/// A reader under test.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    seeds: Vec<Seed>,
    /// The reader.
    read: Reader,
    /// Inputs of the unit test's short run (readers of large files run fewer).
    pub test_inputs: usize,
}

/// What a run found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The target's name.
    pub target: String,
    /// Inputs read.
    pub inputs: usize,
    /// Inputs the reader accepted (the rest it rejected with an error).
    pub accepted: usize,
    /// Inputs that made the reader panic.
    pub panics: usize,
    /// Inputs that ended the process (an abort, a failed allocation, a signal): counted by
    /// [`child`], which restarts the child after them.
    pub aborts: usize,
    /// Inputs whose reading allocated more than [`memory_bound`] of their size.
    pub oversize: usize,
    /// Valid seed files (every 64th input) the reader rejected.
    pub rejected_seeds: usize,
    /// The largest heap peak of one input (bytes above the level before it).
    pub peak_bytes: usize,
    /// The size of the input of that peak.
    pub peak_input_len: usize,
    /// The peak resident memory of the process (of the largest child, under [`child`]), KiB.
    pub peak_rss_kib: u64,
    /// The first failing input (panic, abort or oversize): its index, size and what happened.
    pub first_failure: Option<Failure>,
}

/// One failing input.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    /// Its index in the run (rebuilt with [`input`]).
    pub index: usize,
    /// Its size in bytes.
    pub len: usize,
    /// The panic message, the exit status, or the allocation.
    pub what: String,
}

/// The most heap one input may take while it is read: four times its size plus 64 MiB.
pub fn memory_bound(input_len: usize) -> usize {
    input_len.saturating_mul(4).saturating_add(64 << 20)
}

/// Input `index` of a run of `target` seeded with `seed`: every 64th input is a seed
/// unchanged (the readers must accept their own files); the others are mutated, half of them
/// structure-aware, a quarter blind, a quarter both.
pub fn input(target: &Target, seed: u64, index: usize) -> Vec<u8> {
    let mut rng = Rng::for_input(seed, index);
    let base = &target.seeds[rng.below(target.seeds.len())];
    if index.is_multiple_of(64) {
        return base.bytes.clone();
    }
    match rng.below(4) {
        0 | 1 => mutate_fields(&base.bytes, &base.fields, &mut rng),
        2 => mutate_bytes(&base.bytes, &mut rng),
        _ => mutate_bytes(
            &mutate_fields(&base.bytes, &base.fields, &mut rng),
            &mut rng,
        ),
    }
}

/// Reads inputs `from..to` of `target` (seeded with `seed`), calling `before(index)` before
/// each, and adds what they did to `report`.
pub fn run_range(
    target: &Target,
    seed: u64,
    from: usize,
    to: usize,
    report: &mut Report,
    mut before: impl FnMut(usize),
) {
    for index in from..to {
        let bytes = input(target, seed, index);
        before(index);
        let (outcome, peak) =
            peak_during(|| catch_unwind(AssertUnwindSafe(|| (target.read)(&bytes))));
        report.inputs += 1;
        if peak > report.peak_bytes {
            report.peak_bytes = peak;
            report.peak_input_len = bytes.len();
        }
        let failure = |what: String| Failure {
            index,
            len: bytes.len(),
            what,
        };
        match outcome {
            Ok(true) => report.accepted += 1,
            Ok(false) => {
                if index.is_multiple_of(64) {
                    report.rejected_seeds += 1;
                    report
                        .first_failure
                        .get_or_insert_with(|| failure("a valid seed file was rejected".into()));
                }
            }
            Err(payload) => {
                report.panics += 1;
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report
                    .first_failure
                    .get_or_insert_with(|| failure(format!("panic: {message}")));
            }
        }
        if peak > memory_bound(bytes.len()) {
            report.oversize += 1;
            report.first_failure.get_or_insert_with(|| {
                failure(format!(
                    "allocated {peak} bytes for a {}-byte input",
                    bytes.len()
                ))
            });
        }
    }
}

/// Reads `inputs` inputs into `target` in this process (no abort protection).
pub fn run(target: &Target, inputs: usize, seed: u64) -> Report {
    let mut report = Report {
        target: target.name.to_string(),
        ..Report::default()
    };
    run_range(target, seed, 0, inputs, &mut report, |_| {});
    report
}

/// Silences the default panic message while `f` runs (the panics are counted instead).
pub fn quietly<T>(f: impl FnOnce() -> T) -> T {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let out = f();
    std::panic::set_hook(hook);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_of_every_reader_finds_no_panic() {
        // 100,000 inputs a reader, fewer for the model formats.
        let reports: Vec<Report> = quietly(|| {
            targets()
                .iter()
                .map(|t| run(t, t.test_inputs, 2026))
                .collect()
        });
        for r in &reports {
            assert_eq!(r.panics, 0, "{}: {:?}", r.target, r.first_failure);
            assert_eq!(r.oversize, 0, "{}: {:?}", r.target, r.first_failure);
            assert_eq!(r.rejected_seeds, 0, "{}: {:?}", r.target, r.first_failure);
            // Mutants are mostly rejected; the seeds (every 64th input) are accepted.
            assert!(r.accepted >= r.inputs / 64, "{r:?}");
            assert!(r.accepted < r.inputs, "{}: every mutant accepted", r.target);
        }
    }
}
