//! Exported files read by the real clients (tests/python/check_export.py in the virtual
//! environment of scripts/install-python.sh): Python `gguf` reads every key and ternary weight
//! bit-exactly, llama.cpp (llama-cpp-python) computes the packed model's logits and greedy
//! tokens, Python `safetensors` and `tokenizers` read the Hugging Face folder.

use std::path::{Path, PathBuf};
use std::process::Command;

use bitnet_kernels::packed::TernaryScales;
use bitnet_qat::export::{
    GgufFile, GgufTernary, GgufValue, export_gguf, export_hf, import_gguf, import_hf,
};
use bitnet_qat::infer::pack;
use bitnet_qat::lm::CharTokenizer;
use bitnet_qat::lm::{BitNetLm, BitNetLmConfig, FfnActivation, Sampling, generate};
use bitnet_qat::quant::{Granularity, QuantConfig};
use burn::nn::Initializer;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::{skip, values};

const TEXT: &str = "ROMEO. But soft, what light through yonder window breaks?\n\
                    It is the east, and Juliet is the sun.\n";

/// An empty temporary folder for `name`.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = crate::fresh_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Python of the export tests' environment, if installed.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("BITNET_QAT_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/bitnet-qat-venv"))
        })?;
    let python = venv.join("bin/python");
    python.exists().then_some(python)
}

/// Runs `check_export.py args`, asserting success; its JSON report.
fn check(python: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/check_export.py");
    let out = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("running the Python checker");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "check_export.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("check_export.py {}: {stdout}", args[0]);
    stdout
}

/// A seeded ternary LM that llama.cpp can run and that computes activations as llama.cpp does
/// (int8 per 256-block): width 256, FFN 512 (two blocks per row), grouped-query heads.
fn model(device: &Device) -> (BitNetLm, BitNetLmConfig, CharTokenizer) {
    let tokenizer = CharTokenizer::from_text(TEXT);
    let config = BitNetLmConfig::new(tokenizer.vocab_size(), 256, 2, 4, 512)
        .with_n_kv_heads(Some(2))
        .with_max_seq_len(128)
        .with_activation(FfnActivation::Silu)
        .with_activation_quant(Some(
            QuantConfig::activation_int8().with_granularity(Granularity::PerGroup { size: 256 }),
        ))
        // Wider logits than the default init: the argmax of every position has a margin.
        // (Both engines sum integer codes; their float scaling differs in the last bits, which
        // can flip one activation code at a rounding boundary: at std 0.5 one position of this
        // sequence differs by 9.5e-2 that way, the other 39 by at most 2e-5.)
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.1,
        });
    device.seed(7);
    let lm = config.init(device).unwrap();
    (pack(&lm).unwrap(), config, tokenizer)
}

