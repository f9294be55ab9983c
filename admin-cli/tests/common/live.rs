//! A real puppeteer and real puppets, in this process, for end-to-end tests
//! of the `geppetto` binary.
//!
//! The puppeteer (sled in a temp dir, generated CA and certificate, port 0)
//! and the puppets (`puppet::run_agent`, gRPC-web) run on a tokio runtime of
//! their own, so the tests themselves are plain synchronous code that runs
//! the binary as an operator would and waits on conditions with deadlines.

use std::path::{Path, PathBuf};
use std::time::Duration;

use assert_cmd::Command;
use geppetto_test_support::block_until;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::common::{geppetto, geppetto_std};

/// How long any awaited condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A puppet agent running on the fixture's runtime.
struct RealPuppet {
    name: String,
    _state_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// A puppeteer with its puppets, and how to reach it with the CLI.
pub struct Live {
    runtime: tokio::runtime::Runtime,
    server: Option<puppeteer::Running>,
    puppets: Vec<RealPuppet>,
    pub dir: tempfile::TempDir,
    pub url: String,
    pub ca: PathBuf,
    pub token_file: PathBuf,
}

impl Live {
    /// Starts a puppeteer with no puppet.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// Starts a puppeteer with no puppet, its config changed by `tweak`.
    pub fn start_with(tweak: impl FnOnce(&mut puppeteer::Config)) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            puppeteer::Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        tweak(&mut config);
        let running = runtime
            .block_on(puppeteer::start(config))
            .expect("the puppeteer starts");
        let url = running.url(false);
        let ca = running.ca_file.clone().expect("a generated CA");
        let token_file = running.admin_token_file.clone();
        Live {
            runtime,
            server: Some(running),
            puppets: Vec::new(),
            dir,
            url,
            ca,
            token_file,
        }
    }

    /// Starts a real puppet enrolling with `secret` under `name`
    /// (gRPC-web, the puppet's default transport).
    pub fn start_puppet(&mut self, secret: &str, name: &str) {
        let state_dir = tempfile::tempdir().unwrap();
        let mut config = puppet::AgentConfig::new(&self.url, state_dir.path().join("state"));
        config.ca_file = Some(self.ca.clone());
        config.enroll_token = Some(secret.into());
        config.name = name.to_string();
        config.transport = puppet::Transport::GrpcWeb;
        let shutdown = CancellationToken::new();
        let task = self
            .runtime
            .spawn(puppet::run_agent(config, shutdown.clone()));
        self.puppets.push(RealPuppet {
            name: name.to_string(),
            _state_dir: state_dir,
            shutdown,
            task,
        });
    }

    /// Stops a puppet started by [`Live::start_puppet`], as a shutdown
    /// would: from then on it says nothing.
    pub fn stop_puppet(&mut self, name: &str) {
        let at = self
            .puppets
            .iter()
            .position(|p| p.name == name)
            .unwrap_or_else(|| panic!("no puppet {name}"));
        let puppet = self.puppets.remove(at);
        puppet.shutdown.cancel();
        self.runtime
            .block_on(puppet.task)
            .expect("the puppet task")
            .expect("the puppet stops cleanly");
    }

    /// The binary, connected with flags.
    pub fn cli(&self) -> Command {
        let mut cmd = geppetto();
        cmd.args(self.connection());
        cmd
    }

    /// The binary, connected through `GEPPETTO_*` variables.
    pub fn cli_env(&self) -> Command {
        let mut cmd = geppetto();
        cmd.env("GEPPETTO_SERVER", &self.url)
            .env("GEPPETTO_CA", &self.ca)
            .env("GEPPETTO_TOKEN_FILE", &self.token_file);
        cmd
    }

    /// The binary, connected with flags, as a process to spawn.
    pub fn cli_std(&self) -> std::process::Command {
        let mut cmd = geppetto_std();
        cmd.args(self.connection());
        cmd
    }

    fn connection(&self) -> [&std::ffi::OsStr; 6] {
        [
            "--server".as_ref(),
            self.url.as_ref(),
            "--ca".as_ref(),
            self.ca.as_os_str(),
            "--token-file".as_ref(),
            self.token_file.as_os_str(),
        ]
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.cli().args(args).output().expect("geppetto runs");
        assert!(
            output.status.success(),
            "geppetto {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("UTF-8 output")
    }

    /// Runs a command with `-o json` that must succeed; returns its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}):\n{out}"))
    }

    /// Waits until `puppet show NAME` says a poll is held.
    pub fn wait_polling(&self, name: &str) {
        block_until(&format!("{name} holds a poll"), DEADLINE, || {
            let out = self
                .cli()
                .args(["-o", "json", "puppets", "show", name])
                .output()
                .unwrap();
            let value: Value = serde_json::from_slice(&out.stdout).ok()?;
            (value["polling"] == true).then_some(())
        });
    }

    /// Waits until a run is in `state` (the run's JSON view is returned).
    pub fn wait_run_state(&self, run: &str, state: &str) -> Value {
        block_until(&format!("{run} is {state}"), DEADLINE, || {
            let value = self.json(&["runs", "show", run]);
            (value["state"] == state).then_some(value)
        })
    }

    /// Waits until a job is finished (its JSON view is returned).
    pub fn wait_job(&self, job: &str) -> Value {
        block_until(&format!("{job} is finished"), DEADLINE, || {
            let value = self.json(&["jobs", "show", job]);
            let state = value["state"].as_str().unwrap_or_default();
            (!["running", "awaiting_approval"].contains(&state)).then_some(value)
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let puppets = std::mem::take(&mut self.puppets);
        let server = self.server.take();
        let stopped = self.runtime.block_on(async move {
            tokio::time::timeout(Duration::from_secs(20), async move {
                for puppet in puppets {
                    puppet.shutdown.cancel();
                    match puppet.task.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => eprintln!("puppet {} ended with: {e:#}", puppet.name),
                        Err(e) => eprintln!("puppet {} panicked: {e}", puppet.name),
                    }
                }
                if let Some(server) = server
                    && let Err(e) = server.stop().await
                {
                    eprintln!("puppeteer ended with: {e:#}");
                }
            })
            .await
        });
        if stopped.is_err() {
            eprintln!("the puppets and the puppeteer did not stop within 20s");
        }
    }
}

/// The only line of `out`, which must be an id of `kind` (`job-…`).
pub fn single_id(out: &str, kind: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "expected only an id, got:\n{out}");
    let id = lines[0];
    let rest = id
        .strip_prefix(&format!("{kind}-"))
        .unwrap_or_else(|| panic!("not a {kind} id: {id:?}"));
    assert!(
        !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()),
        "not a {kind} id: {id:?}"
    );
    id.to_string()
}

/// Makes a FIFO with `mkfifo`.
pub fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success(), "mkfifo {} failed", path.display());
}
