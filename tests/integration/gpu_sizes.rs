//! The quantizers on the GPU at sizes that cross every internal threshold, against Flex: the
//! fused kernels (one cube per row, more rows than one grid dimension holds; per tensor 4,096
//! elements a cube, the apply pass reducing up to 256 partials itself and a scale kernel past
//! that) and the portable statistics (blocks of 4,096, blocks of blocks past 16 Mi elements),
//! forward and the STEs' backward passes; then BitLinear on large layers and a trained MLP of
//! realistic width converted to packed ternary weights on the GPU.
//!
//! The scale of a large group is a sum in another order on each device, so the values agree to
//! f32 rounding of the scale, and a code may differ only where the element sits at a rounding
//! tie of the grid (see [`assert_same_quantization`]).

use bitnet_qat::nn::BitLinearConfig;
use bitnet_qat::quant::{
    Granularity, QuantConfig, QuantFormat, ScaleStat, fake_quantize, fake_quantize_weight,
};
use bitnet_qat::ste::{Ste, quantize_ste};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use super::gpu::gpu_device;
use super::gpu_qat::{assert_same_bitlinear, bitlinear_outputs, weight_quantizer_cases};
use super::{Lcg, assert_close, values};

/// Shapes `[rows, cols]`: one element; ragged; 784×512 (98 chunks of 4,096); 1024×1024 (256
/// chunks, the most the apply pass folds); 1025×1024 (257: the scale kernel); 4096×4096 and
/// 4099×4097 (over 16 Mi elements: 4,096 partials, and portable blocks of blocks with a
/// remainder at each level); 65,537 rows (per-row cubes past one grid dimension).
const SIZES: [[usize; 2]; 9] = [
    [1, 1],
    [3, 5],
    [257, 129],
    [784, 512],
    [1024, 1024],
    [1025, 1024],
    [4096, 4096],
    [4099, 4097],
    [65_537, 3],
];

/// Tensors at least this large are checked with fewer configurations (time on lavapipe).
const LARGE: usize = 8 << 20;

/// `n` values from N(0, 0.05²) (Box–Muller over [`Lcg`]), the spread of trained weights.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|_| {
            let (u1, u2) = (1.0 - rng.uniform(), rng.uniform());
            0.05 * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

fn tensor(data: &[f32], [rows, cols]: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [rows, cols]), device)
}

/// Every format × statistic × granularity (along the last axis) the shape allows; for large
/// tensors, every format and statistic per tensor (where the statistic is one reduction over
/// the whole tensor) and per token.
fn configs(elements: usize, cols: usize) -> Vec<QuantConfig> {
    let formats = [
        QuantFormat::Binary,
        QuantFormat::Ternary,
        QuantFormat::Int { bits: 2 },
        QuantFormat::Int { bits: 4 },
        QuantFormat::Int { bits: 8 },
    ];
    let mut granularities = vec![Granularity::PerTensor, Granularity::PerToken];
    if elements < LARGE && cols.is_multiple_of(32) {
        granularities.push(Granularity::PerGroup { size: 32 });
    }
    let mut out = Vec::new();
    for format in formats {
        for stat in [ScaleStat::AbsMean, ScaleStat::AbsMax] {
            for &granularity in &granularities {
                out.push(QuantConfig::new(format, stat).with_granularity(granularity));
            }
        }
    }
    // The median sorts (the portable path only): per tensor and per token.
    for granularity in [Granularity::PerTensor, Granularity::PerToken] {
        out.push(
            QuantConfig::ternary()
                .with_stat(ScaleStat::AbsMedian)
                .with_granularity(granularity),
        );
    }
    out
}

/// The elements that share element `i`'s scale, as a group index: scales along the last axis
/// of a `[rows, cols]` tensor.
fn group_of(granularity: Granularity, cols: usize, i: usize) -> usize {
    match granularity {
        Granularity::PerTensor => 0,
        Granularity::PerToken | Granularity::PerChannel => i / cols,
        Granularity::PerGroup { size } => i / size,
    }
}

