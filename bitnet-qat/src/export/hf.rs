//! Hugging Face transformers' `BitNetForCausalLM` (`model_type: "bitnet"`, transformers
//! `models/bitnet` and `integrations/bitnet.py`): [`export_hf`] writes `config.json`,
//! `model.safetensors` (ternary projections packed offline as transformers' `bitlinear` layer
//! reads them) and `tokenizer.json`; [`import_hf`] reads such a folder back.
//!
//! The packed layout: a projection of `out` outputs and `in` inputs is a `uint8` tensor
//! `[out / 4, in]` whose byte `[p, c]` holds the codes `w + 1` of rows `p`, `P + p`, `2P + p`
//! and `3P + p` (`P = out / 4`) at bits 0, 2, 4 and 6; `bitlinear` divides its output by the
//! one-element `weight_scale`, which is this crate's `s` (`w = value / s`).

use std::collections::HashMap;
use std::path::Path;

use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde_json::{Value, json};

use super::ImportedLm;
use super::lm_weights::{
    BlockWeights, FloatBytes, LmWeights, NORM_NAMES, PROJECTION_NAMES, ProjectionWeights,
    decode_floats, stored_config,
};
use crate::error::{QatError, Result};
use crate::lm::{BitNetLm, BitNetLmConfig, FfnActivation};
use crate::lm::{CharTokenizer, UNKNOWN_TOKEN};
use crate::quant::QuantConfig;

/// The files of an exported folder.
const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const TOKENIZER: &str = "tokenizer.json";
/// The key of this crate's own configuration in `config.json` (transformers keeps unknown
/// keys as attributes).
const CONFIG_KEY: &str = "bitnet_qat_config";
use super::UNKNOWN_TEXT;

fn unrepresentable(reason: impl Into<String>) -> QatError {
    QatError::Unrepresentable {
        format: "Hugging Face BitNet",
        reason: reason.into(),
    }
}

/// A [`QatError::File`] of the file `format` read from memory: `field` names the key or tensor.
fn bad(format: &'static str, field: impl Into<String>, reason: impl Into<String>) -> QatError {
    QatError::File {
        format,
        path: String::new(),
        field: field.into(),
        offset: None,
        reason: reason.into(),
    }
}

/// Writes `lm` (configuration `config`, tokenizer `tokenizer`) into the folder `dir` as a
/// Hugging Face `BitNetForCausalLM`: `config.json`, `model.safetensors` (f32 embedding, norms
/// and head; ternary projections as packed `uint8` with their `weight_scale`, or f32 for a
/// full-precision model) and `tokenizer.json` (a character-level BPE without merges). Each file
/// is written atomically. A model not yet packed is packed first.
///
/// # Errors
/// [`QatError::Unrepresentable`] for projections with scales other than one per tensor or a
/// number of outputs that is not a multiple of 4 (transformers' packing); [`QatError::Record`]
/// for an I/O error; as [`crate::infer::pack`].
///
/// # Example
/// ```
/// use bitnet_qat::lm::CharTokenizer;
/// use bitnet_qat::export::{export_hf, import_hf};
/// use bitnet_qat::lm::BitNetLmConfig;
/// use burn::tensor::Device;
///
/// let device = Device::flex();
/// let tokenizer = CharTokenizer::from_text("to be or not to be");
/// let config = BitNetLmConfig::new(tokenizer.vocab_size(), 64, 1, 4, 128);
/// let lm = config.init(&device).unwrap();
/// let dir = std::env::temp_dir().join(format!("bitnet-doc-hf-{}", std::process::id()));
/// export_hf(&lm, &config, &tokenizer, &dir).unwrap();
/// let imported = import_hf(&dir).unwrap();
/// assert_eq!(imported.config().d_model, 64);
/// assert_eq!(imported.tokenizer, Some(tokenizer));
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
pub fn export_hf(
    lm: &BitNetLm,
    config: &BitNetLmConfig,
    tokenizer: &CharTokenizer,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    super::check_vocabulary(tokenizer, config)?;
    let weights = LmWeights::from_lm(lm, config)?;
    let tensors = safetensors_bytes(&weights)?;
    std::fs::create_dir_all(dir).map_err(|e| QatError::io(dir, e))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        bitnet_kernels::file::write_atomic(&path, bytes).map_err(|e| QatError::io(&path, e))
    };
    let pretty = |v: &Value| {
        serde_json::to_vec_pretty(v).map_err(|e| unrepresentable(format!("encoding JSON: {e}")))
    };
    write(WEIGHTS, &tensors)?;
    write(TOKENIZER, &pretty(&tokenizer_json(tokenizer))?)?;
    write(CONFIG, &pretty(&config_json(config)?)?)
}

