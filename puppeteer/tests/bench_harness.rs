//! The fleet benchmark harness runs end to end at a tiny size: a real
//! puppeteer process, `puppet simulate` with two puppets, two real agents and
//! a small storage phase. No figure is asserted, only that every phase works
//! and reports.

#[path = "../benches/fleet/harness.rs"]
mod harness;

use std::path::PathBuf;

/// Builds the `puppet` binary beside the puppeteer binary of this test (same
/// target dir and profile): cargo builds only this package's binaries for
/// its tests.
fn bin_dir() -> PathBuf {
    let puppeteer = PathBuf::from(env!("CARGO_BIN_EXE_puppeteer"));
    let bins = puppeteer.parent().unwrap().to_path_buf();
    let target = bins.parent().unwrap();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "-p", "puppet", "--bin", "puppet"])
        .env("CARGO_TARGET_DIR", target);
    if bins.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("cargo runs");
    assert!(status.success(), "building the puppet binary failed");
    bins
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_at_a_tiny_size() {
    let out = tempfile::tempdir().unwrap();
    let options = harness::Options::quick(bin_dir(), out.path().to_path_buf());
    let results = harness::run(&options).await.expect("the harness runs");
    let fleet = &results["fleet"][0];
    assert_eq!(fleet["puppets"], 2);
    assert_eq!(fleet["dispatch"]["jobs"], 3);
    assert_eq!(fleet["fanout"]["runs"], 2);
    assert_eq!(fleet["fanout"]["succeeded"], 2);
    assert!(fleet["ingest"]["detail"]["log_bytes"].as_u64().unwrap() >= 2 * 4095);
    assert_eq!(
        results["real_agents"]["fanout"].as_array().unwrap().len(),
        2
    );
    assert!(results["storage"]["runs"].as_u64().unwrap() >= 10);
    assert!(out.path().join("results.json").is_file());
}
