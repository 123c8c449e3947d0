//! Cross-crate integration tests: golden values from the published formulas, STE gradients,
//! BitLinear against the BitNet reference, the reparameterizer, training and bad input,
//! burn-train integration (metrics, exact resume) and real Fashion-MNIST data.

mod any_model;
mod bad_input;
mod bit_linear;
mod burnpack_edit;
mod caches;
mod checkpointing;
mod convert;
mod dropin;
mod dropin_transformer;
mod export;
mod fashion_mnist;
mod gpu;
mod gpu_qat;
mod gpu_sizes;
mod hostile_files;
mod learner;
mod lm;
mod multi_device;
mod packed_conv;
mod quantizers;
mod reference;
mod reparam;
mod ste_grads;
mod training;
mod zero_glue;

use burn::tensor::{Device, Tensor};

/// The CPU devices every test runs on.
#[allow(deprecated)]
pub fn devices() -> Vec<(&'static str, Device)> {
    vec![("flex", Device::flex()), ("ndarray", Device::ndarray())]
}

/// Reads a tensor back as `f32`s.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec().unwrap()
}

/// Asserts `|a - b| <= tol * max(1, |b|)` element-wise.
#[track_caller]
pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32, what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            (a - e).abs() <= tol * e.abs().max(1.0),
            "{what}[{i}]: got {a}, expected {e} (tolerance {tol})"
        );
    }
}

pub use bitnet_qat_integration_tests::{skip, under_ci};

/// An empty temporary folder for `name`, unique to this process (removed first if a crashed
/// run left it).
pub fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bitnet-qat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Every float parameter of `model`, bit for bit.
pub fn weights(model: &impl burn::module::Module) -> Vec<Vec<u32>> {
    bitnet_qat_examples::multi::float_parameters(model)
        .into_iter()
        .map(|p| p.into_iter().map(f32::to_bits).collect())
        .collect()
}

/// A deterministic stream of numbers in `[0, 1)`, independent of Burn's device generators.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next number.
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
}
