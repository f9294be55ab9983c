//! The fleet benchmark: a real puppeteer process, a simulated fleet in
//! another process (`puppet simulate`), real `puppet run` agents, and the
//! figures of issue 6 (dispatch latency, fan-out, throughput, cost, storage).
//!
//! Shared by the `fleet` bench target (`deploy/bench.sh`) and by a test that
//! runs it at a tiny size. Nothing here asserts a timing: the harness only
//! fails when something does not work at all.
//!
//! Method, in short:
//! - The puppeteer (release build, fresh data dir per phase, open-file
//!   limit raised, `RUST_LOG=warn`) is pinned to CPU 0 and every fleet
//!   process to CPU 1 with `taskset`, when it exists. A fleet runs as one
//!   `puppet simulate` process per 5,000 puppets ([`PUPPETS_PER_PROCESS`]);
//!   CPU and RSS of a fleet are the sums over its processes.
//! - Latencies come from the puppeteer's own timestamps: dispatch latency is
//!   a run's creation to its `RUNNING` transition (the puppet's `StartRun`
//!   arrived), fan-out is a job's creation to the last run's `finished_at`.
//! - CPU is read from `/proc/PID/stat` (utime + stime) over a window, RSS
//!   from `/proc/PID/status` (`VmRSS`, `VmHWM`); the puppeteer's idle RSS
//!   is read every second of the idle window, its mean and its maximum
//!   reported.
//! - Bytes on the wire are the TCP payload (TLS records included; IP and TCP
//!   headers excluded) of every connection to the puppeteer's port, summed
//!   from the kernel's per-socket counters (`ss -ti`: `bytes_sent` and
//!   `bytes_received`) at both ends of the idle window.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::enroll_tokens_client::EnrollTokensClient;
use geppetto_proto::v1::jobs_client::JobsClient;
use geppetto_proto::v1::puppets_client::PuppetsClient;
use geppetto_proto::v1::runs_client::RunsClient;
use geppetto_proto::v1::server_client::ServerClient;
use geppetto_proto::v1::tasks_client::TasksClient;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

type Result<T> = anyhow::Result<T>;

/// What to measure, and how hard.
#[derive(Clone, Debug)]
pub struct Options {
    /// Numbers of simulated puppets.
    pub sizes: Vec<u32>,
    /// Where `puppeteer` and `puppet` are.
    pub bin_dir: PathBuf,
    /// Where results.json is written.
    pub out_dir: PathBuf,
    /// Single-puppet jobs sent one after another for the dispatch latency.
    pub dispatch_jobs: u32,
    /// The poll hold the fleet asks for.
    pub hold: Duration,
    /// How long the idle cost is measured.
    pub idle_window: Duration,
    /// Settling time before the idle window.
    pub settle: Duration,
    /// Log bytes shipped in total by the ingest job at each size.
    pub ingest_total: usize,
    /// Real agents for the fan-out comparable to Salt's.
    pub real_agents: Vec<u32>,
    /// Runs in the storage phase, and the fleet that executes them.
    pub storage_runs: u32,
    pub storage_fleet: u32,
    pub storage_log_bytes: usize,
    /// Repetitions of each real-agent fan-out.
    pub repeats: u32,
    /// The open-file limit the puppeteer is started with.
    pub nofile: u64,
    /// Whether the puppeteer bounds connections per source address (the
    /// simulated fleet comes from one address, as a site behind one NAT
    /// would: the fleet bench lifts the bound).
    pub per_address_bound: bool,
}

impl Options {
    pub fn full(bin_dir: PathBuf, out_dir: PathBuf) -> Self {
        Options {
            sizes: vec![1, 100, 1000, 10_000],
            bin_dir,
            out_dir,
            dispatch_jobs: 100,
            hold: Duration::from_secs(300),
            idle_window: Duration::from_secs(30),
            settle: Duration::from_secs(10),
            ingest_total: 64 << 20,
            real_agents: vec![1, 10, 20],
            storage_runs: 100_000,
            storage_fleet: 1000,
            storage_log_bytes: 4096,
            repeats: 3,
            nofile: 65536,
            per_address_bound: false,
        }
    }

    pub fn quick(bin_dir: PathBuf, out_dir: PathBuf) -> Self {
        Options {
            sizes: vec![2],
            dispatch_jobs: 3,
            hold: Duration::from_secs(1),
            idle_window: Duration::from_secs(2),
            settle: Duration::from_millis(500),
            ingest_total: 256 << 10,
            real_agents: vec![1, 2],
            storage_runs: 10,
            storage_fleet: 2,
            storage_log_bytes: 4096,
            repeats: 1,
            ..Options::full(bin_dir, out_dir)
        }
    }
}

