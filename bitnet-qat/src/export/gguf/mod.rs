//! GGUF for llama.cpp: [`export_gguf`] writes a [`BitNetLm`] in llama.cpp's `bitnet`
//! architecture with ternary `TQ2_0`/`TQ1_0` projections, [`import_gguf`] reads such a file
//! (ours or any valid one) back.
//!
//! What llama.cpp's `bitnet` graph is (ggml-org/llama.cpp `src/models/bitnet.cpp`): a tied
//! output head (`token_embd`), a SiLU-gated FFN, SubLN norms, rotary positions in NeoX pairing,
//! one optional F32 scale per projection that multiplies its output. Its ternary types take
//! rows of a multiple of 256 values. On the CPU it quantizes a ternary projection's input to
//! int8 per block of 256 values (`Q8_K`), which is BitNet's per-token absmax when the input is
//! 256 wide and this crate's `Granularity::PerGroup { size: 256 }` activation quantizer
//! otherwise.

mod container;
mod ternary_blocks;
mod vocab;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use half::f16;

pub use container::{GgufFile, GgufTensor, GgufType, GgufValue, TensorType};

use super::ImportedLm;
use super::lm_weights::{
    BlockWeights, FloatBytes, LmWeights, NORM_NAMES, PROJECTION_NAMES, ProjectionWeights,
    decode_floats, stored_config,
};
use crate::error::{QatError, Result};
use crate::lm::CharTokenizer;
use crate::lm::{BitNetLm, BitNetLmConfig, FfnActivation};
use crate::quant::{Granularity, QuantConfig};
use bitnet_kernels::packed::{PackedTernary, TernaryScales};

/// The key of this crate's own [`BitNetLmConfig`] (JSON) in the files it writes, for an exact
/// round trip (llama.cpp ignores it).
const CONFIG_KEY: &str = "bitnet_qat.config";
const ARCH: &str = "bitnet";

/// The ggml type of the ternary projections of an exported file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum GgufTernary {
    /// 2.0625 bits a weight, the faster to decode.
    #[default]
    Tq2_0,
    /// 1.6875 bits a weight, the smaller.
    Tq1_0,
}

impl GgufTernary {
    fn tensor_type(self) -> TensorType {
        match self {
            GgufTernary::Tq2_0 => TensorType::Tq2_0,
            GgufTernary::Tq1_0 => TensorType::Tq1_0,
        }
    }

    /// llama.cpp's `general.file_type` of a file of these projections.
    fn file_type(self) -> u32 {
        match self {
            GgufTernary::Tq2_0 => 37,
            GgufTernary::Tq1_0 => 36,
        }
    }
}

fn unrepresentable(reason: impl Into<String>) -> QatError {
    QatError::Unrepresentable {
        format: "GGUF (llama.cpp bitnet)",
        reason: reason.into(),
    }
}

/// A [`QatError::File`] of a GGUF file: `field` names the key or tensor.
fn bad(field: impl Into<String>, reason: impl Into<String>) -> QatError {
    QatError::File {
        format: "GGUF",
        path: String::new(),
        field: field.into(),
        offset: None,
        reason: reason.into(),
    }
}

