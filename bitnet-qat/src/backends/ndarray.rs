//! NdArray: the forward passes of [`QatBackend`] are the trait's portable defaults.
#![allow(deprecated)] // NdArray is deprecated in Burn 0.22 but still supported.

use burn::backend::NdArray;

use crate::ops::QatBackend;

impl QatBackend for NdArray {}
