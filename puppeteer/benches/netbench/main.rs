//! `cargo bench -p puppeteer --bench netbench -- [NAME...]`, as root: run
//! by `deploy/netbench.sh`, which checks for root, iproute2 and nftables.
//!
//! Network benchmarks of `BENCHMARKS.md` ("Bad networks"). They print
//! figures on lines starting with `NETBENCH` and use the same rig as the
//! bad-network tests (`tests/faults.rs`, whose modules they include): a real
//! puppeteer process, the puppet in a network namespace behind a veth link
//! shaped by tbf and nftables, and the userspace relay (`faultproxy`) for
//! the delay, since the kernel has no netem. Without namespaces they say
//! `SKIPPED` (and fail with `GEPPETTO_REQUIRE_NETNS` set, as the script
//! sets it).
//!
//! - `netbench_idle`: bytes on the wire for one idle puppet, at the default
//!   hold and at the longest hold the path allows (nothing on this path cuts
//!   a poll, so the puppet's maximum, 600 s).
//! - `netbench_transfers`: time to deliver a 5 MiB log over 512 kbit/s,
//!   300 ms RTT, 2 % loss, against a plain TCP transfer over the same link.
//! - `netbench_artifact`: time from a job's creation to its run started, for
//!   a task needing a 20 MiB incompressible artifact the puppet must fetch
//!   and verify first, over the same link, against a plain TCP download.
//!
//! - `netbench_site`: the site peer cache, off and on side by side: a site
//!   of 3 and of 10 puppets behind the same link, a 5 MiB and a 20 MiB
//!   incompressible artifact for all of them; bytes across the uplink and
//!   the time from the job's creation until the last puppet's child started,
//!   against one puppet's download alone. Every case runs at once, each on
//!   its own namespace and link (`NETBENCH_SITE_SIZES`, MiB, default
//!   "5,20"; `NETBENCH_SITE_PUPPETS`, default "3,10").
//!
//! The names given select the benchmarks whose name contains one of them
//! (all by default). They run two at a time, each on its own namespace and
//! link. Knobs (environment): `NETBENCH_IDLE_WINDOW` (seconds, default
//! 600), `NETBENCH_LOG_BYTES`, `NETBENCH_RAW_BYTES`, `NETBENCH_ARTIFACT_BYTES`.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/faultproxy.rs"]
mod faultproxy;
#[path = "../../tests/common/netns.rs"]
mod netns;
#[path = "../../tests/common/puppetproc.rs"]
mod puppetproc;
#[path = "../../tests/common/rig.rs"]
mod rig;

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use faultproxy::FaultProxy;
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;
use netns::NetNs;
use rig::Rig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The benchmarks, in the order they start.
const BENCHMARKS: [&str; 4] = [
    "netbench_artifact",
    "netbench_idle",
    "netbench_transfers",
    "netbench_site",
];
/// How many run at once.
const AT_ONCE: usize = 2;

fn main() -> ExitCode {
    // The rig's puppet processes are this program again: run the puppet
    // when started as one (see `tests/common/puppetproc.rs`).
    puppetproc::entry();
    let names: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let Some(option) = names.iter().find(|a| a.starts_with('-')) {
        let usage = format!("usage: netbench [NAME...], as root; NAMEs among {BENCHMARKS:?}");
        if option == "-h" || option == "--help" {
            println!("{usage}");
            return ExitCode::SUCCESS;
        }
        eprintln!("{usage}");
        return ExitCode::from(2);
    }
    let chosen: Vec<&'static str> = BENCHMARKS
        .into_iter()
        .filter(|b| names.is_empty() || names.iter().any(|n| b.contains(n.as_str())))
        .collect();
    run(&chosen)
}

