//! Any Burn model with no QAT code written for it: a struct of `BitLinear`s, a burn-nn
//! `TransformerEncoder` made quantization-aware by the reparameterizer, and a struct nesting
//! `Vec<Option<...>>` of both. Schedules, statistics, flips, finiteness checks and the recorded
//! quantizer settings all find every quantizer on their own.

use bitnet_qat::QatError;
use bitnet_qat::check::check_model_finite;
use bitnet_qat::nn::{BitLinear, BitLinearConfig, quantizers};
use bitnet_qat::quant::{QuantConfig, QuantFormat};
use bitnet_qat::reparam::QatReparameterizer;
use bitnet_qat::schedule::{
    BitWidthSchedule, FlipTracker, LambdaRamp, LambdaSchedule, QatScheduler, layer_stats,
    weight_stats,
};
use burn::module::Module;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::optim::{GradientsParams, SgdConfig};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::values;

/// A reparameterized encoder: d_model 16, d_ff 32, 2 heads, 2 layers, no dropout (so forward
/// passes are deterministic); every `Linear` weight ternary.
pub fn encoder(device: &Device) -> TransformerEncoder {
    let encoder = TransformerEncoderConfig::new(16, 32, 2, 2)
        .with_dropout(0.0)
        .init(device);
    QatReparameterizer::new(QuantConfig::ternary())
        .apply(encoder)
        .unwrap()
        .0
}

/// `[2, 5, 16]` inputs for [`encoder`].
pub fn tokens(device: &Device) -> Tensor<3> {
    Tensor::from_data(
        TensorData::new(pseudo_random(2 * 5 * 16, 19), [2, 5, 16]),
        device,
    )
}

#[derive(Module, Debug)]
struct Mixed {
    first: BitLinear,
    stack: Vec<Option<BitLinear>>,
    encoders: Vec<Option<TransformerEncoder>>,
}

fn mixed(device: &Device) -> Mixed {
    let bit = |i, o| BitLinearConfig::new(i, o).init(device).unwrap();
    Mixed {
        first: bit(16, 16),
        stack: vec![Some(bit(16, 16)), None, Some(bit(16, 8))],
        encoders: vec![None, Some(encoder(device))],
    }
}

/// Linear weights of one encoder layer: query, key, value, output, the FFN's two.
const ENCODER_LAYER_WEIGHTS: usize = 6;

#[test]
fn every_quantizer_of_any_model_is_found() {
    let device = Device::flex();
    let model = mixed(&device);
    let found = quantizers(&model);
    // 3 BitLinears (weight + activations each) and 2 encoder layers of 6 weights.
    assert_eq!(found.len(), 3 * 2 + 2 * ENCODER_LAYER_WEIGHTS);
    let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
    for path in [
        "first.weight.qat",
        "first.activation_quantizer",
        "stack.2.weight.qat",
        "encoders.1.layers.0.mha.query.weight.qat",
        "encoders.1.layers.1.pwff.linear_outer.weight.qat",
    ] {
        assert!(paths.contains(&path), "{path} not in {paths:?}");
    }
    // Every weight quantizer comes with its weight; statistics cover all of them.
    let weights: usize = found
        .iter()
        .filter_map(|f| f.weight.as_ref().map(|w| w.shape().num_elements()))
        .sum();
    let encoder_weights = 2 * (4 * 16 * 16 + 2 * 16 * 32);
    assert_eq!(weights, 16 * 16 + 16 * 16 + 16 * 8 + encoder_weights);
    assert_eq!(weight_stats(&model).unwrap().numel, weights);
    let per_layer = layer_stats(&model).unwrap();
    assert_eq!(per_layer.len(), 3 + 2 * ENCODER_LAYER_WEIGHTS);
    for (path, stats) in &per_layer {
        assert!(
            stats.numel > 0 && stats.fraction_zero > 0.0,
            "{path}: {stats:?}"
        );
    }
}

