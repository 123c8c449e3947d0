//! QAT on the GPU: a BitLinear forward and backward (fused fake quantization kernels) and a
//! packed TernaryLinear forward (ternary matmul kernel) on wgpu agree with Flex.

use bitnet_qat::infer::TernaryLinear;
use bitnet_qat::nn::BitLinearConfig;
use bitnet_qat::quant::{QuantConfig, has_fused_kernels};
use bitnet_qat::ste::{Ste, quantize_ste};
use burn::module::{Module, Param};
use burn::tensor::DType;
use burn::tensor::{Device, Distribution, Tensor, TensorData};

use super::gpu::gpu_device;
use super::{Lcg, assert_close, values};

#[test]
fn fake_quantization_takes_the_fused_kernels_on_flex_and_the_gpu() {
    // Both paths compute the same values, so the comparisons below cannot tell which one ran.
    assert!(has_fused_kernels(&Device::flex().autodiff()));
    #[allow(deprecated)] // NdArray has no fused kernels: the portable path.
    let ndarray = Device::ndarray();
    assert!(!has_fused_kernels(&ndarray));
    let Some(gpu) = gpu_device() else { return };
    assert!(has_fused_kernels(&gpu), "wgpu without the fused kernels");
    assert!(has_fused_kernels(&gpu.autodiff()));
}

/// The weight quantizers the BitLinear comparisons run: BitNet's per-tensor ternary weights
/// (standard, clipped, adaptive and soft STE), binary weights (per tensor; per channel with the
/// clipped STE), int4 per tensor, per channel (the axis-0 fused path; standard and LSQ, whose
/// learned step's gradient is compared too) and in groups of 16 inputs, per-tensor int4 with
/// LSQ and per-channel ternary.
pub fn weight_quantizer_cases() -> Vec<(QuantConfig, Ste)> {
    use bitnet_qat::quant::Granularity::{PerChannel, PerGroup};
    vec![
        (QuantConfig::ternary(), Ste::Standard),
        (QuantConfig::ternary(), Ste::Clipped),
        (QuantConfig::ternary(), Ste::Adaptive { delta: 0.1 }),
        (QuantConfig::ternary(), Ste::Soft { temperature: 0.3 }),
        (QuantConfig::binary(), Ste::Standard),
        (
            QuantConfig::binary().with_granularity(PerChannel),
            Ste::Clipped,
        ),
        (QuantConfig::int(4), Ste::Standard),
        (
            QuantConfig::int(4).with_granularity(PerChannel),
            Ste::Standard,
        ),
        (
            QuantConfig::int(4).with_granularity(PerChannel),
            Ste::LearnedStepSize,
        ),
        (QuantConfig::int(4), Ste::LearnedStepSize),
        (
            QuantConfig::int(4).with_granularity(PerGroup { size: 16 }),
            Ste::Standard,
        ),
        (
            QuantConfig::ternary().with_granularity(PerChannel),
            Ste::Standard,
        ),
    ]
}

#[test]
fn bitlinear_forward_and_backward_match_flex() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex().autodiff();
    cpu.seed(3);
    let w = Tensor::<2>::random([96, 40], Distribution::Normal(0.0, 0.2), &cpu);
    let x = Tensor::<2>::random([6, 96], Distribution::Normal(0.0, 1.0), &cpu);
    for (weights, ste) in weight_quantizer_cases() {
        let config = BitLinearConfig::new(96, 40)
            .with_weight_quant(weights.clone())
            .with_weight_ste(ste);
        let (w, x) = (values(w.clone()), values(x.clone()));
        let expected = bitlinear_outputs(&config, &w, &x, &cpu);
        let got = bitlinear_outputs(&config, &w, &x, &gpu);
        let what = format!("{:?} {:?} {ste:?}", weights.format, weights.granularity);
        assert_same_bitlinear(&got, &expected, &what);
        assert_eq!(expected[3].is_empty(), ste != Ste::LearnedStepSize);
    }
}

/// The parts [`bitlinear_outputs`] compares.
const BITLINEAR_PARTS: [&str; 4] = [
    "output",
    "weight gradient",
    "input gradient",
    "learned step gradient",
];

