//! A rig for bad-network tests and benchmarks: a puppeteer process, the
//! fault proxy in front of it, and one puppet process behind the proxy,
//! optionally inside a network namespace (`netns`) whose veth link can be
//! slowed, made lossy and cut. Test files that include it also include
//! `faultproxy`, `puppetproc` and `netns` under those names, and `common`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, Admin, ProcServer};
use crate::faultproxy::FaultProxy;
use crate::netns::NetNs;
use crate::puppetproc::{self, PuppetOptions, PuppetProc};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

/// How long a scenario may take to reach each condition; generous, since
/// the build machine's two cores are shared.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// A puppeteer process, a fault proxy in front of it and one puppet process behind it.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub server_args: Vec<String>,
    pub server: Option<ProcServer>,
    pub proxy: FaultProxy,
    pub token: String,
    pub puppet: Option<PuppetProc>,
    pub puppet_options: PuppetOptions,
    /// Scripts append a line here each time they start.
    pub marks: PathBuf,
}

impl Rig {
    /// `server_args`: extra `puppeteer serve` flags; `puppet_args`: extra `puppet run` flags.
    pub async fn start(server_args: &[&str], puppet_args: &[&str]) -> Self {
        Self::start_in(None, server_args, puppet_args).await
    }

    /// Like [`Rig::start`], with the puppet inside `ns` when given: the proxy
    /// then listens on the host end of the veth pair, and the puppeteer's
    /// certificate names that address.
    pub async fn start_in(ns: Option<&NetNs>, server_args: &[&str], puppet_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let mut server_args: Vec<String> = server_args.iter().map(|s| s.to_string()).collect();
        if let Some(ns) = ns {
            for name in ["localhost".to_string(), ns.host_ip.to_string()] {
                server_args.extend(["--server-name".to_string(), name]);
            }
        }
        let server = start_server(&data, 0, &server_args).await;
        let upstream = ([127, 0, 0, 1], server.port).into();
        let proxy = match ns {
            Some(ns) => FaultProxy::start_on((ns.host_ip, 0).into(), upstream).await,
            None => FaultProxy::start(upstream).await,
        };
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        let marks = dir.path().join("marks");
        let server_url = match ns {
            Some(ns) => format!("https://{}:{}", ns.host_ip, proxy.port()),
            None => proxy.url(),
        };
        let mut rig = Rig {
            data: data.clone(),
            server_args,
            server: Some(server),
            proxy,
            token,
            puppet: None,
            puppet_options: PuppetOptions {
                server: server_url,
                ca: data.join("tls/ca.pem"),
                enroll_token: String::new(),
                name: "p1".into(),
                state_dir: dir.path().join("puppet-state"),
                args: puppet_args.iter().map(|s| s.to_string()).collect(),
                wrapper: ns.map(NetNs::wrapper).unwrap_or_default(),
            },
            marks,
            dir,
        };
        rig.puppet_options.enroll_token = rig.admin().enroll_secret().await;
        rig.puppet = Some(PuppetProc::start(rig.puppet_options.clone()));
        rig.wait_polling().await;
        rig
    }

    /// Waits until the puppet holds a poll.
    pub async fn wait_polling(&self) {
        wait_until_async("p1 holds a poll", PATIENCE, async || {
            let found = self
                .admin()
                .puppets
                .get_puppet(pb::GetPuppetRequest { name: "p1".into() })
                .await;
            if found.is_ok_and(|p| p.into_inner().polling) {
                Ok(())
            } else {
                Err(format!("not yet; the puppet's log:\n{}", self.puppet_log()))
            }
        })
        .await
    }

    pub fn port(&self) -> u16 {
        self.server.as_ref().unwrap().port
    }

    pub fn admin(&self) -> Admin {
        Admin::new(channel(
            self.port(),
            &self.puppet_options.ca,
            Transport::Grpc,
            &self.token,
        ))
    }

    /// `kill -9` of the puppeteer, then a restart on the same data dir and port.
    pub async fn crash_server(&mut self) {
        let port = self.server.take().unwrap().kill9().await;
        self.server = Some(start_server(&self.data, port, &self.server_args).await);
    }

    /// `kill -9` of the puppet, then a restart on the same state dir.
    pub async fn crash_puppet(&mut self) {
        let options = self.puppet.take().unwrap().kill9().await;
        self.puppet = Some(PuppetProc::start(options));
    }

