//! A stable-Rust fuzzer for the readers of untrusted bytes: the packed-weights file
//! (`bitnet_kernels::file`), the IDX dataset files (plain and gzip), model records
//! (checkpoints and packed models: Burn's burnpack reader, then the recorded quantizer settings
//! and packed layouts, checked by `bitnet_qat::check::check_model` and run by a forward pass),
//! and the imported language-model formats (GGUF; Hugging Face `config.json` with
//! `model.safetensors`), each accepted file built into a packed model and run.
//!
//! Each input is a valid file mutated a few times (bit flips, interesting values in 1-, 4- and
//! 8-byte fields, truncation, extension, deleted or duplicated ranges), fed to the reader under
//! `catch_unwind`. A reader may accept or reject an input; it must never panic. (An abort or an
//! out-of-memory kill ends the process, which the `fuzz-readers` binary reports as a failed run.)

use std::panic::{AssertUnwindSafe, catch_unwind};

use bitnet_kernels::file::{Encoding, from_bytes, to_bytes};
use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use bitnet_qat::check::check_model;
use bitnet_qat::data::{CharTokenizer, IdxDataset};
use bitnet_qat::export::{
    GgufFile, GgufTernary, ImportedLm, export_gguf, export_hf, import_gguf_bytes, import_hf_bytes,
};
use bitnet_qat::infer::pack;
use bitnet_qat::nn::transformer::{BitNetLm, BitNetLmConfig, FfnActivation};
use bitnet_qat::nn::{BitLinear, BitLinearConfig};
use bitnet_qat::quant::{Granularity, QuantConfig};
use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Int, Tensor};
use serde::Serialize;

/// Reads one input: `true` if it was accepted.
type Reader = Box<dyn Fn(&[u8]) -> bool>;

/// A reader under test.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// Valid inputs the mutations start from.
    seeds: Vec<Vec<u8>>,
    /// The reader.
    read: Reader,
    /// Inputs of the unit test's short run (readers of large files run fewer).
    pub test_inputs: usize,
}

/// What a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The target's name.
    pub target: &'static str,
    /// Inputs read.
    pub inputs: usize,
    /// Inputs the reader accepted (the rest it rejected with an error).
    pub accepted: usize,
    /// Inputs that made the reader panic.
    pub panics: usize,
    /// The first panicking input and its message.
    pub first_panic: Option<(Vec<u8>, String)>,
}

/// Every target: `packed-file`, `idx`, `idx-gz`, `record`, `gguf`, `hf`.
pub fn targets() -> Vec<Target> {
    vec![packed_file(), idx(false), idx(true), record(), gguf(), hf()]
}

/// Reads `inputs` mutated inputs into `target`, the mutations drawn from `seed`.
pub fn run(target: &Target, inputs: usize, seed: u64) -> Report {
    let mut rng = Rng(seed);
    let mut report = Report {
        target: target.name,
        inputs,
        accepted: 0,
        panics: 0,
        first_panic: None,
    };
    for i in 0..inputs {
        // Every 64th input is a seed unchanged: the readers must accept their own files.
        let base = &target.seeds[rng.below(target.seeds.len())];
        let input = if i % 64 == 0 {
            base.clone()
        } else {
            mutate(base, &mut rng)
        };
        match catch_unwind(AssertUnwindSafe(|| (target.read)(&input))) {
            Ok(true) => report.accepted += 1,
            Ok(false) => {
                if i % 64 == 0 {
                    panic!("{}: a valid seed file was rejected", target.name);
                }
            }
            Err(payload) => {
                report.panics += 1;
                if report.first_panic.is_none() {
                    let message = payload
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    report.first_panic = Some((input, message));
                }
            }
        }
    }
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

/// SplitMix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to eight mutations of `input`.
fn mutate(input: &[u8], rng: &mut Rng) -> Vec<u8> {
    const INTERESTING: [u64; 12] = [
        0,
        1,
        2,
        3,
        0x7F,
        0x80,
        0xFF,
        0xFFFF,
        0x7FFF_FFFF,
        0xFFFF_FFFF,
        u64::MAX,
        1 << 40,
    ];
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = out.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                out[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                out[i] = INTERESTING[rng.below(INTERESTING.len())] as u8;
            }
            2 | 3 if len >= 8 => {
                // A 4- or 8-byte field (little or big endian) set to an interesting value.
                let width = if rng.below(2) == 0 { 4 } else { 8 };
                let i = rng.below(len - width + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let little = rng.below(2) == 0;
                let bytes: Vec<u8> = match (width, little) {
                    (4, true) => (v as u32).to_le_bytes().to_vec(),
                    (4, false) => (v as u32).to_be_bytes().to_vec(),
                    (_, true) => v.to_le_bytes().to_vec(),
                    (_, false) => v.to_be_bytes().to_vec(),
                };
                out[i..i + width].copy_from_slice(&bytes);
            }
            4 => out.truncate(rng.below(len + 1)),
            5 => {
                let extra = 1 + rng.below(64);
                out.extend((0..extra).map(|_| rng.next() as u8));
            }
            6 if len > 1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                out.drain(start..end);
            }
            7 if len > 1 => {
                let start = rng.below(len);
                let end = (start + 1 + rng.below(32)).min(len);
                let copy = out[start..end].to_vec();
                let at = rng.below(out.len() + 1);
                out.splice(at..at, copy);
            }
            _ => {}
        }
    }
    out
}

