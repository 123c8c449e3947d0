//! Crafted headers: for every format a loader reads, files whose size, count, layout or value
//! fields say something the bytes do not back, or values no model may hold — each must be a
//! typed error naming the field (and its byte offset where the format has one), never a panic,
//! an abort or an allocation the file cannot back. `docs/hardening.md` tabulates these cases.

use bitnet_kernels::packed::{PackedTernary, TernaryScales};
use bitnet_qat::QatError;
use bitnet_qat::export::{
    GgufFile, GgufTernary, GgufValue, export_gguf, export_hf, import_gguf_bytes, import_hf_bytes,
};
use bitnet_qat::infer::{
    PackedWeight, TernaryLinear, TernaryLinearConfig, load_packed_bytes, pack, save,
};
use bitnet_qat::lm::CharTokenizer;
use bitnet_qat::lm::{BitNetLmConfig, FfnActivation, SavedLm};
use bitnet_qat::nn::BitLinearConfig;
use burn::config::Config;
use burn::module::{Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorCreationOptions, TensorData};

use crate::fresh_dir;

/// The bytes `save` writes for `model`.
fn saved<M: burn::module::Module>(model: M, name: &str) -> Vec<u8> {
    let dir = fresh_dir(name);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bpk");
    save(model, &path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// Where the 16 pieces of the first packed layout of a burnpack file start, and their width
/// (the device's integer type: 8 or 4 bytes).
fn layout_at(bytes: &[u8]) -> (usize, usize) {
    for width in [8usize, 4] {
        let mut pattern = 0x5057u64.to_le_bytes()[..width].to_vec();
        pattern.extend_from_slice(&1u64.to_le_bytes()[..width]);
        if let Some(p) = bytes.windows(pattern.len()).position(|w| w == pattern) {
            return (p, width);
        }
    }
    panic!("no packed layout in the file");
}

/// `bytes` with the 64-bit value at pieces `first..first + 4` of the layout set to `value`.
fn with_layout_value(bytes: &[u8], first: usize, value: u64) -> Vec<u8> {
    let (at, width) = layout_at(bytes);
    let mut out = bytes.to_vec();
    for k in 0..4 {
        let piece = (value >> (16 * k)) & 0xFFFF;
        let pos = at + (first + k) * width;
        out[pos..pos + width].copy_from_slice(&piece.to_le_bytes()[..width]);
    }
    out
}

fn record_error(result: Result<Vec<bitnet_qat::nn::BitLinear>, QatError>) -> (String, String) {
    match result {
        Err(QatError::Record { path, reason }) => (path, reason),
        other => panic!("expected a record error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn packed_burnpack_layouts_that_the_file_does_not_back_are_refused() {
    let device = Device::flex();
    let config = BitLinearConfig::new(256, 4);
    let skeleton = || vec![config.init(&device).unwrap()];
    let good = saved(pack(&skeleton()).unwrap(), "hostile-layout");
    assert!(load_packed_bytes(skeleton(), good.clone()).is_ok());
    // d_output (pieces 6..10) = 2^40: 64 TiB of codes, refused by the layout's own bound
    // before anything is allocated.
    let (path, reason) = record_error(load_packed_bytes(
        skeleton(),
        with_layout_value(&good, 6, 1 << 40),
    ));
    assert_eq!(path, "0.weight.packed.layout");
    assert!(reason.contains("PackedLayout.d_output"), "{reason}");
    // d_output = 5: a plausible size the stored codes ([4, 16]) do not back.
    let (path, reason) = record_error(load_packed_bytes(
        skeleton(),
        with_layout_value(&good, 6, 5),
    ));
    assert_eq!(path, "0.weight.packed.codes");
    assert!(reason.contains("needs U32 [5, 16]"), "{reason}");
    // d_input (pieces 2..6) = 2^18 + 1: past the kernels' largest reduction.
    let (path, reason) = record_error(load_packed_bytes(
        skeleton(),
        with_layout_value(&good, 2, (1 << 18) + 1),
    ));
    assert_eq!(path, "0.weight.packed.layout");
    assert!(reason.contains("PackedLayout.d_input"), "{reason}");
    // d_input = 200: the same code words per row (one 256-block) and one scale, a valid layout
    // — but not the 256 inputs of the layer it is loaded into.
    let (path, reason) = record_error(load_packed_bytes(
        skeleton(),
        with_layout_value(&good, 2, 200),
    ));
    assert_eq!(path, "0.weight");
    assert!(
        reason.contains("200 inputs x 4 outputs for a parameter of shape [256, 4]"),
        "{reason}"
    );
    // Scale kind (piece 10) 7.
    let (at, width) = layout_at(&good);
    let mut kind = good.clone();
    kind[at + 10 * width] = 7;
    let (path, reason) = record_error(load_packed_bytes(skeleton(), kind));
    assert_eq!(path, "0.weight.packed.layout");
    assert!(reason.contains("scale layout 7"), "{reason}");
    // A truncated file and a hostile metadata size: burnpack's own refusal.
    for bad in [good[..good.len() / 2].to_vec(), {
        let mut b = good.clone();
        b[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        b
    }] {
        assert!(matches!(
            load_packed_bytes(skeleton(), bad),
            Err(QatError::File {
                format: "burnpack",
                ..
            })
        ));
    }
}

/// A packed layer whose codes or scales were replaced after packing.
fn tampered(codes: Option<Vec<u32>>, scales: Option<Vec<f32>>, device: &Device) -> TernaryLinear {
    let values: Vec<i8> = (0..4 * 256).map(|i| (i % 3) as i8 - 1).collect();
    let p = PackedTernary::pack(&values, 4, 256, TernaryScales::PerRow(vec![1.0; 4])).unwrap();
    let mut weight = PackedWeight::from_packed(&p, true, device).unwrap();
    if let Some(words) = codes {
        weight.codes = Param::initialized(
            ParamId::new(),
            Tensor::<2, Int>::from_data(
                TensorData::new(words, [4, 16]),
                TensorCreationOptions::new(device.clone()).with_dtype(DType::U32),
            ),
        );
    }
    if let Some(s) = scales {
        weight.scales = Param::from_tensor(Tensor::<1>::from_data(TensorData::new(s, [4]), device));
    }
    TernaryLinear {
        weight,
        bias: None,
        norm: None,
    }
}

#[test]
fn packed_values_no_kernel_may_read_are_refused_at_load() {
    let device = Device::flex();
    let skeleton = || {
        TernaryLinearConfig::new(256, 4)
            .with_scales(bitnet_qat::quant::Granularity::PerChannel)
            .with_norm(false)
            .init(&device)
            .unwrap()
    };
    let good = saved(tampered(None, None, &device), "hostile-values");
    assert!(load_packed_bytes(skeleton(), good).is_ok());
    // Code 3 (the bits 11) in one word, then padding... every word is a full block here.
    let mut words = vec![0x5555_5555u32; 64];
    words[5] = 0x5555_555F;
    let code3 = saved(tampered(Some(words), None, &device), "hostile-code3");
    match load_packed_bytes(skeleton(), code3) {
        Err(QatError::Record { path, reason }) => {
            assert_eq!(path, "weight");
            assert!(reason.contains("invalid code 3"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A zero scale (would dequantize to ±inf) and a NaN one.
    for bad in [0.0, f32::NAN] {
        let file = saved(
            tampered(None, Some(vec![1.0, bad, 1.0, 1.0]), &device),
            "hostile-scale",
        );
        match load_packed_bytes(skeleton(), file) {
            Err(QatError::Record { path, reason }) => {
                assert_eq!(path, "weight");
                assert!(reason.contains("scale 1"), "{reason}");
            }
            Err(QatError::NonFinite { what, nan: 1, .. }) => {
                assert!(what.contains("`weight.scales`"), "{what}")
            }
            other => panic!("{bad}: {:?}", other.map(|_| ())),
        }
    }
}

/// A saved language model folder's three files.
fn saved_lm() -> (String, String, Vec<u8>) {
    let device = Device::flex();
    let tokenizer = CharTokenizer::from_text("abc");
    let config = BitNetLmConfig::new(4, 256, 1, 2, 256).with_max_seq_len(8);
    let lm = config.init(&device).unwrap();
    let dir = fresh_dir("hostile-lm");
    SavedLm::save(&dir, &config, &tokenizer, &lm, true).unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let files = (
        String::from_utf8(read(SavedLm::CONFIG)).unwrap(),
        String::from_utf8(read(SavedLm::TOKENIZER)).unwrap(),
        read(SavedLm::PACKED),
    );
    std::fs::remove_dir_all(&dir).unwrap();
    files
}

#[test]
fn lm_json_fields_outside_their_range_or_the_weights_are_named() {
    let device = Device::flex();
    let (config, tokenizer, weights) = saved_lm();
    let load = |config: &str, tokenizer: &str| {
        SavedLm::load_bytes(
            config.as_bytes(),
            tokenizer.as_bytes(),
            weights.clone(),
            true,
            &device,
        )
        .map(|_| ())
    };
    assert!(load(&config, &tokenizer).is_ok());
    let set = |key: &str, to: serde_json::Value| {
        let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
        assert!(json.get(key).is_some(), "{key} in {config}");
        json[key] = to;
        json.to_string()
    };
    use serde_json::json;
    for (key, to, field, reason) in [
        (
            "n_layers",
            json!(1_000_000_000_000u64),
            "n_layers",
            "1..=1024",
        ),
        (
            "n_layers",
            json!(1000),
            "vocab_size, d_model, n_layers, d_ff",
            "holds at most",
        ),
        ("d_model", json!(0), "d_model", "> 0"),
        ("n_heads", json!(3), "d_model", "a multiple of n_heads = 3"),
        (
            "vocab_size",
            json!(1u64 << 34),
            "vocab_size",
            "at most 17179869184 elements",
        ),
        ("norm_eps", json!(-1.0), "norm_eps", "finite and > 0"),
        ("rope_theta", json!(-1.0), "rope_theta", "finite and > 0"),
        ("d_ff", json!("x"), "", "invalid type"),
    ] {
        match load(&set(key, to.clone()), &tokenizer) {
            Err(QatError::File {
                format: "lm.json",
                field: f,
                reason: r,
                ..
            }) => {
                assert_eq!(f, field, "{key} = {to}: {r}");
                assert!(r.contains(reason), "{key} = {to}: {r}");
            }
            other => panic!("{key} = {to}: {other:?}"),
        }
    }
    // The tokenizer's own fields.
    for (from, to, field) in [
        ("\"version\":1", "\"version\":7", "version"),
        ("\"chars\":\"abc\"", "\"chars\":\"cba\"", "chars"),
    ] {
        assert!(tokenizer.contains(from), "{tokenizer}");
        match load(&config, &tokenizer.replace(from, to)) {
            Err(QatError::File {
                format: "tokenizer.json",
                field: f,
                ..
            }) => assert_eq!(f, field),
            other => panic!("{to}: {other:?}"),
        }
    }
    // A tokenizer of another vocabulary.
    assert!(matches!(
        load(&config, &CharTokenizer::from_text("ab").to_json()),
        Err(QatError::Mismatch { expected, found, .. }) if expected == "4" && found == "3"
    ));
}

fn gguf_bytes() -> Vec<u8> {
    let device = Device::flex();
    let config = BitNetLmConfig::new(4, 256, 1, 2, 256)
        .with_activation(FfnActivation::Silu)
        .with_max_seq_len(8);
    let lm = config.init(&device).unwrap();
    let dir = fresh_dir("hostile-gguf");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m.gguf");
    export_gguf(
        &lm,
        &config,
        &CharTokenizer::from_text("abc"),
        &path,
        GgufTernary::Tq2_0,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    bytes
}

/// `(field, offset, reason)` of a GGUF file error.
fn gguf_error(bytes: &[u8]) -> (String, Option<u64>, String) {
    match import_gguf_bytes(bytes).map(|_| ()) {
        Err(QatError::File {
            format: "GGUF",
            field,
            offset,
            reason,
            ..
        }) => (field, offset, reason),
        other => panic!("expected a GGUF file error, got {other:?}"),
    }
}

#[test]
fn gguf_headers_and_keys_that_the_file_does_not_back_are_named() {
    let good = gguf_bytes();
    assert!(import_gguf_bytes(&good).is_ok());
    // The tensor count (byte 8) and metadata count (byte 16) at 2^40.
    for (at, field) in [(8, "tensor count"), (16, "metadata count")] {
        let mut bad = good.clone();
        bad[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        let (f, offset, reason) = gguf_error(&bad);
        assert_eq!((f.as_str(), offset), (field, Some(at as u64)));
        assert!(reason.contains("cannot fit"), "{reason}");
    }
    // Keys and tensors, edited through the container.
    let file = GgufFile::from_bytes(&good).unwrap();
    let with = |edit: &dyn Fn(&mut GgufFile)| {
        let mut f = file.clone();
        edit(&mut f);
        f.to_bytes().unwrap()
    };
    let set = |key: &'static str, value: GgufValue| {
        with(&move |f: &mut GgufFile| {
            f.metadata.retain(|(k, _)| k != "bitnet_qat.config");
            for (k, v) in f.metadata.iter_mut() {
                if k == key {
                    *v = value.clone();
                }
            }
        })
    };
    for (bytes, field, reason) in [
        (
            set("bitnet.block_count", GgufValue::U32(u32::MAX)),
            "bitnet.block_count",
            "1..=1024",
        ),
        (
            set("bitnet.attention.head_count_kv", GgufValue::U32(3)),
            "bitnet.attention.head_count_kv",
            "a divisor of n_heads",
        ),
        (
            set("bitnet.attention.head_count", GgufValue::F32(2.0)),
            "bitnet.attention.head_count",
            "not an unsigned integer",
        ),
        (
            set(
                "bitnet.attention.layer_norm_rms_epsilon",
                GgufValue::F32(-1.0),
            ),
            "bitnet.attention.layer_norm_rms_epsilon",
            "",
        ),
        (
            with(&|f| {
                f.metadata
                    .push(("general.alignment".into(), GgufValue::U32(3)))
            }),
            "general.alignment",
            "power-of-two",
        ),
        (
            with(&|f| f.tensors.retain(|t| t.name != "blk.0.ffn_down.weight")),
            "blk.0.ffn_down.weight",
            "missing tensor",
        ),
    ] {
        let (f, _, r) = gguf_error(&bytes);
        assert_eq!(f, field, "{r}");
        assert!(r.contains(reason), "{field}: {r}");
    }
}

#[test]
fn hugging_face_keys_and_headers_that_the_files_do_not_back_are_named() {
    let device = Device::flex();
    let config = BitNetLmConfig::new(4, 64, 1, 2, 96).with_max_seq_len(8);
    let lm = config.init(&device).unwrap();
    let dir = fresh_dir("hostile-hf");
    export_hf(&lm, &config, &CharTokenizer::from_text("abc"), &dir).unwrap();
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let (json, weights) = (read("config.json"), read("model.safetensors"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(import_hf_bytes(&json, &weights, None).is_ok());
    let mut plain: serde_json::Value = serde_json::from_slice(&json).unwrap();
    plain.as_object_mut().unwrap().remove("bitnet_qat_config");
    let error = |json: &serde_json::Value, weights: &[u8]| match import_hf_bytes(
        json.to_string().as_bytes(),
        weights,
        None,
    )
    .map(|_| ())
    {
        Err(QatError::File {
            format,
            field,
            reason,
            ..
        }) => (format, field, reason),
        other => panic!("{other:?}"),
    };
    for (key, value, reason) in [
        (
            "num_hidden_layers",
            serde_json::json!(1_000_000_000_000u64),
            "1..=1024",
        ),
        (
            "hidden_size",
            serde_json::json!(-64),
            "not an unsigned integer",
        ),
        ("rms_norm_eps", serde_json::json!(0.0), "epsilon"),
        (
            "num_key_value_heads",
            serde_json::json!(3),
            "a divisor of n_heads",
        ),
    ] {
        let mut edited = plain.clone();
        edited[key] = value;
        let (format, field, r) = error(&edited, &weights);
        assert_eq!((format, field.as_str()), ("config.json", key), "{r}");
        assert!(r.contains(reason), "{key}: {r}");
    }
    // A safetensors header length of 2^64 - 1.
    let mut bad = weights.clone();
    bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let (format, field, _) = error(&plain, &bad);
    assert_eq!((format, field.as_str()), ("safetensors", "header"));
}

#[test]
fn every_config_error_of_a_saved_model_names_its_field_in_the_json() {
    // The offset points at the key, so an editor can jump to it.
    let (config, tokenizer, weights) = saved_lm();
    let mut json: serde_json::Value = serde_json::from_str(&config).unwrap();
    json["max_seq_len"] = serde_json::json!(0);
    let bad = serde_json::to_string_pretty(&json).unwrap();
    match SavedLm::load_bytes(
        bad.as_bytes(),
        tokenizer.as_bytes(),
        weights,
        true,
        &Device::flex(),
    ) {
        Err(QatError::File {
            field,
            offset: Some(offset),
            ..
        }) => {
            assert_eq!(field, "max_seq_len");
            assert!(bad[offset as usize..].starts_with("\"max_seq_len\""));
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // The configuration a file holds round-trips through its own JSON.
    assert!(BitNetLmConfig::load_binary(config.as_bytes()).is_ok());
}

#[test]
fn tensor_data_of_an_unreadable_type_is_a_typed_error() {
    use burn::tensor::quantization::{QuantScheme, QuantValue};
    let device = Device::flex();
    let scheme = QuantScheme::default().with_value(QuantValue::Q8S);
    // Packed scales held as one of Burn's quantized tensors (a record of another program could
    // bring one): refused by type, not a panic inside Burn's conversion.
    let mut layer = tampered(None, None, &device);
    layer.weight.scales = Param::from_tensor(layer.weight.scales.val().quantize_dynamic(&scheme));
    match layer.weight.to_packed() {
        Err(QatError::Record { reason, .. }) => {
            assert!(reason.contains("QFloat"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A model whose norm is quantized: its values cannot be read back as f32 for an export.
    let config = BitNetLmConfig::new(4, 256, 1, 2, 256)
        .with_activation(FfnActivation::Silu)
        .with_max_seq_len(8);
    let mut lm = config.init(&device).unwrap();
    lm.norm.gamma = Param::from_tensor(lm.norm.gamma.val().quantize_dynamic(&scheme));
    let path = fresh_dir("hostile-device").join("m.gguf");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    match export_gguf(
        &lm,
        &config,
        &CharTokenizer::from_text("abc"),
        &path,
        GgufTernary::Tq2_0,
    ) {
        Err(QatError::Device { what, reason }) => {
            assert_eq!(what, "the final norm");
            assert!(!reason.is_empty());
        }
        other => panic!("{other:?}"),
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

/// `(start, end)` of a descriptor's data offsets.
fn offsets(descriptor: &[(ciborium::Value, ciborium::Value)]) -> (u64, u64) {
    let ciborium::Value::Array(pair) = crate::burnpack_edit::get(descriptor, "data_offsets") else {
        panic!("data_offsets is not an array");
    };
    let int = |v: &ciborium::Value| u64::try_from(v.as_integer().unwrap()).unwrap();
    (int(&pair[0]), int(&pair[1]))
}

#[test]
fn burnpack_tensor_tables_that_lie_are_refused_before_allocating() {
    use crate::burnpack_edit::{Burnpack, get, set};
    use ciborium::Value;
    let device = Device::flex();
    let config = BitLinearConfig::new(256, 4);
    let skeleton = || vec![config.init(&device).unwrap(), config.init(&device).unwrap()];
    let good = saved(pack(&skeleton()).unwrap(), "hostile-table");
    assert!(load_packed_bytes(skeleton(), good.clone()).is_ok());
    let record = |edit: &dyn Fn(&mut Burnpack)| {
        let mut file = Burnpack::parse(&good);
        edit(&mut file);
        match load_packed_bytes(skeleton(), file.to_bytes(&good)).map(|_| ()) {
            Err(QatError::Record { path, reason }) => (path, reason),
            other => panic!("{other:?}"),
        }
    };
    // Every tensor at data offset 0, the data section cut to the largest: the tensors claim
    // more bytes than the file holds (a file that reuses one range for many tensors).
    let mut shared = Burnpack::parse(&good);
    let mut largest = 0;
    for name in shared.names() {
        let descriptor = shared.tensor(&name);
        let (start, end) = offsets(descriptor);
        largest = largest.max(end - start);
        set(
            descriptor,
            "data_offsets",
            Value::Array(vec![0u64.into(), (end - start).into()]),
        );
    }
    shared.data.truncate(largest as usize);
    match load_packed_bytes(skeleton(), shared.to_bytes(&good)).map(|_| ()) {
        Err(QatError::File {
            format: "burnpack",
            reason,
            ..
        }) => assert!(reason.contains("share bytes"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A norm's data one byte later: inside the file, but not aligned to its f32 elements
    // (found by the fuzzer: the backends read tensor data in place, and Flex panicked).
    let mut shifted = Burnpack::parse(&good);
    let descriptor = shifted.tensor("1.norm.gamma");
    let (start, end) = offsets(descriptor);
    set(
        descriptor,
        "data_offsets",
        Value::Array(vec![(start + 1).into(), (end + 1).into()]),
    );
    match load_packed_bytes(skeleton(), shifted.to_bytes(&good)).map(|_| ()) {
        Err(QatError::File {
            format: "burnpack",
            field,
            reason,
            ..
        }) => {
            assert_eq!(field, "1.norm.gamma");
            assert!(
                reason.contains("not a multiple of its 4-byte elements"),
                "{reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Codes of another integer type of the same size (the kernels read u32 words).
    let (path, reason) = record(&|f| {
        set(
            f.tensor("0.weight.packed.codes"),
            "dtype",
            Value::Text("I32".into()),
        )
    });
    assert_eq!(path, "0.weight.packed.codes");
    assert!(reason.starts_with("I32 [4, 16]"), "{reason}");
    // The layout as floats of the same size.
    let (path, reason) = record(&|f| {
        let descriptor = f.tensor("0.weight.packed.layout");
        let float = match get(descriptor, "dtype").as_text() {
            Some("I64") => "F64",
            _ => "F32",
        };
        set(descriptor, "dtype", Value::Text(float.into()))
    });
    assert_eq!(path, "0.weight.packed.layout");
    assert!(reason.contains("expected 16 integers"), "{reason}");
    // A float parameter stored as integers: Burn's own kind check, with the path.
    let (path, reason) =
        record(&|f| set(f.tensor("1.norm.gamma"), "dtype", Value::Text("I32".into())));
    assert_eq!(path, "1.norm.gamma");
    assert!(reason.contains("stored as I32"), "{reason}");
}

#[test]
fn other_float_types_are_cast_for_inference_and_refused_for_a_resume() {
    use bitnet_qat::train::{QatPlan, QatState, QatTrainModel, check_checkpoint_bytes};
    use burn::module::Module;
    use burn::tensor::quantization::{QuantScheme, QuantValue};
    #[derive(Module, Debug)]
    struct Net {
        fc: bitnet_qat::nn::BitLinear,
        qat: QatState,
    }
    impl QatTrainModel for Net {
        fn qat_state(&self) -> &QatState {
            &self.qat
        }
        fn qat_state_mut(&mut self) -> &mut QatState {
            &mut self.qat
        }
    }
    let device = Device::flex();
    let net = || Net {
        fc: BitLinearConfig::new(256, 4).init(&device).unwrap(),
        qat: QatPlan::new().init(&device),
    };
    // A norm stored as f16 (a model saved on an f16 device).
    let mut half = net();
    let gamma = half.fc.norm.as_ref().unwrap().gamma.clone();
    half.fc.norm.as_mut().unwrap().gamma = gamma.map(|t| t.cast(DType::F16));
    let file = saved(half, "hostile-f16");
    // For inference, cast to the device's type.
    let loaded = load_packed_bytes(net(), file.clone()).unwrap();
    assert_eq!(
        loaded.fc.norm.as_ref().unwrap().gamma.val().dtype(),
        DType::F32
    );
    // For a resume, refused: burn-train would load it as it is.
    match check_checkpoint_bytes(&net(), file).map(|_| ()) {
        Err(QatError::Record { path, reason }) => {
            assert_eq!(path, "fc.norm.gamma");
            assert!(reason.contains("stored as F16"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    // A Burn-quantized tensor: its sizes are not checked by burnpack, so it is refused whole.
    let mut quantized = net();
    let gamma = quantized.fc.norm.as_ref().unwrap().gamma.clone();
    let scheme = QuantScheme::default().with_value(QuantValue::Q8S);
    quantized.fc.norm.as_mut().unwrap().gamma = gamma.map(|t| t.quantize_dynamic(&scheme));
    match load_packed_bytes(net(), saved(quantized, "hostile-qfloat")).map(|_| ()) {
        Err(QatError::Record { path, reason }) => {
            assert_eq!(path, "fc.norm.gamma");
            assert!(reason.contains("Burn-quantized"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}