#[test]
fn schedules_and_flips_reach_every_quantizer() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let model = mixed(&device);
    let scheduler = QatScheduler::default().with_lambda(LambdaSchedule::new(8, LambdaRamp::Linear));
    let model = scheduler.apply(model, 2).unwrap();
    for f in quantizers(&model) {
        assert_eq!(f.quantizer.settings().lambda, 0.25, "{}", f.path);
    }

    // One SGD step on a fixed projection of the encoder's output (its layer-normed output has
    // a fixed norm, so not its square): codes flip in its layers.
    let mut flips = FlipTracker::default();
    assert_eq!(flips.update(&model).unwrap().0, 0.0);
    let encoder = model.encoders[1].as_ref().unwrap();
    let target = Tensor::<3>::from_data(
        TensorData::new(pseudo_random(2 * 5 * 16, 23), [2, 5, 16]),
        &device,
    );
    let loss = (encoder.forward(TransformerEncoderInput::new(tokens(&device))) * target).sum();
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let mut optim = SgdConfig::new().init();
    let model = optim.step(0.5, model, grads);
    let (rate, _) = flips.update(&model).unwrap();
    assert!(rate > 0.0 && rate < 1.0, "flip rate {rate}");
    assert!(check_model_finite(&model).is_ok());
}

#[test]
fn scheduled_settings_are_recorded_with_the_model() {
    let device = Device::flex();
    // Int8 weights annealed to ternary at step 5, then saved at step 9.
    let bits =
        BitWidthSchedule::by_steps(&[(0, QuantFormat::Int { bits: 8 }), (5, QuantFormat::Ternary)])
            .unwrap();
    let config = BitLinearConfig::new(16, 8).with_weight_quant(QuantConfig::int(8));
    let layers = vec![config.init(&device).unwrap(), config.init(&device).unwrap()];
    let layers = QatScheduler::default()
        .with_bit_width(bits)
        .apply(layers, 9)
        .unwrap();
    let x = Tensor::<2>::from_data(TensorData::new(pseudo_random(3 * 16, 5), [3, 16]), &device);
    let expected = values(layers[1].forward(x.clone()));
    // A fresh int8 skeleton runs ternary weights once the record is loaded.
    let skeleton = vec![config.init(&device).unwrap(), config.init(&device).unwrap()];
    let loaded = skeleton.load_record(layers.clone().into_record());
    let q = loaded[1].weight_quantizer().unwrap();
    assert_eq!(q.effective().0, QuantConfig::ternary());
    assert_eq!(values(loaded[1].forward(x.clone())), expected);

    // Safetensors carries no parameter ids: Burn keeps the skeleton's ids for the loaded
    // values. The loaded model still runs the recorded format, and the skeleton (alive, with
    // the same ids) its own.
    let path = std::env::temp_dir().join(format!(
        "bitnet-qat-settings-{}.safetensors",
        std::process::id()
    ));
    layers
        .save_into(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let skeleton = vec![config.init(&device).unwrap(), config.init(&device).unwrap()];
    let format = |m: &Vec<BitLinear>| m[1].weight_quantizer().unwrap().effective().0.format;
    assert_eq!(format(&skeleton), QuantFormat::Int { bits: 8 });
    let mut loaded = skeleton.clone();
    loaded
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(format(&loaded), QuantFormat::Ternary);
    assert_eq!(format(&skeleton), QuantFormat::Int { bits: 8 });
    assert_eq!(values(loaded[1].forward(x)), expected);
}

#[test]
fn a_packed_layout_loaded_under_the_skeletons_id_is_the_recorded_one() {
    use bitnet_kernels::burn_ext::ScaleKind;
    use bitnet_qat::infer::{PackedLayout, PackedWeight};
    let device = Device::flex();
    // The same shapes, different activation modes: only the recorded layout tells them apart.
    let float = PackedLayout::new(256, 4, ScaleKind::PerRow, false).unwrap();
    let int8 = PackedLayout::new(256, 4, ScaleKind::PerRow, true).unwrap();
    let path = std::env::temp_dir().join(format!(
        "bitnet-qat-layout-{}.safetensors",
        std::process::id()
    ));
    PackedWeight::zeros(float, &device)
        .save_into(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    let skeleton = PackedWeight::zeros(int8, &device);
    assert_eq!(skeleton.layout().unwrap(), int8);
    let mut loaded = skeleton.clone();
    loaded
        .load_from(&mut SafetensorsStore::from_file(&path))
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(loaded.layout().unwrap(), float);
    assert_eq!(skeleton.layout().unwrap(), int8);
}

#[test]
fn non_finite_weights_are_typed_errors_naming_the_parameter() {
    let device = Device::flex();
    let mut model = mixed(&device);
    let mut data = vec![0.1f32; 16 * 8];
    data[5] = f32::NAN;
    let weight = Tensor::<2>::from_data(TensorData::new(data, [16, 8]), &device);
    model.stack[2] = Some(
        BitLinearConfig::new(16, 8)
            .init_with(weight, None, &device)
            .unwrap(),
    );
    match check_model_finite(&model) {
        Err(QatError::NonFinite {
            what,
            nan: 1,
            inf: 0,
        }) => {
            assert!(what.contains("stack.2.weight"), "{what}")
        }
        other => panic!("{other:?}"),
    }
}

/// A larger encoder for the storage figures: d_model 256, d_ff 1024, 4 heads, 2 layers.
fn big_encoder_config() -> TransformerEncoderConfig {
    TransformerEncoderConfig::new(256, 1024, 4, 2).with_dropout(0.0)
}

fn logits(encoder: &TransformerEncoder, x: Tensor<3>) -> Vec<f32> {
    values(encoder.forward(TransformerEncoderInput::new(x)))
}

#[test]
fn a_reparameterized_transformer_encoder_trains_converts_saves_and_reloads() {
    for (name, device) in crate::devices() {
        let train_device = device.clone().autodiff();
        train_device.seed(11);
        let encoder = QatReparameterizer::new(QuantConfig::ternary())
            .apply(big_encoder_config().init(&train_device))
            .unwrap()
            .0;
        let x = Tensor::<3>::from_data(
            TensorData::new(pseudo_random(2 * 8 * 256, 29), [2, 8, 256]),
            &train_device,
        );
        let target = Tensor::<3>::from_data(
            TensorData::new(pseudo_random(2 * 8 * 256, 31), [2, 8, 256]),
            &train_device,
        );
        // Five steps with a lambda warm-up of four: trained from full precision to ternary.
        let scheduler =
            QatScheduler::default().with_lambda(LambdaSchedule::new(4, LambdaRamp::Linear));
        let mut optim = burn::optim::AdamConfig::new().init();
        let mut model = scheduler.apply(encoder, 0).unwrap();
        let mut losses = Vec::new();
        for step in 0..5 {
            let y = model.forward(TransformerEncoderInput::new(x.clone()));
            let loss = (y * target.clone()).sum();
            losses.push(loss.clone().into_scalar::<f32>());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-2, model, grads);
            model = scheduler.apply(model, step + 1).unwrap();
        }
        assert!(losses[4] < losses[0], "{name}: {losses:?}");
        // Statistics for every layer's weight.
        let stats = layer_stats(&model).unwrap();
        assert_eq!(stats.len(), 2 * ENCODER_LAYER_WEIGHTS, "{name}");
        for (path, s) in &stats {
            let total = s.fraction_negative + s.fraction_zero + s.fraction_positive;
            assert!(
                s.numel > 0 && (total - 1.0).abs() < 1e-12,
                "{name} {path}: {s:?}"
            );
        }

        // Converted: the packed model's logits equal the QAT model's, bit for bit (the packed
        // weights dequantize to exactly the quantized weights).
        let qat = model.valid();
        let packed = bitnet_qat::infer::pack(&qat).unwrap();
        let x = x.inner();
        let expected = logits(&qat, x.clone());
        assert_eq!(
            logits(&packed, x.clone()),
            expected,
            "{name}: packed logits"
        );

        // Saved packed, reloaded into a fresh f32-free skeleton: the same logits again.
        let dir = super::fresh_dir(&format!("any-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (packed_file, f32_file) = (dir.join("packed.bpk"), dir.join("f32.bpk"));
        bitnet_qat::infer::save(packed.clone(), &packed_file).unwrap();
        bitnet_qat::infer::save(qat.clone().materialize(), &f32_file).unwrap();
        let sizes = [&packed_file, &f32_file].map(|p| std::fs::metadata(p).unwrap().len());
        let ratio = sizes[1] as f64 / sizes[0] as f64;
        eprintln!(
            "{name}: TransformerEncoder 256/1024/4x2: packed {} bytes, f32 {} bytes, {ratio:.1}x",
            sizes[0], sizes[1]
        );
        assert!(ratio > 12.0, "{name}: packed file only {ratio:.1}x smaller");
        let skeleton = big_encoder_config().init(&device);
        let loaded = bitnet_qat::infer::load_packed(skeleton, &packed_file).unwrap();
        assert_eq!(logits(&loaded, x), expected, "{name}: reloaded logits");
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[test]
fn bitlinear_models_pack_in_place() {
    for (name, device) in crate::devices() {
        let model = mixed(&device);
        let packed = bitnet_qat::infer::pack(&model).unwrap();
        let x =
            Tensor::<2>::from_data(TensorData::new(pseudo_random(4 * 16, 37), [4, 16]), &device);
        let pairs = [
            (&model.first, &packed.first),
            (
                model.stack[2].as_ref().unwrap(),
                packed.stack[2].as_ref().unwrap(),
            ),
        ];
        for (qat, packed) in pairs {
            assert!(packed.packed_weight().is_some() && packed.weight_quantizer().is_none());
            // Int8 products summed exactly against float sums: float rounding apart.
            crate::assert_close(
                &values(packed.forward(x.clone())),
                &values(qat.valid().forward(x.clone())),
                1e-5,
                &format!("{name}: packed BitLinear"),
            );
        }
        let encoder = packed.encoders[1].as_ref().unwrap();
        assert_eq!(
            logits(encoder, tokens(&device)),
            logits(
                &model.encoders[1].as_ref().unwrap().valid(),
                tokens(&device)
            ),
            "{name}: packed encoder"
        );
    }
}

#[test]
fn what_packing_cannot_reproduce_is_a_typed_error_naming_the_layer() {
    use bitnet_qat::ste::Ste;
    let device = Device::flex();
    let warming = QatScheduler::default()
        .with_lambda(LambdaSchedule::new(4, LambdaRamp::Linear))
        .apply(mixed(&device), 1)
        .unwrap();
    let soft = vec![
        BitLinearConfig::new(16, 8)
            .with_weight_ste(Ste::Soft { temperature: 0.5 })
            .init(&device)
            .unwrap(),
    ];
    let int4 = vec![
        BitLinearConfig::new(16, 8)
            .with_weight_quant(QuantConfig::int(4))
            .init(&device)
            .unwrap(),
    ];
    for (err, path, what) in [
        (
            bitnet_qat::infer::pack(&warming).unwrap_err(),
            "first.weight",
            "lambda 0.25",
        ),
        (
            bitnet_qat::infer::pack(&soft).unwrap_err(),
            "0.weight",
            "soft STE",
        ),
        (
            bitnet_qat::infer::pack(&int4).unwrap_err(),
            "0.weight",
            "Int { bits: 4 }",
        ),
    ] {
        match err {
            QatError::Unsupported { layer, reason } => {
                assert_eq!(layer, path, "{what}");
                assert!(reason.contains(what), "{what}: {reason}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}
