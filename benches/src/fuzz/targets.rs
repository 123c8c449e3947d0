//! The readers under test and their seed files: `packed-file`, `idx`, `idx-gz`, `record`,
//! `load-packed`, `float-checkpoint`, `saved-lm`, `gguf`, `hf`.

use std::io::Write;

use bitnet_kernels::file::{Encoding as FileEncoding, from_bytes, to_bytes};
use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use bitnet_qat::data::IdxDataset;
use bitnet_qat::export::{
    GgufFile, GgufTernary, ImportedLm, export_gguf, export_hf, import_gguf_bytes, import_hf_bytes,
};
use bitnet_qat::infer::{load_packed_bytes, pack};
use bitnet_qat::lm::CharTokenizer;
use bitnet_qat::lm::{BitNetLm, BitNetLmConfig, FfnActivation, SavedLm};
use bitnet_qat::nn::{BitLinear, BitLinearConfig, load_float_checkpoint};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::reparam::QatReparameterizer;
use bitnet_qat::train::{QatPlan, QatState, QatTrainModel, check_checkpoint_bytes, optimize};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor};

use super::mutate::{
    Encoding, Field, burnpack_fields, gguf_fields, json_numbers, safetensors_fields,
};
use super::{Seed, Target};

/// A file's bytes and the fields of its format.
type File = (Vec<u8>, Vec<Field>);

/// Every target.
pub fn targets() -> Vec<Target> {
    vec![
        packed_file(),
        idx(false),
        idx(true),
        record(),
        load_packed(),
        float_checkpoint(),
        saved_lm(),
        gguf(),
        hf(),
    ]
}

/// The Flex device with its generator seeded: a target's seed files (the initial weights of
/// its models) are the same in every process, so input `i` of a run is the same in the parent
/// and in every child.
fn seeded_device() -> Device {
    let device = Device::flex();
    device.seed(0xF022);
    device
}

fn le(at: usize, width: u8) -> Field {
    Field {
        at,
        encoding: Encoding::Le(width),
    }
}

/// `fields` of a part that starts at `offset` of a joined input.
fn shifted(fields: Vec<Field>, offset: usize) -> impl Iterator<Item = Field> {
    fields.into_iter().map(move |f| Field {
        at: f.at + offset,
        ..f
    })
}

/// Two files in one input: the length of the first (u32, little endian), then each; the fields
/// of both, where they land (and the length field itself).
fn join(a: File, b: File) -> File {
    let mut out = (a.0.len() as u32).to_le_bytes().to_vec();
    let mut fields = vec![le(0, 4)];
    fields.extend(shifted(a.1, 4));
    fields.extend(shifted(b.1, 4 + a.0.len()));
    out.extend_from_slice(&a.0);
    out.extend_from_slice(&b.0);
    (out, fields)
}

fn split(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_le_bytes(input.get(..4)?.try_into().ok()?) as usize;
    let rest = &input[4..];
    (len <= rest.len()).then(|| rest.split_at(len))
}

fn seed((bytes, fields): File) -> Seed {
    Seed { bytes, fields }
}

/// A JSON file and its numbers.
fn json(bytes: Vec<u8>) -> File {
    let fields = json_numbers(&bytes);
    (bytes, fields)
}

/// A burnpack file and its fields.
fn burnpack(bytes: Vec<u8>) -> File {
    let fields = burnpack_fields(&bytes);
    (bytes, fields)
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
        for encoding in [FileEncoding::Words, FileEncoding::Base3] {
            let bytes = to_bytes(&packed, encoding).expect("valid");
            // Version, rows, cols, encoding, scale kind, reserved, group, scale count, and the
            // payload length after the scales.
            let count = packed.scales().values().len();
            let fields = vec![
                le(4, 4),
                le(8, 8),
                le(16, 8),
                le(24, 1),
                le(25, 1),
                le(26, 2),
                le(28, 8),
                le(36, 8),
                le(44 + 4 * count, 8),
            ];
            seeds.push(Seed { bytes, fields });
        }
    }
    Target {
        name: "packed-file",
        seeds,
        test_inputs: 100_000,
        read: Box::new(|bytes| from_bytes(bytes).is_ok()),
    }
}

