//! Bad networks: a real puppeteer process and a real puppet process talk
//! through a fault-injecting TCP relay (`common/faultproxy.rs`) that cuts,
//! drops, delays and ages their connections, and the puppeteer or the puppet
//! is `kill -9`ed at chosen moments. Each scenario checks the three promises:
//! no log byte is lost (the stored log equals the expected bytes exactly),
//! each result is recorded once (the run's history), and each script is
//! executed once per attempt (it appends a line to a file; the test counts the
//! lines).

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;
#[path = "common/puppetproc.rs"]
mod puppetproc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Admin, ProcServer};
use faultproxy::{FaultProxy, Then, When};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use puppetproc::{PuppetOptions, PuppetProc};

/// Hosts the puppet processes of these tests (see `common/puppetproc.rs`).
#[test]
fn puppet_process_entry() {
    puppetproc::entry();
}

/// How long a scenario may take to reach each condition; generous, since
/// the build machine's two cores are shared.
const PATIENCE: Duration = Duration::from_secs(120);

/// A puppeteer process, a fault proxy in front of it and one puppet process behind it.
struct Bench {
    dir: tempfile::TempDir,
    data: PathBuf,
    server_args: Vec<String>,
    server: Option<ProcServer>,
    proxy: FaultProxy,
    token: String,
    puppet: Option<PuppetProc>,
    puppet_options: PuppetOptions,
    /// Scripts append a line here each time they start.
    marks: PathBuf,
}

impl Bench {
    /// `server_args`: extra `puppeteer serve` flags; `puppet_args`: extra `puppet run` flags.
    async fn start(server_args: &[&str], puppet_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let server_args: Vec<String> = server_args.iter().map(|s| s.to_string()).collect();
        let server = start_server(&data, 0, &server_args).await;
        let proxy = FaultProxy::start(([127, 0, 0, 1], server.port).into()).await;
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        let marks = dir.path().join("marks");
        let mut bench = Bench {
            data: data.clone(),
            server_args,
            server: Some(server),
            proxy,
            token,
            puppet: None,
            puppet_options: PuppetOptions {
                server: String::new(),
                ca: data.join("tls/ca.pem"),
                enroll_token: String::new(),
                name: "p1".into(),
                state_dir: dir.path().join("puppet-state"),
                args: puppet_args.iter().map(|s| s.to_string()).collect(),
                wrapper: vec![],
            },
            marks,
            dir,
        };
        bench.puppet_options.server = bench.proxy.url();
        bench.puppet_options.enroll_token = bench.admin().enroll_secret().await;
        bench.puppet = Some(PuppetProc::start(bench.puppet_options.clone()));
        bench.admin().wait_polling("p1").await;
        bench
    }

    fn port(&self) -> u16 {
        self.server.as_ref().unwrap().port
    }

    fn admin(&self) -> Admin {
        Admin::new(channel(
            self.port(),
            &self.puppet_options.ca,
            Transport::Grpc,
            &self.token,
        ))
    }

    /// `kill -9` of the puppeteer, then a restart on the same data dir and port.
    async fn crash_server(&mut self) {
        let port = self.server.take().unwrap().kill9().await;
        self.server = Some(start_server(&self.data, port, &self.server_args).await);
    }

    /// `kill -9` of the puppet, then a restart on the same state dir.
    async fn crash_puppet(&mut self) {
        let options = self.puppet.take().unwrap().kill9().await;
        self.puppet = Some(PuppetProc::start(options));
    }

