//! Datasets: the digits shipped with the crate, MNIST-format (IDX) files such as
//! Fashion-MNIST, and text for language models (the Shakespeare corpus, a character tokenizer,
//! token windows).

mod batch;
mod digits;
mod idx;
mod loader;
mod text;
mod tokenizer;

pub use batch::{ImageBatch, ImageBatcher};
pub use digits::{DIGITS_CLASSES, DIGITS_LEN, DIGITS_PIXELS, DigitItem, DigitsDataset};
pub use idx::{FASHION_MNIST_DIR, IdxDataset, ImageItem, MAX_IDX_BYTES, Split};
pub use loader::{EpochLoader, shuffle};
pub use text::{
    SHAKESPEARE_VALID_WORKS, SHAKESPEARE_WORKS, TextCorpus, TokenBatch, TokenBatcher, TokenWindow,
    TokenWindows, shakespeare_dir,
};
pub use tokenizer::{CharTokenizer, UNKNOWN_TOKEN};
