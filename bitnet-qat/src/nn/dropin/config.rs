//! What the drop-in configurations share: burn's `Config` for a hand-written serde struct.

/// Implements burn's `Config` (and `Display` as its JSON) for a configuration whose serde
/// derive is hand-written: `#[derive(Config)]` cannot give the `quant` field a serde default,
/// and without one a configuration saved from burn-nn's layer would not load.
macro_rules! hand_written_config {
    ($name:ty) => {
        impl burn::config::Config for $name {}

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(&burn::config::config_to_json(self))
            }
        }
    };
}
pub(crate) use hand_written_config;
