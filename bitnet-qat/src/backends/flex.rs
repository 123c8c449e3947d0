//! Flex: the forward passes of [`QatBackend`] are the trait's portable defaults.

use burn::backend::Flex;

use crate::ops::QatBackend;

impl QatBackend for Flex {}
