//! Converting trained QAT layers to packed `TernaryLinear` layers: identical outputs, records.

use bitnet_kernels::burn_ext::{ScaleKind, ternary_matmul, ternary_matmul_fallback};
use bitnet_qat::infer::TernaryLinear;
use bitnet_qat::nn::{BitLinear, BitLinearConfig, QuantizerConfig};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::reparam::QatReparameterizer;
use bitnet_qat::ste::Ste;
use burn::module::Module;
use burn::nn::LinearConfig;
use burn::tensor::{Device, Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::{assert_close, devices, values};

fn input(m: usize, k: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(pseudo_random(m * k, 81), [m, k]), device)
}

/// The packed layer against the QAT layer in inference mode, to 1e-5 relative.
fn assert_same_outputs(
    qat: &BitLinear,
    packed: &TernaryLinear,
    k: usize,
    device: &Device,
    what: &str,
) {
    let x = input(7, k, device);
    let expected = values(qat.valid().forward(x.clone()));
    let got = values(packed.forward(x));
    assert_close(&got, &expected, 1e-5, what);
}

fn bit_linear(k: usize, n: usize, config: BitLinearConfig, device: &Device) -> BitLinear {
    let w = TensorData::new(
        pseudo_random(k * n, 82).iter().map(|v| v * 0.05).collect(),
        [k, n],
    );
    let bias = config
        .bias
        .then(|| Tensor::from_data(TensorData::new(pseudo_random(n, 83), [n]), device));
    config
        .init_with(Tensor::from_data(w, device), bias, device)
        .unwrap()
}

#[test]
fn converted_bitlinear_layers_give_the_qat_outputs() {
    let (k, n) = (512, 24);
    let variants: Vec<(&str, BitLinearConfig)> = vec![
        ("ternary per tensor", BitLinearConfig::new(k, n)),
        (
            "binary",
            BitLinearConfig::new(k, n).with_weight_quant(QuantConfig::binary()),
        ),
        (
            "ternary per channel",
            BitLinearConfig::new(k, n).with_weight_quant(
                QuantConfig::ternary().with_granularity(Granularity::PerChannel),
            ),
        ),
        (
            "ternary per group of 256",
            BitLinearConfig::new(k, n).with_weight_quant(
                QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 256 }),
            ),
        ),
        (
            "ternary LSQ per channel",
            BitLinearConfig::new(k, n)
                .with_weight_quant(QuantConfig::ternary().with_granularity(Granularity::PerChannel))
                .with_weight_ste(Ste::LearnedStepSize),
        ),
        (
            "bias, clipped STE",
            BitLinearConfig::new(k, n)
                .with_bias(true)
                .with_weight_ste(Ste::Clipped),
        ),
        (
            "full-precision activations",
            BitLinearConfig::new(k, n).with_activation_quant(None),
        ),
        ("no norm", BitLinearConfig::new(k, n).with_norm(false)),
    ];
    for (name, device) in devices() {
        for (variant, config) in &variants {
            for training_device in [device.clone(), device.clone().autodiff()] {
                let qat = bit_linear(k, n, config.clone(), &training_device);
                let packed = TernaryLinear::from_bit_linear(&qat).unwrap();
                assert_same_outputs(&qat, &packed, k, &device, &format!("{name} {variant}"));
            }
        }
    }
}

#[test]
fn ragged_shapes_convert_exactly() {
    // K not a multiple of the 256-weight block, odd N, rank-3 input.
    for (k, n) in [(1, 1), (64, 10), (300, 7), (1000, 33)] {
        let device = Device::flex();
        let qat = bit_linear(k, n, BitLinearConfig::new(k, n), &device);
        let packed = TernaryLinear::from_bit_linear(&qat).unwrap();
        assert_same_outputs(&qat, &packed, k, &device, &format!("{k}x{n}"));
        let x3: Tensor<3> = input(6, k, &device).reshape([2, 3, k]);
        let a = values(packed.forward(x3.clone()));
        let b = values(qat.valid().forward(x3));
        assert_close(&a, &b, 1e-5, "rank 3");
    }
}

#[test]
fn reparameterized_linear_converts() {
    #[derive(Module, Debug)]
    struct Net {
        fc: burn::nn::Linear,
    }
    for (name, device) in devices() {
        let device = device.autodiff();
        device.seed(3);
        let net = Net {
            fc: LinearConfig::new(300, 9).init(&device),
        };
        for config in [
            QuantizerConfig::new(QuantConfig::ternary()),
            QuantizerConfig::new(QuantConfig::ternary().with_granularity(Granularity::PerChannel))
                .with_ste(Ste::LearnedStepSize),
        ] {
            let qat = QatReparameterizer::from_config(config)
                .apply(net.clone())
                .unwrap()
                .0;
            let packed = TernaryLinear::from_linear(&qat.fc).unwrap();
            let x = input(5, 300, &device.clone().inner());
            let expected = values(qat.valid().fc.forward(x.clone()));
            assert_close(&values(packed.forward(x)), &expected, 1e-5, name);
        }
    }
}

