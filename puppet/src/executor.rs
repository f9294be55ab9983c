//! Runs one program as a child process and spools its output.
//!
//! The child gets one pipe as both stdout and stderr, so the log holds the
//! exact interleaving the program produced, and /dev/null as stdin. It leads
//! its own process group, so that a timeout, a cancellation or the end of the
//! run can kill everything it started (like systemd kills a unit's control
//! group): a script that leaves `sleep 100 &` behind would otherwise keep the
//! pipe open and the run would never end.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::records::{FinishReport, Outcome};
use crate::spool::SpoolWriter;
use crate::sys;

/// How long the pipe may stay open after the run's group was killed. Only a
/// descendant that escaped the group (a daemon calling `setsid`) can hold it
/// that long; its later output is not part of the run.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

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
) -> FinishReport {
    let started = Instant::now();
    let (child, reader) = match spawn(request) {
        Ok(spawned) => spawned,
        Err(e) => return start_failed(spool, started, e).await,
    };
    let mut report = supervise(child, reader, request.timeout, spool, stop).await;
    report.duration = started.elapsed();
    report.log_length = spool.len();
    report
}

async fn start_failed(spool: &mut SpoolWriter, started: Instant, error: io::Error) -> FinishReport {
    let message = format!("the program could not be started: {error}");
    let line = format!("puppet: {message}\n");
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

fn spawn(request: &ExecRequest) -> io::Result<(tokio::process::Child, std::io::PipeReader)> {
    let argv = command_line(request)?;
    let (reader, writer) = std::io::pipe()?;
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .envs(&request.env)
        .current_dir(&request.workdir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0);
    let child = command.spawn();
    // The command owns the parent's copies of the pipe's write end; they
    // must be closed now, or the pipe would never reach end-of-file.
    drop(command);
    Ok((child?, reader))
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

async fn supervise(
    mut child: tokio::process::Child,
    reader: std::io::PipeReader,
    timeout: Option<Duration>,
    spool: &mut SpoolWriter,
    stop: &StopSignals,
) -> FinishReport {
    // The child leads its own group, so its pid is the group id.
    let pgid = child.id().unwrap_or(0);
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
        Ok(pipe) => Some(pipe),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the run's output pipe");
            None
        }
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut killed: Option<Kill> = None;
    let mut status: Option<io::Result<ExitStatus>> = None;
    let mut drain_deadline = Instant::now();
    let mut spool_error: Option<String> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        if status.is_some() && pipe.is_none() {
            break;
        }
        let running = status.is_none();
        tokio::select! {
            read = async { pipe.as_mut().expect("guarded").read(&mut buf).await }, if pipe.is_some() => {
                match read {
                    Ok(0) => pipe = None,
                    Ok(n) => {
                        // After a spool error the output is still read, so
                        // the child never blocks on a full pipe.
                        if spool_error.is_none()
                            && let Err(e) = spool.append(&buf[..n]).await
                        {
                            tracing::error!(error = %e, "cannot write to the spool; further output is lost");
                            spool_error = Some(e.to_string());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the run's output failed");
                        pipe = None;
                    }
                }
            }
            exited = child.wait(), if running => {
                // Whatever the child left behind in its group dies with it.
                kill_group(pgid);
                status = Some(exited);
                drain_deadline = Instant::now() + DRAIN_GRACE;
            }
            _ = sleep_until_opt(deadline), if running && killed.is_none() && deadline.is_some() => {
                killed = Some(Kill::Timeout);
                kill_group(pgid);
            }
            _ = stop.cancel.cancelled(), if running && killed.is_none() => {
                // The agent makes each run's cancel token a child of the
                // shutdown token, so a shutdown fires both.
                killed = Some(if stop.shutdown.is_cancelled() { Kill::Shutdown } else { Kill::Cancel });
                kill_group(pgid);
            }
            _ = stop.shutdown.cancelled(), if running && killed.is_none() => {
                killed = Some(Kill::Shutdown);
                kill_group(pgid);
            }
            _ = tokio::time::sleep_until(drain_deadline), if !running => {
                tracing::warn!("a process outside the run's process group keeps its output open; not waiting for it");
                pipe = None;
            }
        }
    }

    let mut report = outcome_of(status.expect("loop ends after the child exited"), killed);
    if let Some(e) = spool_error {
        report.message = join_message(
            &report.message,
            &format!("output was lost: cannot write the spool: {e}"),
        );
    }
    report
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
