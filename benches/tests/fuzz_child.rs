//! The fuzzer's child-process protocol, run for real: `fuzz-readers` starts itself as children
//! under an address-space limit, and the parent adds up their reports.

use std::process::Command;

#[test]
fn the_parent_adds_up_its_childrens_reports() {
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-child-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    // 25,000 inputs: three children's reports of 10,000 (REPORT_EVERY) and the rest.
    let out = Command::new(env!("CARGO_BIN_EXE_fuzz-readers"))
        .args(["--target", "idx", "--inputs", "25000", "--seed", "3"])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &report["targets"][0]["report"];
    assert_eq!(r["target"], "idx");
    assert_eq!(r["inputs"], 25_000);
    assert_eq!(
        (r["panics"].as_u64(), r["aborts"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(r["oversize"], 0);
    // Every 64th input is a seed, accepted; mutants mostly are not.
    let accepted = r["accepted"].as_u64().unwrap();
    assert!((25_000 / 64..25_000).contains(&accepted), "{accepted}");
    // A child measures its own peak memory.
    assert!(r["peak_rss_kib"].as_u64().unwrap() > 0);
    // The same run in this process gives the same counts: inputs depend on seed and index only.
    let again = Command::new(env!("CARGO_BIN_EXE_fuzz-readers"))
        .args([
            "--target",
            "idx",
            "--inputs",
            "25000",
            "--seed",
            "3",
            "--in-process",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(again.status.success());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["targets"][0]["report"]["accepted"], accepted);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_abort_is_counted_and_the_run_goes_on_after_it() {
    let dir = std::env::temp_dir().join(format!("bitnet-fuzz-abort-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_fuzz-readers"))
            .args([
                "--target",
                "packed-file",
                "--inputs",
                "25000",
                "--seed",
                "5",
            ])
            .args(extra)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        (out.status.success(), report["targets"][0]["report"].clone())
    };
    let (clean_ok, clean) = run(&[]);
    assert!(clean_ok);
    assert_eq!(clean["aborts"], 0);
    // A real abort (SIGABRT) of the child before input 12,345: after its last report at 10,000,
    // the parent recounts 10,000..12,345 in a new child, counts the abort, and restarts after it.
    let (ok, aborted) = run(&["--inject-abort", "12345"]);
    assert!(!ok, "an abort is a failed run");
    assert_eq!(aborted["inputs"], 25_000);
    assert_eq!(aborted["aborts"], 1);
    assert_eq!(aborted["panics"], 0);
    assert_eq!(aborted["first_failure"]["index"], 12_345);
    assert!(
        aborted["first_failure"]["what"]
            .as_str()
            .unwrap()
            .contains("signal: 6"),
        "{}",
        aborted["first_failure"]
    );
    // Every other input was read exactly once: the accepted counts differ by input 12,345 at most.
    let (a, b) = (
        clean["accepted"].as_u64().unwrap(),
        aborted["accepted"].as_u64().unwrap(),
    );
    assert!(a == b || a == b + 1, "{a} vs {b}");
    std::fs::remove_dir_all(&dir).unwrap();
}
