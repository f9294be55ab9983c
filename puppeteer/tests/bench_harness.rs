//! The fleet benchmark harness runs end to end at a tiny size: a real
//! puppeteer process, `puppet simulate` with two puppets, two real agents and
//! a small storage phase. No figure is asserted, only that every phase works
//! and reports.
//!
//! The harness runs the `puppet` binary, which belongs to another package:
//! cargo builds the puppet for this package's tests only as a library, and
//! tells a test the path of its own package's binaries only. The test looks
//! for it beside the puppeteer binary (same target dir and profile), where
//! `cargo test --workspace` builds it for the puppet's own tests. After
//! `cargo test -p puppeteer` alone it may be missing, or older than its
//! sources: the test then says SKIPPED with the command that builds it, or
//! fails where [`REQUIRE_VAR`] is set, as `.ci/run` sets it.

#[path = "../benches/fleet/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Set: a missing or stale puppet binary fails the test instead of skipping it.
const REQUIRE_VAR: &str = "GEPPETTO_REQUIRE_PUPPET_BIN";

/// The directory holding the puppeteer binary of this test and an up-to-date
/// puppet binary; `None` (after saying why) when the puppet binary is
/// missing or stale.
fn bin_dir(test: &str) -> Option<PathBuf> {
    let bins = Path::new(env!("CARGO_BIN_EXE_puppeteer"))
        .parent()
        .expect("the puppeteer binary is in a directory")
        .to_path_buf();
    let puppet = bins.join("puppet");
    let release = if bins.ends_with("release") {
        " --release"
    } else {
        ""
    };
    let build = format!("cargo build -p puppet{release}");
    let built = match std::fs::metadata(&puppet).and_then(|m| m.modified()) {
        Ok(built) => built,
        Err(_) => return skip(test, &format!("{} is missing", puppet.display()), &build),
    };
    // The sources the binary is built from (besides crates.io's, pinned by
    // the lock file), compared by modification time as make does.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace holds the puppeteer");
    let sources = ["puppet/src", "puppet/Cargo.toml", "proto", "Cargo.lock"];
    match newest(sources.iter().map(|s| root.join(s))) {
        Some((changed, path)) if changed > built => skip(
            test,
            &format!(
                "{} is older than {}",
                puppet.display(),
                path.strip_prefix(root).unwrap_or(&path).display()
            ),
            &build,
        ),
        _ => Some(bins),
    }
}

/// The most recently modified file under `paths`, with its time.
fn newest(paths: impl Iterator<Item = PathBuf>) -> Option<(SystemTime, PathBuf)> {
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut left: Vec<PathBuf> = paths.collect();
    while let Some(path) = left.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).into_iter().flatten().flatten();
            left.extend(entries.map(|e| e.path()));
        } else if let Ok(modified) = meta.modified()
            && newest.as_ref().is_none_or(|(time, _)| modified > *time)
        {
            newest = Some((modified, path));
        }
    }
    newest
}

/// Skips `test` loudly, or fails it where the binary is required.
fn skip(test: &str, why: &str, build: &str) -> Option<PathBuf> {
    use std::io::Write;
    if std::env::var_os(REQUIRE_VAR).is_some() {
        panic!("{test}: {why} but {REQUIRE_VAR} is set; `{build}` builds it");
    }
    let line = "=".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "{line}\nSKIPPED: {test}: {why}\n(`{build}` or `cargo test --workspace` builds it)\n{line}"
    );
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_runs_at_a_tiny_size() {
    let Some(bins) = bin_dir("the_harness_runs_at_a_tiny_size") else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let options = harness::Options::quick(bins, out.path().to_path_buf());
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