    /// A task whose script marks its start, prints `seq 1 lines`, then runs `tail`.
    async fn task(&self, name: &str, lines: u32, tail: &str, retries: u32) {
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
    async fn launch(&self, task: &str) -> String {
        let job = self.admin().run_on(task, &["p1"]).await;
        job.runs[0].run_id.clone()
    }

    /// Waits until the run satisfies `done`, then returns it.
    async fn wait_run(&self, run_id: &str, what: &str, done: impl Fn(&pb::Run) -> bool) -> pb::Run {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            // The puppeteer may be restarting: errors are retried.
            if let Ok(run) = self
                .admin()
                .runs
                .get_run(pb::GetRunRequest { id: run_id.into() })
                .await
            {
                let run = run.into_inner();
                if done(&run) {
                    return run;
                }
                if tokio::time::Instant::now() >= until {
                    panic!(
                        "run {run_id}: {what} did not happen in time; run: {run:?}\nproxy: {:?}\npuppet log:\n{}",
                        self.proxy.stats(),
                        self.puppet_log()
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_succeeded(&self, run_id: &str) -> pb::Run {
        self.wait_run(run_id, "success", |run| {
            run.state == pb::RunState::Succeeded as i32
        })
        .await
    }

    fn puppet_log(&self) -> String {
        puppetproc::log_tail(&self.puppet_options.state_dir.with_extension("log"))
    }

    /// How many times a script started.
    fn starts(&self) -> usize {
        std::fs::read_to_string(&self.marks)
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// The three promises for a run that succeeded at `attempt`.
    async fn assert_delivered_once(&self, run: &pb::Run, expected_log: &[u8], attempt: u32) {
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

async fn start_server(data: &Path, port: u16, extra: &[String]) -> ProcServer {
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<&str> = extra.iter().map(String::as_str).collect();
    ProcServer::start_with(data, &listen, &args).await
}

fn channel(port: u16, ca: &Path, transport: Transport, token: &str) -> Channel {
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
fn seq_output(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.extend_from_slice(format!("{i}\n").as_bytes());
    }
    out
}

fn is_terminal(state: i32) -> bool {
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
fn terminal_transitions(run: &pb::Run) -> usize {
    run.history.iter().filter(|t| is_terminal(t.state)).count()
}

/// Lines of `seq` for about 2 MiB of output.
const TWO_MIB: u32 = 300_000;
/// Lines of `seq` for about 1 MiB of output.
const ONE_MIB: u32 = 160_000;

#[tokio::test]
async fn a_cut_during_a_held_poll_loses_nothing() {
    let bench = Bench::start(&["--poll-timeout", "5s"], &[]).await;
    bench.task("t", ONE_MIB, "", 0).await;
    // A plain cut of the held poll: the puppet polls again.
    let before = bench.proxy.stats().connections;
    bench.proxy.cut_all();
    common::wait_until("a new connection", PATIENCE, || {
        bench.proxy.stats().connections > before
    })
    .await;
    bench.admin().wait_polling("p1").await;
    // The held poll's answer carrying the assignment is lost with the link:
    // the puppeteer offers the run again and the puppet runs it once.
    let fired = bench.proxy.arm(When::NthResponse(1), Then::CutBefore);
    let run_id = bench.launch("t").await;
    fired.wait(PATIENCE).await;
    let run = bench.wait_succeeded(&run_id).await;
    bench
        .assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}

#[tokio::test]
async fn a_cut_during_a_log_upload_loses_nothing() {
    let bench = Bench::start(&["--poll-timeout", "5s"], &[]).await;
    bench.task("t", TWO_MIB, "", 0).await;
    // Cut in the middle of a chunk's request; then every connection is cut
    // and new ones are refused for a while; then a second cut mid-chunk.
    let fired = bench.proxy.arm(When::UpBytes(400_000), Then::CutBefore);
    let run_id = bench.launch("t").await;
    fired.wait(PATIENCE).await;
    bench.proxy.set_refuse(true);
    bench.proxy.cut_all();
    let fired = bench.proxy.arm(When::UpBytes(500_000), Then::CutBefore);
    let refused = bench.proxy.stats().refused;
    common::wait_until("two refused reconnections", PATIENCE, || {
        bench.proxy.stats().refused >= refused + 2
    })
    .await;
    bench.proxy.set_refuse(false);
    fired.wait(PATIENCE).await;
    let run = bench.wait_succeeded(&run_id).await;
    bench
        .assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
}

#[tokio::test]
async fn lost_acknowledgements_make_the_same_offset_resent_and_accepted_once() {
    let bench = Bench::start(&["--poll-timeout", "5s"], &[]).await;
    bench.task("t", TWO_MIB, "", 0).await;
    // The answer to a chunk that the puppeteer stored is dropped, so the
    // puppet sends the same offset again; three times during the upload.
    let fired = bench
        .proxy
        .arm(When::ResponseAfterUp(300_000), Then::CutBefore);
    let run_id = bench.launch("t").await;
    fired.wait(PATIENCE).await;
    for _ in 0..2 {
        let fired = bench
            .proxy
            .arm(When::ResponseAfterUp(300_000), Then::CutBefore);
        fired.wait(PATIENCE).await;
    }
    let run = bench.wait_succeeded(&run_id).await;
    let expected = seq_output(TWO_MIB);
    // The chunks whose answers were lost went up twice.
    let up = bench.proxy.stats().bytes_up;
    assert!(
        up >= expected.len() as u64 + 400_000,
        "only {up} bytes went up for a {}-byte log",
        expected.len()
    );
    bench.assert_delivered_once(&run, &expected, 1).await;
}

#[tokio::test]
async fn the_puppeteer_killed_right_after_an_acknowledgement_loses_nothing() {
    let mut bench = Bench::start(&["--poll-timeout", "5s"], &[]).await;
    bench.task("t", TWO_MIB, "", 0).await;
    // kill -9 right after the proxy forwarded the answer to a log chunk.
    let fired = bench
        .proxy
        .arm(When::ResponseAfterUp(500_000), Then::Notify);
    let run_id = bench.launch("t").await;
    fired.wait(PATIENCE).await;
    bench.crash_server().await;
    // And right after the puppeteer acknowledged the result.
    let run = bench.wait_succeeded(&run_id).await;
    bench.crash_server().await;
    bench
        .assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
    let again = bench.wait_succeeded(&run_id).await;
    assert_eq!(
        again.history, run.history,
        "nothing changed after the crash"
    );
}

#[tokio::test]
async fn a_puppet_killed_mid_run_reports_interrupted_and_the_retry_runs_once() {
    let mut bench = Bench::start(&["--poll-timeout", "5s"], &[]).await;
    // The first attempt prints, then sleeps until killed; the second finishes.
    let pids = bench.dir.path().join("pids");
    let tail = format!(
        "echo $$ >> '{}'\nif [ \"$(wc -l < '{}')\" -eq 1 ]; then sleep 300; fi",
        pids.display(),
        bench.marks.display()
    );
    bench.task("t", ONE_MIB, &tail, 1).await;
    let run_id = bench.launch("t").await;
    let partial = seq_output(ONE_MIB);
    bench
        .wait_run(&run_id, "the whole output uploaded", |run| {
            run.log_length == partial.len() as u64 && pids.exists()
        })
        .await;
    bench.crash_puppet().await;
    // kill -9 leaves the run's process group alive: the test kills it.
    let pid = std::fs::read_to_string(&pids).unwrap();
    let pgid = pid.lines().next().unwrap().trim();
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
    let run = bench.wait_succeeded(&run_id).await;
    let interrupted: Vec<_> = run
        .history
        .iter()
        .filter(|t| t.state == pb::RunState::Interrupted as i32)
        .collect();
    assert_eq!(interrupted.len(), 1, "{:?}", run.history);
    assert_eq!(interrupted[0].attempt, 1);
    // The run's log holds each attempt's output, one after the other.
    let both = [partial.as_slice(), partial.as_slice()].concat();
    bench.assert_delivered_once(&run, &both, 2).await;
}

#[tokio::test]
async fn a_proxy_closing_every_connection_before_the_hold_ends_loses_nothing() {
    let bench = Bench::start(&["--poll-timeout", "6s"], &[]).await;
    // Every connection dies at 2 s, well before the 6 s hold, and the upload
    // is slowed to span several connection lifetimes.
    bench.proxy.set_max_age(Some(Duration::from_secs(2)));
    bench.proxy.set_rate(Some(400_000));
    bench.task("t", TWO_MIB, "", 0).await;
    let run_id = bench.launch("t").await;
    let run = bench.wait_succeeded(&run_id).await;
    assert!(bench.proxy.stats().cut >= 2, "{:?}", bench.proxy.stats());
    bench
        .assert_delivered_once(&run, &seq_output(TWO_MIB), 1)
        .await;
    // An idle puppet stays reachable: the next run is dispatched and done.
    bench.task("u", 10, "", 0).await;
    let run_id = bench.launch("u").await;
    bench.wait_succeeded(&run_id).await;
}

#[tokio::test]
async fn a_blackholed_connection_is_abandoned_and_nothing_is_lost() {
    let bench = Bench::start(&["--poll-timeout", "3s"], &["--poll-hold", "3s"]).await;
    bench.task("t", ONE_MIB, "", 0).await;
    // The held poll's connection goes dead without a close; its answer
    // (the assignment) vanishes. The puppet must notice by itself.
    bench.admin().wait_polling("p1").await;
    bench.proxy.blackhole_all();
    let run_id = bench.launch("t").await;
    let run = bench.wait_succeeded(&run_id).await;
    assert!(bench.proxy.stats().dropped > 0, "{:?}", bench.proxy.stats());
    bench
        .assert_delivered_once(&run, &seq_output(ONE_MIB), 1)
        .await;
}
