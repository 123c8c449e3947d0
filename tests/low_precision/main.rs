//! Low-precision training: a device whose float type is bf16 (Flex) or f16 (wgpu; WGSL has no
//! bf16) runs the QAT layers in that type, with the quantizer statistics in f32. Its own test
//! binary: a device's float type is set once per process (`Device::configure`).

use std::sync::OnceLock;

use bitnet_qat::QatError;
use bitnet_qat::infer::pack;
use bitnet_qat::lm::{BitNetLm, BitNetLmConfig};
use bitnet_qat::quant::{QuantConfig, fake_quantize};
use bitnet_qat::schedule::weight_stats;
use bitnet_qat::train::{QatPlan, QatState, QatTrainModel, prepare};
use bitnet_qat_integration_tests::skip;
use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{DType, Device, DeviceKind, FloatDType, Int, Tensor, TensorData};
use burn::train::ClassificationOutput;

/// Flex with bf16 floats (configured once for this process).
fn flex_bf16() -> Device {
    static DONE: OnceLock<()> = OnceLock::new();
    let mut device = Device::flex();
    DONE.get_or_init(|| device.configure(FloatDType::BF16).expect("Flex takes bf16"));
    device
}

/// The wgpu device with f16 floats, or `None` where there is no adapter (outside CI) or it
/// lacks f16: then the calling test is recorded as skipped ([`skip`]; under CI it fails).
#[track_caller]
fn wgpu_f16() -> Option<Device> {
    static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();
    let device = DEVICE.get_or_init(|| {
        let mut device = Device::wgpu(DeviceKind::DefaultDevice);
        device
            .configure(FloatDType::F16)
            .map(|()| device)
            .map_err(|e| format!("no f16 wgpu device: {e:?}"))
    });
    match device {
        Ok(device) => Some(device.clone()),
        Err(reason) => {
            skip(reason);
            None
        }
    }
}

/// Every float parameter's type.
fn dtypes(model: &impl Module) -> Vec<DType> {
    struct Collect(Vec<DType>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.val().dtype());
        }
    }
    let mut c = Collect(Vec::new());
    model.visit(&mut c);
    c.0
}

/// Trains a small ternary LM on a repeating token pattern for `steps` Adam steps; returns the
/// first and last losses (as f32) and the model.
fn train(device: &Device, dtype: DType, steps: usize) -> (f32, f32, BitNetLm) {
    let device = device.clone().autodiff();
    // A fixed start (each test uses its own device's generator).
    device.seed(7);
    let config = BitNetLmConfig::new(16, 32, 1, 2, 64).with_max_seq_len(16);
    let mut lm: BitNetLm = config.init(&device).unwrap();
    assert!(dtypes(&lm).iter().all(|d| *d == dtype), "{:?}", dtypes(&lm));
    let ids: Vec<i64> = (0..4 * 17).map(|i| ((i * 5) % 16) as i64).collect();
    let tokens: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [4, 17]), &device);
    let input = tokens.clone().slice([0..4, 0..16]);
    let target = tokens.slice([0..4, 1..17]).reshape([64]);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..steps {
        let logits = lm.forward(input.clone());
        assert_eq!(logits.dtype(), dtype);
        let loss = loss_fn.forward(logits.reshape([64, 16]), target.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &lm);
        lm = optim.step(3e-3, lm, grads);
    }
    assert!(dtypes(&lm).iter().all(|d| *d == dtype), "{:?}", dtypes(&lm));
    (losses[0], *losses.last().unwrap(), lm)
}