/// Writes `lm` (its configuration `config`, its tokenizer `tokenizer`) to `path` as a GGUF
/// file of llama.cpp's `bitnet` architecture, atomically. Ternary projections are written as
/// `ternary` codes with block multiplier exactly 1.0 and their per-tensor scale `1 / s` as an
/// F32 `.scale` tensor: the weights llama.cpp computes with, `value · (1 / s)`, are bit for bit
/// this crate's `value / s` (reading the file back gives `s` within one f32 rounding). The
/// embedding and norms are F32. A model not yet packed is packed first
/// ([`crate::infer::pack`]).
///
/// The vocabulary is a `gpt2` one of single characters (see `docs/export.md`); the
/// configuration is also stored under `bitnet_qat.config` for [`import_gguf`].
///
/// # Errors
/// [`QatError::Unrepresentable`] for what llama.cpp's graph cannot run: squared-ReLU FFNs, an
/// untied output head, ternary projections whose inputs are not a multiple of 256 wide, scales
/// other than one per tensor, sizes above `u32`; [`QatError::Record`] for an I/O error; as
/// [`crate::infer::pack`].
///
/// # Example
/// ```
/// use bitnet_qat::lm::CharTokenizer;
/// use bitnet_qat::export::{GgufTernary, export_gguf, import_gguf};
/// use bitnet_qat::lm::{BitNetLmConfig, FfnActivation};
/// use burn::tensor::{Device, Int, Tensor};
///
/// let device = Device::flex();
/// let tokenizer = CharTokenizer::from_text("to be or not to be");
/// let config = BitNetLmConfig::new(tokenizer.vocab_size(), 256, 1, 4, 256)
///     .with_activation(FfnActivation::Silu);
/// let lm = config.init(&device).unwrap();
/// let path = std::env::temp_dir().join(format!("bitnet-doc-{}.gguf", std::process::id()));
/// export_gguf(&lm, &config, &tokenizer, &path, GgufTernary::Tq2_0).unwrap();
///
/// let imported = import_gguf(&path).unwrap();
/// assert_eq!(imported.tokenizer.as_ref(), Some(&tokenizer));
/// let packed = imported.packed(&device).unwrap();
/// let tokens = Tensor::<2, Int>::from_data([[1, 2, 3]], &device);
/// assert_eq!(packed.forward(tokens).dims(), [1, 3, tokenizer.vocab_size()]);
/// # std::fs::remove_file(&path).unwrap();
/// ```
pub fn export_gguf(
    lm: &BitNetLm,
    config: &BitNetLmConfig,
    tokenizer: &CharTokenizer,
    path: impl AsRef<Path>,
    ternary: GgufTernary,
) -> Result<()> {
    let path = path.as_ref();
    super::check_vocabulary(tokenizer, config)?;
    check_representable(config)?;
    let weights = LmWeights::from_lm(lm, config)?;
    let file = to_gguf(&weights, tokenizer, ternary)?;
    let bytes = file.to_bytes()?;
    bitnet_kernels::file::write_atomic(path, &bytes).map_err(|e| QatError::io(path, e))
}

/// The configurations llama.cpp's `bitnet` graph can run.
fn check_representable(config: &BitNetLmConfig) -> Result<()> {
    config.validate()?;
    if config.activation != FfnActivation::Silu {
        return Err(unrepresentable(
            "llama.cpp's bitnet graph hard-codes a SiLU gate; this model uses squared ReLU \
             (train with FfnActivation::Silu, or export to Hugging Face)",
        ));
    }
    if !config.tied_head {
        return Err(unrepresentable(
            "llama.cpp's bitnet graph ties the output head to token_embd; this model has a \
             separate head (train with tied_head, or export to Hugging Face)",
        ));
    }
    if config.weight_quant.is_some() {
        for (name, width) in [("d_model", config.d_model), ("d_ff", config.d_ff)] {
            if !width.is_multiple_of(ternary_blocks::BLOCK) {
                return Err(unrepresentable(format!(
                    "llama.cpp's ternary types take rows of a multiple of 256 inputs; {name} is \
                     {width}"
                )));
            }
        }
    }
    for (name, v) in [
        ("vocab_size", config.vocab_size),
        ("d_model", config.d_model),
        ("d_ff", config.d_ff),
        ("n_layers", config.n_layers),
        ("max_seq_len", config.max_seq_len),
    ] {
        if u32::try_from(v).is_err() {
            return Err(unrepresentable(format!(
                "{name} {v} does not fit GGUF's u32"
            )));
        }
    }
    Ok(())
}

