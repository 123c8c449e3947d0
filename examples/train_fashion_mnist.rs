//! Train a BitNet MLP on Fashion-MNIST with burn-train's `Learner`: the TUI dashboard shows
//! accuracy, loss, learning rate and the QAT metrics (weight error, −1/0/+1 fractions, flip rate,
//! scale, gradient norm, lambda, bits, temperature). Off a terminal (or with `--quiet`) it
//! prints one line per epoch. Then it tests the model and, for ternary weights, converts it to
//! packed ternary and tests that too.
//!
//! ```text
//! sudo apt-get install dataset-fashion-mnist      # or --data DIR with the four IDX files
//! cargo run --release --example train_fashion_mnist
//! cargo run --release --example train_fashion_mnist -- --weights int4 --ste lsq --epochs 5
//! cargo run --release --example train_fashion_mnist -- --lambda-warmup 500 --progressive
//! ```

use std::path::PathBuf;

use bitnet_qat::infer::pack;
use bitnet_qat::quant::QuantFormat;
use bitnet_qat::schedule::{
    Anneal, BitWidthSchedule, LambdaRamp, LambdaSchedule, QatScheduler, TemperatureSchedule,
};
use bitnet_qat::ste::Ste;
use bitnet_qat::train::QatPlan;
use bitnet_qat_examples::accuracy_of_batches;
use bitnet_qat_examples::cli::{QuietArg, Weights};
use bitnet_qat_examples::learner::{FitConfig, fit};
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SteKind {
    Standard,
    Clipped,
    Soft,
    Lsq,
    Adaptive,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Ramp {
    Linear,
    Exponential,
    Sigmoid,
}

/// Train a BitNet MLP on Fashion-MNIST with burn-train and the QAT dashboard.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    data: bitnet_qat_examples::cli::FashionMnistArgs,
    /// Where burn-train writes logs and checkpoints.
    #[arg(long, default_value = "target/train_fashion_mnist")]
    out: PathBuf,
    /// Weight format of every layer (activations are 8-bit for all but fp32).
    #[arg(long, value_enum, default_value = "ternary")]
    weights: Weights,
    /// Weight STE.
    #[arg(long, value_enum, default_value = "standard")]
    ste: SteKind,
    /// Hidden layer sizes (repeat for more layers).
    #[arg(long = "hidden", default_values_t = [512])]
    hidden: Vec<usize>,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Items per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate (BitNet two-stage schedule, Adam).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Weight decay in stage 1 (0 in stage 2).
    #[arg(long, default_value_t = 0.05)]
    weight_decay: f64,
    /// Full-precision steps before QAT starts.
    #[arg(long, default_value_t = 0)]
    delay: usize,
    /// Steps of the lambda warm-up from full precision to fully quantized (0: none).
    #[arg(long, default_value_t = 0)]
    lambda_warmup: usize,
    /// Shape of the lambda warm-up.
    #[arg(long, value_enum, default_value = "linear")]
    lambda_ramp: Ramp,
    /// Progressive bit width 8 → 4 → 2 → 1.58 over the first half of training (needs ternary).
    #[arg(long)]
    progressive: bool,
    /// Soft STE: anneal the temperature from this value to 0.01 over training.
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Clip latent weights to [-c, c] after each update.
    #[arg(long)]
    clip: Option<f32>,
    /// Resume from the checkpoint of this epoch in --out.
    #[arg(long)]
    resume: Option<usize>,
    #[command(flatten)]
    quiet: QuietArg,
    #[command(flatten)]
    device: bitnet_qat_examples::cli::DeviceArg,
    /// Seed of the initialisation and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.device.device()?;
    let (train, test) = args.data.load()?;
    let pixels = train.pixels_per_image();
    let steps_per_epoch = train.len().div_ceil(args.batch_size);
    let total = steps_per_epoch * args.epochs;

    let ste = match args.ste {
        SteKind::Standard => Ste::Standard,
        SteKind::Clipped => Ste::Clipped,
        SteKind::Soft => Ste::Soft {
            temperature: args.temperature,
        },
        SteKind::Lsq => Ste::LearnedStepSize,
        SteKind::Adaptive => Ste::Adaptive { delta: 1e-3 },
    };
    let mut scheduler = QatScheduler::default();
    if args.lambda_warmup > 0 || args.delay > 0 {
        let ramp = match args.lambda_ramp {
            Ramp::Linear => LambdaRamp::Linear,
            Ramp::Exponential => LambdaRamp::Exponential { rate: 5.0 },
            Ramp::Sigmoid => LambdaRamp::Sigmoid { steepness: 10.0 },
        };
        scheduler = scheduler.with_lambda(
            LambdaSchedule::new(args.lambda_warmup.max(1), ramp).with_delay_steps(args.delay),
        );
    }
    if matches!(ste, Ste::Soft { .. }) {
        scheduler = scheduler.with_temperature(TemperatureSchedule::new(
            args.temperature,
            0.01,
            total,
            Anneal::Exponential,
        ));
    }
    if args.progressive {
        let q = total / 8;
        scheduler = scheduler.with_bit_width(BitWidthSchedule::by_steps(&[
            (0, QuantFormat::Int { bits: 8 }),
            (q, QuantFormat::Int { bits: 4 }),
            (2 * q, QuantFormat::Int { bits: 2 }),
            (3 * q, QuantFormat::Ternary),
        ])?);
    }
    let plan = QatPlan::new()
        .with_scheduler(scheduler)
        .with_latent_clip(args.clip);

    let mut config = FitConfig::new(&args.out);
    config.hidden = args.hidden.clone();
    config.precision = args.weights.precision();
    config.ste = ste;
    config.epochs = args.epochs;
    config.batch_size = args.batch_size;
    config.lr = args.lr;
    config.weight_decay = args.weight_decay;
    config.seed = args.seed;
    config.plan = plan;
    config.resume_from = args.resume;
    config.renderer = args.quiet.renderer();
    println!(
        "Fashion-MNIST: {} train / {} test images, MLP {pixels}-{}-10, weights {:?}, STE {:?}, {} epochs",
        train.len(),
        test.len(),
        args.hidden
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        args.weights,
        args.ste,
        args.epochs
    );
    let fitted = fit(train, test.clone(), pixels, 10, config, &device)?;
    let model = fitted.model;
    let accuracy = accuracy_of_batches(|x| model.mlp.forward(x), &test, &device);
    println!(
        "test accuracy: {accuracy:.2} %  (validation per epoch: {}; {:.1} s)",
        fitted
            .valid_accuracy
            .iter()
            .map(|a| format!("{a:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        fitted.seconds
    );
    if args.weights.packs() {
        let packed = pack(&model.mlp)?;
        let packed_accuracy = accuracy_of_batches(|x| packed.forward(x), &test, &device);
        println!(
            "packed accuracy: {packed_accuracy:.2} %; model {} bytes packed vs {} bytes in f32",
            packed.size_bytes()?,
            model.mlp.size_bytes()?
        );
    }
    println!("logs and checkpoints: {}", args.out.display());
    Ok(())
}
