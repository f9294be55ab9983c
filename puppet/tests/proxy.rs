//! The `puppet` binary behind an HTTP CONNECT proxy: a real puppeteer (TLS,
//! sled in a temp dir), a real puppet process, and a CONNECT proxy with
//! Basic authentication that counts its tunnels.

#[path = "support/connect_proxy.rs"]
mod connect_proxy;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use connect_proxy::ConnectProxy;
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::proxy::ProxyConfig;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::enroll_tokens_client::EnrollTokensClient;
use geppetto_proto::v1::jobs_client::JobsClient;
use geppetto_proto::v1::puppets_client::PuppetsClient;
use geppetto_proto::v1::runs_client::RunsClient;
use geppetto_proto::v1::tasks_client::TasksClient;

const DEADLINE: Duration = Duration::from_secs(60);
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
struct Server {
    _dir: tempfile::TempDir,
    running: Option<puppeteer::Running>,
    url: String,
    ca: PathBuf,
    channel: Channel,
}

impl Server {
    async fn start() -> Self {
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
    fn target(&self) -> String {
        self.url.trim_start_matches("https://").to_string()
    }

    async fn enroll_secret(&self) -> String {
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

    async fn puppet_names(&self) -> Vec<String> {
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
    async fn run_script(&self, task: &str, body: &str, puppet: &str) -> String {
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
        let until = tokio::time::Instant::now() + DEADLINE;
        let job = loop {
            let job = jobs
                .get_job(pb::GetJobRequest { id: job.id.clone() })
                .await
                .unwrap()
                .into_inner();
            if job.state != pb::JobState::Running as i32 {
                break job;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "job not finished: {job:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
        let runs = RunsClient::new(self.channel.clone())
            .list_runs(pb::ListRunsRequest {
                of: Some(pb::list_runs_request::Of::JobId(job.id.clone())),
            })
            .await
            .unwrap()
            .into_inner()
            .runs;
        let log = RunsClient::new(self.channel.clone())
            .read_log(pb::ReadLogRequest {
                run_id: runs[0].id.clone(),
                offset: 0,
                max_bytes: 0,
            })
            .await
            .unwrap()
            .into_inner();
        String::from_utf8_lossy(&log.data).into_owned()
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

/// A `puppet run` process; its output (both streams) goes to a file.
struct PuppetProcess {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl PuppetProcess {
    fn start(
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

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("output")).unwrap_or_default()
    }

    /// Waits until the output holds `text`; returns the output.
    async fn wait_output(&self, text: &str) -> String {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let output = self.output();
            if output.contains(text) {
                return output;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "the puppet never said {text:?}; it said:\n{output}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

async fn wait_enrolled(server: &Server, name: &str) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !server.puppet_names().await.iter().any(|n| n == name) {
        assert!(tokio::time::Instant::now() < until, "{name} never enrolled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn credential_file(dir: &Path) -> PathBuf {
    dir.join("state").join("credential")
}

#[tokio::test]
async fn a_puppet_enrolls_and_runs_a_job_through_an_authenticating_proxy() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(Some(("alice", "s3cret:pw"))).await;
    let secret = server.enroll_secret().await;
    // The password holds a ':', percent-encoded in the URL as curl expects.
    let proxy_url = proxy.url_with("alice", "s3cret%3Apw");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "behind",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    wait_enrolled(&server, "behind").await;
    let log = server
        .run_script("hello", "echo through the tunnel", "behind")
        .await;
    assert_eq!(log, "through the tunnel\n");

    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "the proxy opened no tunnel");
    assert!(tunnels.iter().all(|t| *t == server.target()), "{tunnels:?}");
    assert_eq!(proxy.refused(), 0);
    let output = puppet.output();
    assert!(
        output.contains(&format!("proxy=http://{} (from HTTPS_PROXY)", proxy.addr)),
        "the puppet does not say which proxy it uses:\n{output}"
    );
    assert!(
        !output.contains("s3cret"),
        "the proxy password was logged:\n{output}"
    );
    assert!(credential_file(puppet.dir.path()).is_file());
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_proxy_credentials_are_reported_as_such_and_never_logged() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(Some(("alice", "right"))).await;
    let secret = server.enroll_secret().await;
    let proxy_url = proxy.url_with("alice", "wr0ng-pw");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "wrong",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    let output = puppet
        .wait_output(&format!(
            "the proxy at http://{} (from HTTPS_PROXY) refused the credentials",
            proxy.addr
        ))
        .await;
    assert!(
        !output.contains("wr0ng-pw"),
        "the proxy password was logged:\n{output}"
    );
    assert!(proxy.refused() >= 1);
    assert!(proxy.tunnels().is_empty());
    assert!(!server.puppet_names().await.contains(&"wrong".to_string()));
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_proxy_is_named_not_the_puppeteer() {
    let server = Server::start().await;
    let secret = server.enroll_secret().await;
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy_url = format!("http://{dead}");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "cutoff",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    puppet
        .wait_output(&format!(
            "cannot reach the proxy at http://{dead} (from HTTPS_PROXY)"
        ))
        .await;
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn no_proxy_and_explicit_settings_override_https_proxy() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_url = format!("http://{dead}");

    // NO_PROXY names the puppeteer's host: the proxy is bypassed.
    let secret = server.enroll_secret().await;
    let direct = PuppetProcess::start(
        &server,
        &secret,
        "bypass",
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "example.org,localhost"),
        ],
        &[],
    );
    wait_enrolled(&server, "bypass").await;
    assert_eq!(
        server.run_script("t1", "echo direct", "bypass").await,
        "direct\n"
    );
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
    direct.stop().await;

    // --no-proxy: HTTPS_PROXY (a dead one) is ignored.
    let secret = server.enroll_secret().await;
    let flagged = PuppetProcess::start(
        &server,
        &secret,
        "flagged",
        &[("HTTPS_PROXY", &dead_url)],
        &["--no-proxy"],
    );
    wait_enrolled(&server, "flagged").await;
    flagged.stop().await;
    assert!(proxy.tunnels().is_empty());

    // --proxy wins over HTTPS_PROXY and NO_PROXY.
    let secret = server.enroll_secret().await;
    let explicit = PuppetProcess::start(
        &server,
        &secret,
        "explicit",
        &[("HTTPS_PROXY", &dead_url), ("NO_PROXY", "localhost")],
        &["--proxy", &proxy.url()],
    );
    wait_enrolled(&server, "explicit").await;
    assert_eq!(
        server.run_script("t2", "echo explicit", "explicit").await,
        "explicit\n"
    );
    assert!(!proxy.tunnels().is_empty());
    explicit.stop().await;
    server.stop().await;
}