/// A BitLinear built by `config` with the weight `w` (`[d_input, d_output]`, row-major) on
/// `device` with autodiff: its output for the input `x` (`[_, d_input]`) and the gradients of
/// `Σ y²` for the weight, the input and LSQ's learned step (empty without one).
pub fn bitlinear_outputs(
    config: &BitLinearConfig,
    w: &[f32],
    x: &[f32],
    device: &Device,
) -> [Vec<f32>; 4] {
    let device = device.clone().autodiff();
    let (d_in, d_out) = (config.d_input, config.d_output);
    let w = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [d_in, d_out]), &device);
    let layer = config.init_with(w, None, &device).unwrap();
    let x = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [x.len() / d_in, d_in]), &device)
        .require_grad();
    let y = layer.forward(x.clone());
    let grads = (y.clone() * y.clone()).sum().backward();
    let step = layer.weight_quantizer().and_then(|q| q.step.as_ref());
    [
        values(y),
        values(layer.weight.base().grad(&grads).unwrap()),
        values(x.grad(&grads).unwrap()),
        step.map_or_else(Vec::new, |s| values(s.val().grad(&grads).unwrap())),
    ]
}

/// Asserts that every part of [`bitlinear_outputs`] agrees within 1e-4 relative (sums of
/// products in another order).
#[track_caller]
pub fn assert_same_bitlinear(got: &[Vec<f32>; 4], expected: &[Vec<f32>; 4], what: &str) {
    for ((part, got), expected) in BITLINEAR_PARTS.iter().zip(got).zip(expected) {
        assert_close(got, expected, 1e-4, &format!("{what}: {part}"));
    }
}

#[test]
fn packed_ternary_linear_runs_on_the_gpu() {
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex();
    cpu.seed(5);
    let layer = BitLinearConfig::new(300, 33).init(&cpu).unwrap();
    let packed = TernaryLinear::from_bit_linear(&layer).unwrap();
    let x = Tensor::<2>::random([4, 300], Distribution::Normal(0.0, 1.0), &cpu);
    let y_cpu = values(packed.forward(x.clone()));
    let on_gpu = packed.fork(&gpu);
    let y_gpu = values(on_gpu.forward(Tensor::<2>::from_data(x.to_data(), &gpu)));
    assert_close(&y_gpu, &y_cpu, 1e-5, "TernaryLinear on the GPU");
}

#[test]
fn fused_fake_quantization_keeps_f16_on_the_gpu() {
    let Some(gpu) = gpu_device() else { return };
    let mut rng = Lcg(11);
    let data: Vec<f32> = (0..6 * 96).map(|_| (rng.uniform() - 0.5) * 3.0).collect();
    let x16 =
        Tensor::<2>::from_data(burn::tensor::TensorData::new(data, [6, 96]), &gpu).cast(DType::F16);
    let rounded = values(x16.clone());
    let cpu = Device::flex();
    for config in [QuantConfig::ternary(), QuantConfig::activation_int8()] {
        let got = quantize_ste(x16.clone(), &config, &Ste::Standard).unwrap();
        assert_eq!(got.dtype(), DType::F16);
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(rounded.clone(), [6, 96]),
            &cpu,
        );
        let expected = quantize_ste(x, &config, &Ste::Standard).unwrap();
        // Computed in f32 and rounded once to f16 on both sides.
        let expected = values(expected.cast(DType::F16));
        assert_close(
            &values(got),
            &expected,
            1e-3,
            &format!("{:?}", config.format),
        );
    }
    // The fused backward pass reads and writes f16 too: the clipped STE's gradient of a sum is
    // its 0/1 mask, exact in f16.
    let clipped_grad = |x: Tensor<2>| {
        let x = x.require_grad();
        let q = quantize_ste(x.clone(), &QuantConfig::ternary(), &Ste::Clipped).unwrap();
        let grads = q.sum().backward();
        let g = x.grad(&grads).unwrap();
        (g.dtype(), values(g))
    };
    let x = Tensor::<2>::from_data(x16.to_data(), &gpu.clone().autodiff()).cast(DType::F16);
    let (dtype, got) = clipped_grad(x);
    assert_eq!(dtype, DType::F16);
    let x = Tensor::<2>::from_data(
        burn::tensor::TensorData::new(rounded, [6, 96]),
        &cpu.autodiff(),
    );
    let (_, expected) = clipped_grad(x);
    assert_eq!(got, expected, "f16 clipped gradient");
    assert!(got.contains(&0.0) && got.contains(&1.0), "the mask clips");
}