/// Runs `chosen`, [`AT_ONCE`] at a time, each on a thread and runtime of its
/// own as the test harness ran them; a benchmark that panics does not stop
/// the others, and fails the whole.
fn run(chosen: &[&'static str]) -> ExitCode {
    // Plain mutexes: held for a push or a pop, never across an await.
    let queue = Mutex::new(chosen.iter().copied().collect::<VecDeque<_>>());
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..AT_ONCE {
            scope.spawn(|| {
                loop {
                    let Some(name) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    let ran = std::panic::catch_unwind(|| {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .expect("a tokio runtime")
                            .block_on(benchmark(name))
                    });
                    if ran.is_err() {
                        failed.lock().unwrap().push(name);
                    }
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    println!("NETBENCH done: {} run, failed: {failed:?}", chosen.len());
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn benchmark(name: &str) {
    match name {
        "netbench_artifact" => netbench_artifact().await,
        "netbench_idle" => netbench_idle().await,
        "netbench_site" => netbench_site().await,
        _ => netbench_transfers().await,
    }
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn env_bytes(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes through the proxy (TCP payload: TLS records) and of the IP
/// packets to and from its port (TCP/IP headers and acknowledgements included).
#[derive(Clone, Copy, Debug, Default)]
struct Wire {
    payload: u64,
    ip: u64,
}

fn wire(rig: &Rig, ns: &NetNs) -> Wire {
    let stats = rig.proxy.stats();
    Wire {
        payload: stats.bytes_up + stats.bytes_down,
        ip: ns.counted_bytes(),
    }
}

/// One idle puppet at `hold` (`None`: the server's default), measured over `window`.
async fn idle_cost(label: &str, puppet_args: &[&str], window: Duration) {
    let Some(mut ns) = netns::create_with_nft_or_skip("netbench_idle") else {
        return;
    };
    let rig = Rig::start_in(Some(&ns), &["--max-poll-hold", "600s"], puppet_args).await;
    ns.count_port(rig.proxy.port()).unwrap();
    // Let enrollment, the first facts and the connection set-up pass, and
    // start counting just after a poll went out.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = wire(&rig, &ns);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let after = wire(&rig, &ns);
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    let stats = rig.proxy.stats();
    println!(
        "NETBENCH idle {label}: window {:.0} s, {} connections in all; per hour: {:.0} B of TCP payload (TLS included), {:.0} B of IP packets",
        started.elapsed().as_secs_f64(),
        stats.connections,
        (after.payload - before.payload) as f64 / hours,
        (after.ip - before.ip) as f64 / hours,
    );
}

async fn netbench_idle() {
    let window = env_secs("NETBENCH_IDLE_WINDOW", 600);
    tokio::join!(
        idle_cost("default hold (server's 50 s)", &[], window),
        idle_cost("hold 600 s", &["--poll-hold", "600s"], window),
    );
}

/// The link of the transfer figures: 512 kbit/s each way, 2 % loss each way.
fn shaped_link(test: &str) -> Option<NetNs> {
    let mut ns = netns::create_with_nft_or_skip(test)?;
    ns.limit_rate(512).unwrap();
    ns.drop_percent(2).unwrap();
    Some(ns)
}

/// One-way delay added by the relay: 300 ms round trip.
const ONE_WAY: Duration = Duration::from_millis(150);

/// A plain TCP transfer of `bytes` from inside the namespace to this side,
/// through the relay: the link's raw capacity. Returns the seconds taken.
async fn raw_upload(ns: &NetNs, bytes: u64) -> f64 {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start_on((ns.host_ip, 0).into(), sink.local_addr().unwrap()).await;
    proxy.set_delay(ONE_WAY);
    let drain = tokio::spawn(async move {
        let (mut socket, _) = sink.accept().await.unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            match socket.read(&mut buf).await.unwrap() {
                0 => return total,
                n => total += n as u64,
            }
        }
    });
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && head -c {bytes} /dev/urandom >&3",
        ns.host_ip,
        proxy.port(),
    );
    let started = Instant::now();
    let status = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c", &script])
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let received = drain.await.unwrap();
    // Timed at the receiving end: the sender exits once its kernel buffers hold the tail.
    let took = started.elapsed().as_secs_f64();
    assert_eq!(received, bytes);
    took
}

/// A plain TCP transfer of `bytes` from this side into the namespace.
async fn raw_download(ns: &NetNs, bytes: u64) -> f64 {
    let source = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = FaultProxy::start_on((ns.host_ip, 0).into(), source.local_addr().unwrap()).await;
    proxy.set_delay(ONE_WAY);
    tokio::spawn(async move {
        let (mut socket, _) = source.accept().await.unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            socket.write_all(&chunk[..n]).await.unwrap();
            left -= n as u64;
        }
        socket.shutdown().await.unwrap();
    });
    let script = format!("cat < /dev/tcp/{}/{} | wc -c", ns.host_ip, proxy.port());
    let started = Instant::now();
    let output = tokio::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "bash", "-c", &script])
        .output()
        .await
        .unwrap();
    let took = started.elapsed().as_secs_f64();
    let received: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert_eq!(received, bytes);
    took
}

/// Job creation → run succeeded with its whole log stored, for a script
/// printing `file` (or nothing).
async fn run_seconds(rig: &Rig, name: &str, file: Option<&std::path::Path>) -> (f64, pb::Run) {
    let body = match file {
        Some(file) => format!("cat '{}'", file.display()),
        None => "true".to_string(),
    };
    rig.admin()
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: name.into(),
            spec: Some(common::script_spec(&body, Duration::from_secs(3600))),
            ..Default::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    let run_id = rig.launch(name).await;
    let run = rig.wait_succeeded(&run_id).await;
    (started.elapsed().as_secs_f64(), run)
}

async fn netbench_transfers() {
    let log_bytes = env_bytes("NETBENCH_LOG_BYTES", 5 * 1024 * 1024);
    let raw_bytes = env_bytes("NETBENCH_RAW_BYTES", 2 * 1024 * 1024);
    let Some(ns) = shaped_link("netbench_transfers") else {
        return;
    };
    let link = "512 kbit/s, 300 ms RTT, 2 % loss";
    let up = raw_upload(&ns, raw_bytes).await;
    println!(
        "NETBENCH raw TCP upload over {link}: {raw_bytes} B in {up:.1} s = {:.1} kB/s",
        raw_bytes as f64 / up / 1000.0
    );
    let down = raw_download(&ns, raw_bytes).await;
    println!(
        "NETBENCH raw TCP download over {link}: {raw_bytes} B in {down:.1} s = {:.1} kB/s",
        raw_bytes as f64 / down / 1000.0
    );

    let rig = Rig::start_in(Some(&ns), &[], &[]).await;
    rig.proxy.set_delay(ONE_WAY);
    // Incompressible output, so that compression cannot flatter the figure.
    let file = rig.dir.path().join("random.bin");
    let mut random = vec![0u8; log_bytes as usize];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut random);
    std::fs::write(&file, &random).unwrap();
    let (empty, _) = run_seconds(&rig, "empty", None).await;
    let before = rig.proxy.stats();
    let (full, run) = run_seconds(&rig, "log", Some(&file)).await;
    let after = rig.proxy.stats();
    assert_eq!(run.log_length, log_bytes);
    assert!(
        rig.admin().log(&run.id).await == random,
        "the log arrived intact"
    );
    let delivery = full - empty;
    let raw_rate = raw_bytes as f64 / up;
    println!(
        "NETBENCH log of {log_bytes} B over {link}: job to stored log {full:.1} s, of which {delivery:.1} s beyond an empty run ({empty:.1} s) = {:.1} kB/s, {:.0} % of the raw upload; {} B went up through the relay",
        log_bytes as f64 / delivery / 1000.0,
        100.0 * (log_bytes as f64 / delivery) / raw_rate,
        after.bytes_up - before.bytes_up
    );
}

/// Uploads `data` as artifact `name` straight to the puppeteer (not across
/// the shaped link); returns its SHA-256.
async fn upload_artifact(rig: &Rig, name: &str, data: &[u8]) -> String {
    rig.admin().upload_artifact(name, data).await.sha256
}

fn seconds(t: &Option<prost_types::Timestamp>) -> f64 {
    let t = t.as_ref().expect("a timestamp");
    t.seconds as f64 + t.nanos as f64 / 1e9
}

/// Seconds since the epoch, as `date +%s.%N` prints them.
fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A job's times, from its creation (the puppeteer's timestamp), in seconds.
struct Timed {
    /// To the child process's start, written by the script itself: the
    /// puppet starts the child only once every artifact is fetched and
    /// verified. (The run turns `running` earlier, when the puppet accepts
    /// it, before the fetch.)
    child: f64,
    /// To the run's end as the puppeteer recorded it.
    finished: f64,
    run: pb::Run,
}

/// Runs a task whose script writes the time it started to a file, with
/// `artifacts`, to its end.
async fn timed_run(rig: &Rig, name: &str, artifacts: &[&str]) -> Timed {
    let stamp = rig.dir.path().join(format!("{name}.started"));
    rig.admin()
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: name.into(),
            spec: Some(pb::RunSpec {
                artifacts: artifacts
                    .iter()
                    .map(|a| pb::ArtifactRef {
                        name: a.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..common::script_spec(
                    &format!("date +%s.%N > '{}'", stamp.display()),
                    Duration::from_secs(3600),
                )
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let asked = now_seconds();
    let run_id = rig.launch(name).await;
    // Longer than the rig's patience: 20 MiB at 64 kB/s is over 5 minutes.
    let run = wait_until_async(
        &format!("run {run_id} ended"),
        Duration::from_secs(1800),
        async || {
            let run = rig
                .admin()
                .runs
                .get_run(pb::GetRunRequest { id: run_id.clone() })
                .await
                .unwrap()
                .into_inner();
            if rig::is_terminal(run.state) {
                Ok(run)
            } else {
                Err(format!(
                    "{run:?}\nproxy: {:?}\npuppet log:\n{}",
                    rig.proxy.stats(),
                    rig.puppet_log()
                ))
            }
        },
    )
    .await;
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "{run:?}\npuppet log:\n{}",
        rig.puppet_log()
    );
    let created = seconds(&run.created_at);
    assert!(created >= asked - 1.0, "one clock for all");
    let child: f64 = std::fs::read_to_string(&stamp)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    Timed {
        child: child - created,
        finished: seconds(&run.finished_at) - created,
        run,
    }
}

async fn netbench_artifact() {
    let artifact_bytes = env_bytes("NETBENCH_ARTIFACT_BYTES", 20 * 1024 * 1024);
    let raw_bytes = env_bytes("NETBENCH_RAW_BYTES", 2 * 1024 * 1024);
    let Some(ns) = shaped_link("netbench_artifact") else {
        return;
    };
    let link = "512 kbit/s, 300 ms RTT, 2 % loss";
    let down = raw_download(&ns, raw_bytes).await;
    let raw_rate = raw_bytes as f64 / down;
    println!(
        "NETBENCH raw TCP download over {link}: {raw_bytes} B in {down:.1} s = {:.1} kB/s",
        raw_rate / 1000.0
    );

    let rig = Rig::start_in(Some(&ns), &[], &[]).await;
    rig.proxy.set_delay(ONE_WAY);
    // Incompressible content, so that no compression on the path can flatter the figure.
    let mut data = vec![0u8; artifact_bytes as usize];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let sha256 = upload_artifact(&rig, "patch.bin", &data).await;
    let empty = timed_run(&rig, "empty", &[]).await;
    let before = rig.proxy.stats();
    let full = timed_run(&rig, "patch", &["patch.bin"]).await;
    let after = rig.proxy.stats();
    assert_eq!(
        full.run.attempt, 1,
        "the download cost an attempt: {:?}",
        full.run
    );
    let cached = rig.puppet_options.state_dir.join("cache").join(&sha256);
    assert_eq!(
        std::fs::metadata(&cached).map(|m| m.len()).ok(),
        Some(artifact_bytes),
        "the artifact is in the puppet's cache at {}",
        cached.display()
    );
    let delivery = full.child - empty.child;
    let rate = artifact_bytes as f64 / delivery;
    println!(
        "NETBENCH artifact of {artifact_bytes} B over {link}: job created to the child started (artifact fetched and verified) {:.1} s, run finished {:.1} s; an artifact-less run's child started at {:.1} s, finished {:.1} s; the download {delivery:.1} s = {:.1} kB/s, {:.0} % of the raw download; {} B went down through the relay, {} B up",
        full.child,
        full.finished,
        empty.child,
        empty.finished,
        rate / 1000.0,
        100.0 * rate / raw_rate,
        after.bytes_down - before.bytes_down,
        after.bytes_up - before.bytes_up,
    );
}

/// One site: `puppets` puppets behind the shaped link, each needing an
/// incompressible artifact of `bytes`; with `peers`, they serve their
/// caches to each other. Returns the bytes the uplink carried toward the
/// site (IP packets) and the seconds from the job's creation until the
/// last puppet's child started (every artifact fetched and verified).
async fn site_case(puppets: usize, bytes: u64, peers: bool) -> Option<(u64, f64)> {
    let label = format!(
        "netbench_site_{puppets}_{}_{}",
        bytes >> 20,
        if peers { "on" } else { "off" }
    );
    let ns = shaped_link(&label)?;
    let mut args = vec!["--labels".to_string(), "site=lab".into()];
    if peers {
        args.extend(["--peer-listen".to_string(), format!("{}:0", ns.ns_ip)]);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let rig = Rig::start_in(Some(&ns), &[], &arg_refs).await;
    rig.proxy.set_delay(ONE_WAY);
    let mut admin = rig.admin();
    let secret = admin.enroll_secret().await;
    let mut others = Vec::new();
    for i in 2..=puppets {
        let mut options = rig.puppet_options.clone();
        options.name = format!("p{i}");
        options.state_dir = rig.dir.path().join(format!("puppet-state-{i}"));
        options.enroll_token = secret.clone();
        others.push(puppetproc::PuppetProc::start(options));
    }
    let names: Vec<String> = (1..=puppets).map(|i| format!("p{i}")).collect();
    for name in &names {
        wait_until_async(
            &format!("{name} polls"),
            Duration::from_secs(600),
            async || {
                admin
                    .puppets
                    .get_puppet(pb::GetPuppetRequest { name: name.clone() })
                    .await
                    .is_ok_and(|p| p.into_inner().polling)
            },
        )
        .await;
    }
    let mut data = vec![0u8; bytes as usize];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    upload_artifact(&rig, "patch.bin", &data).await;
    let stamps = rig.dir.path().join("started");
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "patch".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "patch.bin".into(),
                    ..Default::default()
                }],
                ..common::script_spec(
                    &format!("date +%s.%N >> '{}'", stamps.display()),
                    Duration::from_secs(3600),
                )
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let (sent_before, _) = ns.host_bytes();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin.run_on("patch", &refs).await;
    let job = admin.wait_job(&job.id, Duration::from_secs(4 * 3600)).await;
    let (sent_after, _) = ns.host_bytes();
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "{label}: {job:?}"
    );
    let created = seconds(&job.created_at);
    let text = std::fs::read_to_string(&stamps).unwrap();
    let starts: Vec<f64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(starts.len(), puppets, "{label}: {text}");
    let last = starts.iter().cloned().fold(f64::MIN, f64::max) - created;
    for p in others {
        p.stop().await;
    }
    Some((sent_after - sent_before, last))
}

async fn netbench_site() {
    let list = |name: &str, default: &str| -> Vec<u64> {
        std::env::var(name)
            .unwrap_or_else(|_| default.into())
            .split(',')
            .map(|n| n.trim().parse().expect("a list of numbers"))
            .collect()
    };
    let sizes = list("NETBENCH_SITE_SIZES", "5,20");
    let fleets = list("NETBENCH_SITE_PUPPETS", "3,10");
    let link = "512 kbit/s, 300 ms RTT, 2 % loss";
    let mut cases = Vec::new();
    for &mib in &sizes {
        cases.push((1, mib, false));
        for &n in &fleets {
            cases.push((n as usize, mib, false));
            cases.push((n as usize, mib, true));
        }
    }
    let results = futures_util::future::join_all(
        cases
            .iter()
            .map(|&(n, mib, peers)| site_case(n, mib << 20, peers)),
    )
    .await;
    let mut alone = std::collections::HashMap::new();
    for (&(n, mib, _), result) in cases.iter().zip(&results) {
        if let (1, Some((_, t))) = (n, result) {
            alone.insert(mib, *t);
        }
    }
    for (&(n, mib, peers), result) in cases.iter().zip(&results) {
        let &Some((uplink, last)) = result else {
            continue;
        };
        let one = alone.get(&mib).copied().unwrap_or(f64::NAN);
        println!(
            "NETBENCH site of {n} puppet{}, {mib} MiB artifact over {link}, peer cache {}: uplink {uplink} B = {:.2} x the artifact; last child started {last:.1} s = {:.2} x one puppet alone ({one:.1} s)",
            if n == 1 { "" } else { "s" },
            if peers { "on " } else { "off" },
            uplink as f64 / (mib << 20) as f64,
            last / one,
        );
    }
}