/// `config.json`.
fn config_json(c: &BitNetLmConfig) -> Result<Value> {
    let mut config = json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "vocab_size": c.vocab_size,
        "hidden_size": c.d_model,
        "intermediate_size": c.d_ff,
        "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads,
        "num_key_value_heads": c.kv_heads(),
        "hidden_act": match c.activation {
            FfnActivation::ReluSquared => "relu2",
            FfnActivation::Silu => "silu",
        },
        "max_position_embeddings": c.max_seq_len,
        "rms_norm_eps": c.norm_eps,
        "tie_word_embeddings": c.tied_head,
        "rope_theta": c.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "attention_bias": false,
        "attention_dropout": 0.0,
        "torch_dtype": "float32",
        "bos_token_id": UNKNOWN_TOKEN,
        "eos_token_id": UNKNOWN_TOKEN,
    });
    if c.weight_quant.is_some() {
        config["quantization_config"] = json!({
            "quant_method": "bitnet",
            "linear_class": "bitlinear",
            "quantization_mode": "offline",
        });
    }
    config[CONFIG_KEY] = serde_json::from_str(&c.to_string())
        .map_err(|e| unrepresentable(format!("encoding the configuration: {e}")))?;
    Ok(config)
}

/// `tokenizer.json` of the `tokenizers` library: a BPE model whose vocabulary is the
/// characters (no merges, so text splits into characters), `<unk>` for the rest, and a `Fuse`
/// decoder that joins the characters back.
fn tokenizer_json(tokenizer: &CharTokenizer) -> Value {
    let mut vocab = serde_json::Map::new();
    vocab.insert(UNKNOWN_TEXT.into(), json!(UNKNOWN_TOKEN));
    for (i, c) in tokenizer.chars().iter().enumerate() {
        vocab.insert(c.to_string(), json!(i + 1));
    }
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{
            "id": UNKNOWN_TOKEN, "content": UNKNOWN_TEXT, "single_word": false,
            "lstrip": false, "rstrip": false, "normalized": false, "special": true
        }],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": UNKNOWN_TEXT,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": []
        }
    })
}

/// The packed `[out / 4, in]` bytes of transformers' offline `bitlinear` weight.
fn pack_rows(t: &PackedTernary) -> Vec<u8> {
    let (rows, cols) = (t.rows(), t.cols());
    let p = rows / 4;
    let values = t.unpack();
    let mut out = vec![0u8; p * cols];
    for i in 0..4 {
        for r in 0..p {
            let row = &values[(i * p + r) * cols..(i * p + r + 1) * cols];
            for (byte, &v) in out[r * cols..(r + 1) * cols].iter_mut().zip(row) {
                *byte |= ((v + 1) as u8) << (2 * i);
            }
        }
    }
    out
}