/// An IDX images file of `n` images of `side × side` pixels and its labels file, with their
/// fields (the dimensions, big endian).
fn idx_files(n: u32, side: u32) -> (File, File) {
    let be = |at| Field {
        at,
        encoding: Encoding::Be(4),
    };
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
    (
        (images, vec![be(0), be(4), be(8), be(12)]),
        (labels, vec![be(0), be(4)]),
    )
}

fn idx(gz: bool) -> Target {
    let compress = |bytes: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("in memory");
        encoder.finish().expect("in memory")
    };
    let seeds = [(3, 4), (1, 28), (10, 2)]
        .into_iter()
        .map(|(n, side)| {
            let (images, labels) = idx_files(n, side);
            seed(if gz {
                // Compressed: only the joining length is a field.
                join(
                    (compress(&images.0), Vec::new()),
                    (compress(&labels.0), Vec::new()),
                )
            } else {
                join(images, labels)
            })
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

/// A checkpoint's model: QAT layers (per-tensor and per-channel ternary, int4 weights, a
/// scheduled lambda) or their packed form, and the QAT state burn-train saves with them.
#[derive(Module, Debug)]
struct Checkpointed {
    layers: Vec<BitLinear>,
    qat: QatState,
}

impl QatTrainModel for Checkpointed {
    fn qat_state(&self) -> &QatState {
        &self.qat
    }
    fn qat_state_mut(&mut self) -> &mut QatState {
        &mut self.qat
    }
}

/// The two checkpoints: QAT layers after two optimizer steps, and packed layers.
fn checkpoints(device: &Device) -> (Checkpointed, Checkpointed) {
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
    let plan = QatPlan::new().with_stats_every(1);
    let mut qat = Checkpointed {
        layers: vec![ternary[0].clone(), layer(QuantConfig::int(4))],
        qat: plan.init(device),
    };
    // Two steps: a recorded step count, measurement and flip rate.
    let train = device.clone().autodiff();
    let mut model = bitnet_qat::train::prepare(qat.clone().fork(&train).train())
        .expect("a fresh model is ready");
    let mut optim = model.qat.optimizer(&model, SgdConfig::new().build());
    for _ in 0..2 {
        let x = Tensor::<2>::ones([2, 256], &train);
        let loss = model
            .layers
            .iter()
            .map(|l| l.forward(x.clone()).sum())
            .reduce(|a, b| a + b);
        let grads = GradientsParams::from_grads(loss.expect("two layers").backward(), &model);
        model = optimize(model, &mut optim, 0.01, grads);
    }
    qat = model.valid();
    let packed = Checkpointed {
        layers: packed,
        qat: plan.init(device),
    };
    (qat, packed)
}

/// The burnpack bytes of a model record.
fn record_of(model: impl Module) -> Vec<u8> {
    model.into_record().into_bytes().expect("encodes").to_vec()
}

/// Every input is tagged by its first byte with the skeleton it loads into.
fn tagged(tag: u8, file: File) -> Seed {
    let mut bytes = vec![tag];
    bytes.extend(file.0);
    Seed {
        bytes,
        fields: shifted(file.1, 1).collect(),
    }
}

/// A burn-train checkpoint, read as `train::check_checkpoint_bytes` reads one before a resume
/// (the record loaded, its values and QAT state checked), then run.
fn record() -> Target {
    let device = seeded_device();
    let (qat, packed) = checkpoints(&device);
    let seeds = vec![
        tagged(0, burnpack(record_of(qat))),
        tagged(1, burnpack(record_of(packed))),
    ];
    // Skeletons of their own (other ids and values, as a new process builds them); every input
    // loads into a clone of one, which a load leaves unchanged.
    let (qat, packed) = checkpoints(&device);
    Target {
        name: "record",
        seeds,
        test_inputs: 50_000,
        read: Box::new(move |input| {
            let Some((&tag, rest)) = input.split_first() else {
                return false;
            };
            let skeleton = if tag % 2 == 0 { &qat } else { &packed };
            let Ok(model) = check_checkpoint_bytes(skeleton, rest.to_vec()) else {
                return false;
            };
            let x = Tensor::<2>::ones([2, 256], &device);
            model
                .layers
                .iter()
                .all(|layer| layer.try_forward(x.clone()).is_ok())
        }),
    }
}

/// Packed layers of every layout: per-tensor ternary with int8 activations, per-group (256)
/// with float activations, per-channel binary on a width that pads to a block, with a bias.
fn packable_layers(device: &Device) -> Vec<BitLinear> {
    vec![
        BitLinearConfig::new(256, 4).init(device).expect("valid"),
        BitLinearConfig::new(512, 3)
            .with_weight_quant(
                QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 256 }),
            )
            .with_activation_quant(None)
            .init(device)
            .expect("valid"),
        BitLinearConfig::new(300, 5)
            .with_weight_quant(QuantConfig::binary().with_granularity(Granularity::PerChannel))
            .with_bias(true)
            .init(device)
            .expect("valid"),
    ]
}

