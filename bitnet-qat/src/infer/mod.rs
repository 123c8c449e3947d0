//! Inference with packed ternary weights: [`pack`] any quantization-aware model in place,
//! [`save`] and [`load_packed`] it; [`PackedWeight`], the packed form of one weight; and
//! [`TernaryLinear`], a packed linear layer of its own type, built from one trained layer
//! ([`TernaryLinear::from_bit_linear`], [`TernaryLinear::from_linear`]) or as the skeleton of a
//! saved one ([`TernaryLinearConfig::init`]).

pub(crate) mod convert;
pub(crate) mod load;
mod pack;
mod packed_weight;
mod ternary_linear;

pub(crate) use load::{FloatTypes, load_checked};
pub use load::{load_packed, load_packed_bytes};
pub(crate) use pack::attach;
pub use pack::{pack, record_bytes, save};
pub use packed_weight::{MAX_PACKED_WEIGHTS, PackedLayout, PackedWeight};
pub(crate) use packed_weight::{host_packed, recorded_layout};
pub use ternary_linear::{TernaryLinear, TernaryLinearConfig};