/// The values `[out][in]` of transformers' packed bytes.
fn unpack_rows(name: &str, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<i8>> {
    let p = rows / 4;
    let mut values = vec![0i8; rows * cols];
    for (j, &byte) in bytes.iter().enumerate() {
        let (r, c) = (j / cols, j % cols);
        for i in 0..4 {
            let code = (byte >> (2 * i)) & 3;
            if code == 3 {
                return Err(bad(
                    "safetensors",
                    name,
                    format!("byte {j} holds the code 3, not a ternary value"),
                ));
            }
            values[(i * p + r) * cols + c] = code as i8 - 1;
        }
    }
    Ok(values)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn safetensors_bytes(w: &LmWeights) -> Result<Vec<u8>> {
    let c = &w.config;
    let (d, v) = (c.d_model, c.vocab_size);
    // (name, dtype, shape, bytes)
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
        (
            "model.embed_tokens.weight".into(),
            Dtype::F32,
            vec![v, d],
            f32_bytes(&w.embedding),
        ),
        (
            "model.norm.weight".into(),
            Dtype::F32,
            vec![d],
            f32_bytes(&w.norm),
        ),
    ];
    if let Some(head) = &w.head {
        tensors.push((
            "lm_head.weight".into(),
            Dtype::F32,
            vec![v, d],
            f32_bytes(head),
        ));
    }
    for (i, b) in w.blocks.iter().enumerate() {
        let name = |n: &str| format!("model.layers.{i}.{n}");
        for (values, (_, norm)) in b.norms().into_iter().zip(NORM_NAMES) {
            tensors.push((
                name(&format!("{norm}.weight")),
                Dtype::F32,
                vec![values.len()],
                f32_bytes(values),
            ));
        }
        for (p, ((_, proj), (d_in, d_out))) in b
            .projections
            .iter()
            .zip(PROJECTION_NAMES.iter().zip(c.projection_dims()))
        {
            match p {
                ProjectionWeights::Ternary(t) => {
                    let TernaryScales::PerTensor(s) = t.scales() else {
                        return Err(unrepresentable(format!(
                            "layer {i} {proj}: transformers' bitlinear takes one weight_scale \
                             per tensor; this projection has per-row or per-group scales"
                        )));
                    };
                    if !d_out.is_multiple_of(4) {
                        return Err(unrepresentable(format!(
                            "layer {i} {proj}: transformers packs four rows a byte; {d_out} \
                             outputs is not a multiple of 4"
                        )));
                    }
                    tensors.push((
                        name(&format!("{proj}.weight")),
                        Dtype::U8,
                        vec![d_out / 4, d_in],
                        pack_rows(t),
                    ));
                    tensors.push((
                        name(&format!("{proj}.weight_scale")),
                        Dtype::F32,
                        vec![1],
                        f32_bytes(&[*s]),
                    ));
                }
                ProjectionWeights::Float(values) => tensors.push((
                    name(&format!("{proj}.weight")),
                    Dtype::F32,
                    vec![d_out, d_in],
                    f32_bytes(values),
                )),
            }
        }
    }
    let views = tensors
        .iter()
        .map(|(n, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes).map(|view| (n.clone(), view))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| unrepresentable(format!("a safetensors view: {e}")))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| unrepresentable(format!("encoding safetensors: {e}")))
}

/// Reads a folder written by [`export_hf`], or any `BitNetForCausalLM` folder whose weights
/// are one `model.safetensors` with offline-packed `bitlinear` projections (or f32/f16/bf16
/// ones for a full-precision model). Without this crate's own configuration in `config.json`,
/// activations are quantized per token to int8 (transformers' `bitlinear`).
///
/// # Errors
/// [`QatError::Io`] for a missing or unreadable `config.json` or `model.safetensors`;
/// [`QatError::File`] naming the file, the key or tensor and the problem: a malformed file,
/// another `model_type`, a missing key, a configuration value out of range, a missing or
/// misshapen tensor, a non-ternary code, a scale that is not positive and finite.
pub fn import_hf(dir: impl AsRef<Path>) -> Result<ImportedLm> {
    let dir = dir.as_ref();
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| QatError::io(&path, e))
    };
    let config = read(CONFIG)?;
    let weights = read(WEIGHTS)?;
    let tokenizer = read(TOKENIZER).ok();
    import_hf_bytes(&config, &weights, tokenizer.as_deref()).map_err(|e| {
        let file = match &e {
            QatError::File {
                format: "config.json",
                ..
            } => CONFIG,
            _ => WEIGHTS,
        };
        e.in_file(&dir.join(file))
    })
}