#[test]
fn a_ternary_lm_trains_in_bf16_on_flex() {
    let device = flex_bf16();
    let (first, last, lm) = train(&device, DType::BF16, 40);
    assert!(
        first.is_finite() && last < 0.5 * first,
        "loss {first} -> {last}"
    );
    // The QAT statistics (what the training loop reports) read the bf16 weights.
    let stats = weight_stats(&lm).unwrap();
    let codes = stats.fraction_negative + stats.fraction_zero + stats.fraction_positive;
    assert!((codes - 1.0).abs() < 1e-9, "code fractions sum to {codes}");
    // Evaluation (the exact integer path) and the packed model run in bf16 and agree.
    let ids: Vec<i64> = (0..16).map(|i| (i * 5 % 16) as i64).collect();
    let tokens: Tensor<2, Int> = Tensor::from_data(TensorData::new(ids, [1, 16]), &device);
    let valid = lm.valid();
    let logits = valid.forward(tokens.clone());
    assert_eq!(logits.dtype(), DType::BF16);
    let packed = pack(&valid).unwrap();
    let packed_logits = packed.forward(tokens);
    assert_eq!(packed_logits.dtype(), DType::BF16);
    let (a, b) = (values(logits), values(packed_logits));
    assert!(a.iter().all(|v| v.is_finite()));
    for (x, y) in a.iter().zip(&b) {
        // A few bf16 rounding steps (2^-8 relative) apart at most.
        assert!((x - y).abs() <= 3e-2 * x.abs().max(1.0), "{x} vs {y}");
    }
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn bf16_activations_are_quantized_with_f32_statistics() {
    // The int8 grid of a bf16 row, computed in f32, is the grid of the same values in f32:
    // bf16 arithmetic (8-bit mantissa) would round x * 127 / max|x| wrongly.
    let device = flex_bf16();
    let values: Vec<f32> = (0..256)
        .map(|i| ((i * 37) % 101) as f32 / 13.0 - 3.7)
        .collect();
    let x = Tensor::<2>::from_data(TensorData::new(values, [2, 128]), &device);
    assert_eq!(x.dtype(), DType::BF16);
    let config = QuantConfig::activation_int8();
    let q = fake_quantize(x.clone(), &config).unwrap();
    assert_eq!(q.dtype(), DType::BF16);
    let want = fake_quantize(x.cast(DType::F32), &config)
        .unwrap()
        .cast(DType::BF16);
    let bits = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    assert_eq!(bits(q), bits(want));
}

#[test]
fn a_ternary_lm_trains_in_f16_on_wgpu() {
    let Some(device) = wgpu_f16() else { return };
    let (first, last, _) = train(&device, DType::F16, 40);
    assert!(
        first.is_finite() && last < 0.5 * first,
        "loss {first} -> {last}"
    );
}

/// A model with one weight and a QAT state, for the loss scaling.
#[derive(Module, Debug)]
struct Scaled {
    w: Param<Tensor<1>>,
    qat: QatState,
}

impl QatTrainModel for Scaled {
    fn qat_state(&self) -> &QatState {
        &self.qat
    }

    fn qat_state_mut(&mut self) -> &mut QatState {
        &mut self.qat
    }
}

#[test]
fn loss_scaling_keeps_small_f16_gradients() {
    // loss = Σ x w 2^-26 with x = 1024: the gradient reaching `x w` is 2^-26, below f16's
    // smallest subnormal (2^-24), so it underflows to 0 and so does dL/dw = 2^-16. Scaled by
    // 2^10, the backward pass carries 2^-16, and the gradient divided back is exactly 2^-16.
    let Some(device) = wgpu_f16() else { return };
    let device = device.autodiff();
    let grad = |scale: f64| {
        let w = Tensor::<1>::from_data([1.0], &device).require_grad();
        let model = Scaled {
            w: Param::from_tensor(w),
            qat: QatPlan::new().with_loss_scale(scale).init(&device),
        };
        let x = Tensor::<1>::from_data([1024.0], &device);
        // Twice 2^-13 (a scalar of 2^-26 would itself be 0 in f16).
        let tiny = 2f64.powi(-13);
        let loss = (x * model.w.val()).mul_scalar(tiny).mul_scalar(tiny).sum();
        let output = ClassificationOutput::new(
            loss.clone(),
            Tensor::<2>::zeros([1, 2], &device),
            Tensor::<1, Int>::zeros([1], &device),
        );
        let grads = model.qat.backward(loss);
        let out = model.qat.train_output(&model, grads, output);
        let g = out.grads.get::<1>(model.w.id).expect("w has a gradient");
        assert_eq!(g.dtype(), DType::F16);
        g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0]
    };
    assert_eq!(grad(1.0), 0.0, "without scaling the gradient underflows");
    assert_eq!(grad(1024.0), 2f32.powi(-16));
}

#[test]
fn a_loss_scale_must_be_finite_and_positive() {
    let device = flex_bf16().autodiff();
    for scale in [0.0, -1.0, f64::INFINITY, f64::NAN] {
        let w = Tensor::<1>::from_data([1.0], &device);
        let model = Scaled {
            w: Param::from_tensor(w),
            qat: QatPlan::new().with_loss_scale(scale).init(&device),
        };
        let err = prepare(model).expect_err("an invalid loss scale");
        assert!(
            matches!(&err, QatError::Config { name, .. } if name == "QatPlan.loss_scale"),
            "{scale}: {err}"
        );
    }
}
