//! The drop-in layers (`bitnet_qat::nn::{Linear, Embedding}`, `nn::conv::{Conv1d, Conv2d}`):
//! burn-nn's configurations, records and (unquantized) outputs; BitNet's W1.58A8 against the
//! published formulas; checkpoints of the float model; schedules, statistics and packing.

use bitnet_qat::QatError;
use bitnet_qat::infer::pack;
use bitnet_qat::nn::conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
use bitnet_qat::nn::{
    BitLinearConfig, Embedding, EmbeddingConfig, Linear, LinearConfig, QuantAxis, QuantScheme,
    QuantizerConfig, load_float_checkpoint, quantizers,
};
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::schedule::{LambdaRamp, LambdaSchedule, QatScheduler};
use bitnet_qat::ste::Ste;
use burn::config::Config;
use burn::module::Module;
use burn::nn::{LinearLayout, PaddingConfig2d};
use burn::store::{BurnpackStore, ModuleSnapshot, ModuleStore};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::reference as r;
use crate::{assert_close, devices, values};

/// A burn-nn model with every layer the drop-ins replace.
#[derive(Module, Debug)]
struct FloatNet {
    embedding: burn::nn::Embedding,
    conv1: burn::nn::conv::Conv1d,
    conv2: burn::nn::conv::Conv2d,
    row: burn::nn::Linear,
    col: burn::nn::Linear,
}

/// The same model from the drop-ins: one changed `use` line in a user's code.
#[derive(Module, Debug)]
struct QatNet {
    embedding: Embedding,
    conv1: Conv1d,
    conv2: Conv2d,
    row: Linear,
    col: Linear,
}