/// [`import_hf`] of the bytes of `config.json`, `model.safetensors` and, if any,
/// `tokenizer.json`.
///
/// # Errors
/// As [`import_hf`].
pub fn import_hf_bytes(
    config: &[u8],
    weights: &[u8],
    tokenizer: Option<&[u8]>,
) -> Result<ImportedLm> {
    if config.len() > MAX_CONFIG_BYTES {
        return Err(bad(
            "config.json",
            "",
            format!(
                "{} bytes; a transformers configuration takes a few kB, this reader reads at \
                 most {MAX_CONFIG_BYTES}",
                config.len()
            ),
        ));
    }
    let config: Value = serde_json::from_slice(config).map_err(|e| QatError::File {
        format: "config.json",
        path: String::new(),
        field: String::new(),
        offset: crate::error::json_offset(config, e.line(), e.column()),
        reason: e.to_string(),
    })?;
    let config = config_of(&config)?;
    // A vocabulary of another size is not this model's.
    let tokenizer = tokenizer
        .and_then(super::hf_tokenizer::tokenizer_of)
        .filter(|t| t.vocab_size() == config.vocab_size);
    let weights = weights_of(weights, config)?;
    Ok(ImportedLm { tokenizer, weights })
}

/// The largest `config.json` read (1 MiB): its JSON document takes up to 32 times its size in
/// memory, so a larger one is refused rather than parsed.
const MAX_CONFIG_BYTES: usize = 1 << 20;

fn config_of(v: &Value) -> Result<BitNetLmConfig> {
    let bad = |field: &str, r: String| bad("config.json", field, r);
    if v["model_type"] != "bitnet" {
        return Err(bad(
            "model_type",
            format!("{}, not \"bitnet\"", v["model_type"]),
        ));
    }
    let uint = |key: &str| {
        v[key]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad(key, format!("{}, not an unsigned integer", v[key])))
    };
    let float = |key: &str, default: Option<f64>| match (&v[key], default) {
        (Value::Null, Some(d)) => Ok(d),
        (x, _) => x
            .as_f64()
            .ok_or_else(|| bad(key, format!("{x}, not a number"))),
    };
    let (vocab_size, d_model, d_ff, n_layers, n_heads) = (
        uint("vocab_size")?,
        uint("hidden_size")?,
        uint("intermediate_size")?,
        uint("num_hidden_layers")?,
        uint("num_attention_heads")?,
    );
    let n_kv_heads = match v["num_key_value_heads"] {
        Value::Null => n_heads,
        _ => uint("num_key_value_heads")?,
    };
    let config = if let Some(ours) = v.get(CONFIG_KEY) {
        stored_config(
            &ours.to_string(),
            [vocab_size, d_model, n_layers, d_ff, n_heads, n_kv_heads],
        )
        .map_err(|e| bad(CONFIG_KEY, e))?
    } else {
        let activation = match v["hidden_act"].as_str().unwrap_or("relu2") {
            "relu2" => FfnActivation::ReluSquared,
            "silu" => FfnActivation::Silu,
            other => return Err(bad("hidden_act", format!("{other:?} (relu2 or silu)"))),
        };
        let quantized = match &v["quantization_config"] {
            Value::Null => false,
            q if q["quant_method"] == "bitnet" => true,
            q => return Err(bad("quantization_config", format!("{q} is not BitNet's"))),
        };
        let rope_theta = match &v["rope_parameters"]["rope_theta"] {
            Value::Null => float("rope_theta", Some(500_000.0))?,
            x => x
                .as_f64()
                .ok_or_else(|| bad("rope_parameters.rope_theta", format!("{x}, not a number")))?,
        };
        BitNetLmConfig::new(vocab_size, d_model, n_layers, n_heads, d_ff)
            .with_n_kv_heads(Some(n_kv_heads))
            .with_max_seq_len(uint("max_position_embeddings")?)
            .with_rope_theta(rope_theta)
            .with_norm_eps(float("rms_norm_eps", None)?)
            .with_activation(activation)
            .with_tied_head(v["tie_word_embeddings"].as_bool().unwrap_or(false))
            .with_weight_quant(quantized.then(QuantConfig::ternary))
            .with_activation_quant(quantized.then(QuantConfig::activation_int8))
    };
    let stored = v.get(CONFIG_KEY).is_some();
    config.validate().map_err(|e| {
        let (field, reason) = super::config_field(e);
        if field.is_empty() {
            return bad(CONFIG_KEY, reason);
        }
        if stored {
            // The value came from this crate's configuration key.
            return bad(&format!("{CONFIG_KEY}.{field}"), reason);
        }
        let key = match field.as_str() {
            "vocab_size" => "vocab_size",
            "d_model" => "hidden_size",
            "n_layers" => "num_hidden_layers",
            "d_ff" => "intermediate_size",
            "n_heads" => "num_attention_heads",
            "n_kv_heads" => "num_key_value_heads",
            "max_seq_len" => "max_position_embeddings",
            "rope_theta" => "rope_theta",
            "norm_eps" => "rms_norm_eps",
            _ => CONFIG_KEY,
        };
        bad(key, format!("{field} = {reason}"))
    })?;
    Ok(config)
}

