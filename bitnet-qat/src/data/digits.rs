//! The UCI optical-recognition handwritten digits (8×8), embedded in the crate.
//!
//! 1,797 grey-scale 8×8 images of the digits 0–9 with pixel values 0–16: the test set of
//! E. Alpaydin and C. Kaynak's "Optical Recognition of Handwritten Digits" (UCI Machine
//! Learning Repository, 1998, <https://doi.org/10.24432/C50P49>), licensed CC BY 4.0. The file
//! is the `digits.csv.gz` that scikit-learn ships (Debian package `python3-sklearn`
//! 1.2.1+dfsg-1), 65 comma-separated integers per line: 64 pixels then the label.

use std::io::Read;

use burn::data::dataset::{Dataset, DatasetError};
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::error::{QatError, Result};

/// The compressed CSV, embedded at build time (57 KiB).
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Number of images in the dataset.
pub const DIGITS_LEN: usize = 1797;
/// Pixels per image (8×8).
pub const DIGITS_PIXELS: usize = 64;
/// Number of classes.
pub const DIGITS_CLASSES: usize = 10;

/// One 8×8 digit.
#[derive(Debug, Clone, PartialEq)]
pub struct DigitItem {
    /// Row-major pixels scaled to `[0, 1]` (the raw values are 0–16).
    pub pixels: [f32; DIGITS_PIXELS],
    /// The digit, 0–9.
    pub label: u8,
}

/// The embedded digits dataset, or a split of it.
///
/// # Example
/// ```
/// use bitnet_qat::data::DigitsDataset;
/// use burn::data::dataset::{Dataset, DatasetError};
///
/// let all = DigitsDataset::load().unwrap();
/// assert_eq!(all.len(), 1797);
/// let (train, test) = all.split(0.2, 42);
/// assert_eq!((train.len(), test.len()), (1438, 359));
/// ```
#[derive(Debug, Clone)]
pub struct DigitsDataset {
    items: Vec<DigitItem>,
}

impl DigitsDataset {
    /// Decompresses and parses the embedded file.
    pub fn load() -> Result<Self> {
        let mut csv = String::new();
        flate2::read::GzDecoder::new(DIGITS_CSV_GZ)
            .read_to_string(&mut csv)
            .map_err(|e| QatError::Dataset(format!("embedded digits.csv.gz: {e}")))?;
        let items = parse_csv(&csv)?;
        if items.len() != DIGITS_LEN {
            return Err(QatError::Dataset(format!(
                "embedded digits: expected {DIGITS_LEN} rows, found {}",
                items.len()
            )));
        }
        Ok(Self { items })
    }

    /// Splits into `(train, test)` after a shuffle with `seed`; `test_fraction` of the items
    /// (rounded down) go to the test split. The same seed always gives the same split.
    pub fn split(self, test_fraction: f64, seed: u64) -> (Self, Self) {
        let mut items = self.items;
        super::loader::shuffle(&mut items, seed);
        let n_test = ((items.len() as f64) * test_fraction.clamp(0.0, 1.0)) as usize;
        let test = items.split_off(items.len() - n_test);
        (Self { items }, Self { items: test })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// All items.
    pub fn items(&self) -> &[DigitItem] {
        &self.items
    }

    /// Stacks `items` into an image batch `[n, 64]` and a label batch `[n]` on `device`.
    pub fn batch(items: &[DigitItem], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
        let pixels: Vec<f32> = items.iter().flat_map(|i| i.pixels).collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        let images = Tensor::from_data(
            TensorData::new(pixels, [items.len(), DIGITS_PIXELS]),
            device,
        );
        let labels = Tensor::from_data(TensorData::new(labels, [items.len()]), device);
        (images, labels)
    }
}

impl Dataset<DigitItem> for DigitsDataset {
    /// # Panics
    /// If `index >= len()`, as `Dataset` requires.
    fn get(&self, index: usize) -> core::result::Result<DigitItem, DatasetError> {
        Ok(self.items[index].clone())
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}

fn parse_csv(csv: &str) -> Result<Vec<DigitItem>> {
    csv.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let bad = |why: String| QatError::Dataset(format!("digits line {}: {why}", n + 1));
            let values = line
                .split(',')
                .map(|v| v.trim().parse::<f64>())
                .collect::<core::result::Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            if values.len() != DIGITS_PIXELS + 1 {
                return Err(bad(format!("{} values, expected 65", values.len())));
            }
            let mut pixels = [0f32; DIGITS_PIXELS];
            for (p, v) in pixels.iter_mut().zip(&values) {
                if !(0.0..=16.0).contains(v) {
                    return Err(bad(format!("pixel {v} outside 0..=16")));
                }
                *p = (*v / 16.0) as f32;
            }
            let label = values[DIGITS_PIXELS];
            if !(0.0..=9.0).contains(&label) || label.fract() != 0.0 {
                return Err(bad(format!("label {label} is not a digit")));
            }
            Ok(DigitItem {
                pixels,
                label: label as u8,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_parses_with_balanced_labels() {
        let data = DigitsDataset::load().unwrap();
        let mut counts = [0usize; DIGITS_CLASSES];
        for item in data.items() {
            counts[item.label as usize] += 1;
        }
        // The published class counts of the sklearn digits set.
        assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
        // First row of the file: a zero.
        let first = &data.items()[0];
        assert_eq!(first.label, 0);
        assert_eq!(first.pixels[2], 5.0 / 16.0);
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let (a_train, a_test) = DigitsDataset::load().unwrap().split(0.25, 7);
        let (b_train, b_test) = DigitsDataset::load().unwrap().split(0.25, 7);
        assert_eq!(a_test.items(), b_test.items());
        assert_eq!(a_train.len() + a_test.len(), DIGITS_LEN);
        assert_eq!(a_test.len(), 449);
        let (_, c_test) = DigitsDataset::load().unwrap().split(0.25, 8);
        assert_ne!(a_test.items(), c_test.items());
        let _ = b_train;
    }

    #[test]
    fn bad_rows_are_typed_errors() {
        assert!(matches!(parse_csv("1,2,3"), Err(QatError::Dataset(_))));
        let row = format!("{}17", "0,".repeat(64));
        assert!(matches!(parse_csv(&row), Err(QatError::Dataset(_))));
        let row = format!("{}x", "0,".repeat(64));
        assert!(matches!(parse_csv(&row), Err(QatError::Dataset(_))));
    }
}