fn f32_tensor(name: String, dims: Vec<u64>, values: &[f32]) -> GgufTensor {
    GgufTensor {
        name,
        dims,
        ty: TensorType::F32,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn to_gguf(w: &LmWeights, tokenizer: &CharTokenizer, ternary: GgufTernary) -> Result<GgufFile> {
    let c = &w.config;
    let u32_of = |v: usize| GgufValue::U32(v as u32);
    let key = |k: &str| format!("{ARCH}.{k}");
    let (tokens, types) = vocab::tokens_of(tokenizer);
    let file_type = if c.weight_quant.is_some() {
        ternary.file_type()
    } else {
        0
    };
    let metadata = vec![
        (
            "general.architecture".into(),
            GgufValue::String(ARCH.into()),
        ),
        (
            "general.name".into(),
            GgufValue::String("bitnet-qat".into()),
        ),
        ("general.file_type".into(), GgufValue::U32(file_type)),
        (key("vocab_size"), u32_of(c.vocab_size)),
        (key("context_length"), u32_of(c.max_seq_len)),
        (key("embedding_length"), u32_of(c.d_model)),
        (key("block_count"), u32_of(c.n_layers)),
        (key("feed_forward_length"), u32_of(c.d_ff)),
        (key("attention.head_count"), u32_of(c.n_heads)),
        (key("attention.head_count_kv"), u32_of(c.kv_heads())),
        (
            key("attention.layer_norm_rms_epsilon"),
            GgufValue::F32(c.norm_eps as f32),
        ),
        (key("rope.freq_base"), GgufValue::F32(c.rope_theta as f32)),
        (CONFIG_KEY.into(), GgufValue::String(c.to_string())),
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".into(),
            GgufValue::String("default".into()),
        ),
        ("tokenizer.ggml.tokens".into(), GgufValue::strings(tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array {
                elem: GgufType::I32,
                values: types.into_iter().map(GgufValue::I32).collect(),
            },
        ),
        ("tokenizer.ggml.merges".into(), GgufValue::strings([])),
        ("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(0)),
        ("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(0)),
        ("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            GgufValue::Bool(false),
        ),
    ];
    let (d, v) = (c.d_model as u64, c.vocab_size as u64);
    let mut tensors = vec![
        f32_tensor("token_embd.weight".into(), vec![d, v], &w.embedding),
        f32_tensor("output_norm.weight".into(), vec![d], &w.norm),
    ];
    for (i, b) in w.blocks.iter().enumerate() {
        let name = |n: &str| format!("blk.{i}.{n}.weight");
        for (values, (norm, _)) in b.norms().into_iter().zip(NORM_NAMES) {
            tensors.push(f32_tensor(name(norm), vec![values.len() as u64], values));
        }
        for (p, ((proj, _), (d_in, d_out))) in b
            .projections
            .iter()
            .zip(PROJECTION_NAMES.iter().zip(c.projection_dims()))
        {
            let dims = vec![d_in as u64, d_out as u64];
            match p {
                ProjectionWeights::Ternary(t) => {
                    let TernaryScales::PerTensor(s) = t.scales() else {
                        return Err(unrepresentable(format!(
                            "blk.{i}.{proj}: llama.cpp takes one scale per tensor; this \
                             projection has per-row or per-group scales"
                        )));
                    };
                    let ty = ternary.tensor_type();
                    tensors.push(GgufTensor {
                        name: name(proj),
                        dims,
                        ty,
                        data: ternary_blocks::encode(ty, &t.unpack(), f16::ONE),
                    });
                    // `w = value / s`: llama.cpp multiplies the output by 1 / s.
                    tensors.push(f32_tensor(
                        format!("blk.{i}.{proj}.scale"),
                        vec![1],
                        &[1.0 / s],
                    ));
                }
                ProjectionWeights::Float(values) => {
                    tensors.push(f32_tensor(name(proj), dims, values));
                }
            }
        }
    }
    Ok(GgufFile { metadata, tensors })
}

/// Reads a GGUF file of llama.cpp's `bitnet` architecture: one written by [`export_gguf`] (its
/// configuration and ternary values come back exactly, each scale `s` as `1 / (1 / s)` in f32)
/// or any other valid one, whose configuration is rebuilt
/// from llama.cpp's keys (SiLU, tied head, per-tensor ternary weights, activations int8 per
/// group of 256 as llama.cpp computes them). Ternary projections come back with one scale per
/// tensor, per row or per 256-block, whichever their block multipliers need.
///
/// # Errors
/// [`QatError::File`] naming the problem: a truncated or malformed file (see
/// [`GgufFile::from_bytes`]), another architecture, a missing or mistyped key, a missing,
/// extra or misshapen tensor, a tensor type this crate does not read, a non-ternary code, or
/// non-finite or non-positive scales.
pub fn import_gguf(path: impl AsRef<Path>) -> Result<ImportedLm> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| QatError::io(path, e))?;
    import_gguf_bytes(&bytes).map_err(|e| e.in_file(path))
}

/// [`import_gguf`] of a file's bytes.
///
/// # Errors
/// As [`import_gguf`].
pub fn import_gguf_bytes(bytes: &[u8]) -> Result<ImportedLm> {
    let file = GgufFile::from_bytes(bytes)?;
    match file.get("general.architecture") {
        Some(GgufValue::String(a)) if a == ARCH => {}
        other => {
            return Err(bad(
                "general.architecture",
                format!("{other:?}; only llama.cpp's `bitnet` is read"),
            ));
        }
    }
    let tensors: Tensors = file.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    let config = config_of(&file, &tensors)?;
    // A vocabulary of another size is not this model's.
    let tokenizer = tokenizer_of(&file).filter(|t| t.vocab_size() == config.vocab_size);
    let weights = weights_of(&tensors, config)?;
    Ok(ImportedLm { tokenizer, weights })
}

/// A file's tensors by name.
type Tensors<'a> = HashMap<&'a str, &'a GgufTensor>;

fn uint(file: &GgufFile, key: &str) -> Result<Option<usize>> {
    let v = match file.get(key) {
        None => return Ok(None),
        Some(GgufValue::U32(v)) => *v as u64,
        Some(GgufValue::U64(v)) => *v,
        Some(v) => return Err(bad(key, format!("{v:?}, not an unsigned integer"))),
    };
    usize::try_from(v)
        .map(Some)
        .map_err(|_| bad(key, format!("{v} is too large")))
}

fn required(file: &GgufFile, key: &str) -> Result<usize> {
    uint(file, key)?.ok_or_else(|| bad(key, "missing"))
}

fn float(file: &GgufFile, key: &str) -> Result<Option<f64>> {
    match file.get(key) {
        None => Ok(None),
        Some(GgufValue::F32(v)) => Ok(Some(*v as f64)),
        Some(v) => Err(bad(key, format!("{v:?}, not an f32"))),
    }
}

/// The configuration: this crate's own when present (checked against llama.cpp's keys), else
/// rebuilt from the keys and the embedding's shape.
fn config_of(file: &GgufFile, tensors: &Tensors<'_>) -> Result<BitNetLmConfig> {
    let key = |k: &str| format!("{ARCH}.{k}");
    let d_model = required(file, &key("embedding_length"))?;
    let n_layers = required(file, &key("block_count"))?;
    let d_ff = required(file, &key("feed_forward_length"))?;
    let n_heads = required(file, &key("attention.head_count"))?;
    let n_kv_heads = uint(file, &key("attention.head_count_kv"))?.unwrap_or(n_heads);
    let max_seq_len = required(file, &key("context_length"))?;
    let norm_eps = float(file, &key("attention.layer_norm_rms_epsilon"))?
        .ok_or_else(|| bad(key("attention.layer_norm_rms_epsilon"), "missing"))?;
    let rope_theta = float(file, &key("rope.freq_base"))?.unwrap_or(10000.0);
    let embd = tensors
        .get("token_embd.weight")
        .ok_or_else(|| bad("token_embd.weight", "missing tensor"))?;
    let vocab_size = match embd.dims[..] {
        [d, v] if d as usize == d_model => v as usize,
        _ => {
            return Err(bad(
                "token_embd.weight",
                format!("shape {:?}, expected [{d_model}, vocab]", embd.dims),
            ));
        }
    };
    let ternary = tensors
        .get("blk.0.attn_q.weight")
        .is_none_or(|t| matches!(t.ty, TensorType::Tq1_0 | TensorType::Tq2_0));
    let config = match file.get(CONFIG_KEY) {
        Some(GgufValue::String(json)) => stored_config(
            json,
            [vocab_size, d_model, n_layers, d_ff, n_heads, n_kv_heads],
        )
        .map_err(|e| bad(CONFIG_KEY, e))?,
        Some(v) => return Err(bad(CONFIG_KEY, format!("{v:?}, not a string"))),
        None => {
            let (weight_quant, activation_quant) = if ternary {
                (
                    Some(QuantConfig::ternary()),
                    Some(
                        QuantConfig::activation_int8()
                            .with_granularity(Granularity::PerGroup { size: 256 }),
                    ),
                )
            } else {
                (None, None)
            };
            BitNetLmConfig::new(vocab_size, d_model, n_layers, n_heads, d_ff)
                .with_n_kv_heads(Some(n_kv_heads))
                .with_max_seq_len(max_seq_len)
                .with_rope_theta(rope_theta)
                .with_norm_eps(norm_eps)
                .with_activation(FfnActivation::Silu)
                .with_tied_head(true)
                .with_weight_quant(weight_quant)
                .with_activation_quant(activation_quant)
        }
    };
    let stored = file.get(CONFIG_KEY).is_some();
    config.validate().map_err(|e| {
        let (field, reason) = super::config_field(e);
        if field.is_empty() {
            return bad(CONFIG_KEY, reason);
        }
        if stored {
            // The value came from this crate's configuration key.
            return bad(format!("{CONFIG_KEY}.{field}"), reason);
        }
        let key = match field.as_str() {
            "vocab_size" => "token_embd.weight".to_string(),
            "d_model" => key("embedding_length"),
            "n_layers" => key("block_count"),
            "d_ff" => key("feed_forward_length"),
            "n_heads" => key("attention.head_count"),
            "n_kv_heads" => key("attention.head_count_kv"),
            "max_seq_len" => key("context_length"),
            "rope_theta" => key("rope.freq_base"),
            "norm_eps" => key("attention.layer_norm_rms_epsilon"),
            _ => format!("{CONFIG_KEY}.{field}"),
        };
        bad(key, format!("{field} = {reason}"))
    })?;
    Ok(config)
}

fn tokenizer_of(file: &GgufFile) -> Option<CharTokenizer> {
    let Some(GgufValue::String(model)) = file.get("tokenizer.ggml.model") else {
        return None;
    };
    let (
        Some(GgufValue::Array { values: tokens, .. }),
        Some(GgufValue::Array { values: types, .. }),
    ) = (
        file.get("tokenizer.ggml.tokens"),
        file.get("tokenizer.ggml.token_type"),
    )
    else {
        return None;
    };
    let tokens: Option<Vec<&str>> = tokens
        .iter()
        .map(|t| match t {
            GgufValue::String(s) => Some(s.as_str()),
            _ => None,
        })
        .collect();
    let types: Option<Vec<i32>> = types
        .iter()
        .map(|t| match t {
            GgufValue::I32(v) => Some(*v),
            _ => None,
        })
        .collect();
    (model == "gpt2")
        .then(|| vocab::tokenizer_of(&tokens?, &types?))
        .flatten()
}

/// The tensor `name`.
fn tensor<'a>(tensors: &Tensors<'a>, name: &str) -> Result<&'a GgufTensor> {
    tensors
        .get(name)
        .copied()
        .ok_or_else(|| bad(name, "missing tensor"))
}

