//! Real puppet processes for the bad-network tests and benchmarks.
//!
//! The puppet binary belongs to another package, so `cargo test -p
//! puppeteer` does not build it. Instead the test binary runs itself with
//! only [`PUPPET_ENTRY`] selected and the puppet's command line in an
//! environment variable: that test function parses the command line with the
//! puppet's own [`puppet::cli::Cli`] and runs the agent exactly as the
//! binary's `main` does, in a process of its own that can be `kill -9`ed.
//! Every test file that includes this module must define the entry test:
//!
//! ```ignore
//! #[test]
//! fn puppet_process_entry() {
//!     puppetproc::entry();
//! }
//! ```
//!
//! A benchmark without the test harness (`benches/netbench`) calls
//! `puppetproc::entry()` first thing in its `main` instead, before it starts
//! a runtime; the test harness's arguments it is started with go unread.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;

/// The name of the test function that hosts a puppet process.
pub const PUPPET_ENTRY: &str = "puppet_process_entry";
/// Holds the puppet's arguments, one per line.
const ARGS_VAR: &str = "GEPPETTO_TEST_PUPPET_ARGS";

/// Runs the puppet when the process was started by [`PuppetProc`]; returns
/// at once in a normal test run.
pub fn entry() {
    let Ok(args) = std::env::var(ARGS_VAR) else {
        return;
    };
    let cli = puppet::cli::Cli::parse_from(
        std::iter::once("puppet".to_string()).chain(args.lines().map(str::to_string)),
    );
    let puppet::cli::Command::Run(args) = cli.command else {
        panic!("PuppetProc starts `puppet run` only");
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_writer(std::io::stderr)
        .try_init();
    let config = args.into_config().expect("valid puppet arguments");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let result = runtime.block_on(async {
        let on_term = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            term.recv().await;
            on_term.cancel();
        });
        puppet::run_agent(config, shutdown).await
    });
    if let Err(e) = result {
        eprintln!("puppet: {e:#}");
        std::process::exit(1);
    }
    std::process::exit(0);
}

/// How to start a puppet process.
#[derive(Clone, Debug)]
pub struct PuppetOptions {
    pub server: String,
    pub ca: PathBuf,
    pub enroll_token: String,
    pub name: String,
    pub state_dir: PathBuf,
    /// Extra `puppet run` arguments (e.g. `--poll-hold`, `--transport`).
    pub args: Vec<String>,
    /// A command the puppet is started under, e.g. `ip netns exec NS`.
    pub wrapper: Vec<String>,
}

/// A puppet agent in its own process. Its stderr goes to `log`.
pub struct PuppetProc {
    child: tokio::process::Child,
    pub options: PuppetOptions,
    pub log: PathBuf,
}

impl PuppetProc {
    pub fn start(options: PuppetOptions) -> Self {
        let mut args = vec![
            "run".to_string(),
            "--server".into(),
            options.server.clone(),
            "--ca".into(),
            options.ca.display().to_string(),
            "--enroll-token".into(),
            options.enroll_token.clone(),
            "--name".into(),
            options.name.clone(),
            "--state-dir".into(),
            options.state_dir.display().to_string(),
        ];
        args.extend(options.args.iter().cloned());
        let log = options.state_dir.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut command = match options.wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = tokio::process::Command::new(program);
                command.args(rest).arg(&exe);
                command
            }
            None => tokio::process::Command::new(&exe),
        };
        command
            .args([PUPPET_ENTRY, "--exact", "--nocapture", "--test-threads=1"])
            .env(ARGS_VAR, args.join("\n"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true);
        let child = command.spawn().expect("the puppet process starts");
        PuppetProc {
            child,
            options,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// SIGKILL: no shutdown code runs. The run's child processes live on
    /// (in their own process group) until the test kills them.
    pub async fn kill9(mut self) -> PuppetOptions {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.options
    }

    /// SIGTERM, then waits for the agent to stop.
    pub async fn stop(mut self) {
        let pid = self.pid();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
    }

    /// The last lines of the puppet's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