#[test]
fn kernel_and_fallback_agree() {
    for (name, device) in devices() {
        for (granularity, kind) in [
            (Granularity::PerTensor, ScaleKind::PerTensor),
            (Granularity::PerChannel, ScaleKind::PerRow),
            (
                Granularity::PerGroup { size: 256 },
                ScaleKind::PerGroup(256),
            ),
        ] {
            let qat = bit_linear(
                512,
                20,
                BitLinearConfig::new(512, 20)
                    .with_norm(false)
                    .with_weight_quant(QuantConfig::ternary().with_granularity(granularity)),
                &device,
            );
            let packed = TernaryLinear::from_bit_linear(&qat).unwrap();
            let x = input(9, 512, &device);
            let codes = packed.weight.codes.val();
            let scales = packed.weight.scales.val();
            let a = values(
                ternary_matmul(x.clone(), codes.clone(), scales.clone(), 512, kind).unwrap(),
            );
            let b = values(ternary_matmul_fallback(x, codes, scales, 512, kind).unwrap());
            assert_close(&a, &b, 1e-6, &format!("{name} {kind:?}"));
        }
    }
}

#[test]
fn records_round_trip_through_burnpack_and_safetensors() {
    use burn::store::{ModuleSnapshot, SafetensorsStore};
    let device = Device::flex();
    let (k, n) = (300, 12);
    let config = BitLinearConfig::new(k, n)
        .with_bias(true)
        .with_weight_quant(QuantConfig::ternary().with_granularity(Granularity::PerChannel));
    let packed =
        TernaryLinear::from_bit_linear(&bit_linear(k, n, config.clone(), &device)).unwrap();
    let x = input(4, k, &device);
    let expected = values(packed.forward(x.clone()));
    // An untrained layer of the same shape is the skeleton to load into.
    let skeleton =
        || TernaryLinear::from_bit_linear(&config.clone().init(&device).unwrap()).unwrap();
    assert_ne!(values(skeleton().forward(x.clone())), expected);

    let dir = std::env::temp_dir().join(format!("bitnet-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bpk = dir.join("layer.bpk");
    packed.clone().save_file(&bpk).unwrap();
    let loaded = skeleton().try_load_file(&bpk).unwrap();
    assert_eq!(values(loaded.forward(x.clone())), expected);

    let st = dir.join("layer.safetensors");
    packed
        .save_into(&mut SafetensorsStore::from_file(&st))
        .unwrap();
    let mut loaded = skeleton();
    loaded
        .load_from(&mut SafetensorsStore::from_file(&st))
        .unwrap();
    assert_eq!(values(loaded.forward(x)), expected);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn packed_weights_are_over_15_times_smaller() {
    let device = Device::flex();
    let (k, n) = (2048, 256);
    let packed =
        TernaryLinear::from_bit_linear(&bit_linear(k, n, BitLinearConfig::new(k, n), &device))
            .unwrap();
    let ratio = (k * n * 4) as f64 / packed.packed_bytes() as f64;
    assert!(ratio > 15.5, "{ratio}");
}

#[test]
fn formats_without_a_packed_form_are_typed_errors() {
    let device = Device::flex();
    let cases = [
        (
            BitLinearConfig::new(256, 4).with_weight_quant(QuantConfig::int(4)),
            "only ternary and binary",
        ),
        (
            BitLinearConfig::new(256, 4).with_weight_ste(Ste::Soft { temperature: 0.1 }),
            "soft STE",
        ),
        (
            BitLinearConfig::new(256, 4).with_activation_quant(Some(QuantConfig::activation(4))),
            "8-bit absmax per token",
        ),
        (
            BitLinearConfig::new(256, 4).with_weight_quant(
                QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 128 }),
            ),
            "multiple of 256",
        ),
    ];
    for (config, expected) in cases {
        let layer = config.init(&device).unwrap();
        let err = TernaryLinear::from_bit_linear(&layer).unwrap_err();
        assert!(
            matches!(&err, bitnet_qat::QatError::Unsupported { layer, reason }
                if layer == "BitLinear" && reason.contains(expected)),
            "{expected}: {err:?}"
        );
    }
    let plain = LinearConfig::new(8, 4).init(&device);
    assert!(matches!(
        TernaryLinear::from_linear(&plain),
        Err(bitnet_qat::QatError::Unsupported { layer, reason })
            if layer == "Linear" && reason.contains("no QAT quantizer")
    ));
}
