//! Real data: Debian's Fashion-MNIST files load, a short Learner run learns them, and the
//! accuracy plot is a PNG. Under CI (`CI=true`) missing files fail the test; elsewhere the
//! test says it skipped.

use std::path::Path;

use bitnet_qat::data::{FASHION_MNIST_DIR, IdxDataset, Split};
use bitnet_qat_examples::learner::{FitConfig, fit};
use bitnet_qat_examples::report::{FONT, Variant, plot_curves};
use burn::tensor::Device;

use super::skip;

/// `Some(dir)` when the files are there; panics under CI when they are not.
pub(crate) fn fashion_dir() -> Option<&'static Path> {
    let dir = Path::new(FASHION_MNIST_DIR);
    if dir.join("train-labels-idx1-ubyte.gz").exists() {
        return Some(dir);
    }
    skip(&format!(
        "no {FASHION_MNIST_DIR} (scripts/install-deps.sh installs dataset-fashion-mnist)"
    ));
    None
}

#[test]
fn fashion_mnist_loads_and_a_short_learner_run_learns_it() {
    let Some(dir) = fashion_dir() else { return };
    let train = IdxDataset::load(dir, Split::Train).unwrap();
    let test = IdxDataset::load(dir, Split::Test).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.pixels_per_image()),
        (60_000, 10_000, 784)
    );
    let mut counts = [0usize; 10];
    test.labels().iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1000; 10]);

    let out = std::env::temp_dir().join(format!("bitnet-qat-fashion-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut config = FitConfig::new(&out);
    config.hidden = vec![128];
    config.epochs = 1;
    config.checkpoints = false;
    let fitted = fit(
        train.take(3000),
        test.take(1000),
        784,
        10,
        config,
        &Device::flex(),
    )
    .unwrap();
    // Chance is 10 %; a ternary MLP reaches ~75 % on 3,000 images in one epoch.
    assert!(
        fitted.valid_accuracy[0] > 65.0,
        "{:?}",
        fitted.valid_accuracy
    );
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_accuracy_plot_is_a_png() {
    if !Path::new(FONT).exists() {
        skip(&format!(
            "no {FONT} (scripts/install-deps.sh installs fonts-dejavu-core)"
        ));
        return;
    }
    let path = std::env::temp_dir().join(format!("bitnet-qat-plot-{}.png", std::process::id()));
    let v = |name: &str, curve: Vec<f64>| Variant {
        name: name.into(),
        weights: String::new(),
        curve,
        seconds: 0.0,
    };
    plot_curves(
        &[
            v("fp32", vec![80.0, 85.0, 88.0]),
            v("ternary", vec![78.0, 84.0, 87.5]),
        ],
        "test",
        ("validation accuracy (%)", " %"),
        &path,
    )
    .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    let _ = std::fs::remove_file(&path);
}
