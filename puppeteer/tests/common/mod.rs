//! Test support: a real puppeteer (sled in a temp dir, real TLS on an
//! ephemeral loopback port) and clients for it.
#![allow(dead_code)]

pub mod relay;

use std::path::PathBuf;
use std::time::Duration;

use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::enroll_tokens_client::EnrollTokensClient;
use geppetto_proto::v1::jobs_client::JobsClient;
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_proto::v1::puppets_client::PuppetsClient;
use geppetto_proto::v1::runs_client::RunsClient;
use geppetto_proto::v1::tasks_client::TasksClient;
use geppetto_test_support::wait_until_async;
use puppeteer::{Config, Running};
use tokio::io::AsyncBufReadExt;

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub running: Option<Running>,
    pub url: String,
    pub ca: PathBuf,
    pub admin_token: String,
    /// The engine: a restart in a test reopens the same one.
    pub store: puppeteer::config::StoreConfig,
}

/// The engine the test servers use: sled, or PostgreSQL when
/// `GEPPETTO_TEST_STORE=postgres` (`.ci/run` runs the API suites again so;
/// a fresh database per server, on the test process's own PostgreSQL).
pub fn test_store() -> puppeteer::config::StoreConfig {
    match std::env::var("GEPPETTO_TEST_STORE").as_deref() {
        Ok("postgres") => {
            let server = geppetto_test_support::postgres::server()
                .expect("GEPPETTO_TEST_STORE=postgres needs PostgreSQL (initdb, postgres)");
            puppeteer::config::StoreConfig::Postgres {
                url: server.fresh_database().into(),
                password: None,
                ca_file: None,
            }
        }
        Ok("sled") | Err(_) => puppeteer::config::StoreConfig::Sled,
        Ok(other) => panic!("GEPPETTO_TEST_STORE={other}: sled or postgres"),
    }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        config.store = test_store();
        tweak(&mut config);
        let store = config.store.clone();
        let running = puppeteer::start(config).await.expect("puppeteer starts");
        let url = running.url(false);
        let ca = running.ca_file.clone().unwrap_or_default();
        let admin_token = running.admin_token().unwrap();
        TestServer {
            dir,
            running: Some(running),
            url,
            ca,
            admin_token,
            store,
        }
    }

    pub fn channel(&self, transport: Transport, token: Option<&str>) -> Channel {
        let slot = TokenSlot::default();
        slot.set(token).unwrap();
        Channel::new(
            &Endpoint {
                url: self.url.clone(),
                ca_file: Some(self.ca.clone()),
                transport,
            },
            slot,
        )
        .unwrap()
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.channel(Transport::Grpc, Some(&self.admin_token)))
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.unwrap();
        }
    }
}

#[derive(Clone)]
pub struct Admin {
    pub channel: Channel,
    pub puppets: PuppetsClient<Channel>,
    pub tokens: EnrollTokensClient<Channel>,
    pub tasks: TasksClient<Channel>,
    pub jobs: JobsClient<Channel>,
    pub runs: RunsClient<Channel>,
}

impl Admin {
    pub fn new(channel: Channel) -> Self {
        Admin {
            channel: channel.clone(),
            puppets: PuppetsClient::new(channel.clone()),
            tokens: EnrollTokensClient::new(channel.clone()),
            tasks: TasksClient::new(channel.clone()),
            jobs: JobsClient::new(channel.clone()),
            runs: RunsClient::new(channel),
        }
    }

