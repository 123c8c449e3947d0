//! Quickstart: train the same small MLP on the embedded 8×8 digits twice, in full precision
//! and as a BitNet b1.58 model (ternary weights, 8-bit activations), and print both test
//! accuracies.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```

use std::time::Instant;

use bitnet_qat::data::DigitsDataset;
use bitnet_qat_examples::{Precision, TrainSettings, accuracy, train};
use burn::tensor::Device;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let device = Device::flex();
    let (train_set, test_set) = DigitsDataset::load()?.split(0.2, 42);
    println!(
        "digits: {} train / {} test images (8x8, 10 classes)",
        train_set.len(),
        test_set.len()
    );
    let settings = TrainSettings::default();
    let hidden = [128];
    for (name, precision) in [
        ("fp32", Precision::Fp32),
        ("bitnet-1.58", Precision::Ternary),
    ] {
        let trained = train(&hidden, precision, &train_set, &settings, &device)?;
        let acc = accuracy(&trained.model, &test_set, &device);
        println!(
            "{name} accuracy: {acc:.2} %  ({} steps, final loss {:.4}, {:.1} s)",
            trained.steps, trained.final_loss, trained.seconds
        );
    }
    println!("total wall time: {:.1} s", start.elapsed().as_secs_f64());
    Ok(())
}
