//! Integration tests live in `integration/` and `low_precision/`; this library holds what
//! both test binaries share.

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or `false`): there a
/// missing dependency fails the test instead of skipping it.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}