/// The mean of `x` over each group of [`group_of`], in f64.
fn group_means(x: &[f32], granularity: Granularity, cols: usize) -> Vec<f64> {
    let groups = group_of(granularity, cols, x.len() - 1) + 1;
    let (mut sum, mut count) = (vec![0.0f64; groups], vec![0usize; groups]);
    for (i, &v) in x.iter().enumerate() {
        let g = group_of(granularity, cols, i);
        sum[g] += v as f64;
        count[g] += 1;
    }
    sum.iter().zip(&count).map(|(s, &c)| s / c as f64).collect()
}

/// Relative rounding of a scale summed in another order: values agree to it, and an element
/// is at a tie when it lies this close (relatively) to a decision threshold of the grid.
const SCALE_ROUNDING: f32 = 4e-6;

/// Asserts that `got` quantizes `x` as `expected` does, with `config` along the last axis of a
/// `[_, cols]` tensor: every element equal within 1e-5 relative (the f32 rounding of a scale
/// summed in another order), except at the rounding ties that rounding can move: an integer
/// code one step apart where `x` lies within [`SCALE_ROUNDING`] of the midpoint of the two
/// values (where `x s` is a half-integer), a binary sign flipped where `x` lies within 1e-7 of
/// its group's mean. Returns the ties (at most one element in 10,000, or 2).
#[track_caller]
fn assert_same_quantization(
    got: &[f32],
    expected: &[f32],
    x: &[f32],
    config: &QuantConfig,
    cols: usize,
    what: &str,
) -> Vec<usize> {
    assert_eq!(got.len(), expected.len(), "{what}: length");
    let centers =
        (config.format == QuantFormat::Binary).then(|| group_means(x, config.granularity, cols));
    let mut ties = Vec::new();
    for (i, (&g, &e)) in got.iter().zip(expected).enumerate() {
        if (g - e).abs() <= 1e-5 * e.abs() {
            continue;
        }
        let tie = match &centers {
            Some(centers) => {
                let center = centers[group_of(config.granularity, cols, i)];
                g == -e && (x[i] as f64 - center).abs() <= 1e-7
            }
            None => {
                let midpoint = (g + e) / 2.0;
                (x[i] - midpoint).abs() <= SCALE_ROUNDING * x[i].abs()
            }
        };
        assert!(
            tie,
            "{what}[{i}]: gpu {g}, flex {e} (x = {}), not a rounding tie",
            x[i]
        );
        ties.push(i);
    }
    assert!(
        ties.len() <= (got.len() / 10_000).max(2),
        "{what}: {} ties in {} elements",
        ties.len(),
        got.len()
    );
    ties
}

#[test]
fn fake_quantization_matches_flex_at_every_size() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex();
    let mut checked = 0;
    for (n, &[rows, cols]) in SIZES.iter().enumerate() {
        let x = normal(rows * cols, 100 + n as u64);
        let (on_gpu, on_cpu) = (
            tensor(&x, [rows, cols], &gpu),
            tensor(&x, [rows, cols], &cpu),
        );
        for config in configs(x.len(), cols) {
            let what = format!(
                "{rows}x{cols} {:?} {:?} {:?}",
                config.format, config.stat, config.granularity
            );
            // The portable path (Burn's reductions) and the fused kernels.
            let portable = |t: &Tensor<2>| values(fake_quantize(t.clone(), &config).unwrap());
            let expected = portable(&on_cpu);
            let got = portable(&on_gpu);
            assert_same_quantization(&got, &expected, &x, &config, cols, &what);
            let fused =
                |t: &Tensor<2>| values(quantize_ste(t.clone(), &config, &Ste::Standard).unwrap());
            let got = fused(&on_gpu);
            assert_same_quantization(&got, &expected, &x, &config, cols, &format!("{what} fused"));
            checked += 1;
        }
        // Burn's weight layout `[d_input, d_output]`, scales along axis 0: the transpose of
        // per-token scales (per tensor: the same statistic).
        if x.len() < LARGE {
            let config = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
            let weight = |t: &Tensor<2>| {
                let q = fake_quantize_weight(t.clone().transpose(), &config).unwrap();
                values(q.transpose())
            };
            let (got, expected) = (weight(&on_gpu), weight(&on_cpu));
            let per_row = config.with_granularity(Granularity::PerToken);
            let what = format!("{rows}x{cols} weight per channel");
            assert_same_quantization(&got, &expected, &x, &per_row, cols, &what);
        }
    }
    // 22 configurations without groups (cols not a multiple of 32, or large), 32 with.
    assert_eq!(checked, 6 * 22 + 3 * 32);
}

