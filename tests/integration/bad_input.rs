//! Bad input: NaN/Inf are reported, invalid configurations are typed errors.

use bitnet_qat::QatError;
use bitnet_qat::check::check_model_finite;
use bitnet_qat::nn::{BitLinearConfig, QuantizerConfig};
use bitnet_qat::quant::{Granularity, QuantConfig, fake_quantize};
use bitnet_qat::ste::{Ste, quantize_ste};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

#[test]
fn nan_and_inf_inputs_are_reported() {
    let device = Device::flex();
    let layer = BitLinearConfig::new(4, 2).init(&device).unwrap();
    let x = Tensor::<2>::from_data([[1.0, f32::NAN, 2.0, f32::INFINITY]], &device);
    match layer.try_forward(x) {
        Err(QatError::NonFinite {
            nan: 1,
            inf: 1,
            what,
        }) => assert!(what.contains("input")),
        other => panic!("expected NonFinite, got {other:?}"),
    }
    let ok = Tensor::<2>::from_data([[1.0, -1.0, 2.0, 0.5]], &device);
    assert!(layer.try_forward(ok).is_ok());
}

#[test]
fn nan_weights_are_reported_with_their_path() {
    let device = Device::flex();
    let layer = BitLinearConfig::new(4, 2).init(&device).unwrap();
    assert!(layer.check_finite().is_ok());
    let broken = layer.clone().map(&mut PoisonWeight);
    assert!(matches!(
        broken.check_finite(),
        Err(QatError::NonFinite { nan: 1, .. })
    ));
    match check_model_finite(&broken) {
        Err(QatError::NonFinite { what, .. }) => assert!(what.contains("weight"), "{what}"),
        other => panic!("expected NonFinite, got {other:?}"),
    }
}

/// Puts one NaN into every 2-D parameter.
struct PoisonWeight;

impl burn::module::ModuleMapper for PoisonWeight {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        if D != 2 {
            return param;
        }
        param.map(|t| {
            let device = t.device();
            let mut data: Vec<f32> = t.to_data().try_to_vec().unwrap();
            data[0] = f32::NAN;
            Tensor::from_data(burn::tensor::TensorData::new(data, t.shape()), &device)
        })
    }
}

/// Whether an error is the expected one.
type Expect = fn(&QatError) -> bool;

#[test]
fn invalid_configurations_are_typed_errors() {
    let device = Device::flex();
    let cases: Vec<(BitLinearConfig, Expect)> = vec![
        (
            BitLinearConfig::new(10, 4).with_weight_quant(
                QuantConfig::ternary().with_granularity(Granularity::PerGroup { size: 4 }),
            ),
            |e| {
                matches!(
                    e,
                    QatError::GroupSize {
                        group_size: 4,
                        dim: 10
                    }
                )
            },
        ),
        (
            BitLinearConfig::new(8, 4).with_weight_quant(QuantConfig::int(3 * 4)),
            |e| matches!(e, QatError::UnsupportedBits { bits: 12, .. }),
        ),
        (
            BitLinearConfig::new(8, 4).with_weight_ste(Ste::Soft { temperature: 0.0 }),
            |e| matches!(e, QatError::Temperature(t) if *t == 0.0),
        ),
        (
            BitLinearConfig::new(8, 4).with_activation_ste(Ste::Soft { temperature: -1.0 }),
            |e| matches!(e, QatError::Temperature(_)),
        ),
        (
            BitLinearConfig::new(8, 4).with_weight_ste(Ste::Adaptive { delta: f64::NAN }),
            |e| matches!(e, QatError::Delta(_)),
        ),
        (
            BitLinearConfig::new(8, 4).with_activation_ste(Ste::LearnedStepSize),
            |e| {
                matches!(e, QatError::Config { name, value, .. }
                    if name == "BitLinearConfig.activation_ste" && value == "LearnedStepSize")
            },
        ),
        (BitLinearConfig::new(0, 4), |e| {
            matches!(e, QatError::ZeroDim { name: "d_input" })
        }),
        (BitLinearConfig::new(8, 4).with_norm_eps(-1.0), |e| {
            matches!(e, QatError::NormEpsilon(_))
        }),
    ];
    for (config, check) in cases {
        let err = config.init(&device).unwrap_err();
        assert!(check(&err), "{config:?} gave {err:?}");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn shape_mismatches_are_typed_errors() {
    let device = Device::flex();
    let layer = BitLinearConfig::new(4, 2).init(&device).unwrap();
    let x = Tensor::<2>::zeros([3, 5], &device);
    assert!(matches!(layer.try_forward(x), Err(QatError::Shape { .. })));
    let group = QuantConfig::activation(8).with_granularity(Granularity::PerGroup { size: 3 });
    assert!(matches!(
        fake_quantize(Tensor::<2>::zeros([2, 8], &device), &group),
        Err(QatError::GroupSize {
            group_size: 3,
            dim: 8
        })
    ));
    assert!(matches!(
        quantize_ste(
            Tensor::<1>::zeros([4], &device),
            &QuantConfig::ternary(),
            &Ste::LearnedStepSize
        ),
        Err(QatError::Config { name, .. }) if name == "Ste"
    ));
    let w = Tensor::<2>::zeros([6, 2], &device);
    let grouped = QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 4 });
    assert!(matches!(
        QuantizerConfig::new(grouped).init_weight(&w),
        Err(QatError::GroupSize {
            group_size: 4,
            dim: 6
        })
    ));
    assert!(matches!(
        BitLinearConfig::new(4, 2).init_with(Tensor::zeros([2, 4], &device), None, &device),
        Err(QatError::Shape { .. })
    ));
}
