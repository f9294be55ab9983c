//! `cargo bench -p puppeteer --bench storage -- [disk] [durability] [--runs N]`
//!
//! The storage benchmarks of `BENCHMARKS.md` ("Storage and durability"),
//! on the store itself and a puppeteer in this process; each prints a
//! Markdown table of the figures:
//!
//! - `disk` (`disk.rs`): the data dir after N finished runs (`--runs`,
//!   default 100,000), after retention, after as many runs again and after
//!   a compaction;
//! - `durability` (`durability.rs`): acknowledgements per second with a
//!   flush each, with group commit, and without flushing.
//!
//! Both by default, one after the other.

mod disk;
mod durability;

const USAGE: &str = "usage: storage [disk] [durability] [--runs N]";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut runs = 100_000;
    let mut chosen = Vec::new();
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "disk" | "durability" => chosen.push(arg),
            "--runs" => {
                runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ => usage(),
        }
    }
    if chosen.is_empty() {
        chosen = vec!["disk".into(), "durability".into()];
    }
    for bench in chosen {
        match bench.as_str() {
            "disk" => disk::storage_after_runs_retention_and_compaction(runs).await,
            _ => durability::durability_cost_of_acknowledgements().await,
        }
    }
}