fn packed_file() -> Target {
    let mut seeds = Vec::new();
    for (rows, cols, scales) in [
        (
            3,
            512,
            TernaryScales::PerGroup {
                group: 256,
                scales: (1..=6).map(|s| s as f32).collect(),
            },
        ),
        (2, 7, TernaryScales::PerRow(vec![0.5, 2.0])),
        (1, 300, TernaryScales::PerTensor(1.5)),
    ] {
        let values: Vec<i8> = (0..rows * cols).map(|i| (i % 3) as i8 - 1).collect();
        let packed = PackedTernary::pack(&values, rows, cols, scales).expect("valid");
        for encoding in [Encoding::Words, Encoding::Base3] {
            seeds.push(to_bytes(&packed, encoding).expect("valid"));
        }
    }
    Target {
        name: "packed-file",
        seeds,
        test_inputs: 100_000,
        read: Box::new(|bytes| from_bytes(bytes).is_ok()),
    }
}

/// An IDX images file of `n` images of `side × side` pixels and its labels file.
fn idx_files(n: u32, side: u32) -> (Vec<u8>, Vec<u8>) {
    let mut images = Vec::new();
    for w in [0x0000_0803u32, n, side, side] {
        images.extend_from_slice(&w.to_be_bytes());
    }
    images.extend((0..n * side * side).map(|i| (i * 37 % 256) as u8));
    let mut labels = Vec::new();
    for w in [0x0000_0801u32, n] {
        labels.extend_from_slice(&w.to_be_bytes());
    }
    labels.extend((0..n).map(|i| (i % 10) as u8));
    (images, labels)
}

/// Both files in one input: the length of the first (u32, little endian), then each.
fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = (a.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    out
}

fn split(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(input.get(..4)?.try_into().ok()?) as usize;
    let rest = &input[4..];
    (len <= rest.len()).then(|| rest.split_at(len))
}

fn idx(gz: bool) -> Target {
    use std::io::Write;
    let compress = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("in memory");
        encoder.finish().expect("in memory")
    };
    let seeds = [(3, 4), (1, 28), (10, 2)]
        .into_iter()
        .map(|(n, side)| {
            let (images, labels) = idx_files(n, side);
            if gz {
                join(&compress(&images), &compress(&labels))
            } else {
                join(&images, &labels)
            }
        })
        .collect();
    Target {
        name: if gz { "idx-gz" } else { "idx" },
        seeds,
        test_inputs: 100_000,
        read: Box::new(move |input| {
            let Some((images, labels)) = split(input) else {
                return false;
            };
            let parsed = if gz {
                IdxDataset::from_idx_gz_bytes(images, labels)
            } else {
                IdxDataset::from_idx_bytes(images, labels)
            };
            parsed.is_ok()
        }),
    }
}

/// A small QAT model (per-tensor and per-channel ternary, and int4 weights) and its packed
/// form: what checkpoints and packed models hold.
fn record_models(device: &Device) -> (Vec<BitLinear>, Vec<BitLinear>) {
    let layer = |quant: QuantConfig| {
        BitLinearConfig::new(256, 4)
            .with_weight_quant(quant)
            .init(device)
            .expect("valid")
    };
    let ternary = vec![
        layer(QuantConfig::ternary()),
        layer(QuantConfig::ternary().with_granularity(Granularity::PerChannel)),
    ];
    let packed = pack(&ternary).expect("packs");
    let qat = vec![ternary[0].clone(), layer(QuantConfig::int(4))];
    (qat, packed)
}

fn record() -> Target {
    let device = Device::flex();
    let (qat, packed) = record_models(&device);
    let bytes = |model: Vec<BitLinear>| -> Vec<u8> {
        model.into_record().into_bytes().expect("encodes").to_vec()
    };
    // The first byte says which skeleton the record loads into.
    let mut seeds = Vec::new();
    for (tag, model) in [(0u8, qat), (1u8, packed)] {
        let mut seed = vec![tag];
        seed.extend(bytes(model));
        seeds.push(seed);
    }
    // Skeletons of their own (other ids and values, as a new process builds them); every input
    // loads into a clone of one, which a load leaves unchanged.
    let (qat, packed) = record_models(&device);
    Target {
        name: "record",
        seeds,
        test_inputs: 100_000,
        read: Box::new(move |input| {
            let Some((&tag, rest)) = input.split_first() else {
                return false;
            };
            let skeleton = if tag % 2 == 0 {
                qat.clone()
            } else {
                packed.clone()
            };
            let Ok(record) = ModuleRecord::from_bytes(Bytes::from_bytes_vec(rest.to_vec())) else {
                return false;
            };
            let Ok(model) = skeleton.try_load_record(record) else {
                return false;
            };
            if check_model(&model).is_err() {
                return false;
            }
            let x = Tensor::<2>::ones([2, 256], &device);
            model
                .iter()
                .all(|layer| layer.try_forward(x.clone()).is_ok())
        }),
    }
}

