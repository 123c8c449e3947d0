//! The device the examples run on: chosen by `--device`, else by the enabled GPU feature, else
//! Flex (CPU). `cargo run --release --example train_fashion_mnist --features metal` trains on a
//! Mac's GPU with no code change.

use bitnet_qat::{QatError, Result};
use burn::tensor::Device;

/// Device names `--device` accepts in this build.
pub fn available() -> Vec<&'static str> {
    let mut names = vec!["flex"];
    if cfg!(feature = "ndarray") {
        names.push("ndarray");
    }
    for (enabled, name) in [
        (cfg!(feature = "wgpu"), "wgpu"),
        (cfg!(feature = "vulkan"), "vulkan"),
        (cfg!(feature = "metal"), "metal"),
        (cfg!(feature = "webgpu"), "webgpu"),
        (cfg!(feature = "cuda"), "cuda"),
    ] {
        if enabled {
            names.push(name);
        }
    }
    names
}

/// The default: the most specific enabled GPU feature (cuda, metal, vulkan, webgpu, wgpu), else
/// `flex`.
pub fn default_name() -> &'static str {
    ["cuda", "metal", "vulkan", "webgpu", "wgpu"]
        .into_iter()
        .find(|n| available().contains(n))
        .unwrap_or("flex")
}

/// The device called `name` (see [`available`]).
///
/// # Errors
/// [`QatError::Config`] of `device` for a name this build does not have.
pub fn device(name: &str) -> Result<Device> {
    #[allow(unused_imports)]
    use burn::tensor::DeviceKind;
    Ok(match name {
        "flex" => Device::flex(),
        #[cfg(feature = "ndarray")]
        #[allow(deprecated)]
        "ndarray" => Device::ndarray(),
        #[cfg(feature = "wgpu")]
        "wgpu" => Device::wgpu(DeviceKind::DefaultDevice),
        #[cfg(feature = "vulkan")]
        "vulkan" => Device::vulkan(DeviceKind::DefaultDevice),
        #[cfg(feature = "metal")]
        "metal" => Device::metal(DeviceKind::DefaultDevice),
        #[cfg(feature = "webgpu")]
        "webgpu" => Device::webgpu(DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        "cuda" => Device::cuda(0),
        other => {
            return Err(QatError::Config {
                name: "device".into(),
                value: format!("{other:?}"),
                allowed: format!(
                    "one of this build's devices: {} (enable GPUs with --features \
                     wgpu|vulkan|metal|webgpu|cuda)",
                    available().join(", ")
                ),
            });
        }
    })
}
