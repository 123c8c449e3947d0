//! Gradient checkpointing (`Device::autodiff().gradient_checkpointing()`, Burn's balanced
//! strategy: memory-bound ops are recomputed in the backward pass) with our fused QAT ops:
//! the same logits and gradients as without it, bit for bit, and a model built on the
//! checkpointed device trains with every weight STE.

use bitnet_qat::lm::{BitNetLm, BitNetLmConfig};
use bitnet_qat::ste::Ste;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, GradientCheckpointingStrategy, Gradients, Int, Tensor, TensorData};

use super::{Lcg, values, weights};

fn config(ste: Ste) -> BitNetLmConfig {
    BitNetLmConfig::new(50, 64, 2, 4, 128)
        .with_max_seq_len(16)
        .with_weight_ste(ste)
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    let mut rng = Lcg(0xC0DE);
    let ids: Vec<i64> = (0..2 * 16).map(|_| (rng.uniform() * 50.0) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [2, 16]), device)
}

/// Next-token cross-entropy of `lm` on `tokens`, its logits and the gradients.
fn step(lm: &BitNetLm, tokens: Tensor<2, Int>) -> (Vec<f32>, Gradients) {
    let [batch, len] = tokens.dims();
    let input = tokens.clone().slice([0..batch, 0..len - 1]);
    let target = tokens
        .slice([0..batch, 1..len])
        .reshape([batch * (len - 1)]);
    let logits = lm.forward(input);
    let flat = logits.clone().reshape([batch * (len - 1), 50]);
    let loss = burn::nn::loss::CrossEntropyLossConfig::new()
        .init(&flat.device())
        .forward(flat, target);
    let grads = loss.backward();
    (values(logits), grads)
}

/// The gradient of every float parameter, bit for bit (`None` where there is none).
fn gradients(lm: &BitNetLm, grads: &Gradients) -> Vec<Option<Vec<u32>>> {
    struct Collect<'a>(&'a Gradients, Vec<Option<Vec<u32>>>);
    impl ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let grad = param.val().grad(self.0);
            self.1
                .push(grad.map(|g| values(g).into_iter().map(f32::to_bits).collect()));
        }
    }
    let mut c = Collect(grads, Vec::new());
    lm.visit(&mut c);
    c.1
}

/// Gives every parameter of a module the balanced checkpointing strategy (the same values).
struct Checkpointed;

impl ModuleMapper for Checkpointed {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            t.with_gradient_checkpointing_strategy(GradientCheckpointingStrategy::Balanced)
        })
    }
}

#[test]
fn checkpointing_keeps_the_logits_and_gradients() {
    let plain = Device::flex().autodiff();
    let checkpointed = Device::flex().autodiff().gradient_checkpointing();
    for ste in [
        Ste::Standard,
        Ste::Clipped,
        Ste::LearnedStepSize,
        Ste::Adaptive { delta: 0.01 },
    ] {
        let lm = config(ste).init(&plain).unwrap();
        let lm_checkpointed = lm.clone().map(&mut Checkpointed);
        assert!(weights(&lm_checkpointed) == weights(&lm));
        let (logits, grads) = step(&lm, tokens(&plain));
        let (logits_c, grads_c) = step(&lm_checkpointed, tokens(&checkpointed));
        assert!(
            logits
                .iter()
                .map(|v| v.to_bits())
                .eq(logits_c.iter().map(|v| v.to_bits())),
            "{ste:?}: logits differ"
        );
        let (g, g_c) = (
            gradients(&lm, &grads),
            gradients(&lm_checkpointed, &grads_c),
        );
        assert!(
            g.iter().all(Option::is_some),
            "{ste:?}: every parameter learns"
        );
        assert!(g == g_c, "{ste:?}: gradients differ");
    }
}

#[test]
fn a_model_built_on_the_checkpointed_device_trains() {
    // Before the LSQ step took its weight's strategy, the step of a `LearnedStepSize`
    // quantizer had none and the first forward pass panicked ("strategy mismatch").
    let device = Device::flex().autodiff().gradient_checkpointing();
    for ste in [Ste::Standard, Ste::LearnedStepSize] {
        let lm = config(ste).init(&device).unwrap();
        let (logits, grads) = step(&lm, tokens(&device));
        assert!(logits.iter().all(|v| v.is_finite()), "{ste:?}");
        let g = gradients(&lm, &grads);
        assert!(
            g.iter().all(Option::is_some),
            "{ste:?}: every parameter learns"
        );
    }
}
