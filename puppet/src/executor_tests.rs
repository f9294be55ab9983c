//! Tests of the executor with real child processes.

use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn request(&self, program: Program) -> ExecRequest {
        ExecRequest {
            program,
            env: BTreeMap::new(),
            workdir: self.dir.path().to_owned(),
            timeout: None,
            script_path: self.dir.path().join("run.script"),
            pid_path: Some(self.dir.path().join("run.pid")),
            leave_running_on_shutdown: false,
        }
    }

    fn script(&self, body: &str) -> ExecRequest {
        self.request(Program::Script {
            body: body.to_string(),
            interpreter: Vec::new(),
        })
    }

    fn spool_path(&self) -> PathBuf {
        self.dir.path().join("run.log")
    }

    async fn run(&self, request: &ExecRequest, stop: &StopSignals) -> (FinishReport, Vec<u8>) {
        let (mut spool, _progress) = SpoolWriter::open(&self.spool_path()).await.unwrap();
        let Execution::Finished(report) = execute(request, &mut spool, stop).await else {
            panic!("the child was left running");
        };
        let output = std::fs::read(self.spool_path()).unwrap();
        assert_eq!(report.log_length, output.len() as u64);
        (report, output)
    }
}

/// Whether a process is alive; a zombie waiting for a reaper counts as gone.
fn alive(pid: u32) -> bool {
    if !sys::process_exists(pid) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Polls `condition` until it holds, failing after `limit`.
async fn eventually(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn stdout_and_stderr_keep_their_interleaving() {
    let f = Fixture::new();
    let (report, output) = f
        .run(
            &f.script("echo a; echo b >&2; echo c"),
            &StopSignals::default(),
        )
        .await;
    assert_eq!(report.outcome, Outcome::Exited);
    assert_eq!(report.exit_code, 0);
    assert_eq!(output, b"a\nb\nc\n");
}

#[tokio::test]
async fn exit_codes_are_reported() {
    let f = Fixture::new();
    let (report, output) = f
        .run(&f.script("echo failing; exit 3"), &StopSignals::default())
        .await;
    assert_eq!(
        (report.outcome, report.exit_code, report.signal),
        (Outcome::Exited, 3, 0)
    );
    assert_eq!(output, b"failing\n");
}

#[tokio::test]
async fn a_signal_is_reported() {
    let f = Fixture::new();
    let (report, _) = f
        .run(&f.script("kill -TERM $$"), &StopSignals::default())
        .await;
    assert_eq!(
        (report.outcome, report.signal),
        (Outcome::Signaled, libc::SIGTERM)
    );
}

#[tokio::test]
async fn argv_runs_directly_with_env_workdir_and_null_stdin() {
    let f = Fixture::new();
    let mut request = f.request(Program::Argv(vec![
        "sh".into(),
        "-c".into(),
        "echo \"$GREETING\"; pwd; cat".into(),
    ]));
    request.env.insert("GREETING".into(), "hello there".into());
    let (report, output) = f.run(&request, &StopSignals::default()).await;
    assert_eq!(report.outcome, Outcome::Exited);
    let expected = format!(
        "hello there\n{}\n",
        f.dir.path().canonicalize().unwrap().display()
    );
    assert_eq!(String::from_utf8(output).unwrap(), expected);
}

#[tokio::test]
async fn the_interpreter_and_its_arguments_are_used() {
    let f = Fixture::new();
    // With -u, the interpreter's argument, the unset variable is an error.
    let request = f.request(Program::Script {
        body: "echo \"$0\"; echo \"$PUPPET_TEST_UNSET\"; echo not reached".into(),
        interpreter: vec!["/bin/sh".into(), "-eu".into()],
    });
    let (report, output) = f.run(&request, &StopSignals::default()).await;
    assert_eq!(report.outcome, Outcome::Exited);
    assert_ne!(report.exit_code, 0);
    let text = String::from_utf8(output).unwrap();
    assert!(
        text.starts_with(&format!("{}\n", f.dir.path().join("run.script").display())),
        "{text}"
    );
    assert!(!text.contains("not reached"), "{text}");
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("bg.pid");
    let mut request = f.script(&format!(
        "sleep 300 & echo $! > {}; sleep 300",
        pidfile.display()
    ));
    request.timeout = Some(Duration::from_secs(1));
    let started = Instant::now();
    let (report, _) = f.run(&request, &StopSignals::default()).await;
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert_eq!(report.signal, libc::SIGKILL);
    assert!(started.elapsed() < Duration::from_secs(30));
    let pid = read_pid(&pidfile).expect("the script wrote the background pid");
    eventually(
        Duration::from_secs(10),
        "the background sleep is gone",
        || !alive(pid),
    )
    .await;
}

#[tokio::test]
async fn cancelling_kills_the_run() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("bg.pid");
    let request = f.script(&format!(
        "sleep 300 & echo $! > {}; echo started; sleep 300",
        pidfile.display()
    ));
    let stop = StopSignals::default();
    let canceller = {
        let stop = stop.clone();
        let spool = f.spool_path();
        tokio::spawn(async move {
            eventually(Duration::from_secs(10), "the script printed", || {
                std::fs::read(&spool).is_ok_and(|o| o == b"started\n")
            })
            .await;
            stop.cancel.cancel();
        })
    };
    let (report, output) = f.run(&request, &stop).await;
    canceller.await.unwrap();
    assert_eq!(report.outcome, Outcome::Cancelled);
    assert_eq!(output, b"started\n");
    let pid = read_pid(&pidfile).unwrap();
    eventually(
        Duration::from_secs(10),
        "the background sleep is gone",
        || !alive(pid),
    )
    .await;
}

#[tokio::test]
async fn shutdown_interrupts_the_run() {
    let f = Fixture::new();
    let stop = StopSignals::default();
    stop.shutdown.cancel();
    let (report, _) = f.run(&f.script("sleep 300"), &stop).await;
    assert_eq!(report.outcome, Outcome::Interrupted);
}

/// A run that expects a reboot outlives a shutdown of the puppet: the
/// reboot stops the puppet, and killing the script could stop the reboot.
#[tokio::test]
async fn shutdown_leaves_a_run_that_expects_a_reboot_running() {
    let f = Fixture::new();
    let printed = f.dir.path().join("printed");
    let mut request = f.script(&format!(
        "echo going down; touch {}; sleep 300",
        printed.display()
    ));
    request.leave_running_on_shutdown = true;
    let stop = StopSignals::default();
    let (mut spool, _progress) = SpoolWriter::open(&f.spool_path()).await.unwrap();
    let shutdown = stop.shutdown.clone();
    let supervisor = tokio::spawn(async move { execute(&request, &mut spool, &stop).await });
    eventually(Duration::from_secs(10), "the child printed", || {
        printed.exists()
    })
    .await;
    shutdown.cancel();
    let Execution::LeftRunning { pgid } = supervisor.await.unwrap() else {
        panic!("the run was not left running");
    };
    let mark = ProcessMark::load(&f.dir.path().join("run.pid")).expect("the group is noted");
    assert_eq!(mark.pgid, pgid);
    assert!(mark.is_alive(), "the run was killed by the shutdown");
    assert_eq!(std::fs::read(f.spool_path()).unwrap(), b"going down\n");
    sys::kill_process_group(pgid, libc::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), "the group is gone", || {
        !mark.is_alive()
    })
    .await;
}