/// Runs every phase, prints the table and writes `results.json`; returns the JSON.
pub async fn run(options: &Options) -> Result<Value> {
    let work = tempfile::Builder::new()
        .prefix("geppetto-bench")
        .tempdir()?;
    let machine = machine();
    eprintln!("bench: {machine}");
    let mut sizes = Vec::new();
    for &n in &options.sizes {
        eprintln!("bench: simulated fleet of {n}");
        sizes.push(fleet_phase(options, work.path(), n).await?);
        write_results(options, &machine, &sizes, &Value::Null, &Value::Null)?;
    }
    eprintln!("bench: real agents {:?}", options.real_agents);
    let real = real_agents_phase(options, work.path()).await?;
    write_results(options, &machine, &sizes, &real, &Value::Null)?;
    // `--storage-runs 0` skips the phase (its retention step would wait
    // for a prune of jobs that were never made).
    let storage = if options.storage_runs == 0 {
        eprintln!("bench: storage skipped (--storage-runs 0)");
        Value::Null
    } else {
        eprintln!("bench: storage, {} runs", options.storage_runs);
        storage_phase(options, work.path()).await?
    };
    let results = write_results(options, &machine, &sizes, &real, &storage)?;
    print_table(&results);
    // The data dirs and the puppeteer's and simulators' logs, for a look
    // after the run.
    if std::env::var_os("GEPPETTO_BENCH_KEEP").is_some() {
        eprintln!("bench: work dir kept: {}", work.keep().display());
    }
    Ok(results)
}

fn write_results(
    options: &Options,
    machine: &Value,
    sizes: &[Value],
    real: &Value,
    storage: &Value,
) -> Result<Value> {
    let results = json!({
        "machine": machine,
        "options": {
            "sizes": options.sizes,
            "hold_s": options.hold.as_secs_f64(),
            "idle_window_s": options.idle_window.as_secs_f64(),
            "dispatch_jobs": options.dispatch_jobs,
        },
        "fleet": sizes,
        "real_agents": real,
        "storage": storage,
    });
    std::fs::create_dir_all(&options.out_dir)?;
    std::fs::write(
        options.out_dir.join("results.json"),
        serde_json::to_string_pretty(&results)?,
    )?;
    Ok(results)
}

fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|m| m.trim().to_string()))
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({"cpus": cpus, "model": model, "memory": mem, "loadavg_at_start": load.trim(), "taskset": which("taskset")})
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

// ---------------------------------------------------------------- processes

/// A command run with the open-file limit raised and pinned to `cpu`.
///
/// While a fleet-wide job runs, each simulated puppet holds two
/// connections (its reports travel beside its held poll), so 10,000
/// puppets need more than 20,000 descriptors at each end: the limit is
/// raised to 65,536 where that is allowed (as root, like the puppeteer's
/// `LimitNOFILE` in `deploy/puppeteer.service`), otherwise to the hard limit.
fn pinned(program: &Path, cpu: u32, nofile: u64) -> Command {
    let mut command = Command::new("sh");
    let pin = if which("taskset") {
        format!("exec taskset -c {cpu} \"$0\" \"$@\"")
    } else {
        "exec \"$0\" \"$@\"".to_string()
    };
    command
        .arg("-c")
        .arg(format!(
            "ulimit -n {nofile} 2>/dev/null || ulimit -n $(ulimit -Hn) 2>/dev/null; {pin}"
        ))
        .arg(program)
        .kill_on_drop(true)
        .stdin(Stdio::null());
    command
}

/// CPU time of a process so far, in seconds (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14, stime 15.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(14) + ticks(15)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `VmRSS` of a process (KiB) once a second for `window`.
async fn rss_each_second(pid: u32, window: Duration) -> Vec<u64> {
    let end = Instant::now() + window;
    let mut samples = Vec::new();
    loop {
        samples.push(memory_kib(pid).0);
        let now = Instant::now();
        if now >= end {
            return samples;
        }
        tokio::time::sleep((end - now).min(Duration::from_secs(1))).await;
    }
}