/// burn-nn `Linear`s made quantization-aware (their packed form dequantizes in `forward`).
fn packable_linears(device: &Device) -> Vec<Linear> {
    let linears = vec![
        LinearConfig::new(64, 8).init(device),
        LinearConfig::new(8, 3).with_bias(false).init(device),
    ];
    QatReparameterizer::new(QuantConfig::ternary())
        .apply(linears)
        .expect("reparameterizes")
        .0
}

fn load_packed() -> Target {
    let device = seeded_device();
    let layers = packable_layers(&device);
    let linears = packable_linears(&device);
    let net = dropin_net(&device);
    let seeds = vec![
        tagged(0, burnpack(saved_bytes(pack(&layers).expect("packs")))),
        tagged(1, burnpack(saved_bytes(pack(&linears).expect("packs")))),
        // A packed convolution (its kernel through its linear view) and drop-in `Linear`s.
        tagged(2, burnpack(saved_bytes(pack(&net).expect("packs")))),
    ];
    // The skeletons: fresh layers built from the same configurations.
    let layers = packable_layers(&device);
    let linears = packable_linears(&device);
    let net = dropin_net(&device);
    Target {
        name: "load-packed",
        seeds,
        test_inputs: 20_000,
        read: Box::new(move |input| {
            let Some((&tag, rest)) = input.split_first() else {
                return false;
            };
            let bytes = rest.to_vec();
            if tag % 3 == 2 {
                return load_packed_bytes(net.clone(), bytes)
                    .is_ok_and(|model| runs_dropin_net(&model, &device));
            }
            if tag % 3 == 0 {
                let Ok(model) = load_packed_bytes(layers.clone(), bytes) else {
                    return false;
                };
                let x = Tensor::<2>::ones([2, 512], &device);
                model.iter().zip([256, 512, 300]).all(|(layer, width)| {
                    layer
                        .try_forward(x.clone().narrow(1, 0, width))
                        .is_ok_and(|y| y.dims()[0] == 2)
                })
            } else {
                let Ok(model) = load_packed_bytes(linears.clone(), bytes) else {
                    return false;
                };
                let x = Tensor::<2>::ones([2, 64], &device);
                let y = model[1].forward(model[0].forward(x));
                y.dims() == [2, 3]
            }
        }),
    }
}

/// A burn-nn model with every layer the drop-ins replace (a `Col`-layout `Linear` included).
#[derive(Module, Debug)]
struct FloatNet {
    conv: burn::nn::conv::Conv2d,
    col: Linear,
    head: Linear,
}

/// The same model from the drop-in layers (W1.58A8; LSQ steps for `head`).
#[derive(Module, Debug)]
struct DropInNet {
    conv: bitnet_qat::nn::conv::Conv2d,
    col: bitnet_qat::nn::Linear,
    head: bitnet_qat::nn::Linear,
}

