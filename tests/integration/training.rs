//! Training smoke test: a BitLinear MLP learns the embedded digits.

use bitnet_qat::data::DigitsDataset;
use bitnet_qat_examples::{Precision, TrainSettings, accuracy, train};
use burn::tensor::Device;

#[test]
fn bitlinear_mlp_learns_digits() {
    let device = Device::flex();
    let (train_set, test_set) = DigitsDataset::load().unwrap().split(0.2, 42);
    let settings = TrainSettings {
        epochs: 8,
        batch_size: 64,
        lr: 3e-3,
        seed: 42,
    };
    let trained = train(&[64], Precision::Ternary, &train_set, &settings, &device).unwrap();
    let acc = accuracy(&trained.model, &test_set, &device);
    assert_eq!(trained.steps, 8 * train_set.len().div_ceil(64));
    // Chance is 10 %; see the quickstart for the full run.
    assert!(
        acc >= 90.0,
        "ternary MLP test accuracy {acc:.2} % after {} steps",
        trained.steps
    );
    assert!(
        trained.final_loss < 0.5,
        "final loss {}",
        trained.final_loss
    );
}