fn float_net(device: &Device) -> FloatNet {
    FloatNet {
        embedding: burn::nn::EmbeddingConfig::new(10, 6).init(device),
        conv1: burn::nn::conv::Conv1dConfig::new(6, 4, 3).init(device),
        conv2: burn::nn::conv::Conv2dConfig::new([2, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(device),
        row: burn::nn::LinearConfig::new(8, 5).init(device),
        col: burn::nn::LinearConfig::new(5, 3)
            .with_layout(LinearLayout::Col)
            .init(device),
    }
}

fn qat_net(quant: QuantScheme, device: &Device) -> QatNet {
    QatNet {
        embedding: EmbeddingConfig::new(10, 6).init(device),
        conv1: Conv1dConfig::new(6, 4, 3)
            .with_quant(quant.clone())
            .init(device),
        conv2: Conv2dConfig::new([2, 4], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_quant(quant.clone())
            .init(device),
        row: LinearConfig::new(8, 5)
            .with_quant(quant.clone())
            .init(device),
        col: LinearConfig::new(5, 3)
            .with_layout(LinearLayout::Col)
            .with_quant(quant)
            .init(device),
    }
}

/// The outputs of every layer for fixed inputs.
struct Outputs {
    embedding: TensorData,
    conv1: TensorData,
    conv2: TensorData,
    row: TensorData,
    col: TensorData,
}

struct Inputs {
    ids: Tensor<2, Int>,
    seq: Tensor<3>,
    image: Tensor<4>,
    row: Tensor<2>,
    col: Tensor<3>,
}

fn inputs(device: &Device) -> Inputs {
    let t = |n: usize, seed: u32| pseudo_random(n, seed);
    Inputs {
        ids: Tensor::from_data([[0, 3, 9], [4, 4, 1]], device),
        seq: Tensor::from_data(TensorData::new(t(2 * 6 * 7, 1), [2, 6, 7]), device),
        image: Tensor::from_data(TensorData::new(t(2 * 2 * 5 * 5, 2), [2, 2, 5, 5]), device),
        row: Tensor::from_data(TensorData::new(t(3 * 8, 3), [3, 8]), device),
        col: Tensor::from_data(TensorData::new(t(2 * 2 * 5, 4), [2, 2, 5]), device),
    }
}

macro_rules! outputs {
    ($net:expr, $x:expr) => {
        Outputs {
            embedding: $net.embedding.forward($x.ids.clone()).into_data(),
            conv1: $net.conv1.forward($x.seq.clone()).into_data(),
            conv2: $net.conv2.forward($x.image.clone()).into_data(),
            row: $net.row.forward($x.row.clone()).into_data(),
            col: $net.col.forward($x.col.clone()).into_data(),
        }
    };
}

fn assert_bitwise(a: &Outputs, b: &Outputs, what: &str) {
    for (name, a, b) in [
        ("embedding", &a.embedding, &b.embedding),
        ("conv1", &a.conv1, &b.conv1),
        ("conv2", &a.conv2, &b.conv2),
        ("row", &a.row, &b.row),
        ("col", &a.col, &b.col),
    ] {
        assert_eq!(a, b, "{what}: {name}");
    }
}

/// The record keys of `model`, sorted.
fn keys(model: &impl Module) -> Vec<String> {
    let mut store = BurnpackStore::from_bytes(None);
    model.save_into(&mut store).unwrap();
    let bytes = store.get_bytes().unwrap();
    let mut keys = BurnpackStore::from_bytes(Some(bytes)).keys().unwrap();
    keys.sort();
    keys
}

#[test]
fn configurations_are_burn_nns_plus_quant() {
    // burn-nn's configuration, field for field (so the initial parameters are burn-nn's: the
    // drop-ins build burn-nn's layer from it), and burn-nn's files load.
    let pairs = [
        (
            LinearConfig::new(8, 5).to_float().to_string(),
            burn::nn::LinearConfig::new(8, 5).to_string(),
        ),
        (
            Conv1dConfig::new(6, 4, 3).to_float().to_string(),
            burn::nn::conv::Conv1dConfig::new(6, 4, 3).to_string(),
        ),
        (
            Conv2dConfig::new([2, 4], [3, 3]).to_float().to_string(),
            burn::nn::conv::Conv2dConfig::new([2, 4], [3, 3]).to_string(),
        ),
        (
            EmbeddingConfig::new(10, 6).to_float().to_string(),
            burn::nn::EmbeddingConfig::new(10, 6).to_string(),
        ),
    ];
    for (ours, theirs) in pairs {
        assert_eq!(ours, theirs);
    }
    let linear = LinearConfig::load_binary(
        burn::nn::LinearConfig::new(8, 5)
            .with_bias(false)
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        (linear.d_input, linear.bias, linear.quant),
        (8, false, QuantScheme::bitnet())
    );
    let conv = Conv2dConfig::load_binary(
        burn::nn::conv::Conv2dConfig::new([2, 4], [3, 3])
            .with_groups(2)
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!((conv.groups, conv.quant), (2, QuantScheme::bitnet()));
    let embedding =
        EmbeddingConfig::load_binary(burn::nn::EmbeddingConfig::new(10, 6).to_string().as_bytes())
            .unwrap();
    assert_eq!(embedding.quant, None);
    // Ours round-trips, the scheme included.
    let w4 = QuantScheme::weight_only(QuantConfig::int(4));
    let json = LinearConfig::new(8, 5).with_quant(w4.clone()).to_string();
    assert_eq!(
        LinearConfig::load_binary(json.as_bytes()).unwrap().quant,
        w4
    );
}

#[test]
fn float_checkpoints_load_and_unquantized_layers_are_burn_nns_bit_for_bit() {
    for (name, device) in devices() {
        device.seed(11);
        let float = float_net(&device);
        let x = inputs(&device);
        let expected = outputs!(float, x);
        // Burn's own record and a BurnpackStore: the same burnpack bytes either way.
        let record = float.clone().into_record().into_bytes().unwrap().to_vec();
        let mut store = BurnpackStore::from_bytes(None);
        float.save_into(&mut store).unwrap();
        let stored = store.get_bytes().unwrap().to_vec();
        for bytes in [record, stored] {
            let loaded =
                load_float_checkpoint(qat_net(QuantScheme::none(), &device), bytes.clone())
                    .unwrap();
            assert!(loaded.quantizer_params.is_empty(), "{name}");
            assert_bitwise(&outputs!(loaded.model, x), &expected, name);

            // W1.58A8: the same latent weights, quantizer settings from the configuration.
            let loaded =
                load_float_checkpoint(qat_net(QuantScheme::bitnet(), &device), bytes).unwrap();
            let mut missing = loaded.quantizer_params.clone();
            missing.sort();
            assert_eq!(
                missing,
                [
                    "col.activation_quantizer.settings",
                    "col.weight.qat.settings",
                    "conv1.activation_quantizer.settings",
                    "conv1.weight.qat.settings",
                    "conv2.activation_quantizer.settings",
                    "conv2.weight.qat.settings",
                    "row.activation_quantizer.settings",
                    "row.weight.qat.settings",
                ],
                "{name}"
            );
            let model = loaded.model;
            assert_eq!(
                model.conv2.weight.base().into_data(),
                float.conv2.weight.val().into_data()
            );
            assert_eq!(
                model.col.weight.base().into_data(),
                float.col.weight.val().into_data()
            );
            // The quantized layers then compute W1.58A8 (checked against the formulas below),
            // which differs from the float outputs.
            assert_ne!(model.row.forward(x.row.clone()).into_data(), expected.row);
            // Back to burn-nn: the latent parameters, the same ids.
            let back = model.conv2.to_float();
            assert_eq!(back.weight.id, float.conv2.weight.id);
            assert_eq!(
                back.forward(x.image.clone()).into_data(),
                expected.conv2,
                "{name}"
            );
        }
    }
}

#[test]
fn record_keys_are_burn_nns_plus_the_quantizer_settings() {
    let device = Device::flex();
    let float = keys(&float_net(&device));
    assert_eq!(keys(&qat_net(QuantScheme::none(), &device)), float);
    let mut expected = float.clone();
    for layer in ["conv1", "conv2", "row", "col"] {
        expected.push(format!("{layer}.weight.qat.settings"));
        expected.push(format!("{layer}.activation_quantizer.settings"));
    }
    expected.sort();
    assert_eq!(keys(&qat_net(QuantScheme::bitnet(), &device)), expected);
    // The Col layout stores [d_output, d_input], as burn-nn's does.
    let mut store = BurnpackStore::from_bytes(None);
    qat_net(QuantScheme::bitnet(), &device)
        .col
        .save_into(&mut store)
        .unwrap();
    let mut store = BurnpackStore::from_bytes(Some(store.get_bytes().unwrap()));
    let weight = store.get_tensor("weight").unwrap().unwrap();
    assert_eq!(weight.shape.to_vec(), [3, 5]);
}

/// Direct 2-D convolution of `[b, c, h, w]` by `[o, c, k, k]`, stride 1, zero padding `p`.
fn conv2d_reference(
    x: &[f32],
    [b, c, h, w]: [usize; 4],
    k: &[f32],
    [o, kh]: [usize; 2],
    p: usize,
) -> Vec<f32> {
    let (ho, wo) = (h + 2 * p - kh + 1, w + 2 * p - kh + 1);
    let mut y = vec![0.0f32; b * o * ho * wo];
    for bi in 0..b {
        for oi in 0..o {
            for i in 0..ho {
                for j in 0..wo {
                    let mut acc = 0.0f64;
                    for ci in 0..c {
                        for di in 0..kh {
                            for dj in 0..kh {
                                let (yi, xj) = (
                                    (i + di) as isize - p as isize,
                                    (j + dj) as isize - p as isize,
                                );
                                if yi < 0 || xj < 0 || yi >= h as isize || xj >= w as isize {
                                    continue;
                                }
                                let xv = x[((bi * c + ci) * h + yi as usize) * w + xj as usize];
                                let kv = k[((oi * c + ci) * kh + di) * kh + dj];
                                acc += (xv * kv) as f64;
                            }
                        }
                    }
                    y[((bi * o + oi) * ho + i) * wo + j] = acc as f32;
                }
            }
        }
    }
    y
}

/// BitNet's int8 activations per position of `[b, c, h, w]`: one absmax scale over the
/// channels of each pixel.
fn act8_per_pixel(x: &[f32], [b, c, h, w]: [usize; 4]) -> Vec<f32> {
    let mut out = x.to_vec();
    for bi in 0..b {
        for p in 0..h * w {
            let idx: Vec<usize> = (0..c).map(|ci| (bi * c + ci) * h * w + p).collect();
            let vals: Vec<f32> = idx.iter().map(|&i| x[i]).collect();
            for (i, q) in idx.iter().zip(r::act8(&vals)) {
                out[*i] = q;
            }
        }
    }
    out
}

#[test]
fn conv2d_w158a8_is_the_published_formula_and_its_ste_gradient_reaches_the_kernel() {
    let (b, c, h, w, o, k) = (2, 3, 6, 5, 4, 3);
    for (name, device) in devices() {
        let device = device.autodiff();
        let kernel = pseudo_random(o * c * k * k, 21);
        let x = pseudo_random(b * c * h * w, 22);
        let float = burn::nn::conv::Conv2dConfig::new([c, o], [k, k])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(&device);
        let float = burn::nn::conv::Conv2d {
            weight: burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(kernel.clone(), [o, c, k, k]),
                &device,
            )),
            ..float
        };
        let xq = act8_per_pixel(&x, [b, c, h, w]);
        for granularity in [Granularity::PerTensor, Granularity::PerChannel] {
            let quant = QuantScheme::bitnet()
                .with_weight(Some(QuantConfig::ternary().with_granularity(granularity)));
            let conv = Conv2d::from_float(float.clone(), &quant).unwrap();
            let kq = match granularity {
                Granularity::PerTensor => r::ternary(&kernel, 1e-5),
                _ => kernel
                    .chunks(c * k * k)
                    .flat_map(|row| r::ternary(row, 1e-5))
                    .collect(),
            };
            let expected = conv2d_reference(&xq, [b, c, h, w], &kq, [o, k], 1);
            let input = Tensor::<4>::from_data(TensorData::new(x.clone(), [b, c, h, w]), &device)
                .require_grad();
            let y = conv.forward(input.clone());
            assert_close(
                &values(y.clone()),
                &expected,
                1e-5,
                &format!("{name} {granularity:?}"),
            );
            // The standard STE: the kernel's gradient is that of the quantized kernel, the
            // input's that of the quantized input (both straight through).
            let grads = y.sum().backward();
            let g_kernel = values(conv.weight.base().grad(&grads).unwrap());
            let reference = burn::nn::conv::Conv2d {
                weight: burn::module::Param::from_tensor(
                    Tensor::from_data(TensorData::new(kq.clone(), [o, c, k, k]), &device)
                        .require_grad(),
                ),
                ..float.clone()
            };
            let xq_t = Tensor::<4>::from_data(TensorData::new(xq.clone(), [b, c, h, w]), &device);
            let grads_ref = reference.forward(xq_t).sum().backward();
            let g_ref = values(reference.weight.val().grad(&grads_ref).unwrap());
            assert_close(&g_kernel, &g_ref, 1e-5, &format!("{name} kernel gradient"));
            assert!(input.grad(&grads).is_some());
        }
    }
}

#[test]
fn drop_in_linear_computes_bitlinear_without_its_norm() {
    for (name, device) in devices() {
        let float = burn::nn::LinearConfig::new(16, 6).init(&device);
        let linear = Linear::from_float(float.clone(), &QuantScheme::bitnet()).unwrap();
        let bit = BitLinearConfig::new(16, 6)
            .with_norm(false)
            .with_bias(true)
            .init_with(
                float.weight.val(),
                float.bias.as_ref().map(|b| b.val()),
                &device,
            )
            .unwrap();
        let x = Tensor::<3>::from_data(
            TensorData::new(pseudo_random(2 * 3 * 16, 5), [2, 3, 16]),
            &device,
        );
        assert_eq!(
            linear.forward(x.clone()).into_data(),
            bit.forward(x.clone()).into_data(),
            "{name}"
        );
        // And the formula: act8 per token times the absmean ternary weight, plus the bias.
        let wq = r::ternary(&values(float.weight.val()), 1e-5);
        let xq = r::per_row(&values(x.clone()), 16, r::act8);
        let mut expected = r::matmul(&xq, &wq, 6, 16, 6);
        let bias = values(float.bias.unwrap().val());
        for (i, v) in expected.iter_mut().enumerate() {
            *v += bias[i % 6];
        }
        assert_close(&values(linear.forward(x)), &expected, 1e-5, name);
    }
}

#[test]
fn schedules_statistics_and_pack_find_the_drop_in_quantizers() {
    let device = Device::flex();
    device.seed(3);
    let net = qat_net(QuantScheme::bitnet(), &device);
    let found = quantizers(&net);
    let paths: Vec<&str> = found.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "conv1.weight.qat",
            "conv1.activation_quantizer",
            "conv2.weight.qat",
            "conv2.activation_quantizer",
            "row.weight.qat",
            "row.activation_quantizer",
            "col.weight.qat",
            "col.activation_quantizer",
        ]
    );
    // A kernel is reported as its linear view [channels_in / groups · k..., channels_out].
    assert_eq!(found[0].weight.as_ref().unwrap().dims(), [18, 4]);
    assert_eq!(found[2].weight.as_ref().unwrap().dims(), [18, 4]);
    assert_eq!(found[2].quantizer.settings().axis, QuantAxis::OutputFirst);
    assert_eq!(found[4].weight.as_ref().unwrap().dims(), [8, 5]);

    // Lambda warm-up reaches every quantizer, the kernels' included.
    let scheduler = QatScheduler::default().with_lambda(LambdaSchedule::new(4, LambdaRamp::Linear));
    let scheduled = scheduler.apply(net.clone(), 1).unwrap();
    for f in quantizers(&scheduled) {
        assert_eq!(f.quantizer.settings().lambda, 0.25, "{}", f.path);
    }
    // The statistics of a kernel are those of its ternary codes.
    let stats = bitnet_qat::schedule::weight_stats(&net).unwrap();
    let sum = stats.fraction_negative + stats.fraction_zero + stats.fraction_positive;
    assert!((sum - 1.0).abs() < 1e-9, "{sum}");
    assert_eq!(stats.numel, 72 + 72 + 40 + 15);

    // Packed: Linear layers and convolutions run the packed kernels; the outputs are those of
    // `valid()`, bit for bit.
    let packed = pack(&net).unwrap();
    assert!(
        packed
            .row
            .weight
            .reparameterization::<bitnet_qat::infer::PackedWeight>()
            .is_some()
    );
    assert!(packed.conv2.packed_weight().is_some());
    assert!(packed.conv1.packed_weight().is_some());
    let x = inputs(&device);
    let valid = net.valid();
    assert_bitwise(&outputs!(packed, x), &outputs!(valid, x), "packed");
}