/// Writes each projection's ternary values and scales for the checker.
fn write_expected(lm: &BitNetLm, file: &GgufFile, tokenizer: &CharTokenizer, dir: &Path) {
    let names = [
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ];
    let mut projections = serde_json::Map::new();
    let mut hf_tensors = vec![
        "model.embed_tokens.weight".to_string(),
        "model.norm.weight".to_string(),
    ];
    for (i, block) in lm.blocks.iter().enumerate() {
        let layers = [
            &block.attention.q_proj,
            &block.attention.k_proj,
            &block.attention.v_proj,
            &block.attention.o_proj,
            &block.ffn.gate_proj,
            &block.ffn.up_proj,
            &block.ffn.down_proj,
        ];
        for n in [
            "input_layernorm",
            "self_attn.attn_sub_norm",
            "post_attention_layernorm",
            "mlp.ffn_sub_norm",
        ] {
            hf_tensors.push(format!("model.layers.{i}.{n}.weight"));
        }
        for (layer, (gguf, hf)) in layers.iter().zip(names) {
            let packed = layer
                .bit_linear()
                .and_then(|l| l.packed_weight())
                .unwrap()
                .to_packed()
                .unwrap();
            let TernaryScales::PerTensor(s) = packed.scales() else {
                panic!("per-tensor scales");
            };
            let name = format!("blk.{i}.{gguf}");
            let values: Vec<u8> = packed.unpack().iter().map(|&v| v as u8).collect();
            std::fs::write(dir.join(format!("{name}.i8")), values).unwrap();
            let hf = format!("model.layers.{i}.{hf}");
            hf_tensors.push(format!("{hf}.weight"));
            hf_tensors.push(format!("{hf}.weight_scale"));
            projections.insert(
                name.clone(),
                serde_json::json!({
                    "file": format!("{name}.i8"),
                    "shape": [packed.rows(), packed.cols()],
                    "gguf_scale_bits": (1.0 / s).to_bits(),
                    "s_bits": s.to_bits(),
                    "hf": hf,
                }),
            );
        }
    }
    let mut keys = serde_json::Map::new();
    for (key, value) in &file.metadata {
        let entry = match value {
            GgufValue::U32(v) => serde_json::json!(["UINT32", v]),
            GgufValue::F32(v) => serde_json::json!(["FLOAT32", v.to_bits()]),
            GgufValue::Bool(v) => serde_json::json!(["BOOL", v]),
            GgufValue::String(v) => serde_json::json!(["STRING", v]),
            GgufValue::Array { values, .. } => serde_json::json!([
                "ARRAY",
                values
                    .iter()
                    .map(|v| match v {
                        GgufValue::String(s) => serde_json::json!(s),
                        GgufValue::I32(i) => serde_json::json!(i),
                        other => panic!("unexpected array element {other:?}"),
                    })
                    .collect::<Vec<_>>()
            ]),
            other => panic!("unexpected key type {other:?}"),
        };
        keys.insert(key.clone(), entry);
    }
    let expected = serde_json::json!({
        "keys": keys,
        "tensors": file.tensors.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "ternary_type": "TQ2_0",
        "projections": projections,
        "hf_tensors": hf_tensors,
        "text_ids": tokenizer.encode(TEXT),
    });
    std::fs::write(dir.join("expected.json"), expected.to_string()).unwrap();
    std::fs::write(dir.join("text.txt"), TEXT).unwrap();
}

