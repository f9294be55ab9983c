//! `cargo bench -p puppeteer --bench fleet -- [--sizes 1,100,1000,10000] [--quick]`
//!
//! The fleet benchmark of `BENCHMARKS.md` ("Fleet scale"); `deploy/bench.sh`
//! builds the release binaries and runs it. See `harness.rs` for the method.

mod harness;

use std::path::PathBuf;
use std::time::Duration;

fn usage() -> ! {
    eprintln!(
        "usage: fleet [--quick] [--sizes N,N,...] [--dispatch-jobs N] [--hold SECS] [--idle-window SECS]\n\
         \x20            [--storage-runs N] [--storage-fleet N] [--real-agents N,N,...] [--bin-dir DIR] [--out DIR]"
    );
    std::process::exit(2)
}

fn list(text: &str) -> Vec<u32> {
    text.split(',')
        .map(|n| n.trim().parse().unwrap_or_else(|_| usage()))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    // The binaries beside the puppeteer this bench was built with (same profile).
    let default_bins = PathBuf::from(env!("CARGO_BIN_EXE_puppeteer"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    let default_out = default_bins.parent().expect("target dir").join("bench");
    let mut options = if args.iter().any(|a| a == "--quick") {
        harness::Options::quick(default_bins, default_out)
    } else {
        harness::Options::full(default_bins, default_out)
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--quick" => {}
            "--sizes" => options.sizes = list(&value()),
            "--real-agents" => options.real_agents = list(&value()),
            "--dispatch-jobs" => {
                options.dispatch_jobs = value().parse().unwrap_or_else(|_| usage())
            }
            "--hold" => {
                options.hold = Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--idle-window" => {
                options.idle_window =
                    Duration::from_secs(value().parse().unwrap_or_else(|_| usage()))
            }
            "--storage-runs" => options.storage_runs = value().parse().unwrap_or_else(|_| usage()),
            "--storage-fleet" => {
                options.storage_fleet = value().parse().unwrap_or_else(|_| usage())
            }
            "--bin-dir" => options.bin_dir = PathBuf::from(value()),
            "--out" => options.out_dir = PathBuf::from(value()),
            _ => usage(),
        }
    }
    for bin in ["puppeteer", "puppet"] {
        if !options.bin_dir.join(bin).is_file() {
            anyhow::bail!(
                "{} not found: build it first (cargo build --release -p puppet), or give --bin-dir",
                options.bin_dir.join(bin).display()
            );
        }
    }
    harness::run(&options).await?;
    eprintln!(
        "bench: results in {}",
        options.out_dir.join("results.json").display()
    );
    Ok(())
}
