//! Quickstart: train the same small MLP on the embedded 8×8 digits twice, in full precision
//! and as a BitNet b1.58 model (ternary weights, 8-bit activations), print both test
//! accuracies, then convert the BitNet model to packed ternary weights and run it.
//!
//! ```text
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart -- --epochs 60 --hidden 256 --hidden 128
//! ```

use std::time::Instant;

use bitnet_qat::data::DigitsDataset;
use bitnet_qat::infer::pack;
use bitnet_qat_examples::{Precision, TrainSettings, accuracy, accuracy_of, train};
use clap::Parser;

/// Train FP32 and BitNet b1.58 MLPs on the embedded digits and compare their test accuracy.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 40)]
    epochs: usize,
    /// Hidden layer sizes (repeat the flag for more layers).
    #[arg(long = "hidden", default_values_t = [256])]
    hidden: Vec<usize>,
    /// Adam learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Items per training step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[command(flatten)]
    device: bitnet_qat_examples::cli::DeviceArg,
    /// Seed of the initialisation, the batch order and the train/test split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let start = Instant::now();
    let device = args.device.device()?;
    let (train_set, test_set) = DigitsDataset::load()?.split(0.2, args.seed);
    println!(
        "digits: {} train / {} test images (8x8, 10 classes), MLP 64-{}-10, {} epochs",
        train_set.len(),
        test_set.len(),
        args.hidden
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("-"),
        args.epochs
    );
    let settings = TrainSettings {
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
    };
    let mut qat = None;
    for (name, precision) in [
        ("fp32", Precision::Fp32),
        ("bitnet-1.58", Precision::Ternary),
    ] {
        let trained = train(&args.hidden, precision, &train_set, &settings, &device)?;
        let acc = accuracy(&trained.model, &test_set, &device);
        println!(
            "{name} accuracy: {acc:.2} %  ({} steps, final loss {:.4}, {:.1} s)",
            trained.steps, trained.final_loss, trained.seconds
        );
        qat = Some((trained.model, acc));
    }
    // Convert the trained BitNet model to packed ternary weights and run it.
    let (model, qat_acc) = qat.expect("the BitNet model was trained");
    let packed = pack(&model)?;
    let packed_acc = accuracy_of(|x| packed.forward(x), &test_set, &device);
    let (packed_bytes, f32_bytes) = (packed.size_bytes()?, model.size_bytes()?);
    println!(
        "packed ternary accuracy: {packed_acc:.2} % ({} the QAT model); model {packed_bytes} bytes packed vs {f32_bytes} bytes in f32 ({:.1}x smaller)",
        if packed_acc == qat_acc {
            "equal to"
        } else {
            "DIFFERENT from"
        },
        f32_bytes as f64 / packed_bytes as f64
    );
    if packed_acc != qat_acc {
        return Err("the packed model's accuracy differs from the QAT model's".into());
    }
    println!("total wall time: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