#[test]
fn gguf_keys_and_ternary_weights_read_by_python_gguf_bit_exactly() {
    let device = Device::flex();
    let (lm, config, tokenizer) = model(&device);
    let dir = fresh_dir("export-gguf-py");
    let path = dir.join("model.gguf");
    export_gguf(&lm, &config, &tokenizer, &path, GgufTernary::Tq2_0).unwrap();
    let file = GgufFile::from_bytes(&std::fs::read(&path).unwrap()).unwrap();
    // The keys llama.cpp requires, with its exact types.
    for (key, want) in [
        ("bitnet.context_length", GgufValue::U32(128)),
        ("bitnet.embedding_length", GgufValue::U32(256)),
        ("bitnet.block_count", GgufValue::U32(2)),
        ("bitnet.feed_forward_length", GgufValue::U32(512)),
        ("bitnet.attention.head_count", GgufValue::U32(4)),
        ("bitnet.attention.head_count_kv", GgufValue::U32(2)),
        (
            "bitnet.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("bitnet.rope.freq_base", GgufValue::F32(10000.0)),
        ("general.file_type", GgufValue::U32(37)),
    ] {
        assert_eq!(file.get(key), Some(&want), "{key}");
    }
    // 2 + 2 blocks x (4 norms + 7 projections + 7 scales).
    assert_eq!(file.tensors.len(), 2 + 2 * 18);
    let expected = fresh_dir("export-gguf-py-expected");
    write_expected(&lm, &file, &tokenizer, &expected);
    let Some(python) = python() else {
        return skip("no Python environment (scripts/install-python.sh)");
    };
    let report = check(
        &python,
        &["gguf", path.to_str().unwrap(), expected.to_str().unwrap()],
    );
    // 2 blocks x (4 x 256² + 2 x 256 x 128 + 3 x 256 x 512) ternary values, all compared.
    assert!(report.contains("\"ternary_values\": 1179648"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&expected).unwrap();
}

#[test]
fn llama_cpp_logits_and_greedy_tokens_match_the_packed_model() {
    let device = Device::flex();
    let (lm, config, tokenizer) = model(&device);
    let dir = fresh_dir("export-llama");
    let path = dir.join("model.gguf");
    export_gguf(&lm, &config, &tokenizer, &path, GgufTernary::Tq2_0).unwrap();
    let Some(python) = python() else {
        return skip("no Python environment (scripts/install-python.sh)");
    };
    let prompt = tokenizer.encode(&TEXT[..40]);
    let tokens_json = dir.join("tokens.json");
    std::fs::write(&tokens_json, serde_json::to_string(&prompt).unwrap()).unwrap();
    let out = dir.join("llama.json");
    let n_greedy = 32;
    check(
        &python,
        &[
            "llama",
            path.to_str().unwrap(),
            tokens_json.to_str().unwrap(),
            &n_greedy.to_string(),
            out.to_str().unwrap(),
        ],
    );
    let theirs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    // Our packed model, loaded back from the same file.
    let ours_lm = import_gguf(&path).unwrap().packed(&device).unwrap();
    let ids: Vec<i64> = prompt.iter().map(|&t| t as i64).collect();
    let n = ids.len();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), &device);
    let ours = values(ours_lm.forward(tokens));
    let vocab = config.vocab_size;
    let max_logit = ours.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tolerance = 1e-3 * (1.0 + max_logit);
    let mut max_diff = 0f32;
    for t in 0..n {
        let row: Vec<f32> = theirs["logits"][t]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        let mine = &ours[t * vocab..(t + 1) * vocab];
        for (a, b) in row.iter().zip(mine) {
            max_diff = max_diff.max((a - b).abs());
        }
        let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        assert_eq!(argmax(&row), argmax(mine), "argmax at position {t}");
    }
    eprintln!(
        "llama.cpp vs packed: max |logit difference| {max_diff:.3e}, max |logit| \
         {max_logit:.3}, tolerance {tolerance:.3e}"
    );
    assert!(max_diff <= tolerance, "{max_diff} > {tolerance}");
    let greedy = generate(&ours_lm, &prompt, n_greedy, Sampling::Greedy, 0).unwrap();
    let theirs_greedy: Vec<usize> = theirs["greedy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(greedy, theirs_greedy, "greedy tokens");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hugging_face_folder_read_by_python_safetensors_and_tokenizers() {
    let device = Device::flex();
    let (lm, config, tokenizer) = model(&device);
    let dir = fresh_dir("export-hf");
    export_hf(&lm, &config, &tokenizer, &dir).unwrap();
    // Our own import gives the same model.
    let imported = import_hf(&dir).unwrap();
    let tokens = Tensor::<2, Int>::from_data([[3, 1, 4, 1, 5, 9, 2, 6]], &device);
    assert_eq!(
        values(imported.packed(&device).unwrap().forward(tokens.clone())),
        values(lm.forward(tokens))
    );
    let config_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json["model_type"], "bitnet");
    assert_eq!(config_json["architectures"][0], "BitNetForCausalLM");
    assert_eq!(config_json["hidden_act"], "silu");
    assert_eq!(
        config_json["quantization_config"]["linear_class"],
        "bitlinear"
    );
    assert_eq!(
        config_json["quantization_config"]["quantization_mode"],
        "offline"
    );
    let Some(python) = python() else {
        return skip("no Python environment (scripts/install-python.sh)");
    };
    let gguf_path = dir.join("for-keys.gguf");
    export_gguf(&lm, &config, &tokenizer, &gguf_path, GgufTernary::Tq2_0).unwrap();
    let file = GgufFile::from_bytes(&std::fs::read(&gguf_path).unwrap()).unwrap();
    let expected = fresh_dir("export-hf-expected");
    write_expected(&lm, &file, &tokenizer, &expected);
    let report = check(
        &python,
        &[
            "safetensors",
            dir.to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    assert!(report.contains("\"ternary_values\": 1179648"), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&expected).unwrap();
}
