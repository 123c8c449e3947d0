//! How the GPU's int8 ternary matmul forms its integer dot products: `dp4a`, or SWAR byte masks
//! where `dp4a` is a polyfill. A process-wide choice for benchmarks and tests; both give the same
//! sums. Available in every build (the choice is read by the `cube` kernels).

use std::sync::atomic::{AtomicU8, Ordering};

/// How the int8 per-row kernel forms its integer dot products (the sums are identical).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Dot {
    /// `dp4a` where the runtime has it natively (CUDA, ROCm, SPIR-V), SWAR masks where `dp4a`
    /// is a byte-by-byte polyfill (WGSL — wgpu's default on Vulkan, DX12 and WebGPU — and MSL).
    Auto,
    /// Always `dp4a` (native or polyfilled).
    Dp4a,
    /// Always the SWAR masks.
    Swar,
}

impl Int8Dot {
    /// Whether the kernel takes the SWAR masks on the runtime named `runtime` (CubeCL's client
    /// name: `wgpu<wgsl>`, `wgpu<msl>`, `wgpu<spirv>`, `cuda`, ...).
    pub fn takes_swar(self, runtime: &str) -> bool {
        match self {
            Self::Auto => matches!(runtime, "wgpu<wgsl>" | "wgpu<msl>"),
            Self::Dp4a => false,
            Self::Swar => true,
        }
    }
}

static INT8_DOT: AtomicU8 = AtomicU8::new(0);

/// Chooses how every later int8 ternary matmul in the process forms its dot products
/// ([`Int8Dot::Auto`] unless set). For benchmarks and tests that compare the two ways on one
/// device: both give bit-identical integer sums, so the choice changes only the speed.
///
/// # Example
/// ```
/// use bitnet_kernels::int8_dot::{Int8Dot, int8_dot, set_int8_dot};
///
/// set_int8_dot(Int8Dot::Swar);
/// assert_eq!(int8_dot(), Int8Dot::Swar);
/// set_int8_dot(Int8Dot::Auto);
/// ```
pub fn set_int8_dot(dot: Int8Dot) {
    let code = match dot {
        Int8Dot::Auto => 0,
        Int8Dot::Dp4a => 1,
        Int8Dot::Swar => 2,
    };
    INT8_DOT.store(code, Ordering::Relaxed);
}

/// The choice of [`set_int8_dot`].
pub fn int8_dot() -> Int8Dot {
    match INT8_DOT.load(Ordering::Relaxed) {
        1 => Int8Dot::Dp4a,
        2 => Int8Dot::Swar,
        _ => Int8Dot::Auto,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_swar_where_dp4a_is_a_polyfill() {
        for (runtime, swar) in [
            ("wgpu<wgsl>", true),
            ("wgpu<msl>", true),
            ("wgpu<spirv>", false),
            ("cuda", false),
        ] {
            assert_eq!(Int8Dot::Auto.takes_swar(runtime), swar, "{runtime}");
            assert!(Int8Dot::Swar.takes_swar(runtime));
            assert!(!Int8Dot::Dp4a.takes_swar(runtime));
        }
    }
}