fn float_net(device: &Device) -> FloatNet {
    FloatNet {
        conv: burn::nn::conv::Conv2dConfig::new([2, 4], [3, 3]).init(device),
        col: LinearConfig::new(36, 8)
            .with_layout(burn::nn::LinearLayout::Col)
            .init(device),
        head: LinearConfig::new(8, 3).init(device),
    }
}

fn dropin_net(device: &Device) -> DropInNet {
    let lsq = bitnet_qat::nn::QuantScheme::bitnet()
        .with_weight_ste(bitnet_qat::ste::Ste::LearnedStepSize);
    DropInNet {
        conv: bitnet_qat::nn::conv::Conv2dConfig::new([2, 4], [3, 3]).init(device),
        col: bitnet_qat::nn::LinearConfig::new(36, 8)
            .with_layout(burn::nn::LinearLayout::Col)
            .init(device),
        head: bitnet_qat::nn::LinearConfig::new(8, 3)
            .with_quant(lsq)
            .init(device),
    }
}

/// A checkpoint of a burn-nn model, loaded into the same model built from the drop-in layers
/// (`nn::load_float_checkpoint`), then run.
fn float_checkpoint() -> Target {
    let device = seeded_device();
    let seeds = vec![
        seed(burnpack(record_of(float_net(&device)))),
        // A QAT checkpoint of the drop-in model loads too (its quantizer state included).
        seed(burnpack(record_of(dropin_net(&device)))),
    ];
    let skeleton = dropin_net(&device);
    Target {
        name: "float-checkpoint",
        seeds,
        test_inputs: 20_000,
        read: Box::new(move |input| {
            load_float_checkpoint(skeleton.clone(), input.to_vec())
                .is_ok_and(|loaded| runs_dropin_net(&loaded.model, &device))
        }),
    }
}

/// Whether `net` runs an image through its three layers to three outputs.
fn runs_dropin_net(net: &DropInNet, device: &Device) -> bool {
    let x = Tensor::<4>::ones([1, 2, 5, 5], device);
    let Ok(y) = net.conv.try_forward(x) else {
        return false;
    };
    let y = y.flatten::<2>(1, 3);
    net.col
        .try_forward(y)
        .and_then(|h| net.head.try_forward(h))
        .is_ok_and(|y| y.dims() == [1, 3])
}

/// The bytes `bitnet_qat::infer::save` writes for `model`.
fn saved_bytes<M: Module>(model: M) -> Vec<u8> {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("bitnet-fuzz-seed-{}-{n}.bpk", std::process::id()));
    bitnet_qat::infer::save(model, &path).expect("writes");
    let bytes = std::fs::read(&path).expect("written");
    let _ = std::fs::remove_file(&path);
    bytes
}

/// Small language models: a ternary one of width 8 (every projection padded to one block, most
/// mutants reach the model checks quickly), one of width 256 with per-group activations and
/// grouped-query attention, and a full-precision one; SiLU with a tied head.
fn lm_seeds(device: &Device) -> Vec<(BitNetLm, BitNetLmConfig)> {
    [
        BitNetLmConfig::new(4, 8, 1, 2, 8),
        BitNetLmConfig::new(4, 256, 1, 2, 256)
            .with_n_kv_heads(Some(1))
            .with_activation_quant(Some(
                QuantConfig::activation_int8()
                    .with_granularity(Granularity::PerGroup { size: 256 }),
            )),
        BitNetLmConfig::new(4, 8, 1, 2, 8)
            .with_weight_quant(None)
            .with_activation_quant(None),
    ]
    .into_iter()
    .map(|c| {
        let c = c.with_activation(FfnActivation::Silu).with_max_seq_len(8);
        (c.init(device).expect("valid"), c)
    })
    .collect()
}

/// Runs an accepted model on two tokens.
fn runs_lm(lm: &BitNetLm, device: &Device) -> bool {
    let tokens = Tensor::<2, Int>::from_data([[1, 2]], device);
    lm.try_forward(tokens).is_ok()
}

