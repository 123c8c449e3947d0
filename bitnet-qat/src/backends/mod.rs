//! Implementations of [`QatBackend`](crate::ops::QatBackend), one file per backend.

mod autodiff;
#[cfg(feature = "cube")]
mod cube;
#[cfg(feature = "flex")]
mod flex;
#[cfg(feature = "ndarray")]
mod ndarray;
