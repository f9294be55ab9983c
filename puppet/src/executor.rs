//! Runs one program as a child process and spools its output.
//!
//! The child gets the spool file itself (opened for appending) as both
//! stdout and stderr, so the log holds the exact interleaving the program
//! produced, and every byte it printed is on disk as soon as it printed it:
//! a `kill -9` of the puppet loses nothing (with a pipe, what sat in the
//! pipe's buffer would be gone). The executor watches the file grow
//! ([`SPOOL_WATCH`]) to tell the uploader. Stdin is /dev/null. The child leads
//! its own process group, so that a timeout, a cancellation or the end of the
//! run can kill everything it started (like systemd kills a unit's control
//! group); the group is noted on disk ([`ProcessMark`]) so that a puppet
//! restarted after a crash can kill an orphan before it reports the run.
//!
//! A run whose task expects the machine to reboot is the exception to
//! "a shutdown of the puppet kills the run": the reboot is what stops the
//! puppet, and killing the script could only get in its way. Such a run is
//! left running ([`Execution::LeftRunning`]) and judged when the puppet
//! comes back (see [`crate::records::RebootExpectation`]).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::records::{FinishReport, Outcome, ProcessMark};
use crate::spool::SpoolWriter;
use crate::sys;

/// How often the spool's length is checked while the child runs: the delay
/// a live `logs --follow` may add.
const SPOOL_WATCH: Duration = Duration::from_millis(100);

/// What to execute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Program {
    /// A script written to a file and passed to an interpreter (empty: `/bin/sh`).
    Script {
        body: String,
        interpreter: Vec<String>,
    },
    /// An argv executed directly; `argv[0]` is looked up in `PATH`.
    Argv(Vec<String>),
}

/// One execution, with everything resolved.
#[derive(Clone, Debug)]
pub struct ExecRequest {
    pub program: Program,
    /// Added to the puppet's own environment.
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub timeout: Option<Duration>,
    /// Where a script body is written (mode 0700) before it runs.
    pub script_path: PathBuf,
    /// Where the run's process group is noted once spawned.
    pub pid_path: Option<PathBuf>,
    /// The run expects the machine to reboot: a shutdown of the puppet
    /// leaves its process group running instead of killing it.
    pub leave_running_on_shutdown: bool,
}

/// How an execution ended.
#[derive(Debug)]
pub enum Execution {
    /// The child is gone; this is what `FinishRun` reports.
    Finished(FinishReport),
    /// The puppet shut down during a run that expects a reboot, and left
    /// its process group (`pgid`) running.
    LeftRunning { pgid: u32 },
}

/// Why a run may have to stop early.
#[derive(Clone, Debug, Default)]
pub struct StopSignals {
    /// An operator cancelled the run: the outcome is `Cancelled`.
    pub cancel: CancellationToken,
    /// The puppet is shutting down: the outcome is `Interrupted`.
    pub shutdown: CancellationToken,
}

/// Executes the request, appending all output to `spool`, and returns the
/// report for `FinishRun`. It never fails: a program that cannot start is
/// reported as `StartFailed`, with the reason appended to the output.
pub async fn execute(
    request: &ExecRequest,
    spool: &mut SpoolWriter,
    stop: &StopSignals,
) -> Execution {
    let started = Instant::now();
    let child = match spawn(request, spool) {
        Ok(child) => child,
        Err(e) => return Execution::Finished(start_failed(spool, started, e).await),
    };
    if let (Some(path), Some(mark)) = (&request.pid_path, child.id().and_then(ProcessMark::of))
        && let Err(e) = mark.save(path)
    {
        tracing::warn!(error = %e, "cannot note the run's process group");
    }
    let leave_running = request.leave_running_on_shutdown;
    let mut report = match supervise(child, request.timeout, spool, stop, leave_running).await {
        Ok(report) => report,
        Err(pgid) => return Execution::LeftRunning { pgid },
    };
    report.duration = started.elapsed();
    report.log_length = spool.len();
    Execution::Finished(report)
}

async fn start_failed(spool: &mut SpoolWriter, started: Instant, error: io::Error) -> FinishReport {
    let message = error.to_string();
    let line = format!("puppet: the run could not be started: {message}\n");
    let _ = spool.refresh().await;
    if let Err(e) = spool.append(line.as_bytes()).await {
        tracing::warn!(error = %e, "cannot write to the spool");
    }
    FinishReport {
        outcome: Outcome::StartFailed,
        exit_code: 0,
        signal: 0,
        duration: started.elapsed(),
        log_length: spool.len(),
        message,
    }
}

/// Starts the run's process; an error says what could not be started and
/// why (the program, or its working directory: both fail as "No such file
/// or directory").
fn spawn(request: &ExecRequest, spool: &SpoolWriter) -> io::Result<tokio::process::Child> {
    let argv = command_line(request)?;
    let output = spool.child_output()?;
    let workdir = &request.workdir;
    if !workdir.as_os_str().is_empty() && !workdir.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "its working directory {} is not a directory",
                workdir.display()
            ),
        ));
    }
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", argv[0]));
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(&request.env)
        .current_dir(&request.workdir)
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .process_group(0);
    command.spawn().map_err(named)
}