fn saved_lm() -> Target {
    let device = seeded_device();
    let tokenizer = CharTokenizer::from_text("abc");
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-saved-{}", std::process::id()));
    let mut seeds = Vec::new();
    for (lm, config) in lm_seeds(&device) {
        let packed = config.weight_quant.is_some();
        SavedLm::save(&dir, &config, &tokenizer, &lm, packed).expect("saves");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("written");
        let weights = read(if packed {
            SavedLm::PACKED
        } else {
            SavedLm::FULL
        });
        let files = join(
            json(read(SavedLm::CONFIG)),
            join(json(read(SavedLm::TOKENIZER)), burnpack(weights)),
        );
        // The first byte: packed (odd) or f32 weights.
        seeds.push(tagged(packed as u8, files));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Target {
        name: "saved-lm",
        seeds,
        test_inputs: 5_000,
        read: Box::new(move |input| {
            let Some((&tag, rest)) = input.split_first() else {
                return false;
            };
            let Some((config, rest)) = split(rest) else {
                return false;
            };
            let Some((tokenizer, weights)) = split(rest) else {
                return false;
            };
            SavedLm::load_bytes(config, tokenizer, weights.to_vec(), tag % 2 == 1, &device)
                .is_ok_and(|(lm, _, _)| runs_lm(&lm, &device))
        }),
    }
}

/// Builds an accepted import into a packed model and runs it on two tokens.
fn runs(imported: Result<ImportedLm, bitnet_qat::QatError>, device: &Device) -> bool {
    imported
        .and_then(|i| i.packed(device))
        .is_ok_and(|lm| runs_lm(&lm, device))
}

/// The models the export formats can hold: SiLU, tied head; a full-precision one, a ternary one
/// of width 256 (llama.cpp's ternary rows).
fn export_seeds(device: &Device) -> Vec<(BitNetLm, BitNetLmConfig)> {
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

fn gguf() -> Target {
    let device = seeded_device();
    let tokenizer = CharTokenizer::from_text("abc");
    let path = std::env::temp_dir().join(format!("bitnet-fuzz-{}.gguf", std::process::id()));
    let mut seeds = Vec::new();
    for (lm, config) in export_seeds(&device) {
        for ternary in [GgufTernary::Tq2_0, GgufTernary::Tq1_0] {
            export_gguf(&lm, &config, &tokenizer, &path, ternary).expect("exports");
            let bytes = std::fs::read(&path).expect("written");
            // Also as a foreign file: without this crate's configuration key, the reader
            // rebuilds the configuration from llama.cpp's keys.
            let mut foreign = GgufFile::from_bytes(&bytes).expect("reads");
            foreign.metadata.retain(|(k, _)| k != "bitnet_qat.config");
            for bytes in [foreign.to_bytes().expect("writes"), bytes] {
                let fields = gguf_fields(&bytes);
                seeds.push(Seed { bytes, fields });
            }
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
    let device = seeded_device();
    let tokenizer = CharTokenizer::from_text("abc");
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-hf-{}", std::process::id()));
    let mut seeds = Vec::new();
    for (lm, config) in export_seeds(&device) {
        export_hf(&lm, &config, &tokenizer, &dir).expect("exports");
        let read = |name: &str| std::fs::read(dir.join(name)).expect("written");
        let weights = read("model.safetensors");
        let safetensors = {
            let fields = safetensors_fields(&weights);
            (weights, fields)
        };
        let rest = || join(safetensors.clone(), json(read("tokenizer.json")));
        // Also without this crate's configuration (transformers' keys only).
        let mut foreign: serde_json::Value =
            serde_json::from_slice(&read("config.json")).expect("JSON");
        foreign
            .as_object_mut()
            .expect("an object")
            .remove("bitnet_qat_config");
        seeds.push(seed(join(json(foreign.to_string().into_bytes()), rest())));
        seeds.push(seed(join(json(read("config.json")), rest())));
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
