//! The tutorial's second model (`docs/your-model.md`): a Burn user's causal language model on
//! burn-nn's `TransformerEncoder` before ([`float`]) and after ([`qat`]) it becomes BitNet
//! W1.58A8, both compiled.

pub mod float;
pub mod qat;

#[cfg(test)]
mod tests {
    use crate::your_model::changed_lines;
    use bitnet_qat::nn::quantizers;
    use burn::tensor::{Device, Int, Tensor};

    #[test]
    fn the_qat_version_adds_seven_lines_and_removes_six() {
        let (added, removed) = changed_lines(include_str!("float.rs"), include_str!("qat.rs"));
        // The transformer's import 3 + 3 and `Qat`'s 1, the Learner 3 + 3.
        assert_eq!((added, removed), (7, 6));
    }

    #[test]
    fn both_learners_build_and_the_qat_one_quantizes_every_encoder_linear() {
        let device = Device::flex().autodiff();
        let shape = (20, 16, 32, 64, 4, 2);
        let float = super::float::TextGenerationConfig::new(
            shape.0, shape.1, shape.2, shape.3, shape.4, shape.5,
        );
        let qat = super::qat::TextGenerationConfig::new(
            shape.0, shape.1, shape.2, shape.3, shape.4, shape.5,
        );
        let float = super::float::learner(&float, 1e-3, &device)
            .unwrap()
            .model();
        let qat = super::qat::learner(&qat, 1e-3, &device).unwrap().model();
        assert!(quantizers(&float).is_empty());
        // 2 blocks of 4 projections and 2 feed-forward layers, weights and activations; the
        // embeddings and the head stay FP32.
        let found = quantizers(&qat);
        assert_eq!(found.len(), 24);
        assert!(
            found
                .iter()
                .all(|f| f.path.starts_with("model.transformer.layers."))
        );
        let tokens = Tensor::<2, Int>::from_data([[1, 2, 3, 19]], &device);
        assert_eq!(qat.model.forward(tokens.clone()).dims(), [1, 4, 20]);
        assert_eq!(float.forward(tokens).dims(), [1, 4, 20]);
    }
}
