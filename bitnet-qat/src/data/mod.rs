//! Datasets: the digits shipped with the crate and MNIST-format (IDX) files such as
//! Fashion-MNIST, a batcher and an epoch loader. The language model's text data lives with the
//! model, in [`crate::lm`].

mod batch;
mod digits;
mod idx;
mod loader;

pub use batch::{ImageBatch, ImageBatcher};
pub use digits::{DIGITS_CLASSES, DIGITS_LEN, DIGITS_PIXELS, DigitItem, DigitsDataset};
pub use idx::{FASHION_MNIST_DIR, IdxDataset, ImageItem, MAX_IDX_BYTES, Split};
pub use loader::{EpochLoader, shuffle};