#[test]
fn ste_gradients_match_flex_at_every_size() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex().autodiff();
    let gpu = gpu.autodiff();
    let mut checked = 0;
    for (n, &[rows, cols]) in SIZES.iter().enumerate() {
        let x = normal(rows * cols, 200 + n as u64);
        // The incoming gradient: a fixed random weighting of the output.
        let mut rng = Lcg(300 + n as u64);
        let c: Vec<f32> = (0..x.len()).map(|_| 2.0 * rng.uniform() - 1.0).collect();
        let run = |device: &Device, config: &QuantConfig, ste: &Ste| {
            let xt = tensor(&x, [rows, cols], device).require_grad();
            let y = quantize_ste(xt.clone(), config, ste).unwrap();
            let grads = (y.clone() * tensor(&c, [rows, cols], device))
                .sum()
                .backward();
            (values(y), values(xt.grad(&grads).unwrap()))
        };
        for format in [
            QuantFormat::Ternary,
            QuantFormat::Int { bits: 4 },
            QuantFormat::Binary,
        ] {
            for granularity in [Granularity::PerTensor, Granularity::PerToken] {
                let config =
                    QuantConfig::new(format, ScaleStat::AbsMean).with_granularity(granularity);
                let what = format!("{rows}x{cols} {format:?} {granularity:?}");
                // The hard forward pass and where it sits at ties: the gradients of the
                // clipped and EWGS STEs may differ there only.
                let (hard, _) = run(&cpu, &config, &Ste::Standard);
                let (hard_gpu, _) = run(&gpu, &config, &Ste::Standard);
                let ties = assert_same_quantization(&hard_gpu, &hard, &x, &config, cols, &what);
                for ste in [
                    Ste::Clipped,
                    Ste::Adaptive { delta: 0.1 },
                    Ste::Soft { temperature: 0.3 },
                ] {
                    let (y_cpu, g_cpu) = run(&cpu, &config, &ste);
                    let (y_gpu, g_gpu) = run(&gpu, &config, &ste);
                    let what = format!("{what} {ste:?}");
                    if let Ste::Soft { .. } = ste {
                        // Smooth in the scale: close, no ties.
                        assert_close(&y_gpu, &y_cpu, 1e-4, &format!("{what}: forward"));
                        assert_close(&g_gpu, &g_cpu, 1e-4, &format!("{what}: gradient"));
                    } else {
                        assert_same_quantization(&y_gpu, &y_cpu, &x, &config, cols, &what);
                        // Past the ties, the clipped STE's mask may differ where `x` sits on
                        // the clipping bound: where it equals its own extreme code's value
                        // (binary: its group's mean plus that value).
                        let centers = (format == QuantFormat::Binary)
                            .then(|| group_means(&x, granularity, cols));
                        let on_bound = |i: usize| {
                            let center = centers
                                .as_ref()
                                .map_or(0.0, |c| c[group_of(granularity, cols, i)] as f32);
                            let (v, q) = (x[i] - center, hard[i]);
                            (v - q).abs() <= SCALE_ROUNDING * v.abs()
                        };
                        for (i, (a, b)) in g_gpu.iter().zip(&g_cpu).enumerate() {
                            assert!(
                                (a - b).abs() <= 1e-5 * b.abs().max(1.0)
                                    || ties.contains(&i)
                                    || on_bound(i),
                                "{what}: gradient [{i}]: gpu {a}, flex {b} (x = {})",
                                x[i]
                            );
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, SIZES.len() * 3 * 2 * 3);
}

#[test]
fn bitlinear_matches_flex_on_large_layers() {
    // Weights on a grid of 1/64 (at most 3/64 in magnitude): every sum of |w| is exact in f32
    // in any order, so both devices compute the same scales and the same codes, ties included,
    // and the comparison can be tight. Without the norm inside the layer, the activation
    // quantizer sees the same inputs on both devices too.
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex();
    for (k, shape) in [[784usize, 512usize], [2048, 2048]].into_iter().enumerate() {
        let w: Vec<f32> = normal(shape[0] * shape[1], 400 + k as u64)
            .into_iter()
            .map(|v| (v * 32.0).round().clamp(-3.0, 3.0) / 64.0)
            .collect();
        let mut rng = Lcg(500 + k as u64);
        let x: Vec<f32> = (0..8 * shape[0])
            .map(|_| 2.0 * rng.uniform() - 1.0)
            .collect();
        for (weights, ste) in weight_quantizer_cases() {
            let what = format!(
                "{shape:?} {:?} {:?} {ste:?}",
                weights.format, weights.granularity
            );
            let config = BitLinearConfig::new(shape[0], shape[1])
                .with_norm(false)
                .with_weight_quant(weights.clone())
                .with_weight_ste(ste);
            let expected = bitlinear_outputs(&config, &w, &x, &cpu);
            let got = bitlinear_outputs(&config, &w, &x, &gpu);
            assert_same_bitlinear(&got, &expected, &what);
            assert_eq!(expected[3].is_empty(), ste != Ste::LearnedStepSize);
        }
    }
}

#[test]
fn a_trained_mlp_of_realistic_width_converts_exactly_on_the_gpu() {
    use bitnet_qat_examples::{Mlp, Precision};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::{AdamConfig, GradientsParams};

    let Some(gpu) = gpu_device() else { return };
    let Some(dir) = super::fashion_mnist::fashion_dir() else {
        return;
    };
    let train = bitnet_qat::data::IdxDataset::load(dir, bitnet_qat::data::Split::Train).unwrap();
    let device = gpu.clone().autodiff();
    device.seed(7);
    // 784×1024 and 1024×1024 ternary weights, per tensor: the sizes the bug hid in.
    let mut model = Mlp::new(&[784, 1024, 1024, 10], Precision::Ternary, &device).unwrap();
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut losses = Vec::new();
    for step in 0..6 {
        let batch: Vec<usize> = (step * 64..(step + 1) * 64).collect();
        let (x, y) = train.batch(&batch, &device);
        let loss = loss_fn.forward(model.forward(x), y);
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads);
    }
    assert!(
        losses[5] < losses[0],
        "training on the GPU learns: {losses:?}"
    );

    let model = model.valid();
    let packed = bitnet_qat::infer::pack(&model).unwrap();
    let inputs: Vec<usize> = (50_000..50_256).collect();
    let (x, labels) = train.batch(&inputs, &gpu);
    // Layer by layer, on the QAT model's own hidden activations: the same codes, so the
    // outputs agree to the float rounding of the sums.
    let mut h = x.clone();
    for (i, (qat, packed)) in model.layers.iter().zip(&packed.layers).enumerate() {
        let (bitnet_qat_examples::Dense::Bit(qat), bitnet_qat_examples::Dense::Bit(packed)) =
            (qat, packed)
        else {
            panic!("a ternary MLP has BitLinear layers")
        };
        assert!(packed.packed_weight().is_some(), "layer {i} is packed");
        let expected = qat.forward(h.clone());
        let got = packed.forward(h);
        assert_eq!(got.device(), gpu, "the packed layer runs on the GPU");
        assert_close(
            &values(got),
            &values(expected.clone()),
            1e-4,
            &format!("packed layer {i}"),
        );
        h = if i + 1 < model.layers.len() {
            burn::tensor::activation::relu(expected)
        } else {
            expected
        };
    }
    // The whole models: the same predictions. (Through several layers the float rounding of
    // one layer's sums can move a tie of the next layer's activation quantizer, so the logits
    // agree to about 1e-3, not to the last bit.)
    let expected = model.forward(x.clone());
    let got = packed.forward(x);
    let argmax = |t: &Tensor<2>| values(t.clone().argmax(1).float());
    assert_eq!(
        argmax(&got),
        argmax(&expected),
        "packed and QAT predictions"
    );
    assert_close(
        &values(got),
        &values(expected.clone()),
        1e-2,
        "packed logits",
    );
    // Not a degenerate model: above chance after six steps.
    let correct = argmax(&expected)
        .iter()
        .zip(values(labels.float()))
        .filter(|(p, l)| **p == *l)
        .count();
    assert!(correct > 256 / 10 + 10, "{correct} of 256 correct");
}
