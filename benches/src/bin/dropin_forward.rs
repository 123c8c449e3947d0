//! `dropin-forward`: a burn-nn model against the same model built from the drop-in layers,
//! trained as W1.58A8 and packed (`infer::pack`: the `Linear`s run the int8 × ternary kernels) —
//! forward time at batch 1 and 64 on Flex with 1 and 2 threads, and the size of the saved model.
//!
//! ```text
//! cargo run --release -p bitnet-qat-benches --bin dropin-forward -- --json dropin-forward.json
//! ```
//!
//! `--model mlp` (the default): an MLP 784-H-H-10 (H = `--hidden`, 1024 by default) of burn-nn
//! `Linear`s with biases; the drop-in model is the same with `bitnet_qat::nn::Linear` (BitNet
//! b1.58: int8 activations per token, ternary weights). `--model transformer`: the causal
//! language model of `examples/src/your_lm` on burn-nn's `TransformerEncoder` against the same
//! model on `bitnet_qat::nn::transformer` (every linear layer of the encoder W1.58A8, the
//! embeddings and the head FP32), width `--hidden` (512 by default), a batch of 1 being one
//! sequence of `--context` tokens. `--model cnn`: the CNN of `examples/src/your_model` on burn-nn
//! layers against the same CNN of drop-in layers (W1.58A8, the first convolution and the head
//! FP32), packed: its second convolution runs the packed kernels tap by tap. Weights are random: the time of a forward pass does
//! not depend on them. Variants are interleaved in one process, each in a rayon pool of its
//! thread count (Flex and the packed kernels both run in it); medians of `--samples` calls.

use std::path::PathBuf;

use bitnet_qat::infer::{pack, record_bytes};
use bitnet_qat_benches::{Stats, interleaved, load_average, write_atomic};
use bitnet_qat_examples::your_lm::{float, qat};
use bitnet_qat_examples::your_model;
use burn::module::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Distribution, Int, Tensor};
use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Measure the packed drop-in model against the burn-nn model.
#[derive(Parser, Debug)]
struct Args {
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Samples per variant.
    #[arg(long, default_value_t = 41)]
    samples: usize,
    /// The model compared.
    #[arg(long, value_enum, default_value = "mlp")]
    model: ModelKind,
    /// MLP: the width of the two hidden layers; transformer: the width of the residual stream
    /// (default 1024 and 512).
    #[arg(long)]
    hidden: Option<usize>,
    /// Transformer: blocks.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Transformer: tokens per sequence (a batch of 1 is one sequence of this length).
    #[arg(long, default_value_t = 64)]
    context: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
enum ModelKind {
    /// MLP 784-H-H-10 of `Linear`s.
    Mlp,
    /// The causal language model of `examples/src/your_lm`: embeddings, burn-nn's
    /// `TransformerEncoder` (pre-norm, width H, 4H feed-forward, H/64 heads), a linear head;
    /// vocabulary 85 (the Shakespeare characters).
    Transformer,
    /// The CNN of `examples/src/your_model` (Burn's MNIST example shape: two 3×3 convolutions
    /// 1-16-32 with batch norm and pooling, 1568-128-10): W1.58A8 with the first convolution
    /// and the head FP32; inputs 28×28.
    Cnn,
}

#[derive(Module, Debug)]
struct FloatMlp {
    layers: Vec<burn::nn::Linear>,
}

#[derive(Module, Debug)]
struct DropInMlp {
    layers: Vec<bitnet_qat::nn::Linear>,
}

impl FloatMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        mlp(self.layers.iter().map(|l| move |x| l.forward(x)), x)
    }
}

impl DropInMlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        mlp(self.layers.iter().map(|l| move |x| l.forward(x)), x)
    }
}

fn mlp<F: Fn(Tensor<2>) -> Tensor<2>>(
    layers: impl ExactSizeIterator<Item = F>,
    x: Tensor<2>,
) -> Tensor<2> {
    let last = layers.len() - 1;
    layers.enumerate().fold(x, |x, (i, layer)| {
        let y = layer(x);
        if i < last { relu(y) } else { y }
    })
}

