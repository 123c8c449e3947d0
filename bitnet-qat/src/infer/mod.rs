//! Inference with packed ternary weights: [`pack`] any quantization-aware model in place,
//! [`save`] and [`load_packed`] it; [`PackedWeight`], the packed form of one weight; and
//! [`TernaryLinear`], a packed linear layer, with [`ToTernary`], the typed conversion of one
//! QAT layer into it.

mod convert;
mod pack;
mod packed_weight;
mod ternary_linear;

pub use convert::ToTernary;
pub use pack::{load_packed, pack, record_bytes, save};
pub use packed_weight::{PackedLayout, PackedWeight};
pub use ternary_linear::{TernaryLinear, TernaryLinearConfig};