/// The argv to execute, writing a script's body to its file first.
fn command_line(request: &ExecRequest) -> io::Result<Vec<String>> {
    match &request.program {
        Program::Argv(args) if args.is_empty() || args[0].is_empty() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the argv is empty",
        )),
        Program::Argv(args) => Ok(args.clone()),
        Program::Script { body, interpreter } => {
            write_script(&request.script_path, body)?;
            let mut argv = if interpreter.is_empty() {
                vec!["/bin/sh".to_string()]
            } else {
                interpreter.clone()
            };
            argv.push(request.script_path.to_string_lossy().into_owned());
            Ok(argv)
        }
    }
}

fn write_script(path: &std::path::Path, body: &str) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o700)
        .open(path)?;
    file.write_all(body.as_bytes())?;
    file.sync_all()
}

/// Why the puppet killed the run's process group, if it did.
#[derive(Clone, Copy, Debug)]
enum Kill {
    Timeout,
    Cancel,
    Shutdown,
}

/// Waits for the child's end; `Err(pgid)` when the puppet shut down and
/// `leave_running` let the child's group be.
async fn supervise(
    mut child: tokio::process::Child,
    timeout: Option<Duration>,
    spool: &mut SpoolWriter,
    stop: &StopSignals,
    leave_running: bool,
) -> Result<FinishReport, u32> {
    // The child leads its own group, so its pid is the group id.
    let pgid = child.id().unwrap_or(0);
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut killed: Option<Kill> = None;
    let mut watch = tokio::time::interval(SPOOL_WATCH);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut spool_error: Option<String> = None;

    let status = loop {
        tokio::select! {
            exited = child.wait() => {
                // Whatever the child left behind in its group dies with it.
                kill_group(pgid);
                break exited;
            }
            _ = watch.tick() => {
                if let Err(e) = spool.refresh().await && spool_error.is_none() {
                    tracing::error!(error = %e, "cannot read the spool's length");
                    spool_error = Some(e.to_string());
                }
            }
            _ = sleep_until_opt(deadline), if killed.is_none() && deadline.is_some() => {
                killed = Some(Kill::Timeout);
                kill_group(pgid);
            }
            _ = stop.cancel.cancelled(), if killed.is_none() => {
                // The agent makes each run's cancel token a child of the
                // shutdown token, so a shutdown fires both.
                if stop.shutdown.is_cancelled() && leave_running {
                    let _ = spool.refresh().await;
                    return Err(pgid);
                }
                killed = Some(if stop.shutdown.is_cancelled() { Kill::Shutdown } else { Kill::Cancel });
                kill_group(pgid);
            }
            _ = stop.shutdown.cancelled(), if killed.is_none() => {
                if leave_running {
                    let _ = spool.refresh().await;
                    return Err(pgid);
                }
                killed = Some(Kill::Shutdown);
                kill_group(pgid);
            }
        }
    };
    // The group is dead: the spool holds all the run's output.
    if let Err(e) = spool.refresh().await {
        spool_error = Some(e.to_string());
    }

    let mut report = outcome_of(status, killed);
    if let Some(e) = spool_error {
        report.message = join_message(
            &report.message,
            &format!("output may be incomplete: cannot read the spool: {e}"),
        );
    }
    Ok(report)
}

fn outcome_of(status: io::Result<ExitStatus>, killed: Option<Kill>) -> FinishReport {
    let mut report = FinishReport {
        outcome: Outcome::Exited,
        exit_code: 0,
        signal: 0,
        duration: Duration::ZERO,
        log_length: 0,
        message: String::new(),
    };
    let status = match status {
        Ok(status) => status,
        Err(e) => {
            // The child cannot be waited for; it was spawned, so its fate is
            // unknown rather than a start failure.
            report.outcome = Outcome::Interrupted;
            report.message = format!("cannot wait for the process: {e}");
            return report;
        }
    };
    report.signal = status.signal().unwrap_or(0);
    report.exit_code = status.code().unwrap_or(0);
    report.outcome = match (killed, status.code()) {
        (Some(Kill::Timeout), _) => Outcome::TimedOut,
        (Some(Kill::Cancel), _) => Outcome::Cancelled,
        (Some(Kill::Shutdown), _) => Outcome::Interrupted,
        (None, Some(_)) => Outcome::Exited,
        (None, None) => Outcome::Signaled,
    };
    report.message = match killed {
        Some(Kill::Timeout) => "the run exceeded its timeout; its process group was killed".into(),
        Some(Kill::Cancel) => "the run was cancelled; its process group was killed".into(),
        Some(Kill::Shutdown) => "the puppet shut down; the run's process group was killed".into(),
        None => String::new(),
    };
    report
}

fn join_message(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}; {b}")
    }
}

fn kill_group(pgid: u32) {
    if let Err(e) = sys::kill_process_group(pgid, libc::SIGKILL) {
        tracing::warn!(pgid, error = %e, "cannot kill the run's process group");
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
