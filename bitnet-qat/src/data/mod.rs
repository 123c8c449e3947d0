//! Datasets: the digits shipped with the crate, and MNIST-format (IDX) files such as
//! Fashion-MNIST.

mod digits;
mod idx;

pub use digits::{DIGITS_CLASSES, DIGITS_LEN, DIGITS_PIXELS, DigitItem, DigitsDataset};
pub use idx::{FASHION_MNIST_DIR, IdxDataset, ImageItem, Split};