#[test]
fn more_rows_than_one_grid_dimension_holds() {
    // 70,000 rows: the per-row kernels spread their cubes over a second grid dimension.
    let Some(gpu) = gpu_device() else { return };
    let mut rng = Lcg(17);
    let rows = 70_000;
    let data: Vec<f32> = (0..rows * 4).map(|_| rng.uniform() * 2.0 - 1.0).collect();
    let config = QuantConfig::activation_int8();
    let on = |device: &Device| {
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(data.clone(), [rows, 4]),
            device,
        );
        values(quantize_ste(x, &config, &Ste::Standard).unwrap())
    };
    assert_close(
        &on(&gpu),
        &on(&Device::flex()),
        1e-6,
        "per-row int8 on 70,000 rows",
    );
}

#[test]
fn per_tensor_scales_agree_folded_and_apart() {
    // Up to 256 chunks of 4,096 elements the apply pass reduces the partials itself; past that a
    // scale kernel does. Multiples of 1/4 keep every sum exact in f32, so both devices compute
    // the same scale and the codes must agree to the last bit.
    let Some(gpu) = gpu_device() else { return };
    let cpu = Device::flex();
    let mut rng = Lcg(23);
    for len in [3 * 4096 + 5, 300 * 4096 + 7] {
        let data: Vec<f32> = (0..len)
            .map(|_| ((rng.uniform() * 17.0).floor() - 8.0) / 4.0)
            .collect();
        for config in [
            QuantConfig::ternary(),
            QuantConfig::int(8),
            QuantConfig::binary(),
        ] {
            let run = |device: &Device| {
                let device = device.clone().autodiff();
                let x = Tensor::<1>::from_data(data.as_slice(), &device).require_grad();
                let y = quantize_ste(x.clone(), &config, &Ste::Clipped).unwrap();
                let grads = (y.clone() * y.clone()).sum().backward();
                (values(y), values(x.grad(&grads).unwrap()))
            };
            let (y_gpu, g_gpu) = run(&gpu);
            let (y_cpu, g_cpu) = run(&cpu);
            let what = format!("{:?} per tensor over {len} elements", config.format);
            assert_close(&y_gpu, &y_cpu, 1e-6, &what);
            assert_close(&g_gpu, &g_cpu, 1e-6, &format!("{what}: clipped gradient"));
        }
    }
}

/// A BitLinear built by `config` with the weight `w` (`[d_input, d_output]`) and the input
/// norm's gain `gamma` on `device` with autodiff: its output for `x` and the gradients of
/// `Σ y c` (a constant `c`, so that the gradients do not depend on the output's rounding) for
/// the weight, the input and `γ`.
pub fn norm_bitlinear_outputs(
    config: &BitLinearConfig,
    [w, gamma, x, c]: [&[f32]; 4],
    device: &Device,
) -> [Vec<f32>; 4] {
    let device = device.clone().autodiff();
    let (d_in, d_out) = (config.d_input, config.d_output);
    let rows = x.len() / d_in;
    let w = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [d_in, d_out]), &device);
    let mut layer = config.init_with(w, None, &device).unwrap();
    let norm = layer.norm.as_mut().expect("a BitLinear with its norm");
    norm.gamma = Param::from_tensor(Tensor::from_data(
        TensorData::new(gamma.to_vec(), [d_in]),
        &device,
    ));
    let x =
        Tensor::<2>::from_data(TensorData::new(x.to_vec(), [rows, d_in]), &device).require_grad();
    let c = Tensor::<2>::from_data(TensorData::new(c.to_vec(), [rows, d_out]), &device);
    let y = layer.forward(x.clone());
    let grads = (y.clone() * c).sum().backward();
    let gamma = layer.norm.as_ref().unwrap().gamma.val();
    [
        values(y),
        values(layer.weight.base().grad(&grads).unwrap()),
        values(x.grad(&grads).unwrap()),
        values(gamma.grad(&grads).unwrap()),
    ]
}