/// TCP payload bytes (both directions) of every connection to `port`.
fn wire_bytes(port: u16) -> u64 {
    let Ok(out) = std::process::Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
    else {
        return 0;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0u64;
    for word in text.split_whitespace() {
        for key in ["bytes_sent:", "bytes_received:"] {
            if let Some(v) = word.strip_prefix(key) {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// A puppeteer process.
pub struct Server {
    child: Child,
    pub pid: u32,
    pub url: String,
    pub port: u16,
    pub ca: PathBuf,
    pub admin_token: String,
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
}

impl Server {
    pub async fn start(options: &Options, dir: &Path, extra: &[&str]) -> Result<Self> {
        let data_dir = dir.join("data");
        let mut command = pinned(&options.bin_dir.join("puppeteer"), 0, options.nofile);
        command
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--max-poll-hold", "600s"])
            .args(if options.per_address_bound {
                &[][..]
            } else {
                &["--max-connections-per-address", "0"][..]
            })
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("puppeteer.log"))?);
        let mut child = command.spawn()?;
        let pid = child.id().unwrap_or(0);
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let (mut url, mut ca, mut token_file, mut metrics) = (None, None, None, None);
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("puppeteer listening on ") {
                    url = rest.split(' ').next().map(str::to_string);
                } else if let Some(rest) = line.strip_prefix("Prometheus metrics on ") {
                    metrics = rest.split(' ').next().map(str::to_string);
                } else if let Some(rest) = line.trim().strip_prefix("export GEPPETTO_CA=") {
                    ca = Some(PathBuf::from(rest));
                } else if let Some(rest) = line.trim().strip_prefix("export GEPPETTO_TOKEN=$(cat ")
                {
                    token_file = Some(PathBuf::from(rest.trim_end_matches(')')));
                }
                if url.is_some() && ca.is_some() && token_file.is_some() {
                    break;
                }
            }
            anyhow::Ok(())
        })
        .await??;
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let url =
            url.ok_or_else(|| anyhow::anyhow!("the puppeteer did not say where it listens"))?;
        let port = url.rsplit(':').next().unwrap_or_default().parse()?;
        let admin_token = std::fs::read_to_string(token_file.expect("checked"))?
            .trim()
            .to_string();
        Ok(Server {
            child,
            pid,
            url,
            port,
            ca: ca.expect("checked"),
            admin_token,
            metrics,
            data_dir,
        })
    }

    pub fn info_client(&self) -> Result<ServerClient<Channel>> {
        let slot = TokenSlot::default();
        slot.set(Some(&self.admin_token))?;
        Ok(ServerClient::new(Channel::new(
            &Endpoint {
                url: self.url.clone(),
                ca_file: Some(self.ca.clone()),
                transport: Transport::Grpc,
            },
            slot,
        )?))
    }

    pub fn admin(&self) -> Result<Admin> {
        let slot = TokenSlot::default();
        slot.set(Some(&self.admin_token))?;
        let channel = Channel::new(
            &Endpoint {
                url: self.url.clone(),
                ca_file: Some(self.ca.clone()),
                transport: Transport::Grpc,
            },
            slot,
        )?;
        Ok(Admin::new(channel))
    }

    /// One metric's value from the Prometheus endpoint (summed over labels).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let url = self.metrics.as_ref()?;
        let out = Command::new("curl").args(["-s", url]).output().await.ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(())
    }
}

/// The operator's clients.
#[derive(Clone)]
pub struct Admin {
    pub puppets: PuppetsClient<Channel>,
    pub tokens: EnrollTokensClient<Channel>,
    pub tasks: TasksClient<Channel>,
    pub jobs: JobsClient<Channel>,
    pub runs: RunsClient<Channel>,
}

const BIG: usize = 256 << 20;

impl Admin {
    fn new(channel: Channel) -> Self {
        Admin {
            puppets: PuppetsClient::new(channel.clone()).max_decoding_message_size(BIG),
            tokens: EnrollTokensClient::new(channel.clone()),
            tasks: TasksClient::new(channel.clone()),
            jobs: JobsClient::new(channel.clone()).max_decoding_message_size(BIG),
            runs: RunsClient::new(channel).max_decoding_message_size(BIG),
        }
    }