    /// Uploads `data` as artifact `name`, in 1 MiB chunks.
    pub async fn upload_artifact(&self, name: &str, data: &[u8]) -> pb::Artifact {
        use sha2::Digest;
        const MIB: usize = 1024 * 1024;
        let mut client =
            geppetto_proto::v1::artifacts_client::ArtifactsClient::new(self.channel.clone());
        let status = client
            .begin_upload(pb::BeginUploadRequest {
                name: name.into(),
                sha256: hex::encode(sha2::Sha256::digest(data)),
                size: data.len() as u64,
            })
            .await
            .unwrap()
            .into_inner();
        let mut at = status.committed as usize;
        while at < data.len() {
            let end = (at + MIB).min(data.len());
            at = client
                .upload_chunk(pb::UploadChunkRequest {
                    upload_id: status.upload_id.clone(),
                    offset: at as u64,
                    data: data[at..end].to_vec(),
                })
                .await
                .unwrap()
                .into_inner()
                .committed as usize;
        }
        client
            .commit_upload(pb::CommitUploadRequest {
                upload_id: status.upload_id,
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn enroll_secret(&mut self) -> String {
        self.tokens
            .create_enroll_token(pb::CreateEnrollTokenRequest {
                auto_approve: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .secret
    }

    pub async fn script_task(&mut self, name: &str, body: &str, timeout: Duration) -> pb::Task {
        self.tasks
            .create_task(pb::CreateTaskRequest {
                name: name.into(),
                description: String::new(),
                spec: Some(script_spec(body, timeout)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn run_on(&mut self, task: &str, puppets: &[&str]) -> pb::Job {
        self.jobs
            .create_job(pb::CreateJobRequest {
                task_name: task.into(),
                task_version: 0,
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::Puppets(pb::PuppetNames {
                        names: puppets.iter().map(|s| s.to_string()).collect(),
                    })),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until the job is finished, with a deadline.
    pub async fn wait_job(&mut self, id: &str, deadline: Duration) -> pb::Job {
        wait_until_async(&format!("job {id} is finished"), deadline, async || {
            let job = self.job(id).await;
            if job.state == pb::JobState::Running as i32 {
                Err(format!("{job:?}"))
            } else {
                Ok(job)
            }
        })
        .await
    }

    pub async fn log(&mut self, run_id: &str) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let chunk = self
                .runs
                .read_log(pb::ReadLogRequest {
                    run_id: run_id.into(),
                    offset: out.len() as u64,
                    max_bytes: 0,
                })
                .await
                .unwrap()
                .into_inner();
            out.extend_from_slice(&chunk.data);
            if chunk.data.is_empty() {
                return out;
            }
        }
    }
}

pub fn script_spec(body: &str, timeout: Duration) -> pb::RunSpec {
    pb::RunSpec {
        program: Some(pb::Program {
            kind: Some(pb::program::Kind::Script(pb::Script {
                body: body.into(),
                interpreter: vec![],
            })),
        }),
        timeout: Some(prost_types::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: 0,
        }),
        env: Default::default(),
        artifacts: vec![],
        expect_reboot: false,
        reboot_window: None,
        workdir: String::new(),
    }
}

/// A hand-driven puppet speaking the puppet protocol, for protocol tests.
pub struct FakePuppet {
    pub name: String,
    pub client: PuppetServiceClient<Channel>,
    pub credential: String,
}

impl FakePuppet {
    pub async fn enroll(server: &TestServer, secret: &str, name: &str) -> Self {
        let mut client = PuppetServiceClient::new(server.channel(Transport::GrpcWeb, None));
        let answer = client
            .enroll(pb::EnrollRequest {
                enroll_token: secret.into(),
                name: name.into(),
                labels: Default::default(),
                facts: None,
            })
            .await
            .unwrap()
            .into_inner();
        let channel = server.channel(Transport::GrpcWeb, Some(&answer.credential));
        FakePuppet {
            name: name.into(),
            client: PuppetServiceClient::new(channel),
            credential: answer.credential,
        }
    }

    pub async fn poll(&mut self, free_slots: u32, known: &[&str]) -> pb::PollResponse {
        self.client
            .poll(pb::PollRequest {
                peer: None,
                free_slots,
                known_runs: known.iter().map(|s| s.to_string()).collect(),
                facts: None,
                hold: None,
                finishing_runs: vec![],
                polls_cut: 0,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

/// A real puppet agent running in this process.
pub struct RealPuppet {
    pub name: String,
    pub state_dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RealPuppet {
    pub fn start(url: &str, ca: Option<&std::path::Path>, secret: &str, name: &str) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), url, ca, secret, name)
    }

    /// Starts an agent on an existing state dir (a restart).
    pub fn start_in(
        state_dir: tempfile::TempDir,
        url: &str,
        ca: Option<&std::path::Path>,
        secret: &str,
        name: &str,
    ) -> Self {
        Self::start_with(state_dir, url, ca, secret, name, |_| {})
    }

    /// Starts an agent with a configuration changed by `tweak`.
    pub fn start_with(
        state_dir: tempfile::TempDir,
        url: &str,
        ca: Option<&std::path::Path>,
        secret: &str,
        name: &str,
        tweak: impl FnOnce(&mut puppet::AgentConfig),
    ) -> Self {
        let mut config = puppet::AgentConfig::new(url, state_dir.path().join("state"));
        config.ca_file = ca.map(|p| p.to_path_buf());
        config.enroll_token = Some(secret.into());
        config.name = name.to_string();
        config.transport = Transport::GrpcWeb;
        tweak(&mut config);
        let shutdown = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(puppet::run_agent(config, shutdown.clone()));
        RealPuppet {
            name: name.to_string(),
            state_dir,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// Kills the agent as `kill -9` would: no goodbye, no report. (Child
    /// processes it started live on; the test kills them.)
    pub async fn kill(self) -> tempfile::TempDir {
        self.task.abort();
        let _ = self.task.await;
        self.state_dir
    }
}

impl Admin {
    pub async fn label(&mut self, puppet: &str, key: &str, value: &str) {
        self.puppets
            .label_puppet(pb::LabelPuppetRequest {
                name: puppet.into(),
                set: [(key.to_string(), value.to_string())].into(),
                remove: vec![],
            })
            .await
            .unwrap();
    }

    pub async fn run_with(
        &mut self,
        task: &str,
        target: pb::target::Kind,
        strategy: pb::Strategy,
    ) -> pb::Job {
        self.jobs
            .create_job(pb::CreateJobRequest {
                task_name: task.into(),
                task_version: 0,
                target: Some(pb::Target { kind: Some(target) }),
                strategy: Some(strategy),
            })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn job(&mut self, id: &str) -> pb::Job {
        self.jobs
            .get_job(pb::GetJobRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn resource(&mut self, name: &str, capacity: u32) {
        geppetto_proto::v1::resources_client::ResourcesClient::new(self.channel.clone())
            .create_resource(pb::CreateResourceRequest {
                site: String::new(),
                name: name.into(),
                capacity,
                bandwidth: 0,
            })
            .await
            .unwrap();
    }

    pub async fn task_needing(&mut self, name: &str, body: &str, resource: &str) {
        self.tasks
            .create_task(pb::CreateTaskRequest {
                name: name.into(),
                spec: Some(script_spec(body, Duration::from_secs(300))),
                resources: vec![pb::ResourceNeed {
                    name: resource.into(),
                    count: 1,
                }],
                ..Default::default()
            })
            .await
            .unwrap();
    }
}

impl Admin {
    /// A puppet as `GetPuppet` shows it.
    pub async fn puppet(&mut self, name: &str) -> pb::Puppet {
        self.puppets
            .get_puppet(pb::GetPuppetRequest { name: name.into() })
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until a puppet is enrolled and holds a poll.
    pub async fn wait_polling(&mut self, name: &str) {
        wait_until_async(
            &format!("{name} holds a poll"),
            Duration::from_secs(30),
            async || {
                let found = self
                    .puppets
                    .get_puppet(pb::GetPuppetRequest { name: name.into() })
                    .await;
                found.is_ok_and(|p| p.into_inner().polling)
            },
        )
        .await
    }
}

/// Whether a process exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The puppeteer binary running as its own process.
pub struct ProcServer {
    child: tokio::process::Child,
    pub port: u16,
}

impl ProcServer {
    /// Starts `puppeteer serve` on `port` (0: any) and waits until it listens.
    pub async fn start(data_dir: &std::path::Path, port: u16, poll_timeout: &str) -> Self {
        let listen = format!("127.0.0.1:{port}");
        Self::start_with(data_dir, &listen, &["--poll-timeout", poll_timeout]).await
    }

    /// Starts `puppeteer serve --listen LISTEN ARGS...` and waits until it listens.
    pub async fn start_with(data_dir: &std::path::Path, listen: &str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_puppeteer"))
            .arg("serve")
            .args(args)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(listen)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("puppeteer binary starts");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.strip_prefix("puppeteer listening on https://") {
                    let address = rest.split(' ').next().unwrap();
                    return address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("the puppeteer exited before listening");
        })
        .await
        .expect("the puppeteer listens in time");
        ProcServer { child, port }
    }

    /// An admin client of this puppeteer (gRPC, its generated CA and its
    /// first admin token, both in `data_dir`).
    pub fn admin(&self, data_dir: &std::path::Path) -> Admin {
        let token = std::fs::read_to_string(data_dir.join("admin-token")).unwrap();
        let slot = TokenSlot::default();
        slot.set(Some(token.trim())).unwrap();
        let channel = Channel::new(
            &Endpoint {
                url: format!("https://localhost:{}", self.port),
                ca_file: Some(data_dir.join("tls/ca.pem")),
                transport: Transport::Grpc,
            },
            slot,
        )
        .unwrap();
        Admin::new(channel)
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the process, as `kill -SIGNAL`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}").as_str(), pid.as_str()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no shutdown code runs. Returns the port, to restart on it.
    pub async fn kill9(mut self) -> u16 {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
        self.port
    }
}

/// The samples of the metrics endpoint at `addr`, by series (name and
/// labels), over a plain HTTP/1.1 request.
pub async fn scrape_metrics(addr: std::net::SocketAddr) -> std::collections::HashMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