#[test]
fn fused_norm_quantization_matches_flex_and_the_portable_path() {
    use bitnet_qat::quant::Granularity::{PerGroup, PerToken};
    use bitnet_qat::quant::ScaleStat;
    let Some(gpu) = gpu_device() else { return };
    #[allow(deprecated)] // NdArray has no fused kernels: RMSNorm and the quantizer apart.
    let portable = Device::ndarray();
    // Rows shorter than a cube's 256 threads, ragged past them, 4 groups of 256, and 16
    // elements per thread; absmax and absmean, the standard and the clipped STE.
    let cases = [
        (6, 96, 40, QuantConfig::activation_int8(), Ste::Standard),
        (
            33,
            300,
            24,
            QuantConfig::int(4)
                .with_stat(ScaleStat::AbsMean)
                .with_granularity(PerToken),
            Ste::Clipped,
        ),
        (
            8,
            1024,
            16,
            QuantConfig::activation_int8().with_granularity(PerGroup { size: 256 }),
            Ste::Standard,
        ),
        (5, 4096, 8, QuantConfig::activation_int8(), Ste::Standard),
    ];
    let mut rng = Lcg(23);
    for (rows, d_in, d_out, act, ste) in cases {
        let mut draw = |n: usize, lo: f32, hi: f32| -> Vec<f32> {
            (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect()
        };
        let w = draw(d_in * d_out, -0.3, 0.3);
        let gamma = draw(d_in, 0.5, 1.5);
        let x = draw(rows * d_in, -2.0, 2.5);
        let c = draw(rows * d_out, -1.0, 1.0);
        let config = BitLinearConfig::new(d_in, d_out)
            .with_activation_quant(Some(act.clone()))
            .with_activation_ste(ste);
        let data = [&w[..], &gamma, &x, &c];
        let flex = norm_bitlinear_outputs(&config, data, &Device::flex());
        let what = format!("{rows}x{d_in} {:?} {ste:?}", act.granularity);
        for (device, name) in [(&gpu, "wgpu"), (&portable, "portable")] {
            let got = norm_bitlinear_outputs(&config, data, device);
            let parts = ["output", "weight gradient", "input gradient", "γ gradient"];
            for (k, part) in parts.iter().enumerate() {
                // The output and the weight's gradient hold sums of quantized activations; the
                // gradients of the input and of γ do not depend on the codes.
                let tol = if k < 2 { 1e-4 } else { 1e-5 };
                assert_close(&got[k], &flex[k], tol, &format!("{name} {what}: {part}"));
            }
        }
    }
}

#[test]
fn fused_norm_quantization_keeps_f16_on_the_gpu() {
    use bitnet_qat::ste::norm_quantize_ste;
    use burn::nn::RmsNormConfig;
    let Some(gpu) = gpu_device() else { return };
    let mut rng = Lcg(29);
    let (rows, d) = (6, 320);
    let data: Vec<f32> = (0..rows * d).map(|_| (rng.uniform() - 0.5) * 3.0).collect();
    let gain: Vec<f32> = (0..d).map(|_| 0.5 + rng.uniform()).collect();
    let config = QuantConfig::activation_int8();
    // f16 inputs and gain on the GPU; their f16 values in f32 on Flex.
    let run = |device: &Device, dtype: DType| {
        let device = device.clone().autodiff();
        let cast = |t: Tensor<2>| t.cast(dtype);
        let x = cast(Tensor::<2>::from_data(
            TensorData::new(data.clone(), [rows, d]),
            &device,
        ))
        .require_grad();
        let mut norm = RmsNormConfig::new(d).init(&device);
        norm.gamma = Param::from_tensor(
            Tensor::<1>::from_data(TensorData::new(gain.clone(), [d]), &device).cast(dtype),
        );
        let (x, norm) = if dtype == DType::F16 {
            (x, norm)
        } else {
            // The f16-rounded values, in f32.
            let x = Tensor::<2>::from_data(x.into_data().convert::<f32>(), &device)
                .cast(DType::F16)
                .cast(DType::F32)
                .require_grad();
            let g = norm.gamma.val().cast(DType::F16).cast(DType::F32);
            norm.gamma = Param::from_tensor(g.detach());
            (x, norm)
        };
        let y = norm_quantize_ste(x.clone(), &norm, &config, &Ste::Standard).unwrap();
        let grads = y.clone().sum().backward();
        let gx = x.grad(&grads).unwrap();
        let gg = norm.gamma.val().grad(&grads).unwrap();
        let dtypes = [y.dtype(), gx.dtype(), gg.dtype()];
        (dtypes, [values(y), values(gx), values(gg)])
    };
    let (dtypes, got) = run(&gpu, DType::F16);
    assert_eq!(dtypes, [DType::F16; 3]);
    let (_, expected) = run(&Device::flex(), DType::F32);
    // Computed in f32 and rounded once to f16: half an f16 ulp (5e-4 relative), or one int8
    // step where that rounding moved an activation across a rounding boundary.
    let step = expected[0].iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    for (i, (a, e)) in got[0].iter().zip(&expected[0]).enumerate() {
        let diff = (a - e).abs();
        assert!(
            diff <= 1e-3 * e.abs().max(1.0) || diff <= 1.01 * step,
            "y[{i}]: {a} vs {e}"
        );
    }
    for (k, part) in [(1, "input gradient"), (2, "γ gradient")] {
        assert_close(&got[k], &expected[k], 2e-3, &format!("f16 {part}"));
    }
}
