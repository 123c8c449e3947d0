//! How the GPU's int8 ternary matmul forms its integer dot products: `dp4a`, or SWAR byte masks
//! where `dp4a` is a polyfill. Chosen per call (`burn_ext::ternary_matmul_with_dot`, feature `burn`;
//! [`Int8Dot::Auto`] otherwise); both give the same sums. Available in every build (the CPU
//! kernels ignore it).

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