/// The burn-nn model, the drop-in model in inference mode and the drop-in model packed.
// One value per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Models {
    Mlp(FloatMlp, DropInMlp, DropInMlp),
    Transformer(
        float::TextGeneration,
        qat::TextGeneration,
        qat::TextGeneration,
    ),
    Cnn(
        your_model::float::Net,
        your_model::qat::Net,
        your_model::qat::Net,
    ),
}

/// A batch of inputs: pixels or tokens.
#[derive(Clone)]
enum Input {
    Pixels(Tensor<2>),
    Tokens(Tensor<2, Int>),
    Images(Tensor<4>),
}

#[derive(Clone, Copy)]
enum Which {
    Float,
    Valid,
    Packed,
}

impl Models {
    fn new(args: &Args, device: &Device) -> Result<Self, Box<dyn std::error::Error>> {
        let quant = bitnet_qat::nn::QuantScheme::bitnet();
        Ok(match args.model {
            ModelKind::Mlp => {
                let h = args.hidden.unwrap_or(1024);
                let float = FloatMlp {
                    layers: [784, h, h, 10]
                        .windows(2)
                        .map(|w| burn::nn::LinearConfig::new(w[0], w[1]).init(device))
                        .collect(),
                };
                let dropin = DropInMlp {
                    layers: float
                        .layers
                        .iter()
                        .map(|l| bitnet_qat::nn::Linear::from_float(l.clone(), &quant))
                        .collect::<bitnet_qat::Result<_>>()?,
                };
                let packed = pack(&dropin)?;
                Self::Mlp(float, dropin.valid(), packed)
            }
            ModelKind::Transformer => {
                let d = args.hidden.unwrap_or(512);
                let shape = (85, args.context, d, 4 * d, (d / 64).max(1), args.layers);
                let float = float::TextGenerationConfig::new(
                    shape.0, shape.1, shape.2, shape.3, shape.4, shape.5,
                )
                .init(device);
                let dropin = qat::TextGenerationConfig::new(
                    shape.0, shape.1, shape.2, shape.3, shape.4, shape.5,
                )
                .init(device);
                let packed = pack(&dropin)?;
                Self::Transformer(float, dropin.valid(), packed)
            }
            ModelKind::Cnn => {
                let dropin = your_model::qat::Net::new(device);
                let packed = pack(&dropin)?;
                Self::Cnn(your_model::float::Net::new(device), dropin.valid(), packed)
            }
        })
    }

    fn describe(&self, args: &Args) -> String {
        match self {
            Self::Mlp(..) => format!("MLP 784-{h}-{h}-10", h = args.hidden.unwrap_or(1024)),
            Self::Cnn(..) => {
                "CNN 28x28 conv3x3(1-16, FP32)-pool-conv3x3(16-32)-pool-1568-128-10(FP32)"
                    .to_string()
            }
            Self::Transformer(..) => {
                let d = args.hidden.unwrap_or(512);
                format!(
                    "transformer LM width {d}, {} blocks, {} heads, d_ff {}, vocabulary 85, \
                     sequences of {}",
                    args.layers,
                    (d / 64).max(1),
                    4 * d,
                    args.context
                )
            }
        }
    }

    fn input(&self, batch: usize, context: usize, device: &Device) -> Input {
        match self {
            Self::Mlp(..) => Input::Pixels(Tensor::random(
                [batch, 784],
                Distribution::Uniform(0.0, 1.0),
                device,
            )),
            Self::Cnn(..) => Input::Images(Tensor::random(
                [batch, 1, 28, 28],
                Distribution::Uniform(0.0, 1.0),
                device,
            )),
            Self::Transformer(..) => Input::Tokens(
                Tensor::<2>::random([batch, context], Distribution::Uniform(0.0, 85.0), device)
                    .int()
                    .clamp(0, 84),
            ),
        }
    }

