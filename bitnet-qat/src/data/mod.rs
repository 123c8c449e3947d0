//! Datasets shipped with the crate.

mod digits;

pub use digits::{DIGITS_CLASSES, DIGITS_LEN, DIGITS_PIXELS, DigitItem, DigitsDataset};
