//! Inference with packed ternary weights: [`TernaryLinear`] and conversion from QAT layers.

mod convert;
mod ternary_linear;

pub use convert::ToTernary;
pub use ternary_linear::TernaryLinear;
