//! QAT for an arbitrary Burn model through the reparameterizer.

use bitnet_qat::nn::Quantizer;
use bitnet_qat::quant::{Granularity, QuantConfig};
use bitnet_qat::reparam::QatReparameterizer;
use bitnet_qat::ste::Ste;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::quantizers::pseudo_random;
use crate::reference as r;
use crate::{assert_close, devices, values};

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    head: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            l1: LinearConfig::new(8, 6).init(device),
            l2: LinearConfig::new(6, 6).init(device),
            head: LinearConfig::new(6, 3).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.head
            .forward(relu(self.l2.forward(relu(self.l1.forward(x)))))
    }
}

fn input(device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(pseudo_random(4 * 8, 71), [4, 8]), device)
}

#[test]
fn forward_uses_ternary_weights_and_latent_weights_learn() {
    for (name, device) in devices() {
        let device = device.autodiff();
        device.seed(7);
        let model = Mlp::new(&device);
        let latent = values(model.l1.weight.val());
        let model = QatReparameterizer::new(QuantConfig::ternary())
            .exclude(["head"])
            .apply(model)
            .unwrap()
            .0;
        assert!(model.l1.weight.reparameterization::<Quantizer>().is_some());
        assert!(
            model
                .head
                .weight
                .reparameterization::<Quantizer>()
                .is_none()
        );
        // Biases are 1-D: untouched.
        assert!(
            model
                .l1
                .bias
                .as_ref()
                .unwrap()
                .reparameterization::<Quantizer>()
                .is_none()
        );

        // The effective weight is ternary x scale, the latent one is unchanged.
        let effective = values(model.l1.weight.val());
        assert_close(&effective, &r::ternary(&latent, 1e-5), 1e-6, name);
        let gamma = r::stat(&latent, r::Stat::Mean);
        assert!(
            effective
                .iter()
                .all(|v| *v == 0.0 || (v.abs() - gamma).abs() < 1e-6)
        );
        assert_eq!(values(model.l1.weight.base()), latent);

        // The forward pass equals a plain MLP built from the quantized weights.
        let out = model.forward(input(&device));
        let manual = {
            let l1 = model.l1.weight.val();
            let h =
                relu(input(&device).matmul(l1) + model.l1.bias.as_ref().unwrap().val().unsqueeze());
            let h = relu(
                h.matmul(model.l2.weight.val()) + model.l2.bias.as_ref().unwrap().val().unsqueeze(),
            );
            h.matmul(model.head.weight.val()) + model.head.bias.as_ref().unwrap().val().unsqueeze()
        };
        assert_close(&values(out.clone()), &values(manual), 1e-6, name);

        // The latent weights receive non-zero gradients through the STE.
        let grads = out.sum().backward();
        for (layer, param) in [("l1", &model.l1.weight), ("l2", &model.l2.weight)] {
            let g = values(param.base().grad(&grads).expect("latent weight grad"));
            assert!(g.iter().any(|v| *v != 0.0), "{name} {layer}");
        }

        // valid() still runs quantized.
        let inference = model.valid();
        assert_close(
            &values(inference.l1.weight.val()),
            &r::ternary(&latent, 1e-5),
            1e-6,
            name,
        );
    }
}

