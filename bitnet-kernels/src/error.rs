//! The typed error of the kernels crate.

use thiserror::Error;

/// What can go wrong when packing, loading or multiplying ternary weights.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum KernelError {
    /// A weight value is not -1, 0 or +1.
    #[error("weight {index} is {value}, not a ternary value (-1, 0, +1)")]
    NotTernary {
        /// Flat (row-major) index of the value.
        index: usize,
        /// The value found.
        value: i32,
    },
    /// Two sizes that must agree do not.
    #[error("size mismatch for {what}: expected {expected}, got {got}")]
    Size {
        /// What was checked.
        what: &'static str,
        /// The expected number of elements.
        expected: usize,
        /// The number found.
        got: usize,
    },
    /// The reduction dimension is larger than the integer accumulators can hold.
    #[error("K = {k} exceeds the largest supported reduction dimension {max} (i32 accumulators)")]
    KTooLarge {
        /// The requested K.
        k: usize,
        /// The largest K accepted.
        max: usize,
    },
    /// A group size that is not a positive multiple of the block or does not divide K.
    #[error("scale group size {group} must be a positive multiple of {block} that divides K = {k}")]
    GroupSize {
        /// The group size.
        group: usize,
        /// The packing block (256 weights).
        block: usize,
        /// The reduction dimension.
        k: usize,
    },
    /// A scale is zero, negative, NaN or infinite.
    #[error("scale {index} is {value}: scales must be finite and > 0")]
    BadScale {
        /// Index of the scale.
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A packed file that is not in our format.
    #[error("not a bitnet-kernels packed file (bad magic {0:?})")]
    BadMagic([u8; 4]),
    /// A packed file of a version this build cannot read.
    #[error("unsupported packed file version {0}")]
    Version(u32),
    /// A packed file that ends early.
    #[error("packed file truncated: needed {needed} bytes for {what}, {available} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A packed file whose contents contradict each other.
    #[error("inconsistent packed file: {0}")]
    Inconsistent(String),
    /// An I/O error (the message of the underlying error).
    #[error("I/O error on {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// A `Result` whose error is [`KernelError`].
pub type Result<T> = core::result::Result<T, KernelError>;