    /// A task whose script marks its start, prints `seq 1 lines`, then runs `tail`.
    pub async fn task(&self, name: &str, lines: u32, tail: &str, retries: u32) {
        let body = format!(
            "echo started >> '{}'\nseq 1 {lines}\n{tail}\n",
            self.marks.display()
        );
        self.admin()
            .tasks
            .create_task(pb::CreateTaskRequest {
                name: name.into(),
                spec: Some(common::script_spec(&body, Duration::from_secs(300))),
                retries,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Starts the task on the puppet; returns the run id.
    pub async fn launch(&self, task: &str) -> String {
        let job = self.admin().run_on(task, &["p1"]).await;
        job.runs[0].run_id.clone()
    }

    /// Waits until the run satisfies `done`, then returns it. `what` says
    /// what `done` checks, after the run's id: "is running".
    pub async fn wait_run(
        &self,
        run_id: &str,
        what: &str,
        done: impl Fn(&pb::Run) -> bool,
    ) -> pb::Run {
        wait_until_async(&format!("run {run_id} {what}"), PATIENCE, async || {
            let asked = self
                .admin()
                .runs
                .get_run(pb::GetRunRequest { id: run_id.into() })
                .await;
            // The puppeteer may be restarting: errors are retried.
            let seen = match asked {
                Ok(run) if done(run.get_ref()) => return Ok(run.into_inner()),
                Ok(run) => format!("{:?}", run.into_inner()),
                Err(status) => format!("no answer ({status})"),
            };
            Err(format!(
                "{seen}\nproxy: {:?}\npuppet log:\n{}",
                self.proxy.stats(),
                self.puppet_log()
            ))
        })
        .await
    }

    pub async fn wait_succeeded(&self, run_id: &str) -> pb::Run {
        self.wait_run(run_id, "succeeded", |run| {
            run.state == pb::RunState::Succeeded as i32
        })
        .await
    }

    pub fn puppet_log(&self) -> String {
        puppetproc::log_tail(&self.puppet_options.state_dir.with_extension("log"))
    }

    /// How many times a script started.
    pub fn starts(&self) -> usize {
        std::fs::read_to_string(&self.marks)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The three promises for a run that succeeded at `attempt`.
    pub async fn assert_delivered_once(&self, run: &pb::Run, expected_log: &[u8], attempt: u32) {
        let log = self.admin().log(&run.id).await;
        assert!(
            log == expected_log,
            "the stored log differs: {} bytes stored, {} expected, first difference at byte {:?}",
            log.len(),
            expected_log.len(),
            log.iter().zip(expected_log).position(|(a, b)| a != b)
        );
        assert_eq!(run.log_length, expected_log.len() as u64);
        assert!(!run.log_truncated);
        assert_eq!(run.attempt, attempt);
        assert_eq!(run.state, pb::RunState::Succeeded as i32);
        assert_eq!(
            terminal_transitions(run),
            attempt as usize,
            "one result per attempt: {:?}",
            run.history
        );
        assert_eq!(self.starts(), attempt as usize, "one execution per attempt");
    }
}

pub async fn start_server(data: &Path, port: u16, extra: &[String]) -> ProcServer {
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    ProcServer::start_with(data, &listen, &args).await
}

pub fn channel(port: u16, ca: &Path, transport: Transport, token: &str) -> Channel {
    let slot = TokenSlot::default();
    slot.set(Some(token)).unwrap();
    Channel::new(
        &Endpoint {
            url: format!("https://localhost:{port}"),
            ca_file: Some(ca.to_path_buf()),
            transport,
        },
        slot,
    )
    .unwrap()
}

/// What `seq 1 n` prints.
pub fn seq_output(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(format!("{i}\n").as_bytes());
    }
    out
}

pub fn is_terminal(state: i32) -> bool {
    [
        pb::RunState::Succeeded,
        pb::RunState::Failed,
        pb::RunState::TimedOut,
        pb::RunState::Cancelled,
        pb::RunState::Lost,
        pb::RunState::Interrupted,
        pb::RunState::Skipped,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

/// How many results the run's history records.
pub fn terminal_transitions(run: &pb::Run) -> usize {
    run.history.iter().filter(|t| is_terminal(t.state)).count()
}
