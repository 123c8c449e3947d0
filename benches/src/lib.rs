#![warn(missing_docs)]
//! Measuring helpers shared by the benchmark binaries: variants interleaved in one process, at
//! least 21 samples each, medians and spreads, load average before and after (so that machine
//! noise hits every variant alike and shows in the spread).

pub mod fuzz;
pub mod heap;
pub mod quant_table;

// The unit tests count heap bytes too (the fuzzer's memory bound).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

use std::time::Instant;

use serde::Serialize;

/// Summary of one variant's samples.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Median seconds.
    pub median_s: f64,
    /// 10th percentile seconds.
    pub p10_s: f64,
    /// 90th percentile seconds.
    pub p90_s: f64,
    /// Number of samples.
    pub samples: usize,
}

impl Stats {
    /// Summarises raw sample times.
    pub fn from_samples(mut times: Vec<f64>) -> Self {
        times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
        let at = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
        Self {
            median_s: at(0.5),
            p10_s: at(0.1),
            p90_s: at(0.9),
            samples: times.len(),
        }
    }
}

/// Runs every variant `samples` times, interleaved (A, B, C, A, B, C, ...), after one warm-up
/// call each, and returns their statistics in order.
pub fn interleaved(samples: usize, variants: &mut [&mut dyn FnMut()]) -> Vec<Stats> {
    for v in variants.iter_mut() {
        v();
    }
    let mut times = vec![Vec::with_capacity(samples); variants.len()];
    for _ in 0..samples {
        for (v, t) in variants.iter_mut().zip(times.iter_mut()) {
            let start = Instant::now();
            v();
            t.push(start.elapsed().as_secs_f64());
        }
    }
    times.into_iter().map(Stats::from_samples).collect()
}

/// The 1-minute load average (Linux), or NaN where it cannot be read.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

pub use bitnet_kernels::file::write_atomic;

/// The GPU runtimes the GPU binaries run on (each needs its cargo feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Gpu {
    /// `Device::cuda(0)` (feature `cuda`).
    Cuda,
    /// `Device::wgpu(DefaultDevice)` (feature `wgpu`: WGSL).
    Wgpu,
    /// `Device::vulkan(DefaultDevice)` (feature `vulkan`: SPIR-V).
    Vulkan,
}

impl Gpu {
    /// The device.
    ///
    /// # Panics
    /// When the binary was built without the runtime's feature (a usage error of a benchmark).
    pub fn device(self) -> burn::tensor::Device {
        match self {
            #[cfg(feature = "cuda")]
            Gpu::Cuda => burn::tensor::Device::cuda(0),
            #[cfg(feature = "wgpu")]
            Gpu::Wgpu => burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
            #[cfg(feature = "vulkan")]
            Gpu::Vulkan => burn::tensor::Device::vulkan(burn::tensor::DeviceKind::DefaultDevice),
            #[allow(unreachable_patterns)]
            other => panic!("{other:?} needs the matching cargo feature (cuda / wgpu / vulkan)"),
        }
    }
}

/// The weight shapes `(N, K)` the benchmarks time: square layers and the LLaMA-7B and
/// BitNet 2B4T FFN matrices.
pub const SHAPES: [(usize, usize); 7] = [
    (2048, 2048),
    (4096, 4096),
    (4096, 11008),
    (11008, 4096),
    (2560, 2560),
    (6912, 2560),
    (2560, 6912),
];

/// The activation row counts M of the measuring rules: GEMV, small batches, prefill.
pub const MS: [usize; 5] = [1, 8, 32, 128, 512];

/// The GPU kernels `f` launches (CubeCL's launch observer: every kernel issued while `f` runs,
/// from any thread), or `None` in a build without a GPU runtime. `f` should end with a device
/// sync so that lazily fused operations are issued inside the window.
pub fn count_launches(f: impl FnOnce()) -> Option<usize> {
    #[cfg(any(feature = "wgpu", feature = "cuda", feature = "vulkan"))]
    {
        use cubecl_runtime::logging::{LaunchObservation, LaunchObserver};
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        struct Count(AtomicUsize);
        impl LaunchObserver for Count {
            fn launched(&self, _kernel: &'static str) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }

        let count = Arc::new(Count(AtomicUsize::new(0)));
        let watching = LaunchObservation::new(count.clone());
        f();
        drop(watching);
        Some(count.0.load(Ordering::Relaxed))
    }
    #[cfg(not(any(feature = "wgpu", feature = "cuda", feature = "vulkan")))]
    {
        f();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let s = Stats::from_samples((1..=21).rev().map(|v| v as f64).collect());
        assert_eq!(
            (s.median_s, s.p10_s, s.p90_s, s.samples),
            (11.0, 3.0, 19.0, 21)
        );
    }

    #[test]
    fn interleaving_calls_each_variant_samples_plus_one_times() {
        let (mut a, mut b) = (0, 0);
        let stats = interleaved(5, &mut [&mut || a += 1, &mut || b += 1]);
        assert_eq!((a, b, stats.len()), (6, 6, 2));
    }
}