    pub async fn enroll_secret(&mut self) -> Result<String> {
        Ok(self
            .tokens
            .create_enroll_token(pb::CreateEnrollTokenRequest {
                description: "benchmark".into(),
                auto_approve: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .secret)
    }

    pub async fn script_task(&mut self, name: &str, body: &str) -> Result<()> {
        self.tasks
            .create_task(pb::CreateTaskRequest {
                name: name.into(),
                spec: Some(pb::RunSpec {
                    program: Some(pb::Program {
                        kind: Some(pb::program::Kind::Script(pb::Script {
                            body: body.into(),
                            interpreter: vec![],
                        })),
                    }),
                    timeout: Some(prost_types::Duration {
                        seconds: 600,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    pub async fn create_job(&mut self, task: &str, target: pb::target::Kind) -> Result<pb::Job> {
        Ok(self
            .jobs
            .create_job(pb::CreateJobRequest {
                task_name: task.into(),
                target: Some(pb::Target { kind: Some(target) }),
                ..Default::default()
            })
            .await?
            .into_inner())
    }

    /// Waits until the job has no unfinished run, polling every `every`.
    pub async fn wait_job(
        &mut self,
        id: &str,
        every: Duration,
        deadline: Duration,
    ) -> Result<pb::Job> {
        let began = Instant::now();
        let until = began + deadline;
        let mut next_trace = Duration::from_secs(5);
        loop {
            let job = self
                .jobs
                .get_job(pb::GetJobRequest { id: id.into() })
                .await?
                .into_inner();
            if job.state != pb::JobState::Running as i32 {
                return Ok(job);
            }
            // Progress of a long job: where its runs are.
            if began.elapsed() >= next_trace {
                let counts: std::collections::BTreeMap<_, _> = job.counts.iter().collect();
                eprintln!(
                    "bench:     {:.0}s {counts:?}",
                    began.elapsed().as_secs_f64()
                );
                next_trace += Duration::from_secs(5);
            }
            if Instant::now() > until {
                anyhow::bail!("job {id} not finished after {deadline:?}: {:?}", job.counts);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Every run of a job, a page at a time.
    pub async fn runs_of(&mut self, job: &str) -> Result<Vec<pb::Run>> {
        let mut runs = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = self
                .runs
                .list_runs(pb::ListRunsRequest {
                    of: Some(pb::list_runs_request::Of::JobId(job.into())),
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            runs.extend(page.runs);
            if page.next_page_token.is_empty() {
                return Ok(runs);
            }
            page_token = page.next_page_token;
        }
    }

    /// How many puppets hold a poll now (every page of the listing).
    pub async fn polling(&mut self) -> Result<usize> {
        let mut polling = 0;
        let mut page_token = String::new();
        loop {
            let page = self
                .puppets
                .list_puppets(pb::ListPuppetsRequest {
                    page_token,
                    ..Default::default()
                })
                .await?
                .into_inner();
            polling += page.puppets.iter().filter(|p| p.polling).count();
            if page.next_page_token.is_empty() {
                return Ok(polling);
            }
            page_token = page.next_page_token;
        }
    }

    pub async fn wait_polling(&mut self, n: usize, deadline: Duration) -> Result<()> {
        let until = Instant::now() + deadline;
        loop {
            let polling = self.polling().await?;
            if polling >= n {
                return Ok(());
            }
            if Instant::now() > until {
                anyhow::bail!("only {polling} of {n} puppets polling after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(if n > 1000 { 1000 } else { 100 })).await;
        }
    }
}

fn millis(ts: Option<&prost_types::Timestamp>) -> f64 {
    ts.map_or(0.0, |t| {
        t.seconds as f64 * 1000.0 + f64::from(t.nanos) / 1e6
    })
}

/// Creation to the `RUNNING` transition (the puppet's StartRun), in ms.
fn accept_latency_ms(run: &pb::Run) -> Option<f64> {
    let running = run
        .history
        .iter()
        .find(|t| t.state == pb::RunState::Running as i32)?;
    Some(millis(running.at.as_ref()) - millis(run.created_at.as_ref()))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Simulated puppets per `puppet simulate` process at most. A puppet may
/// hold two connections (a run lasting past the agent's 2 s report-first
/// grace reports beside its held poll), so a process of 5,000 needs up to
/// 10,000 descriptors: under an open-file cap of 20,000 (this machine's hard
/// limit, which even root cannot raise) one process of 10,000 ran out of
/// descriptors in a fan-out before the report-first change.
pub const PUPPETS_PER_PROCESS: u32 = 5_000;

/// The `puppet simulate` processes of a fleet, all labelled `fleet=PREFIX`:
/// the first names its puppets `PREFIX-00000`..., the k-th `PREFIXk-00000`...
pub struct Fleet {
    children: Vec<Child>,
    pub pids: Vec<u32>,
    prefix: String,
}

impl Fleet {
    pub async fn start(
        options: &Options,
        server: &Server,
        secret: &str,
        dir: &Path,
        count: u32,
        prefix: &str,
    ) -> Result<Self> {
        let mut fleet = Fleet {
            children: Vec::new(),
            pids: Vec::new(),
            prefix: prefix.to_string(),
        };
        let mut left = count;
        while left > 0 {
            let k = fleet.children.len() as u32;
            let n = left.min(PUPPETS_PER_PROCESS);
            let child =
                Self::start_one(options, server, secret, dir, n, &fleet.prefix_of(k), prefix)
                    .await?;
            fleet.pids.push(child.id().unwrap_or(0));
            fleet.children.push(child);
            left -= n;
        }
        Ok(fleet)
    }

    fn prefix_of(&self, k: u32) -> String {
        if k == 0 {
            self.prefix.clone()
        } else {
            format!("{}{k}", self.prefix)
        }
    }

    /// The name of the `i`-th puppet of the fleet.
    pub fn name(&self, i: u32) -> String {
        format!(
            "{}-{:05}",
            self.prefix_of(i / PUPPETS_PER_PROCESS),
            i % PUPPETS_PER_PROCESS
        )
    }

    async fn start_one(
        options: &Options,
        server: &Server,
        secret: &str,
        dir: &Path,
        count: u32,
        prefix: &str,
        label: &str,
    ) -> Result<Child> {
        let mut command = pinned(&options.bin_dir.join("puppet"), 1, options.nofile);
        command
            .args([
                "simulate",
                "--count",
                &count.to_string(),
                "--server",
                &server.url,
                "--ca",
            ])
            .arg(&server.ca)
            .args([
                "--labels",
                &format!("fleet={label}"),
                "--name-prefix",
                prefix,
            ])
            .args(["--poll-hold", &format!("{}s", options.hold.as_secs())])
            .arg("--state-dir")
            .arg(dir.join(format!("fleet-{prefix}")))
            .env("PUPPET_ENROLL_TOKEN", secret)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                dir.join(format!("fleet-{prefix}.log")),
            )?);
        let mut child = command.spawn()?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let deadline = Duration::from_secs(60 + u64::from(count) / 20);
        tokio::time::timeout(deadline, async {
            while let Some(line) = lines.next_line().await? {
                eprintln!("bench:   {line}");
                if line.contains("puppets polling") {
                    return anyhow::Ok(());
                }
            }
            anyhow::bail!(
                "the simulator exited early; see its log in {}",
                dir.display()
            )
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!("the simulator did not start {count} puppets in {deadline:?}")
        })??;
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("bench:   {line}");
            }
        });
        Ok(child)
    }

    /// RSS (KiB) of all the fleet's processes, and their peak RSS.
    pub fn memory_kib(&self) -> (u64, u64) {
        self.pids.iter().fold((0, 0), |(rss, hwm), &pid| {
            let (r, h) = memory_kib(pid);
            (rss + r, hwm + h)
        })
    }

    pub async fn stop(self) -> Result<()> {
        for mut child in self.children {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .is_err()
            {
                child.kill().await?;
            }
        }
        Ok(())
    }
}

/// CPU of the server and of the fleet's processes over a window, as a
/// fraction of one core.
struct CpuWindow {
    began: Instant,
    server: f64,
    fleet: f64,
    server_pid: u32,
    fleet_pids: Vec<u32>,
}

fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

impl CpuWindow {
    fn start(server_pid: u32, fleet_pids: &[u32]) -> Self {
        CpuWindow {
            began: Instant::now(),
            server: cpu_seconds(server_pid),
            fleet: cpu_of(fleet_pids),
            server_pid,
            fleet_pids: fleet_pids.to_vec(),
        }
    }

    /// (server, fleet) CPU as fractions of a core, and the window in seconds.
    fn end(&self) -> (f64, f64, f64) {
        let secs = self.began.elapsed().as_secs_f64();
        (
            (cpu_seconds(self.server_pid) - self.server) / secs,
            (cpu_of(&self.fleet_pids) - self.fleet) / secs,
            secs,
        )
    }
}

fn poll_every(n: u32) -> Duration {
    Duration::from_millis(u64::from(n / 10).clamp(20, 1000))
}

// ---------------------------------------------------------------- phases

/// One fleet size: connect, idle cost, dispatch latency, fan-out, ingest.
async fn fleet_phase(options: &Options, work: &Path, n: u32) -> Result<Value> {
    let dir = work.join(format!("fleet-{n}"));
    std::fs::create_dir_all(&dir)?;
    let server = Server::start(options, &dir, &[]).await?;
    let mut admin = server.admin()?;
    let secret = admin.enroll_secret().await?;
    let began = Instant::now();
    let fleet = Fleet::start(options, &server, &secret, &dir, n, "sim").await?;
    admin
        .wait_polling(n as usize, Duration::from_secs(120 + u64::from(n) / 10))
        .await?;
    let connect_s = began.elapsed().as_secs_f64();
    eprintln!("bench:   {n} puppets polling after {connect_s:.1}s");

    // Idle: nothing to do, every puppet holds a poll.
    tokio::time::sleep(options.settle).await;
    // Idle puppets make one round trip per hold, all in the same phase (they
    // started together): the bytes on the wire are only meaningful over a
    // window of at least one hold, measured at the largest size.
    let largest = options.sizes.iter().copied().max() == Some(n);
    let idle_window = if largest {
        options.idle_window.max(options.hold + options.settle)
    } else {
        options.idle_window
    };
    eprintln!("bench:   idle for {idle_window:?}");
    let polls_before = server.metric("geppetto_poll_hold_seconds_count").await;
    let bytes_before = wire_bytes(server.port);
    let cpu = CpuWindow::start(server.pid, &fleet.pids);
    // The puppeteer's RSS each second of the window: memory a burst freed
    // stays resident until the next trim, so one reading would depend on
    // the trim's phase.
    let rss = rss_each_second(server.pid, idle_window).await;
    let (server_cpu, fleet_cpu, window) = cpu.end();
    let bytes = wire_bytes(server.port).saturating_sub(bytes_before);
    let polls_after = server.metric("geppetto_poll_hold_seconds_count").await;
    let server_rss = rss.iter().copied().max().unwrap_or(0);
    let server_rss_mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;
    let (fleet_rss, _) = fleet.memory_kib();
    let per_puppet_hour = (window >= options.hold.as_secs_f64())
        .then(|| bytes as f64 / f64::from(n) * 3600.0 / window);
    let idle = json!({
        "server_cpu_pct": server_cpu * 100.0,
        "fleet_cpu_pct": fleet_cpu * 100.0,
        "server_rss_kib": server_rss,
        "server_rss_mean_kib": server_rss_mean,
        "server_rss_samples_kib": rss,
        "fleet_rss_kib": fleet_rss,
        "fleet_rss_per_puppet_kib": fleet_rss as f64 / f64::from(n),
        "window_s": window,
        "wire_bytes": bytes,
        "polls_answered": polls_after.zip(polls_before).map(|(a, b)| a - b),
        "wire_bytes_per_puppet_hour": per_puppet_hour,
        "hold_s": options.hold.as_secs_f64(),
    });
    eprintln!("bench:   idle {idle}");

    // Dispatch latency: single-puppet jobs, one after another.
    admin.script_task("bench-echo", "echo hi").await?;
    let mut latencies = Vec::new();
    for i in 0..options.dispatch_jobs {
        let target = fleet.name((u64::from(i) * 7919 % u64::from(n)) as u32);
        let job = admin
            .create_job(
                "bench-echo",
                pb::target::Kind::Puppets(pb::PuppetNames {
                    names: vec![target],
                }),
            )
            .await?;
        admin
            .wait_job(&job.id, Duration::from_millis(5), Duration::from_secs(60))
            .await?;
        for run in admin.runs_of(&job.id).await? {
            latencies.extend(accept_latency_ms(&run));
        }
    }
    latencies.sort_by(f64::total_cmp);
    let dispatch = json!({
        "jobs": latencies.len(),
        "p50_ms": percentile(&latencies, 50.0),
        "p99_ms": percentile(&latencies, 99.0),
        "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
    });
    eprintln!("bench:   dispatch {dispatch}");

    // Fan-out: one job on every puppet.
    let fanout = fan_out(&mut admin, &server, &fleet.pids, n, "bench-echo").await?;
    eprintln!("bench:   fan-out {fanout}");

    // Log ingest: one job on every puppet, each printing its script text.
    let body_len = (options.ingest_total / n as usize).clamp(4096, MAX_SCRIPT);
    admin
        .script_task("bench-ingest", &log_body(body_len))
        .await?;
    let ingest = fan_out(&mut admin, &server, &fleet.pids, n, "bench-ingest").await?;
    let ingest_mb_s = ingest["log_bytes"].as_f64().unwrap_or(0.0)
        / 1e6
        / ingest["fanout_s"].as_f64().unwrap_or(f64::NAN);
    eprintln!("bench:   ingest {ingest_mb_s:.1} MB/s ({body_len} B a run)");
    let (_, server_hwm) = memory_kib(server.pid);
    let (_, fleet_hwm) = fleet.memory_kib();

    fleet.stop().await?;
    server.stop().await?;
    Ok(json!({
        "puppets": n,
        "connect_s": connect_s,
        "idle": idle,
        "dispatch": dispatch,
        "fanout": fanout,
        "ingest": {"log_bytes_per_run": body_len, "mb_per_s": ingest_mb_s, "detail": ingest},
        "server_rss_peak_kib": server_hwm,
        "fleet_rss_peak_kib": fleet_hwm,
    }))
}

/// The puppeteer's limit on a task's script text, less its newline.
const MAX_SCRIPT: usize = 256 * 1024 - 1;

/// A script text of `len` bytes (with the newline echo adds).
fn log_body(len: usize) -> String {
    let line = "# geppetto benchmark log line, sixty-four bytes long, padding..\n";
    let mut body = line.repeat(len / line.len() + 1);
    body.truncate(len.saturating_sub(1));
    body
}

/// A job on every puppet of the fleet: creation to the last result stored.
async fn fan_out(
    admin: &mut Admin,
    server: &Server,
    fleet_pids: &[u32],
    n: u32,
    task: &str,
) -> Result<Value> {
    let cpu = CpuWindow::start(server.pid, fleet_pids);
    let wall = Instant::now();
    let job = admin
        .create_job(task, pb::target::Kind::Selector("fleet=sim".into()))
        .await?;
    let job = admin
        .wait_job(&job.id, poll_every(n), Duration::from_secs(600))
        .await?;
    let wall_s = wall.elapsed().as_secs_f64();
    let (server_cpu, fleet_cpu, _) = cpu.end();
    let runs = admin.runs_of(&job.id).await?;
    let created = millis(job.created_at.as_ref());
    let last = runs
        .iter()
        .map(|r| millis(r.finished_at.as_ref()))
        .fold(f64::NAN, f64::max);
    let succeeded = runs
        .iter()
        .filter(|r| r.state == pb::RunState::Succeeded as i32)
        .count();
    let mut states = std::collections::BTreeMap::new();
    for run in &runs {
        let state = pb::RunState::try_from(run.state)
            .map(|s| s.as_str_name().to_string())
            .unwrap_or_else(|_| run.state.to_string());
        *states.entry(state).or_insert(0u64) += 1;
    }
    let log_bytes: u64 = runs.iter().map(|r| r.log_length).sum();
    let fanout_s = (last - created) / 1000.0;
    Ok(json!({
        "runs": runs.len(),
        "succeeded": succeeded,
        "states": states,
        "fanout_s": fanout_s,
        "observed_s": wall_s,
        "runs_per_s": runs.len() as f64 / fanout_s,
        "log_bytes": log_bytes,
        "server_cpu_pct": server_cpu * 100.0,
        "fleet_cpu_pct": fleet_cpu * 100.0,
    }))
}

/// Real `puppet run` agents executing a real child process.
async fn real_agents_phase(options: &Options, work: &Path) -> Result<Value> {
    let dir = work.join("real");
    std::fs::create_dir_all(&dir)?;
    let server = Server::start(options, &dir, &[]).await?;
    let mut admin = server.admin()?;
    let secret = admin.enroll_secret().await?;
    let most = options.real_agents.iter().copied().max().unwrap_or(0);
    let mut agents = Vec::new();
    for i in 0..most {
        let name = format!("real-{i:02}");
        let mut command = pinned(&options.bin_dir.join("puppet"), 1, options.nofile);
        command
            .args(["run", "--server", &server.url, "--ca"])
            .arg(&server.ca)
            .args(["--name", &name, "--state-dir"])
            .arg(dir.join(&name))
            .args(["--poll-hold", &format!("{}s", options.hold.as_secs())])
            .env("PUPPET_ENROLL_TOKEN", &secret)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log")))?);
        agents.push((name, command.spawn()?));
    }
    admin
        .wait_polling(most as usize, Duration::from_secs(120))
        .await?;
    tokio::time::sleep(options.settle.max(Duration::from_secs(1))).await;
    let rss: Vec<u64> = agents
        .iter()
        .map(|(_, child)| memory_kib(child.id().unwrap_or(0)).0)
        .collect();
    let rss_max = rss.iter().copied().max().unwrap_or(0);
    let rss_mean = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64;

    admin.script_task("bench-real", "echo hi").await?;
    let mut fanouts = Vec::new();
    for &k in &options.real_agents {
        let names: Vec<String> = agents
            .iter()
            .take(k as usize)
            .map(|(n, _)| n.clone())
            .collect();
        let mut times = Vec::new();
        let mut observed = Vec::new();
        for _ in 0..options.repeats {
            let wall = Instant::now();
            let job = admin
                .create_job(
                    "bench-real",
                    pb::target::Kind::Puppets(pb::PuppetNames {
                        names: names.clone(),
                    }),
                )
                .await?;
            let job = admin
                .wait_job(&job.id, Duration::from_millis(5), Duration::from_secs(60))
                .await?;
            observed.push(wall.elapsed().as_secs_f64());
            let runs = admin.runs_of(&job.id).await?;
            let last = runs
                .iter()
                .map(|r| millis(r.finished_at.as_ref()))
                .fold(f64::NAN, f64::max);
            times.push((last - millis(job.created_at.as_ref())) / 1000.0);
        }
        times.sort_by(f64::total_cmp);
        observed.sort_by(f64::total_cmp);
        fanouts.push(json!({
            "agents": k,
            "fanout_s": times[times.len() / 2],
            "observed_s": observed[observed.len() / 2],
            "repeats": times.len(),
        }));
        eprintln!(
            "bench:   real fan-out to {k}: {:.3}s",
            times[times.len() / 2]
        );
    }
    for (_, mut child) in agents {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    server.stop().await?;
    Ok(json!({
        "agent_rss_kib_mean": rss_mean,
        "agent_rss_kib_max": rss_max,
        "fanout": fanouts,
    }))
}

/// Data dir size after many runs with 4 KiB of log each.
async fn storage_phase(options: &Options, work: &Path) -> Result<Value> {
    let dir = work.join("storage");
    std::fs::create_dir_all(&dir)?;
    let server = Server::start(options, &dir, &[]).await?;
    let mut admin = server.admin()?;
    let secret = admin.enroll_secret().await?;
    let n = options.storage_fleet.max(1);
    let fleet = Fleet::start(options, &server, &secret, &dir, n, "sim").await?;
    admin
        .wait_polling(n as usize, Duration::from_secs(300))
        .await?;
    let empty = dir_size(&server.data_dir);
    admin
        .script_task("bench-store", &log_body(options.storage_log_bytes))
        .await?;
    let jobs = options.storage_runs.div_ceil(n);
    let began = Instant::now();
    // A few jobs in flight at once keep every puppet busy between polls.
    let wave = 4;
    let mut pending = Vec::new();
    let mut runs = 0u64;
    for _ in 0..jobs {
        let job = admin
            .create_job(
                "bench-store",
                pb::target::Kind::Selector("fleet=sim".into()),
            )
            .await?;
        pending.push(job.id);
        if pending.len() >= wave {
            let id = pending.remove(0);
            let job = admin
                .wait_job(
                    &id,
                    poll_every(n).max(Duration::from_millis(200)),
                    Duration::from_secs(1800),
                )
                .await?;
            runs += job.counts.values().map(|&c| u64::from(c)).sum::<u64>();
        }
    }
    for id in pending {
        let job = admin
            .wait_job(
                &id,
                poll_every(n).max(Duration::from_millis(200)),
                Duration::from_secs(1800),
            )
            .await?;
        runs += job.counts.values().map(|&c| u64::from(c)).sum::<u64>();
    }
    let secs = began.elapsed().as_secs_f64();
    let size = dir_size(&server.data_dir);
    let store_metric = server.metric("geppetto_store_size_bytes").await;
    let (_, server_hwm) = memory_kib(server.pid);
    let data_dir = server.data_dir.clone();
    fleet.stop().await?;
    server.stop().await?;
    let after_stop = dir_size(&data_dir);
    let after_retention = retention_step(options, &dir, jobs).await?;
    Ok(json!({
        "runs": runs,
        "log_bytes_per_run": options.storage_log_bytes,
        "fleet": n,
        "seconds": secs,
        "runs_per_s": runs as f64 / secs,
        "data_dir_bytes_empty": empty,
        "data_dir_bytes": size,
        "data_dir_bytes_after_stop": after_stop,
        "store_size_metric": store_metric,
        "bytes_per_run": (size.saturating_sub(empty)) as f64 / runs.max(1) as f64,
        "server_rss_peak_kib": server_hwm,
        "after_retention": after_retention,
    }))
}

/// Restarts the puppeteer on the storage phase's data dir with a retention
/// policy keeping a tenth of the jobs, waits for the pruning task to finish,
/// and measures the data dir again (running, then stopped).
async fn retention_step(options: &Options, dir: &Path, jobs: u32) -> Result<Value> {
    let keep = (jobs / 10).max(1);
    let config = dir.join("retention.toml");
    std::fs::write(
        &config,
        format!("[retention]\nmax_jobs = {keep}\ninterval = \"1s\"\n"),
    )?;
    let began = Instant::now();
    let server = Server::start(options, dir, &["--config", &config.display().to_string()]).await?;
    let mut info = server.info_client()?;
    let until = Instant::now() + Duration::from_secs(1800);
    // Pruning is done once a pass that began after the pruned-runs counter
    // last grew pruned nothing. (ServerInfo only tells the last pass: when a
    // pass lasts longer than the interval the next one follows at once, and
    // overwrites the report of the pass that pruned within milliseconds.)
    let started_at = |i: &pb::ServerInfo| i.last_prune_at.as_ref().map(|t| (t.seconds, t.nanos));
    anyhow::ensure!(
        server.metrics.is_some(),
        "the retention step reads the puppeteer's metrics, which are not served"
    );
    let (mut pruned_runs, mut grew_after) = (0.0, None);
    let pruned = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let counted = server
            .metric("geppetto_pruned_runs_total")
            .await
            .unwrap_or(0.0);
        let now = info
            .get_server_info(pb::GetServerInfoRequest {})
            .await?
            .into_inner();
        if counted != pruned_runs {
            pruned_runs = counted;
            grew_after = started_at(&now);
        } else if pruned_runs > 0.0 && now.pruned_jobs == 0 && started_at(&now) > grew_after {
            break now;
        }
        if Instant::now() > until {
            anyhow::bail!("retention still pruning after 30 min ({pruned_runs} runs so far)");
        }
    };
    let secs = began.elapsed().as_secs_f64();
    let running = dir_size(&server.data_dir);
    let data_dir = server.data_dir.clone();
    server.stop().await?;
    Ok(json!({
        "policy_max_jobs": keep,
        "pruned_runs": pruned_runs as u64,
        "seconds": secs,
        "data_dir_bytes": running,
        "data_dir_bytes_after_stop": dir_size(&data_dir),
        "server_info_data_dir_bytes": pruned.data_dir_bytes,
        "server_info_log_bytes": pruned.log_bytes,
    }))
}

// ---------------------------------------------------------------- report

fn f(v: &Value, path: &[&str]) -> String {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    match v.as_f64() {
        Some(x) if x.abs() >= 100.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

pub fn print_table(results: &Value) {
    let mut out = String::new();
    out.push_str("| puppets | connect s | dispatch p50/p99/max ms | fan-out s | runs/s | ingest MB/s | idle server CPU % | idle fleet CPU % | server RSS idle mean/max, peak MiB | fleet KiB/puppet | wire B/puppet-hour |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for s in results["fleet"].as_array().into_iter().flatten() {
        let mib = |path: &[&str]| {
            let mut v = s;
            for p in path {
                v = &v[*p];
            }
            v.as_f64()
                .map_or("-".into(), |k| format!("{:.0}", k / 1024.0))
        };
        out.push_str(&format!(
            "| {} | {} | {}/{}/{} | {} | {} | {} | {} | {} | {}/{}, {} | {} | {} |\n",
            s["puppets"],
            f(s, &["connect_s"]),
            f(s, &["dispatch", "p50_ms"]),
            f(s, &["dispatch", "p99_ms"]),
            f(s, &["dispatch", "max_ms"]),
            f(s, &["fanout", "fanout_s"]),
            f(s, &["fanout", "runs_per_s"]),
            f(s, &["ingest", "mb_per_s"]),
            f(s, &["idle", "server_cpu_pct"]),
            f(s, &["idle", "fleet_cpu_pct"]),
            mib(&["idle", "server_rss_mean_kib"]),
            mib(&["idle", "server_rss_kib"]),
            mib(&["server_rss_peak_kib"]),
            f(s, &["idle", "fleet_rss_per_puppet_kib"]),
            f(s, &["idle", "wire_bytes_per_puppet_hour"]),
        ));
    }
    let real = &results["real_agents"];
    for r in real["fanout"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\nreal `puppet run` agents: fan-out of `echo hi` to {}: {} s (observed by the client {} s)",
            r["agents"],
            f(r, &["fanout_s"]),
            f(r, &["observed_s"])
        ));
    }
    out.push_str(&format!(
        "\nreal agent RSS idle: mean {} KiB, max {} KiB",
        f(real, &["agent_rss_kib_mean"]),
        f(real, &["agent_rss_kib_max"])
    ));
    let st = &results["storage"];
    if !st.is_object() {
        println!("{out}\nstorage: skipped");
        return;
    }
    out.push_str(&format!(
        "\nstorage: {} runs of {} B of log: data dir {} bytes ({} B a run), {} runs/s sustained\n",
        st["runs"],
        st["log_bytes_per_run"],
        st["data_dir_bytes"],
        f(st, &["bytes_per_run"]),
        f(st, &["runs_per_s"]),
    ));
    let ret = &st["after_retention"];
    if ret.is_object() {
        out.push_str(&format!(
            "after retention (keep the newest {} jobs; {} runs pruned in {} s): data dir {} bytes running, {} bytes once stopped\n",
            ret["policy_max_jobs"],
            ret["pruned_runs"],
            f(ret, &["seconds"]),
            ret["data_dir_bytes"],
            ret["data_dir_bytes_after_stop"],
        ));
    }
    println!("{out}");
}