#[tokio::test]
async fn a_leftover_background_process_does_not_hang_the_run() {
    let f = Fixture::new();
    let pidfile = f.dir.path().join("bg.pid");
    let request = f.script(&format!(
        "sleep 300 & echo $! > {}; echo done",
        pidfile.display()
    ));
    let started = Instant::now();
    let (report, output) = f.run(&request, &StopSignals::default()).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the run waited for its leftover"
    );
    assert_eq!((report.outcome, report.exit_code), (Outcome::Exited, 0));
    assert_eq!(output, b"done\n");
    let pid = read_pid(&pidfile).unwrap();
    eventually(Duration::from_secs(10), "the leftover is gone", || {
        !alive(pid)
    })
    .await;
}

#[tokio::test]
async fn twenty_mebibytes_go_through_the_spool_unchanged() {
    let f = Fixture::new();
    let copy = f.dir.path().join("expected");
    let request = f.script(&format!(
        "head -c 20971520 /dev/urandom | tee {}",
        copy.display()
    ));
    let (report, output) = f.run(&request, &StopSignals::default()).await;
    assert_eq!(report.outcome, Outcome::Exited);
    assert_eq!(output.len(), 20 * 1024 * 1024);
    let expected = std::fs::read(&copy).unwrap();
    assert!(
        output == expected,
        "the spooled bytes differ from what the program wrote"
    );
}

#[tokio::test]
async fn a_spawn_failure_is_reported_with_its_reason_in_the_log() {
    let f = Fixture::new();
    let (report, output) = f
        .run(
            &f.request(Program::Argv(vec!["/nonexistent/program".into()])),
            &StopSignals::default(),
        )
        .await;
    assert_eq!(report.outcome, Outcome::StartFailed);
    assert!(
        report.message.starts_with("/nonexistent/program: "),
        "{}",
        report.message
    );
    let text = String::from_utf8(output).unwrap();
    assert!(
        text.contains("could not be started: /nonexistent/program"),
        "{text}"
    );

    let mut request = f.script("echo hi");
    request.workdir = "/nonexistent/dir".into();
    let spool = f.dir.path().join("run.log");
    std::fs::remove_file(&spool).unwrap();
    let (report, _) = f.run(&request, &StopSignals::default()).await;
    assert_eq!(report.outcome, Outcome::StartFailed);
    assert!(
        report
            .message
            .contains("working directory /nonexistent/dir is not a directory"),
        "{}",
        report.message
    );

    let (report, _) = f
        .run(
            &f.request(Program::Argv(Vec::new())),
            &StopSignals::default(),
        )
        .await;
    assert_eq!(report.outcome, Outcome::StartFailed);
}

/// The child writes into the spool itself: what it printed is on disk even
/// when its supervisor (the puppet) dies without reading anything, and the
/// noted process group lets a restarted puppet find and kill the orphan.
#[tokio::test]
async fn output_is_on_disk_even_when_the_supervisor_dies() {
    let f = Fixture::new();
    let printed = f.dir.path().join("printed");
    let request = f.script(&format!(
        "seq 1 5000; touch {}; sleep 300",
        printed.display()
    ));
    let (mut spool, _progress) = SpoolWriter::open(&f.spool_path()).await.unwrap();
    let supervisor =
        tokio::spawn(async move { execute(&request, &mut spool, &StopSignals::default()).await });
    eventually(Duration::from_secs(10), "the child printed", || {
        printed.exists()
    })
    .await;
    supervisor.abort();
    let _ = supervisor.await;

    let expected: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert_eq!(std::fs::read(f.spool_path()).unwrap(), expected.as_bytes());
    let mark = ProcessMark::load(&f.dir.path().join("run.pid")).expect("the group is noted");
    assert!(mark.is_alive(), "the child outlives its supervisor");
    sys::kill_process_group(mark.pgid, libc::SIGKILL).unwrap();
    eventually(Duration::from_secs(10), "the orphan is gone", || {
        !mark.is_alive()
    })
    .await;
}
