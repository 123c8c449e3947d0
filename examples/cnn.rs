//! Train a burn-nn CNN (Burn's MNIST example shape) on Fashion-MNIST as BitNet W1.58A8, built
//! from the drop-in layers of `bitnet_qat::nn` and trained by burn-train's `Learner` through
//! `Qat` — the dashboard shows accuracy, loss, learning rate and the QAT metrics. Then it tests
//! the network, packs it (the `Linear`s run the int8 × ternary kernels), saves it, loads it
//! back into a fresh network and tests that too.
//!
//! ```text
//! scripts/install-deps.sh                               # Fashion-MNIST, once
//! cargo run --release --example cnn                     # W1.58A8, FP first conv and head
//! cargo run --release --example cnn -- --precision fp32
//! cargo run --release --example cnn -- --table --seeds 1 2 3 --quiet   # the accuracy table
//! ```

use std::path::PathBuf;

use bitnet_qat::infer::{load_packed, pack, record_bytes, save};
use bitnet_qat_examples::accuracy_of_batches;
use bitnet_qat_examples::cli::{DeviceArg, FashionMnistArgs, QuietArg};
use bitnet_qat_examples::cnn::{Cnn, CnnFit, CnnPrecision, fit_cnn};
use bitnet_qat_examples::report::mean_sd;
use burn::tensor::Tensor;
use clap::Parser;

/// Train a burn-nn CNN on Fashion-MNIST as W1.58A8 with burn-train and the QAT dashboard.
#[derive(Parser, Debug)]
struct Args {
    #[command(flatten)]
    data: FashionMnistArgs,
    /// Where burn-train writes logs and checkpoints (and the packed network).
    #[arg(long, default_value = "target/cnn")]
    out: PathBuf,
    /// What the network quantizes.
    #[arg(long, value_enum, default_value = "w158a8")]
    precision: CnnPrecision,
    /// Passes over the 60,000 training images.
    #[arg(long, default_value_t = 3)]
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
    /// Seed of the initialisation and the batch order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train every precision once per `--seeds` seed and print the accuracy table.
    #[arg(long)]
    table: bool,
    /// The seeds of `--table`.
    #[arg(long, num_args = 1.., default_values_t = [1, 2, 3])]
    seeds: Vec<u64>,
    /// Write the table as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    quiet: QuietArg,
    #[command(flatten)]
    device: DeviceArg,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.device.device()?;
    let (train, test) = args.data.load()?;
    println!(
        "Fashion-MNIST: {} train / {} test images, CNN conv3x3(1-16)-pool-conv3x3(16-32)-pool-\
         1568-128-10, {} epochs",
        train.len(),
        test.len(),
        args.epochs
    );
    let fit = |precision: CnnPrecision, seed: u64, quiet: bool| {
        let config = CnnFit {
            dir: args
                .out
                .join(format!("{precision:?}-{seed}").to_lowercase()),
            precision,
            epochs: args.epochs,
            batch_size: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            seed,
            renderer: if quiet {
                Some(Box::new(bitnet_qat::train::QuietRenderer::new()) as _)
            } else {
                args.quiet.renderer()
            },
        };
        fit_cnn(train.clone(), test.clone(), config, &device)
    };
    if args.table {
        let mut rows = Vec::new();
        for precision in [
            CnnPrecision::Fp32,
            CnnPrecision::W158a8,
            CnnPrecision::AllTernary,
        ] {
            let mut accuracies = Vec::new();
            let mut seconds = Vec::new();
            for &seed in &args.seeds {
                let fitted = fit(precision, seed, true)?;
                let model = fitted.model.model;
                let accuracy = accuracy_of_batches(|x| model.forward(x), &test, &device);
                println!(
                    "{precision:?} seed {seed}: test accuracy {accuracy:.2} % ({:.0} s)",
                    fitted.seconds
                );
                accuracies.push(accuracy);
                seconds.push(fitted.seconds);
            }
            rows.push((precision, accuracies, seconds));
        }
        println!("\n| precision | test accuracy per seed (%) | mean ± std | Δ vs FP32 | s / run |");
        println!("|---|---|---|---|---|");
        let mean = |v: &[f64]| mean_sd(v).0;
        let std = |v: &[f64]| mean_sd(v).1;
        let fp32 = mean(&rows[0].1);
        for (precision, accuracies, seconds) in &rows {
            println!(
                "| {precision:?} | {} | {:.2} ± {:.2} | {:+.2} | {:.0} |",
                accuracies
                    .iter()
                    .map(|a| format!("{a:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                mean(accuracies),
                std(accuracies),
                mean(accuracies) - fp32,
                mean(seconds)
            );
        }
        if let Some(path) = &args.json {
            let json = serde_json::json!({
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "seeds": args.seeds,
                "rows": rows.iter().map(|(p, a, s)| serde_json::json!({
                    "precision": format!("{p:?}"),
                    "test_accuracy": a,
                    "seconds": s,
                })).collect::<Vec<_>>(),
            });
            std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
        }
        return Ok(());
    }

    let fitted = fit(args.precision, args.seed, false)?;
    let model = fitted.model.model;
    let accuracy = accuracy_of_batches(|x| model.forward(x), &test, &device);
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
    if args.precision != CnnPrecision::Fp32 {
        // Packed: the quantized `Linear`s and convolutions run the packed kernels; the outputs
        // are the trained network's, bit for bit.
        let packed = pack(&model)?;
        let (x, _) = test.batch(&(0..256).collect::<Vec<_>>(), &device);
        let same = packed.forward(x.clone()).into_data() == model.forward(x.clone()).into_data();
        let path = args.out.join("cnn.packed.bpk");
        save(packed.clone(), &path)?;
        let loaded = load_packed(Cnn::new(args.precision, &device), &path)?;
        let reloaded: Tensor<2> = loaded.forward(x);
        let loaded_accuracy = accuracy_of_batches(|x| loaded.forward(x), &test, &device);
        println!(
            "packed: outputs equal to the trained network's: {same}; saved to {} ({} bytes, \
             {} bytes unpacked); reloaded: test accuracy {loaded_accuracy:.2} %, logits of 256 \
             images equal: {}",
            path.display(),
            record_bytes(packed.clone())?,
            record_bytes(model.clone())?,
            reloaded.into_data()
                == packed
                    .forward(test.batch(&(0..256).collect::<Vec<_>>(), &device).0)
                    .into_data()
        );
    }
    println!("logs and checkpoints: {}", args.out.display());
    Ok(())
}