#[test]
fn records_round_trip_in_memory_and_on_disk() {
    let device = Device::flex().autodiff();
    device.seed(1);
    let reparam = || {
        QatReparameterizer::from_config(
            bitnet_qat::nn::QuantizerConfig::new(
                QuantConfig::int(4).with_granularity(Granularity::PerChannel),
            )
            .with_ste(Ste::LearnedStepSize),
        )
    };
    let model = reparam().apply(Mlp::new(&device)).unwrap().0;
    // Move the learned steps away from their initial values so the round trip must carry them.
    let model = model.map(&mut ScaleSteps(1.5, Vec::new()));
    let expected = values(model.forward(input(&device)));

    // A fresh, differently initialised model with the same reparameterization.
    device.seed(2);
    let target = || reparam().apply(Mlp::new(&device)).unwrap().0;
    assert_ne!(values(target().forward(input(&device))), expected);

    let loaded = target().load_record(model.clone().into_record());
    assert_close(
        &values(loaded.forward(input(&device))),
        &expected,
        1e-6,
        "memory",
    );

    let dir = std::env::temp_dir().join(format!("bitnet-qat-reparam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mlp.bpk");
    model.clone().save_file(&path).unwrap();
    let loaded = target().try_load_file(&path).unwrap();
    assert_close(
        &values(loaded.forward(input(&device))),
        &expected,
        1e-6,
        "file",
    );
    let step = loaded.l1.weight.reparameterization::<Quantizer>().unwrap();
    assert_eq!(step.step.as_ref().unwrap().shape().dims::<1>(), [6]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Multiplies every learned step (a parameter named `step`) by a factor.
struct ScaleSteps(f64, Vec<String>);

impl burn::module::ModuleMapper for ScaleSteps {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.1.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.1.pop();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        if self.1.last().map(String::as_str) == Some("step") {
            let factor = self.0;
            return param.map(|t| t.mul_scalar(factor));
        }
        param
    }
}

#[test]
fn invalid_selections_are_typed_errors() {
    let device = Device::flex();
    // Group of 4 does not divide l2's input dimension 6.
    let err = QatReparameterizer::new(
        QuantConfig::int(4).with_granularity(Granularity::PerGroup { size: 4 }),
    )
    .apply(Mlp::new(&device))
    .unwrap_err();
    assert!(err.to_string().contains("l2.weight"), "{err}");
    // Excluding everything selects nothing.
    let err = QatReparameterizer::new(QuantConfig::ternary())
        .exclude(["l1", "l2", "head"])
        .apply(Mlp::new(&device))
        .unwrap_err();
    assert!(
        matches!(&err, bitnet_qat::QatError::Config { name, .. } if name == "QatReparameterizer.filter"),
        "{err}"
    );
    // A bad STE is rejected before anything is built.
    assert!(matches!(
        QatReparameterizer::from_config(
            bitnet_qat::nn::QuantizerConfig::new(QuantConfig::binary())
                .with_ste(Ste::LearnedStepSize)
        )
        .apply(Mlp::new(&device)),
        Err(bitnet_qat::QatError::Config { name, allowed, .. })
            if name == "Ste" && allowed.contains("binary")
    ));
}

/// A burn-nn CNN with an embedding: what a user's model looks like.
#[derive(Module, Debug)]
struct Cnn {
    embedding: burn::nn::Embedding,
    conv: burn::nn::conv::Conv2d,
    norm: burn::nn::BatchNorm,
    hidden: Linear,
    head: Linear,
}

fn cnn(device: &Device) -> Cnn {
    Cnn {
        embedding: burn::nn::EmbeddingConfig::new(7, 4).init(device),
        conv: burn::nn::conv::Conv2dConfig::new([2, 3], [3, 3]).init(device),
        norm: burn::nn::BatchNormConfig::new(3).init(device),
        hidden: LinearConfig::new(12, 8).init(device),
        head: LinearConfig::new(8, 5).init(device),
    }
}

#[test]
fn convolutions_are_quantized_per_output_channel_and_the_report_names_every_parameter() {
    use bitnet_qat::nn::QuantAxis;
    use bitnet_qat::reparam::{FloatReason, Outcome};

    let device = Device::flex();
    let model = cnn(&device);
    let kernel = values(model.conv.weight.val());
    let quant = QuantConfig::ternary().with_granularity(Granularity::PerChannel);
    let (model, report) = QatReparameterizer::new(quant).apply(model).unwrap();
    let outcomes: Vec<(&str, Vec<usize>, &str, Outcome)> = report
        .params
        .iter()
        .map(|p| {
            (
                p.path.as_str(),
                p.shape.clone(),
                p.module.as_str(),
                p.outcome,
            )
        })
        .collect();
    let quantized = |axis| Outcome::Quantized {
        format: bitnet_qat::quant::QuantFormat::Ternary,
        granularity: Granularity::PerChannel,
        axis,
    };
    let float = Outcome::Float;
    assert_eq!(
        outcomes,
        [
            (
                "embedding.weight",
                vec![7, 4],
                "Embedding",
                float(FloatReason::Embedding)
            ),
            (
                "conv.weight",
                vec![3, 2, 3, 3],
                "Conv2d",
                quantized(QuantAxis::OutputFirst)
            ),
            (
                "conv.bias",
                vec![3],
                "Conv2d",
                float(FloatReason::NotAWeight)
            ),
            (
                "norm.gamma",
                vec![3],
                "BatchNorm",
                float(FloatReason::NotAWeight)
            ),
            (
                "norm.beta",
                vec![3],
                "BatchNorm",
                float(FloatReason::NotAWeight)
            ),
            (
                "norm.running_mean",
                vec![3],
                "BatchNorm",
                float(FloatReason::NotAWeight)
            ),
            (
                "norm.running_var",
                vec![3],
                "BatchNorm",
                float(FloatReason::NotAWeight)
            ),
            (
                "hidden.weight",
                vec![12, 8],
                "Linear",
                quantized(QuantAxis::Weight)
            ),
            (
                "hidden.bias",
                vec![8],
                "Linear",
                float(FloatReason::NotAWeight)
            ),
            (
                "head.weight",
                vec![8, 5],
                "Linear",
                float(FloatReason::OutputHead)
            ),
            (
                "head.bias",
                vec![5],
                "Linear",
                float(FloatReason::NotAWeight)
            ),
        ]
    );
    let text = report.to_string();
    assert!(
        text.contains("output head (opt in: quantize_head)"),
        "{text}"
    );
    assert!(
        text.ends_with("activations stay in full precision (the drop-in layers quantize them)")
    );
    // The kernel: absmean ternary with one scale per output channel (18 values each).
    let expected: Vec<f32> = kernel
        .chunks(18)
        .flat_map(|c| r::ternary(c, 1e-5))
        .collect();
    assert_close(&values(model.conv.weight.val()), &expected, 1e-6, "kernel");

    // Opting in quantizes the embedding (one scale per token vector) and the head.
    let (model, report) = QatReparameterizer::new(QuantConfig::ternary())
        .quantize_embeddings(true)
        .quantize_head(true)
        .apply(cnn(&device))
        .unwrap();
    assert_eq!(report.quantized().count(), 4);
    assert_eq!(report.float().count(), 7);
    let table = values(model.embedding.weight.base());
    assert_close(
        &values(model.embedding.weight.val()),
        &r::ternary(&table, 1e-5),
        1e-6,
        "embedding",
    );
}

#[test]
fn transposed_convolutions_take_per_tensor_scales_only() {
    #[derive(Module, Debug)]
    struct Up {
        up: burn::nn::conv::ConvTranspose2d,
    }
    let device = Device::flex();
    let up = || Up {
        up: burn::nn::conv::ConvTranspose2dConfig::new([4, 2], [2, 2]).init(&device),
    };
    match QatReparameterizer::new(QuantConfig::ternary().with_granularity(Granularity::PerChannel))
        .apply(up())
    {
        Err(bitnet_qat::QatError::Unsupported { layer, reason }) => {
            assert_eq!(layer, "up.weight");
            assert!(reason.contains("only PerTensor"), "{reason}");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let (_, report) = QatReparameterizer::new(QuantConfig::ternary())
        .apply(up())
        .unwrap();
    assert_eq!(report.quantized().count(), 1);
}
