//! Train the same MLP on Fashion-MNIST in FP32 and with 8-, 4-, 2-bit, ternary and binary
//! weights (8-bit activations), with the same seed, epochs and script (burn-train's `Learner`),
//! and write into `--out DIR`:
//! - `accuracy.md`: one row per variant, its name first, test accuracy in percent;
//! - `validation.png`: the validation accuracy curves.
//!
//! ```text
//! cargo run --release --example accuracy_table -- --out results/
//! ```

use std::path::PathBuf;

use bitnet_qat::quant::QuantFormat;
use bitnet_qat::train::QuietRenderer;
use bitnet_qat_examples::Precision;
use bitnet_qat_examples::learner::{FitConfig, fit};
use bitnet_qat_examples::report::{Variant, markdown_table, plot_curves};
use clap::Parser;

/// Accuracy of FP32, 8/4/2-bit, ternary and binary MLPs on Fashion-MNIST.
#[derive(Parser, Debug)]
struct Args {
    /// Where to write accuracy.md and validation.png.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    data: bitnet_qat_examples::cli::FashionMnistArgs,
    /// Hidden layer sizes (repeat for more layers).
    #[arg(long = "hidden", default_values_t = [512])]
    hidden: Vec<usize>,
    /// Passes over the training set, the same for every variant.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Items per step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[command(flatten)]
    device: bitnet_qat_examples::cli::DeviceArg,
    /// Seed, the same for every variant.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let device = args.device.device()?;
    let (train, test) = args.data.load()?;
    let pixels = train.pixels_per_image();
    let variants = [
        ("fp32", "FP32 weights and activations", Precision::Fp32),
        (
            "int8",
            "8-bit weights (absmax), 8-bit activations",
            Precision::Weights(QuantFormat::Int { bits: 8 }),
        ),
        (
            "int4",
            "4-bit weights (absmax), 8-bit activations",
            Precision::Weights(QuantFormat::Int { bits: 4 }),
        ),
        (
            "int2",
            "2-bit weights (absmean), 8-bit activations",
            Precision::Weights(QuantFormat::Int { bits: 2 }),
        ),
        (
            "ternary",
            "ternary weights (absmean, W1.58 A8: BitNet b1.58)",
            Precision::Ternary,
        ),
        (
            "binary",
            "binary weights (sign, mean |W| scale), 8-bit activations",
            Precision::Weights(QuantFormat::Binary),
        ),
    ];
    let mut results = Vec::new();
    for (name, weights, precision) in variants {
        println!("== {name}: {weights}");
        let mut config = FitConfig::new(args.out.join("runs").join(name));
        config.hidden = args.hidden.clone();
        config.precision = precision;
        config.epochs = args.epochs;
        config.batch_size = args.batch_size;
        config.lr = args.lr;
        config.seed = args.seed;
        config.checkpoints = false;
        config.renderer = Some(Box::new(QuietRenderer::new()));
        let _ = std::fs::remove_dir_all(&config.dir);
        let fitted = fit(train.clone(), test.clone(), pixels, 10, config, &device)?;
        let variant = Variant {
            name: name.to_string(),
            weights: weights.to_string(),
            curve: fitted.valid_accuracy,
            seconds: fitted.seconds,
        };
        println!(
            "{name}: {:.2} % in {:.1} s",
            variant.accuracy(),
            variant.seconds
        );
        results.push(variant);
    }
    let hidden = args
        .hidden
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("-");
    let header = format!(
        "# Fashion-MNIST, MLP {pixels}-{hidden}-10 ({} training images, {} test images)\n\n\
         Same script (burn-train Learner, Adam, BitNet two-stage LR with peak {}, cosine decay, \
         weight decay 0.05 in stage 1), seed {}, {} epochs, batch {}. Quantized variants use \
         BitLinear (RMSNorm + 8-bit per-token activations) in every layer.\n\n",
        train.len(),
        test.len(),
        args.lr,
        args.seed,
        args.epochs,
        args.batch_size
    );
    let table = markdown_table(&results);
    let md = args.out.join("accuracy.md");
    bitnet_kernels::file::write_atomic(&md, format!("{header}{table}").as_bytes())?;
    let png = args.out.join("validation.png");
    plot_curves(
        &results,
        &format!("Fashion-MNIST MLP {pixels}-{hidden}-10: validation accuracy"),
        ("validation accuracy (%)", " %"),
        &png,
    )?;
    println!("\n{table}\nwrote {} and {}", md.display(), png.display());
    Ok(())
}