/// The f32 values of a float tensor of `dims`.
fn floats(tensors: &Tensors<'_>, name: &str, dims: &[usize]) -> Result<Vec<f32>> {
    let t = tensor(tensors, name)?;
    let expected: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
    if t.dims != expected {
        return Err(bad(
            name,
            format!("shape {:?}, expected {expected:?}", t.dims),
        ));
    }
    let kind = match t.ty {
        TensorType::F32 => FloatBytes::F32,
        TensorType::F16 => FloatBytes::F16,
        TensorType::Bf16 => FloatBytes::Bf16,
        ty => {
            return Err(bad(
                name,
                format!("type {}, expected a float type", ty.name()),
            ));
        }
    };
    decode_floats(kind, &t.data).map_err(|i| bad(name, format!("value {i} is not finite")))
}

/// A ternary projection `[d_out rows][d_in]` with its block multipliers times the optional
/// `.scale`, as packed scales (`s = 1 / multiplier`).
fn ternary(
    tensors: &Tensors<'_>,
    name: &str,
    scale_name: &str,
    d_in: usize,
    d_out: usize,
) -> Result<PackedTernary> {
    let t = tensor(tensors, name)?;
    if t.dims != [d_in as u64, d_out as u64] {
        return Err(bad(
            name,
            format!("shape {:?}, expected [{d_in}, {d_out}]", t.dims),
        ));
    }
    if !matches!(t.ty, TensorType::Tq1_0 | TensorType::Tq2_0) {
        return Err(bad(
            name,
            format!(
                "type {} in a ternary model (TQ1_0 or TQ2_0 expected)",
                t.ty.name()
            ),
        ));
    }
    let (mut values, d) = ternary_blocks::decode(t.ty, name, &t.data)?;
    let scale = match tensors.get(scale_name) {
        None => 1.0,
        Some(_) => floats(tensors, scale_name, &[1])?[0],
    };
    let multipliers: Vec<f32> = d.iter().map(|&d| d * scale).collect();
    // An all-zero block (upstream writes d = 0 for it) contributes nothing whatever its
    // multiplier: it takes its row's first usable one.
    let blocks_per_row = d_in / ternary_blocks::BLOCK;
    let mut scales = Vec::with_capacity(multipliers.len());
    for (row, m) in multipliers.chunks(blocks_per_row).enumerate() {
        let usable = m.iter().copied().find(|&m| m != 0.0).unwrap_or(1.0);
        for (b, &m) in m.iter().enumerate() {
            let m = if m == 0.0 {
                let start = (row * blocks_per_row + b) * ternary_blocks::BLOCK;
                values[start..start + ternary_blocks::BLOCK].fill(0);
                usable
            } else {
                m
            };
            let s = 1.0 / m;
            if !(m.is_finite() && s.is_finite() && m > 0.0) {
                return Err(bad(
                    name,
                    format!(
                        "block multiplier {m} (with `.scale` {scale}) is not a positive finite \
                         number"
                    ),
                ));
            }
            scales.push(s);
        }
    }
    let scales = if scales.iter().all(|&s| s == scales[0]) {
        TernaryScales::PerTensor(scales[0])
    } else if scales
        .chunks(blocks_per_row)
        .all(|row| row.iter().all(|&s| s == row[0]))
    {
        TernaryScales::PerRow(scales.chunks(blocks_per_row).map(|r| r[0]).collect())
    } else {
        TernaryScales::PerGroup {
            group: ternary_blocks::BLOCK,
            scales,
        }
    };
    PackedTernary::pack(&values, d_out, d_in, scales).map_err(|e| bad(name, e.to_string()))
}

