//! Integration tests live in `integration/` and `low_precision/`; this library holds what
//! both test binaries share.

/// Whether the tests run under CI (`CI` set to anything but empty, `0` or `false`): there a
/// missing dependency fails the test instead of skipping it.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// Skips the calling test for `reason` (a missing dependency): under CI this fails the test;
/// elsewhere it prints `SKIPPED` and appends `test: reason` to the file named by
/// `BITNET_QAT_SKIPPED`, which `scripts/test.sh` counts and lists.
#[track_caller]
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    assert!(!under_ci(), "{test} cannot run under CI: {reason}");
    eprintln!("SKIPPED {test}: {reason}");
    if let Some(path) = std::env::var_os("BITNET_QAT_SKIPPED") {
        use std::io::Write;
        let line = format!("{test}: {reason}\n");
        // One append-mode write per line: lines of parallel tests do not interleave.
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip in {}: {e}", path.display());
        }
    }
}
