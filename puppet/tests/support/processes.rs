//! A puppeteer in the test's process and `puppet` binaries in their own,
//! for the tests of the puppet's transport (proxies, compression).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::proxy::ProxyConfig;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::enroll_tokens_client::EnrollTokensClient;
use geppetto_proto::v1::jobs_client::JobsClient;
use geppetto_proto::v1::puppets_client::PuppetsClient;
use geppetto_proto::v1::runs_client::RunsClient;
use geppetto_proto::v1::tasks_client::TasksClient;
use geppetto_test_support::{wait_until, wait_until_async};

pub const DEADLINE: Duration = Duration::from_secs(60);
/// Proxy variables of the test's own environment, which the puppet must not inherit.
const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A puppeteer in this process, and an admin connected to it directly.
pub struct Server {
    _dir: tempfile::TempDir,
    running: Option<puppeteer::Running>,
    pub url: String,
    pub ca: PathBuf,
    channel: Channel,
}

impl Server {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config =
            puppeteer::Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        let running = puppeteer::start(config)
            .await
            .expect("the puppeteer starts");
        let url = running.url(false);
        let ca = running.ca_file.clone().expect("a generated CA");
        let slot = TokenSlot::default();
        slot.set(Some(&running.admin_token().unwrap())).unwrap();
        let endpoint = Endpoint {
            url: url.clone(),
            ca_file: Some(ca.clone()),
            transport: Transport::Grpc,
        };
        let channel = Channel::with_proxy(&endpoint, slot, &ProxyConfig::Direct).unwrap();
        Server {
            _dir: dir,
            running: Some(running),
            url,
            ca,
            channel,
        }
    }

    /// `host:port` of the puppeteer, as a CONNECT names it.
    pub fn target(&self) -> String {
        self.url.trim_start_matches("https://").to_string()
    }

    pub async fn enroll_secret(&self) -> String {
        EnrollTokensClient::new(self.channel.clone())
            .create_enroll_token(pb::CreateEnrollTokenRequest {
                auto_approve: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    pub async fn puppet_names(&self) -> Vec<String> {
        PuppetsClient::new(self.channel.clone())
            .list_puppets(pb::ListPuppetsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .puppets
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    /// Runs `body` on `puppet` and returns the run's log once the job succeeded.
    pub async fn run_script(&self, task: &str, body: &str, puppet: &str) -> String {
        TasksClient::new(self.channel.clone())
            .create_task(pb::CreateTaskRequest {
                name: task.into(),
                spec: Some(pb::RunSpec {
                    program: Some(pb::Program {
                        kind: Some(pb::program::Kind::Script(pb::Script {
                            body: body.into(),
                            interpreter: vec![],
                        })),
                    }),
                    timeout: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut jobs = JobsClient::new(self.channel.clone());
        let job = jobs
            .create_job(pb::CreateJobRequest {
                task_name: task.into(),
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::Puppets(pb::PuppetNames {
                        names: vec![puppet.into()],
                    })),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let job = wait_until_async(
            &format!("job {} is finished", job.id),
            DEADLINE,
            async || {
                let job = jobs
                    .get_job(pb::GetJobRequest { id: job.id.clone() })
                    .await
                    .unwrap()
                    .into_inner();
                if job.state == pb::JobState::Running as i32 {
                    Err(format!("{job:?}"))
                } else {
                    Ok(job)
                }
            },
        )
        .await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let runs = RunsClient::new(self.channel.clone())
            .list_runs(pb::ListRunsRequest {
                of: Some(pb::list_runs_request::Of::JobId(job.id.clone())),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        let mut runs_client = RunsClient::new(self.channel.clone());
        let mut log = Vec::new();
        loop {
            let chunk = runs_client
                .read_log(pb::ReadLogRequest {
                    run_id: runs[0].id.clone(),
                    offset: log.len() as u64,
                    max_bytes: 0,
                })
                .await
                .unwrap()
                .into_inner();
            if chunk.data.is_empty() {
                break;
            }
            log.extend_from_slice(&chunk.data);
        }
        String::from_utf8(log).expect("a UTF-8 log")
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// A `puppet run` process; its output (both streams) goes to a file.
pub struct PuppetProcess {
    child: tokio::process::Child,
    pub dir: tempfile::TempDir,
}

impl PuppetProcess {
    pub fn start(
        server: &Server,
        secret: &str,
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let output = std::fs::File::create(dir.path().join("output")).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_puppet"));
        command
            .arg("run")
            .args([
                "--server",
                &server.url,
                "--name",
                name,
                "--enroll-token",
                secret,
            ])
            .arg("--ca")
            .arg(&server.ca)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(output.try_clone().unwrap()))
            .stderr(Stdio::from(output))
            .kill_on_drop(true);
        for var in PROXY_VARS {
            command.env_remove(var);
        }
        command.envs(env.iter().copied());
        PuppetProcess {
            child: command.spawn().expect("the puppet binary starts"),
            dir,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output")).unwrap_or_default()
    }

    /// Waits until the output holds `text`; returns the output.
    pub async fn wait_output(&self, text: &str) -> String {
        wait_until(&format!("the puppet says {text:?}"), DEADLINE, || {
            let output = self.output();
            if output.contains(text) {
                Ok(output)
            } else {
                Err(format!("it said:\n{output}"))
            }
        })
        .await
    }

    pub async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

pub async fn wait_enrolled(server: &Server, name: &str) {
    wait_until_async(&format!("{name} is enrolled"), DEADLINE, async || {
        server.puppet_names().await.iter().any(|n| n == name)
    })
    .await
}

pub fn credential_file(dir: &Path) -> PathBuf {
    dir.join("state").join("credential")
}
