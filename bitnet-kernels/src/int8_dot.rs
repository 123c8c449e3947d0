//! How the GPU's int8 ternary matmul forms its integer dot products: `dp4a`, or SWAR byte masks
//! where `dp4a` is a polyfill. Chosen per call ([`crate::burn_ext::ternary_matmul_with_dot`];
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

/// The `activations` argument of the `ternary_matmul` backend op: float activations (0), or
/// int8 activations with the dot products of `dot`.
pub(crate) fn encode_activations(int8: Option<Int8Dot>) -> u8 {
    match int8 {
        None => 0,
        Some(Int8Dot::Auto) => 1,
        Some(Int8Dot::Dp4a) => 2,
        Some(Int8Dot::Swar) => 3,
    }
}

/// The inverse of [`encode_activations`] (unknown codes are taken as the automatic choice).
pub(crate) fn decode_activations(code: u8) -> Option<Int8Dot> {
    match code {
        0 => None,
        2 => Some(Int8Dot::Dp4a),
        3 => Some(Int8Dot::Swar),
        _ => Some(Int8Dot::Auto),
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
        for mode in [
            None,
            Some(Int8Dot::Auto),
            Some(Int8Dot::Dp4a),
            Some(Int8Dot::Swar),
        ] {
            assert_eq!(decode_activations(encode_activations(mode)), mode);
        }
    }
}