    /// One forward pass of a model (outputs as `[batch, positions, features]`).
    fn forward(&self, which: Which, input: &Input) -> Tensor<3> {
        match (self, input) {
            (Self::Mlp(f, v, p), Input::Pixels(x)) => {
                let y = match which {
                    Which::Float => f.forward(x.clone()),
                    Which::Valid => v.forward(x.clone()),
                    Which::Packed => p.forward(x.clone()),
                };
                y.unsqueeze_dim(1)
            }
            (Self::Transformer(f, v, p), Input::Tokens(x)) => match which {
                Which::Float => f.forward(x.clone()),
                Which::Valid => v.forward(x.clone()),
                Which::Packed => p.forward(x.clone()),
            },
            (Self::Cnn(f, v, p), Input::Images(x)) => {
                let y = match which {
                    Which::Float => f.forward(x.clone()),
                    Which::Valid => v.forward(x.clone()),
                    Which::Packed => p.forward(x.clone()),
                };
                y.unsqueeze_dim(1)
            }
            _ => unreachable!("inputs are made by Models::input"),
        }
    }

    fn bytes(&self) -> bitnet_qat::Result<(usize, usize)> {
        match self {
            Self::Mlp(f, _, p) => Ok((record_bytes(f.clone())?, record_bytes(p.clone())?)),
            Self::Transformer(f, _, p) => Ok((record_bytes(f.clone())?, record_bytes(p.clone())?)),
            Self::Cnn(f, _, p) => Ok((record_bytes(f.clone())?, record_bytes(p.clone())?)),
        }
    }
}

/// One forward pass of `which` on `input` in `pool`, to the end of its device work.
fn run(pool: &rayon::ThreadPool, models: &Models, which: Which, input: &Input, device: &Device) {
    pool.install(|| {
        let y = models.forward(which, input);
        device.sync().expect("device sync");
        drop(y);
    })
}

#[derive(Serialize)]
struct Row {
    batch: usize,
    threads: usize,
    float: Stats,
    packed: Stats,
    /// `float / packed` median time: above 1, the packed model is faster.
    speedup: f64,
}

#[derive(Serialize)]
struct Report {
    cpu: String,
    model: String,
    samples: usize,
    float_bytes: usize,
    packed_bytes: usize,
    size_ratio: f64,
    load_average_before: f64,
    load_average_after: f64,
    rows: Vec<Row>,
}

/// The CPU's model name, family and model numbers (`/proc/cpuinfo`).
fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split(':').nth(1))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} (family {}, model {}, avx512_vnni: {})",
        field("model name"),
        field("cpu family"),
        field("model\t"),
        info.contains("avx512_vnni")
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let load_before = load_average();
    let device = Device::flex();
    device.seed(7);
    let models = Models::new(&args, &device)?;
    let (float_bytes, packed_bytes) = models.bytes()?;
    let mut rows = Vec::new();
    for batch in [1, 64] {
        let input = models.input(batch, args.context, &device);
        // The packed model computes what the QAT model computes.
        let same = models.forward(Which::Packed, &input).into_data()
            == models.forward(Which::Valid, &input).into_data();
        assert!(same, "the packed model's outputs differ from valid()'s");
        for threads in [1, 2] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let stats = interleaved(
                args.samples,
                &mut [
                    &mut || run(&pool, &models, Which::Float, &input, &device),
                    &mut || run(&pool, &models, Which::Packed, &input, &device),
                ],
            );
            let speedup = stats[0].median_s / stats[1].median_s;
            println!(
                "batch {batch:>2} | {threads} thread(s) | burn-nn f32 {:.3} ms | packed W1.58A8 {:.3} ms | {speedup:.2}x",
                stats[0].median_s * 1e3,
                stats[1].median_s * 1e3
            );
            rows.push(Row {
                batch,
                threads,
                float: stats[0].clone(),
                packed: stats[1].clone(),
                speedup,
            });
        }
    }
    let report = Report {
        cpu: cpu(),
        model: models.describe(&args),
        samples: args.samples,
        float_bytes,
        packed_bytes,
        size_ratio: float_bytes as f64 / packed_bytes as f64,
        load_average_before: load_before,
        load_average_after: load_average(),
        rows,
    };
    println!(
        "{} | {} | saved: {} bytes f32, {} bytes packed ({:.1}x smaller) | load {:.2} -> {:.2}",
        report.cpu,
        report.model,
        report.float_bytes,
        report.packed_bytes,
        report.size_ratio,
        report.load_average_before,
        report.load_average_after,
    );
    if let Some(path) = &args.json {
        write_atomic(path, serde_json::to_string_pretty(&report)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