/// Small language models to export: a full-precision one of width 8 (every tensor F32, so most
/// mutants reach the model checks quickly) and a ternary one of width 256 (llama.cpp's ternary
/// rows), SiLU with a tied head; with their tokenizer.
fn lm_seeds(device: &Device) -> Vec<(BitNetLm, BitNetLmConfig)> {
    [
        BitNetLmConfig::new(4, 8, 1, 2, 8)
            .with_weight_quant(None)
            .with_activation_quant(None),
        BitNetLmConfig::new(4, 256, 1, 2, 256),
    ]
    .into_iter()
    .map(|c| {
        let c = c.with_activation(FfnActivation::Silu).with_max_seq_len(8);
        (c.init(device).expect("valid"), c)
    })
    .collect()
}

/// Builds an accepted import into a packed model and runs it on two tokens.
fn runs(imported: Result<ImportedLm, bitnet_qat::QatError>, device: &Device) -> bool {
    let Ok(lm) = imported.and_then(|i| i.packed(device)) else {
        return false;
    };
    let tokens = Tensor::<2, Int>::from_data([[1, 2]], device);
    lm.try_forward(tokens).is_ok()
}

fn gguf() -> Target {
    let device = Device::flex();
    let tokenizer = CharTokenizer::from_text("abc");
    let path = std::env::temp_dir().join(format!("bitnet-fuzz-{}.gguf", std::process::id()));
    let mut seeds = Vec::new();
    for (lm, config) in lm_seeds(&device) {
        for ternary in [GgufTernary::Tq2_0, GgufTernary::Tq1_0] {
            export_gguf(&lm, &config, &tokenizer, &path, ternary).expect("exports");
            let bytes = std::fs::read(&path).expect("written");
            // Also as a foreign file: without this crate's configuration key, the reader
            // rebuilds the configuration from llama.cpp's keys.
            let mut foreign = GgufFile::from_bytes(&bytes).expect("reads");
            foreign.metadata.retain(|(k, _)| k != "bitnet_qat.config");
            seeds.push(foreign.to_bytes().expect("writes"));
            seeds.push(bytes);
        }
    }
    let _ = std::fs::remove_file(&path);
    Target {
        name: "gguf",
        seeds,
        read: Box::new(move |bytes| runs(import_gguf_bytes(bytes), &device)),
        test_inputs: 5_000,
    }
}

fn hf() -> Target {
    let device = Device::flex();
    let tokenizer = CharTokenizer::from_text("abc");
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-hf-{}", std::process::id()));
    let mut seeds = Vec::new();
    for (lm, config) in lm_seeds(&device) {
        export_hf(&lm, &config, &tokenizer, &dir).expect("exports");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("written");
        let rest = join(&read("model.safetensors"), &read("tokenizer.json"));
        // Also without this crate's configuration (transformers' keys only).
        let mut foreign: serde_json::Value =
            serde_json::from_slice(&read("config.json")).expect("JSON");
        foreign
            .as_object_mut()
            .expect("an object")
            .remove("bitnet_qat_config");
        seeds.push(join(&foreign.to_string().into_bytes(), &rest));
        seeds.push(join(&read("config.json"), &rest));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Target {
        name: "hf",
        seeds,
        read: Box::new(move |input| {
            let Some((config, rest)) = split(input) else {
                return false;
            };
            let Some((weights, tokenizer)) = split(rest) else {
                return false;
            };
            runs(import_hf_bytes(config, weights, Some(tokenizer)), &device)
        }),
        test_inputs: 5_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_of_every_reader_finds_no_panic() {
        // 100,000 inputs a reader, 5,000 for the model formats.
        let reports: Vec<Report> = quietly(|| {
            targets()
                .iter()
                .map(|t| run(t, t.test_inputs, 2026))
                .collect()
        });
        for r in &reports {
            let first = r
                .first_panic
                .as_ref()
                .map(|(input, message)| (input.len(), message));
            assert_eq!(
                r.panics, 0,
                "{}: first panic (bytes, message) {first:?}",
                r.target
            );
            // Mutants are mostly rejected; the seeds (every 64th input) are accepted.
            assert!(r.accepted >= r.inputs / 64, "{r:?}");
            assert!(r.accepted < r.inputs, "{}: every mutant accepted", r.target);
        }
    }
}
