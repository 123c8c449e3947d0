//! A Burn user's causal language model, twice: `float.rs` as Burn trains it (the shape of Burn's
//! text-generation example: token and position embeddings, burn-nn's `TransformerEncoder` with
//! an autoregressive mask, a final layer norm, a linear head; its own `TrainStep` and
//! `InferenceStep`, a `Learner`),
//! `qat.rs` the same made BitNet W1.58A8 — every linear layer of the transformer ternary with
//! int8 activations, the embeddings and the head in full precision — and trained with QAT.
//! `docs/your-model.md` shows the diff.

use bitnet_qat::lm::TokenBatch;
use burn::config::Config;
use burn::module::Module;
use burn::nn::attention::generate_autoregressive_mask;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::AdamConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::tensor::{Device, Int, Tensor};
use burn::train::{ClassificationOutput, InferenceStep, Learner, TrainOutput, TrainStep};

/// The shape of the model.
#[derive(Config, Debug)]
pub struct TextGenerationConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// The longest sequence.
    pub max_seq_len: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of the feed-forward networks.
    pub d_ff: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Dropout rate.
    #[config(default = 0.0)]
    pub dropout: f64,
    /// A layer norm before the head (GPT-2's; Burn's text-generation example has none).
    #[config(default = true)]
    pub final_norm: bool,
}

/// The network.
#[derive(Module, Debug)]
pub struct TextGeneration {
    tokens: Embedding,
    positions: Embedding,
    transformer: TransformerEncoder,
    norm: Option<LayerNorm>,
    output: Linear,
}

impl TextGenerationConfig {
    /// A fresh network.
    pub fn init(&self, device: &Device) -> TextGeneration {
        let transformer =
            TransformerEncoderConfig::new(self.d_model, self.d_ff, self.n_heads, self.n_layers)
                .with_norm_first(true)
                .with_dropout(self.dropout);
        TextGeneration {
            tokens: EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            positions: EmbeddingConfig::new(self.max_seq_len, self.d_model).init(device),
            transformer: transformer.init(device),
            norm: self
                .final_norm
                .then(|| LayerNormConfig::new(self.d_model).init(device)),
            output: LinearConfig::new(self.d_model, self.vocab_size).init(device),
        }
    }
}

impl TextGeneration {
    /// Next-token logits `[batch, seq, vocab]` of tokens `[batch, seq]`.
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        let [batch, seq] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..seq as i64, &device)
            .reshape([1, seq])
            .repeat_dim(0, batch);
        let x = self.tokens.forward(tokens) + self.positions.forward(positions);
        let mask = generate_autoregressive_mask(batch, seq, &device);
        let x = self
            .transformer
            .forward(TransformerEncoderInput::new(x).mask_attn(mask));
        let x = match &self.norm {
            Some(norm) => norm.forward(x),
            None => x,
        };
        self.output.forward(x)
    }

    /// Next-token loss, logits `[batch · seq, vocab]` and targets of a batch.
    pub fn predict(&self, batch: TokenBatch) -> ClassificationOutput {
        let logits = self.forward(batch.inputs);
        let [b, t, vocab] = logits.dims();
        let logits = logits.reshape([b * t, vocab]);
        let targets = batch.targets.reshape([b * t]);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), targets.clone());
        ClassificationOutput::new(loss, logits, targets)
    }
}

impl TrainStep for TextGeneration {
    type Input = TokenBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: TokenBatch) -> TrainOutput<ClassificationOutput> {
        let output = self.predict(batch);
        TrainOutput::new(self, output.loss.backward(), output)
    }
}

impl InferenceStep for TextGeneration {
    type Input = TokenBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: TokenBatch) -> ClassificationOutput {
        self.predict(batch)
    }
}

/// What the `Learner` trains.
pub type Trained = TextGeneration;

/// The `Learner` of a fresh network: Adam (β₂ = 0.95) and the learning rate `lr`.
pub fn learner(
    config: &TextGenerationConfig,
    lr: impl Into<ModuleLrScheduler>,
    device: &Device,
) -> bitnet_qat::Result<Learner<Trained>> {
    let model = config.init(device);
    let adam = AdamConfig::new().with_beta_2(0.95).build();
    Ok(Learner::new(model, adam.into(), lr))
}