/// The values of tensor `name` as f32, checked to be `shape` and finite.
fn floats(st: &SafeTensors<'_>, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let bad = |r: String| bad("safetensors", name, r);
    let t = st.tensor(name).map_err(|_| bad("missing tensor".into()))?;
    if t.shape() != shape {
        return Err(bad(format!("shape {:?}, expected {shape:?}", t.shape())));
    }
    let kind = match t.dtype() {
        Dtype::F32 => FloatBytes::F32,
        Dtype::F16 => FloatBytes::F16,
        Dtype::BF16 => FloatBytes::Bf16,
        other => return Err(bad(format!("dtype {other:?}, expected a float type"))),
    };
    decode_floats(kind, t.data()).map_err(|i| bad(format!("value {i} is not finite")))
}

fn weights_of(bytes: &[u8], config: BitNetLmConfig) -> Result<LmWeights> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| bad("safetensors", "header", e.to_string()))?;
    let (d, ff, v) = (config.d_model, config.d_ff, config.vocab_size);
    let mut blocks = Vec::new();
    for i in 0..config.n_layers {
        let name = |n: &str| format!("model.layers.{i}.{n}");
        let mut projections = Vec::with_capacity(7);
        for ((_, proj), (d_in, d_out)) in PROJECTION_NAMES.iter().zip(config.projection_dims()) {
            let weight = name(&format!("{proj}.weight"));
            projections.push(if config.weight_quant.is_some() {
                let err = |r: String| bad("safetensors", &weight, r);
                let t = st
                    .tensor(&weight)
                    .map_err(|_| err("missing tensor".into()))?;
                if t.dtype() != Dtype::U8
                    || t.shape() != [d_out / 4, d_in]
                    || !d_out.is_multiple_of(4)
                {
                    return Err(err(format!(
                        "{:?} {:?}, expected U8 [{}, {d_in}] (packed offline bitlinear)",
                        t.dtype(),
                        t.shape(),
                        d_out / 4
                    )));
                }
                let values = unpack_rows(&weight, t.data(), d_out, d_in)?;
                let s = floats(&st, &name(&format!("{proj}.weight_scale")), &[1])?[0];
                if !(s > 0.0 && s.is_finite()) {
                    return Err(err(format!("weight_scale {s} is not positive and finite")));
                }
                ProjectionWeights::Ternary(
                    PackedTernary::pack(&values, d_out, d_in, TernaryScales::PerTensor(s))
                        .map_err(|e| err(e.to_string()))?,
                )
            } else {
                ProjectionWeights::Float(floats(&st, &weight, &[d_out, d_in])?)
            });
        }
        let mut norms = Vec::with_capacity(4);
        for ((_, norm), width) in NORM_NAMES.iter().zip([d, d, d, ff]) {
            norms.push(floats(&st, &name(&format!("{norm}.weight")), &[width])?);
        }
        let norms: [Vec<f32>; 4] = norms
            .try_into()
            .unwrap_or_else(|_| unreachable!("four norms"));
        blocks.push(BlockWeights::new(norms, projections));
    }
    let head = if config.tied_head {
        None
    } else {
        Some(floats(&st, "lm_head.weight", &[v, d])?)
    };
    let weights = LmWeights {
        embedding: floats(&st, "model.embed_tokens.weight", &[v, d])?,
        head,
        norm: floats(&st, "model.norm.weight", &[d])?,
        blocks,
        config,
    };
    weights.check().map_err(|e| match e {
        QatError::Mismatch {
            what,
            expected,
            found,
        } => bad(
            "safetensors",
            what,
            format!("expected {expected}, found {found}"),
        ),
        other => bad("safetensors", "", other.to_string()),
    })?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Int, Tensor};

    #[test]
    fn transformers_packing_golden_layout() {
        // 8 rows (P = 2), 1 column: byte p holds rows p, 2 + p, 4 + p, 6 + p.
        let values: Vec<i8> = vec![1, 0, -1, 1, 0, 0, -1, 1];
        let t = PackedTernary::pack(&values, 8, 1, TernaryScales::PerTensor(1.0)).unwrap();
        let bytes = pack_rows(&t);
        // Rows 0, 2, 4, 6 = 1, -1, 0, -1 → codes 2, 0, 1, 0.
        assert_eq!(bytes[0], 2 | (1 << 4));
        // Rows 1, 3, 5, 7 = 0, 1, 0, 1 → codes 1, 2, 1, 2.
        assert_eq!(bytes[1], 1 | (2 << 2) | (1 << 4) | (2 << 6));
        assert_eq!(unpack_rows("w", &bytes, 8, 1).unwrap(), values);
        assert!(matches!(
            unpack_rows("w", &[0xFF, 0], 8, 1),
            Err(QatError::File { reason, .. }) if reason.contains("code 3")
        ));
    }

    #[test]
    fn folders_round_trip_for_both_activations_and_heads() {
        let device = Device::flex();
        let tokenizer = CharTokenizer::from_text("abcdefg\n");
        let tokens = Tensor::<2, Int>::from_data([[1, 4, 2, 8]], &device);
        for config in [
            BitNetLmConfig::new(9, 64, 2, 4, 96).with_n_kv_heads(Some(2)),
            BitNetLmConfig::new(9, 64, 1, 4, 96)
                .with_tied_head(false)
                .with_activation(FfnActivation::Silu),
        ] {
            let lm = config.init(&device).unwrap();
            let dir = std::env::temp_dir().join(format!(
                "bitnet-hf-test-{}-{}",
                std::process::id(),
                config.tied_head
            ));
            export_hf(&lm, &config, &tokenizer, &dir).unwrap();
            let imported = import_hf(&dir).unwrap();
            assert_eq!(imported.config().to_string(), config.to_string());
            assert_eq!(imported.tokenizer.as_ref(), Some(&tokenizer));
            let a = crate::infer::pack(&lm).unwrap().forward(tokens.clone());
            let b = imported.packed(&device).unwrap().forward(tokens.clone());
            assert_eq!(a.into_data(), b.into_data());
            // Without this crate's configuration, the transformers keys give the same model.
            let mut json: Value =
                serde_json::from_slice(&std::fs::read(dir.join(CONFIG)).unwrap()).unwrap();
            json.as_object_mut().unwrap().remove(CONFIG_KEY);
            let plain = config_of(&json).unwrap();
            assert_eq!(plain.activation, config.activation);
            assert_eq!(plain.tied_head, config.tied_head);
            assert_eq!(plain.kv_heads(), config.kv_heads());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
}
