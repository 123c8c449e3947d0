//! The drop-in transformer (`bitnet_qat::nn::transformer`, `nn::attention`): a burn-nn causal
//! language model's checkpoint loads into the same model on the drop-ins; unquantized it is
//! burn-nn's bit for bit; W1.58A8, every linear layer of the encoder is found, trained and
//! packed, and the packed model computes what the trained one computes, bit for bit, before
//! saving and after loading.

use bitnet_qat::infer::{PackedWeight, load_packed, pack, save};
use bitnet_qat::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use bitnet_qat::nn::{QuantScheme, load_float_checkpoint, quantizers};
use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Distribution, Int, Tensor};

use crate::{devices, fresh_dir};

/// A causal language model on burn-nn's transformer encoder, as a Burn user writes it.
#[derive(Module, Debug)]
struct FloatLm {
    tokens: Embedding,
    encoder: burn::nn::transformer::TransformerEncoder,
    head: Linear,
}

/// The same model with the drop-in encoder: one changed `use` line.
#[derive(Module, Debug)]
struct QatLm {
    tokens: Embedding,
    encoder: TransformerEncoder,
    head: Linear,
}

const VOCAB: usize = 11;
const WIDTH: usize = 32;

fn float_lm(device: &Device) -> FloatLm {
    FloatLm {
        tokens: EmbeddingConfig::new(VOCAB, WIDTH).init(device),
        encoder: burn::nn::transformer::TransformerEncoderConfig::new(WIDTH, 64, 4, 2)
            .with_norm_first(true)
            .with_dropout(0.0)
            .init(device),
        head: LinearConfig::new(WIDTH, VOCAB).init(device),
    }
}

fn qat_lm(quant: QuantScheme, device: &Device) -> QatLm {
    QatLm {
        tokens: EmbeddingConfig::new(VOCAB, WIDTH).init(device),
        encoder: TransformerEncoderConfig::new(WIDTH, 64, 4, 2)
            .with_norm_first(true)
            .with_dropout(0.0)
            .with_quant(quant)
            .init(device),
        head: LinearConfig::new(WIDTH, VOCAB).init(device),
    }
}

fn causal<E>(tokens: Tensor<2, Int>, embed: &Embedding, encode: E, head: &Linear) -> Tensor<3>
where
    E: FnOnce(Tensor<3>, Tensor<3, burn::tensor::Bool>) -> Tensor<3>,
{
    let [batch, seq] = tokens.dims();
    let mask = generate_autoregressive_mask(batch, seq, &tokens.device());
    head.forward(encode(embed.forward(tokens), mask))
}

impl FloatLm {
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        causal(
            tokens,
            &self.tokens,
            |x, mask| {
                let input = burn::nn::transformer::TransformerEncoderInput::new(x).mask_attn(mask);
                self.encoder.forward(input)
            },
            &self.head,
        )
    }
}

impl QatLm {
    fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        causal(
            tokens,
            &self.tokens,
            |x, mask| {
                self.encoder
                    .forward(TransformerEncoderInput::new(x).mask_attn(mask))
            },
            &self.head,
        )
    }
}

fn tokens(device: &Device) -> Tensor<2, Int> {
    Tensor::<2>::random([3, 12], Distribution::Uniform(0.0, VOCAB as f64), device)
        .int()
        .clamp(0, VOCAB as i64 - 1)
}

fn burnpack(model: &impl Module) -> Vec<u8> {
    let mut store = BurnpackStore::from_bytes(None);
    model.save_into(&mut store).unwrap();
    store.get_bytes().unwrap().to_vec()
}

#[test]
fn a_burn_nn_transformer_checkpoint_loads_and_unquantized_runs_bit_for_bit() {
    for (name, device) in devices() {
        device.seed(21);
        let float = float_lm(&device);
        let x = tokens(&device);
        let expected = float.forward(x.clone()).into_data();
        let bytes = burnpack(&float);

        let loaded =
            load_float_checkpoint(qat_lm(QuantScheme::none(), &device), bytes.clone()).unwrap();
        assert!(loaded.quantizer_params.is_empty(), "{name}");
        assert_eq!(
            loaded.model.forward(x.clone()).into_data(),
            expected,
            "{name}"
        );

        // W1.58A8: the float checkpoint's latent weights, the quantizer settings of the
        // configuration (reported as not in the file).
        let loaded = load_float_checkpoint(qat_lm(QuantScheme::bitnet(), &device), bytes).unwrap();
        let mut missing = loaded.quantizer_params.clone();
        missing.sort();
        assert_eq!(missing.len(), 2 * 6 * 2, "{name}: {missing:?}");
        assert!(missing.contains(&"encoder.layers.1.mha.output.weight.qat.settings".to_string()));
        assert!(missing.contains(
            &"encoder.layers.0.pwff.linear_outer.activation_quantizer.settings".to_string()
        ));
        let latent = loaded.model.encoder.clone().to_float();
        assert_eq!(
            latent.layers[1].pwff.linear_inner.weight.val().into_data(),
            float.encoder.layers[1]
                .pwff
                .linear_inner
                .weight
                .val()
                .into_data(),
            "{name}"
        );
        // Quantized, the outputs are not the float model's.
        let quantized = loaded.model.forward(x).into_data();
        assert_ne!(quantized, expected, "{name}");
    }
}

#[test]
fn w158a8_encoders_are_found_packed_saved_and_loaded_bit_for_bit() {
    let device = Device::flex();
    device.seed(4);
    let model = qat_lm(QuantScheme::bitnet(), &device);
    let found = quantizers(&model);
    // 2 blocks × (4 projections + 2 feed-forward layers) × (weight + activations); the
    // embedding and the head stay FP32.
    assert_eq!(found.len(), 24);
    assert_eq!(found[0].path, "encoder.layers.0.mha.query.weight.qat");
    assert_eq!(
        found[1].path,
        "encoder.layers.0.mha.query.activation_quantizer"
    );

    let packed = pack(&model).unwrap();
    let encoder = &packed.encoder.layers[1];
    for linear in [&encoder.mha.key, &encoder.pwff.linear_outer] {
        assert!(linear.weight.reparameterization::<PackedWeight>().is_some());
    }
    let x = tokens(&device);
    let expected = model.valid().forward(x.clone()).into_data();
    assert_eq!(packed.forward(x.clone()).into_data(), expected);

    let dir = fresh_dir("dropin-transformer-pack");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("lm.bpk");
    save(packed.clone(), &path).unwrap();
    let loaded = load_packed(qat_lm(QuantScheme::bitnet(), &device), &path).unwrap();
    assert_eq!(loaded.forward(x).into_data(), expected);
    std::fs::remove_dir_all(dir).unwrap();
}