fn weights_of(tensors: &Tensors<'_>, config: BitNetLmConfig) -> Result<LmWeights> {
    let (d, ff, v) = (config.d_model, config.d_ff, config.vocab_size);
    let mut expected: HashSet<String> =
        HashSet::from(["token_embd.weight".into(), "output_norm.weight".into()]);
    let mut blocks = Vec::new();
    for i in 0..config.n_layers {
        let name = |n: &str| format!("blk.{i}.{n}.weight");
        let mut projections = Vec::with_capacity(7);
        for ((proj, _), (d_in, d_out)) in PROJECTION_NAMES.iter().zip(config.projection_dims()) {
            let (weight, scale) = (name(proj), format!("blk.{i}.{proj}.scale"));
            projections.push(if config.weight_quant.is_some() {
                ProjectionWeights::Ternary(ternary(tensors, &weight, &scale, d_in, d_out)?)
            } else {
                ProjectionWeights::Float(floats(tensors, &weight, &[d_in, d_out])?)
            });
            expected.insert(weight);
            expected.insert(scale);
        }
        let mut norms = Vec::with_capacity(4);
        for ((norm, _), width) in NORM_NAMES.iter().zip([d, d, d, ff]) {
            norms.push(floats(tensors, &name(norm), &[width])?);
            expected.insert(name(norm));
        }
        let norms: [Vec<f32>; 4] = norms
            .try_into()
            .unwrap_or_else(|_| unreachable!("four norms"));
        blocks.push(BlockWeights::new(norms, projections));
    }
    if let Some(extra) = tensors.keys().find(|n| !expected.contains(**n)) {
        return Err(bad(
            *extra,
            format!(
                "not part of llama.cpp's bitnet architecture{}",
                if *extra == "output.weight" {
                    " (its output head is tied to token_embd)"
                } else {
                    ""
                }
            ),
        ));
    }
    let weights = LmWeights {
        embedding: floats(tensors, "token_embd.weight", &[d, v])?,
        head: None,
        norm: floats(tensors, "output_norm.weight", &[d])?,
        blocks,
        config,
    };
    weights.check().map_err(|e| match e {
        QatError::Mismatch {
            what,
            expected,
            found,
        } => bad(what, format!("expected {expected}, found {found}")),
        other => bad("", other.to_string()),
    })?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Int, Tensor};

    fn config() -> BitNetLmConfig {
        BitNetLmConfig::new(9, 256, 2, 4, 512)
            .with_n_kv_heads(Some(2))
            .with_activation(FfnActivation::Silu)
            .with_max_seq_len(32)
    }

    fn tokenizer() -> CharTokenizer {
        CharTokenizer::from_text("abcdefgh")
    }

    fn export(config: &BitNetLmConfig, ternary: GgufTernary) -> Result<Vec<u8>> {
        let device = Device::flex();
        let lm = config.init(&device)?;
        let w = LmWeights::from_lm(&lm, config)?;
        check_representable(config)?;
        to_gguf(&w, &tokenizer(), ternary)?.to_bytes()
    }

    #[test]
    fn exports_round_trip_exactly_in_both_ternary_types() {
        let device = Device::flex();
        let config = config();
        let lm = config.init(&device).unwrap();
        let original = LmWeights::from_lm(&lm, &config).unwrap();
        let tokens = Tensor::<2, Int>::from_data([[1, 5, 2, 8, 3]], &device);
        let reference = original.packed_lm(&device).unwrap().forward(tokens.clone());
        for ternary in [GgufTernary::Tq2_0, GgufTernary::Tq1_0] {
            let bytes = to_gguf(&original, &tokenizer(), ternary)
                .unwrap()
                .to_bytes()
                .unwrap();
            let imported = import_gguf_bytes(&bytes).unwrap();
            assert_eq!(imported.tokenizer, Some(tokenizer()));
            assert_eq!(imported.config().to_string(), config.to_string());
            for (a, b) in imported.weights.blocks.iter().zip(&original.blocks) {
                for (p, q) in a.projections.iter().zip(&b.projections) {
                    let (ProjectionWeights::Ternary(p), ProjectionWeights::Ternary(q)) = (p, q)
                    else {
                        panic!("ternary projections expected");
                    };
                    assert_eq!(p.unpack(), q.unpack());
                    // 1 / (1 / s) is s again for these scales, or within one rounding.
                    let (TernaryScales::PerTensor(x), TernaryScales::PerTensor(y)) =
                        (p.scales(), q.scales())
                    else {
                        panic!("per-tensor scales expected");
                    };
                    assert!((x - y).abs() <= y.abs() * f32::EPSILON, "{x} vs {y}");
                }
            }
            let logits = imported.packed(&device).unwrap().forward(tokens.clone());
            let diff = (logits - reference.clone())
                .abs()
                .max()
                .into_scalar::<f32>();
            assert!(diff < 1e-4, "{ternary:?}: {diff}");
        }
    }

    #[test]
    fn unrepresentable_models_are_typed_errors() {
        let reason = |config: BitNetLmConfig| match export(&config, GgufTernary::Tq2_0) {
            Err(QatError::Unrepresentable { reason, .. }) => reason,
            other => panic!("expected Unrepresentable, got {:?}", other.map(|b| b.len())),
        };
        assert!(reason(config().with_activation(FfnActivation::ReluSquared)).contains("SiLU"));
        assert!(reason(config().with_tied_head(false)).contains("tied"));
        assert!(
            reason(BitNetLmConfig::new(9, 128, 1, 4, 256).with_activation(FfnActivation::Silu))
                .contains("d_model is 128")
        );
        assert!(
            reason(config().with_weight_quant(Some(
                QuantConfig::ternary().with_granularity(Granularity::PerChannel)
            )))
            .contains("one scale per tensor")
        );
    }

    #[test]
    fn foreign_and_broken_files_are_named() {
        let good = export(&config(), GgufTernary::Tq2_0).unwrap();
        let mut file = GgufFile::from_bytes(&good).unwrap();
        // "field: reason" of the error.
        let reason = |file: &GgufFile| match import_gguf_bytes(&file.to_bytes().unwrap()) {
            Err(QatError::File { field, reason, .. }) => format!("{field}: {reason}"),
            other => panic!("expected a file error, got {:?}", other.map(|_| ())),
        };
        let mut untied = file.clone();
        untied.tensors.push(f32_tensor(
            "output.weight".into(),
            vec![256, 9],
            &[0.0; 256 * 9],
        ));
        assert_eq!(
            reason(&untied),
            "output.weight: not part of llama.cpp's bitnet architecture (its output head is tied \
             to token_embd)"
        );
        let mut missing = file.clone();
        missing
            .tensors
            .retain(|t| t.name != "blk.1.ffn_down.weight");
        assert_eq!(reason(&missing), "blk.1.ffn_down.weight: missing tensor");
        let mut arch = file.clone();
        arch.metadata[0].1 = GgufValue::String("llama".into());
        assert!(
            reason(&arch).starts_with("general.architecture: ")
                && reason(&arch).contains("only llama.cpp's `bitnet`")
        );
        // A foreign file: no crate configuration, an upstream-style scale folded into d.
        file.metadata.retain(|(k, _)| k != CONFIG_KEY);
        let imported = import_gguf_bytes(&file.to_bytes().unwrap()).unwrap();
        assert_eq!(
            imported
                .config()
                .activation_quant
                .as_ref()
                .unwrap()
                .granularity,
            Granularity::PerGroup { size: 256 }
        );
        let t = file
            .tensors
            .iter_mut()
            .find(|t| t.name == "blk.0.attn_q.scale")
            .unwrap();
        t.data = (-1.0f32).to_le_bytes().to_vec();
        let scale = reason(&file);
        assert!(
            scale.starts_with("blk.0.attn_q.weight: ")
                && scale.contains("not a positive finite number"),
            "{scale}"
        );
    }
}