#[test]
fn learned_steps_restart_from_the_loaded_weights() {
    let device = Device::flex();
    let float = burn::nn::LinearConfig::new(8, 4).init(&device);
    let bytes = float.clone().into_record().into_bytes().unwrap().to_vec();
    let lsq = QuantScheme::bitnet().with_weight_ste(Ste::LearnedStepSize);
    let skeleton = LinearConfig::new(8, 4).with_quant(lsq).init(&device);
    let loaded = load_float_checkpoint(skeleton, bytes).unwrap();
    assert!(
        loaded
            .quantizer_params
            .contains(&"weight.qat.step".to_string())
    );
    // Ternary LSQ starts at the absmean step mean|W| / 1 of the *loaded* weight.
    let w = values(float.weight.val());
    let mean = w.iter().map(|v| v.abs()).sum::<f32>() / w.len() as f32;
    let step = values(
        loaded
            .model
            .weight_quantizer()
            .unwrap()
            .step
            .as_ref()
            .unwrap()
            .val(),
    );
    assert_close(&step, &[mean], 1e-6, "step");
}

#[test]
fn bad_checkpoints_configurations_and_inputs_are_typed_errors() {
    let device = Device::flex();
    // A checkpoint without a parameter the model has (a bias).
    let float = burn::nn::LinearConfig::new(8, 4)
        .with_bias(false)
        .init(&device);
    let bytes = float.into_record().into_bytes().unwrap().to_vec();
    let skeleton = LinearConfig::new(8, 4).init(&device);
    match load_float_checkpoint(skeleton, bytes.clone()) {
        Err(QatError::Record { path, reason }) => {
            assert_eq!(path, "bias");
            assert!(reason.contains("the file does not"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A checkpoint with a tensor the model lacks.
    let float = burn::nn::LinearConfig::new(8, 4).init(&device);
    let bytes = float.into_record().into_bytes().unwrap().to_vec();
    let skeleton = LinearConfig::new(8, 4).with_bias(false).init(&device);
    match load_float_checkpoint(skeleton, bytes) {
        Err(QatError::Record { path, .. }) => assert_eq!(path, "bias"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // Another shape.
    let float = burn::nn::LinearConfig::new(8, 3).init(&device);
    let bytes = float.into_record().into_bytes().unwrap().to_vec();
    let skeleton = LinearConfig::new(8, 4).init(&device);
    assert!(matches!(
        load_float_checkpoint(skeleton, bytes),
        Err(QatError::Shape { what, .. }) if what.contains("weight")
    ));
    // Not a burnpack file.
    let skeleton = LinearConfig::new(8, 4).init(&device);
    assert!(matches!(
        load_float_checkpoint(skeleton, b"not a checkpoint".to_vec()),
        Err(QatError::File {
            format: "burnpack",
            ..
        })
    ));
    // Groups that do not divide the channels (burn-nn panics).
    match Conv2dConfig::new([3, 4], [3, 3])
        .with_groups(2)
        .try_init(&device)
    {
        Err(QatError::Config { name, value, .. }) => {
            assert_eq!(
                (name.as_str(), value.as_str()),
                ("Conv2dConfig.groups", "2")
            )
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    // A group size that does not divide a kernel's inputs (3 · 3 · 3 = 27).
    let quant = QuantScheme::bitnet().with_weight(Some(
        QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 4 }),
    ));
    assert!(matches!(
        Conv2dConfig::new([3, 4], [3, 3])
            .with_quant(quant)
            .try_init(&device),
        Err(QatError::GroupSize {
            group_size: 4,
            dim: 27
        })
    ));
    // LSQ for activations.
    let quant = QuantScheme::bitnet().with_activation_ste(Ste::LearnedStepSize);
    match LinearConfig::new(8, 4).with_quant(quant).try_init(&device) {
        Err(QatError::Config { name, .. }) => assert_eq!(name, "QuantScheme.activation_ste"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    // An input with the wrong channel count.
    let conv = Conv1dConfig::new(6, 4, 3).init(&device);
    match conv.try_forward(Tensor::zeros([1, 5, 8], &device)) {
        Err(QatError::Shape { what, got, .. }) => {
            assert_eq!((what.as_str(), got), ("Conv1d input", vec![1, 5, 8]))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let linear = LinearConfig::new(8, 4).init(&device);
    assert!(matches!(
        linear.try_forward(Tensor::<2>::zeros([1, 7], &device)),
        Err(QatError::Shape { got, .. }) if got == vec![1, 7]
    ));
}

#[test]
fn a_quantized_embedding_has_one_scale_per_token() {
    let device = Device::flex();
    let float = burn::nn::EmbeddingConfig::new(5, 8).init(&device);
    let quant = QuantizerConfig::new(QuantConfig::int(8).with_granularity(Granularity::PerChannel));
    let embedding = Embedding::from_float(float.clone(), Some(&quant)).unwrap();
    let table = values(float.weight.val());
    // int8 absmax per row: each token's vector with its own scale.
    let expected: Vec<f32> = table
        .chunks(8)
        .flat_map(|row| r::int_quant(row, -128, 127, r::Stat::Max, 1e-5))
        .collect();
    let ids = Tensor::<2, Int>::from_data([[0, 1, 2, 3, 4]], &device);
    assert_close(
        &values(embedding.forward(ids)),
        &expected,
        1e-6,
        "embedding",
    );
    assert_eq!(
        quantizers(&embedding)[0].weight.as_ref().unwrap().dims(),
        [8, 5]
    );
}

/// Found by the `float-checkpoint` fuzz target: recorded settings of another granularity than
/// the learned step was trained for (per channel: 3 scales; the step holds 1) made the forward
/// pass panic; the loader now refuses them.
#[test]
fn a_learned_step_that_does_not_fit_its_recorded_settings_is_refused() {
    use burn::module::{ModuleMapper, Param};

    /// Replaces the quantizer settings of `weight.qat` with those of another layer.
    struct SwapSettings(Option<Tensor<1, Int>>, Vec<String>);
    impl ModuleMapper for SwapSettings {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.1.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.1.pop();
        }
        fn map_int<const D: usize>(
            &mut self,
            param: Param<Tensor<D, Int>>,
        ) -> Param<Tensor<D, Int>> {
            if self.1.join(".") == "weight.qat.settings" {
                let settings = self.0.take().unwrap();
                // A parameter of its own, as a record written elsewhere brings: the settings
                // cached for the original id are not its.
                let dims = param.shape().dims::<D>();
                return Param::initialized(burn::module::ParamId::new(), settings.reshape(dims));
            }
            param
        }
    }
    let device = Device::flex();
    let lsq = |granularity| {
        QuantScheme::bitnet()
            .with_weight(Some(QuantConfig::ternary().with_granularity(granularity)))
            .with_weight_ste(Ste::LearnedStepSize)
    };
    let per_tensor = LinearConfig::new(8, 3)
        .with_quant(lsq(Granularity::PerTensor))
        .init(&device);
    let per_channel = LinearConfig::new(8, 3)
        .with_quant(lsq(Granularity::PerChannel))
        .init(&device);
    let mut ints = Vec::new();
    per_channel.visit(&mut IntParams(&mut ints, Vec::new()));
    let settings = ints
        .into_iter()
        .find(|(path, _)| path == "weight.qat.settings")
        .map(|(_, t)| t);
    let tampered = per_tensor.map(&mut SwapSettings(settings, Vec::new()));
    // Run as it is, the layer returns the error (its forward pass once panicked here), on both
    // paths: the integer sums without autodiff, the float product with it.
    for (device, train) in [(device.clone(), false), (device.clone().autodiff(), true)] {
        let layer = tampered.clone().fork(&device);
        let layer = if train { layer.train() } else { layer };
        assert_eq!(layer.weight.base().is_require_grad(), train);
        match layer.try_forward(Tensor::<2>::ones([2, 8], &device)) {
            Err(QatError::Shape { what, .. }) => assert_eq!(what, "learned step"),
            other => panic!("{:?}", other.map(|_| ())),
        }
    }
    let bytes = tampered.into_record().into_bytes().unwrap().to_vec();
    let skeleton = LinearConfig::new(8, 3)
        .with_quant(lsq(Granularity::PerTensor))
        .init(&device);
    match load_float_checkpoint(skeleton, bytes) {
        Err(QatError::Record { path, reason }) => {
            assert_eq!(path, "weight.qat.step");
            assert!(reason.contains("1 values for 3 scales"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Every integer parameter of a module, by path.
struct IntParams<'a>(&'a mut Vec<(String, Tensor<1, Int>)>, Vec<String>);

impl burn::module::ModuleVisitor for IntParams<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.1.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.1.pop();
    }
    fn visit_int<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D, Int>>) {
        let n = param.shape().num_elements();
        self.0.push((self.1.join("."), param.val().reshape([n])));
    }
}
