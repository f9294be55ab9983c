//! The life of one run on this puppet: record, start, execute, upload, finish.
//!
//! Each step is recorded before it happens (see [`crate::records`]), so that
//! a crash at any point leaves enough on disk to report the run truthfully
//! and never execute it twice.

use std::path::PathBuf;
use std::time::Duration;

use geppetto_proto::v1::{Assignment, FinishRunResponse, StartRunRequest, StartRunResponse};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::artifacts::{ArtifactCache, FetchError};
use crate::executor::{self, ExecRequest, Execution, StopSignals};
use crate::held::{HeldRuns, Stage};
use crate::records::{FinishReport, Outcome, Phase, RebootExpectation, RunRecord, RunStore};
use crate::rpc::{self, CALL_TIMEOUT, CallError, Client};
use crate::spool::SpoolWriter;
use crate::upload::{self, LogTarget};

/// What every run task shares.
#[derive(Clone, Debug)]
pub struct RunContext {
    pub client: Client,
    /// The client for log uploads: gzip-compressed unless `--compression none`.
    pub log_client: Client,
    pub store: RunStore,
    pub held: HeldRuns,
    pub state_dir: PathBuf,
    /// Fires when the puppet shuts down: children are killed, nothing new starts.
    pub shutdown: CancellationToken,
    /// Fires a grace period after `shutdown`: calls to the server stop.
    pub abandon: CancellationToken,
    /// Artifacts fetched for runs, by content.
    pub artifacts: ArtifactCache,
    /// The machine's boot id when the puppet started (empty: unknown).
    pub boot_id: String,
    /// How this process was started, for an upgrade to start its new
    /// binary the same way; `None`: not a program of its own (upgrades fail).
    pub relaunch: Option<crate::upgrade::Relaunch>,
    /// Set by an upgrade that swapped the binary, before it cancels
    /// `shutdown`: the process then executes the new binary.
    pub restart: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Held by the upgrade run under way.
    pub upgrading: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// How long after its start a run that expects a reboot may take to come
/// back, unless its task says otherwise.
pub const DEFAULT_REBOOT_WINDOW: Duration = Duration::from_secs(30 * 60);

/// Executes a newly admitted assignment and reports it.
pub async fn run_assignment(ctx: RunContext, assignment: Assignment, cancel: CancellationToken) {
    let run_id = assignment.run_id.clone();
    let attempt = assignment.attempt;
    let _guard = ctx.held.guard(&run_id);
    let target = LogTarget {
        run_id: run_id.clone(),
        attempt,
        limit: upload::LogLimit::of(&assignment),
    };
    let mut record = RunRecord {
        run_id: run_id.clone(),
        attempt,
        log_limit: target.limit,
        phase: Phase::Accepted,
        finish: None,
        reboot: None,
    };
    if let Err(e) = ctx.store.save(&record) {
        // Without a record, a restart could not recognise the run: refuse to
        // start it rather than risk running it twice.
        let message = format!(
            "the puppet cannot record the run in {}: {e}",
            ctx.store.dir().display()
        );
        tracing::error!(%run_id, "{message}");
        let report = report_without_output(Outcome::StartFailed, message);
        finish(&ctx, &target, &report).await;
        return;
    }

    match start(&ctx, &target, &cancel).await {
        // Started: fetching its artifacts counts as executing (the poll
        // loop's report-first grace, `poll::PollLoop::settle`).
        Started::Proceed => ctx.held.set_stage(&run_id, Stage::Executing),
        Started::Dropped => {
            forget(&ctx, &run_id);
            return;
        }
        Started::Stopped => return,
        Started::Abort(report) => {
            record.phase = Phase::Finished;
            record.finish = Some(report.clone());
            save_or_log(&ctx.store, &record);
            report_and_forget(&ctx, &target, report, 0).await;
            return;
        }
    }

    if let Some(upgrade) = upgrade_of(&assignment) {
        run_upgrade(&ctx, &assignment, record, &target, &cancel, upgrade).await;
        return;
    }

    // Artifacts come before the child: fetching them does not count against
    // the run's timeout, and a run whose files cannot be had never starts.
    // `prepared` keeps them out of the cache's eviction until the run ends.
    let artifacts = assignment
        .spec
        .as_ref()
        .map(|s| s.artifacts.as_slice())
        .unwrap_or_default();
    let prepared = match ctx
        .artifacts
        .prepare(&ctx.client, &run_id, attempt, artifacts, &cancel)
        .await
    {
        Ok(prepared) => prepared,
        // The record stays: the next start reports the run interrupted.
        Err(FetchError::Stopped) if ctx.shutdown.is_cancelled() => return,
        Err(e) => {
            let report = match e {
                FetchError::Stopped => report_without_output(
                    Outcome::Cancelled,
                    "cancelled while its artifacts were fetched".into(),
                ),
                FetchError::Failed(message) => {
                    tracing::error!(%run_id, "{message}");
                    report_without_output(Outcome::StartFailed, message)
                }
            };
            record.phase = Phase::Finished;
            record.finish = Some(report.clone());
            save_or_log(&ctx.store, &record);
            report_and_forget(&ctx, &target, report, 0).await;
            return;
        }
    };

    record.phase = Phase::Started;
    record.reboot = reboot_expectation(&ctx, &assignment);
    if let Err(e) = ctx.store.save(&record) {
        let message = format!(
            "the puppet cannot record the run in {}: {e}",
            ctx.store.dir().display()
        );
        tracing::error!(%run_id, "{message}");
        report_and_forget(
            &ctx,
            &target,
            report_without_output(Outcome::StartFailed, message),
            0,
        )
        .await;
        return;
    }
    let spool_path = ctx.store.spool_path(&run_id);
    let (mut writer, progress) = match SpoolWriter::open(&spool_path).await {
        Ok(opened) => opened,
        Err(e) => {
            let message = format!(
                "the puppet cannot create the spool {}: {e}",
                spool_path.display()
            );
            report_and_forget(
                &ctx,
                &target,
                report_without_output(Outcome::StartFailed, message),
                0,
            )
            .await;
            return;
        }
    };
    let request = exec_request(&ctx, &assignment).map(|mut request| {
        request.env.extend(prepared.env.iter().cloned());
        request
    });
    tracing::info!(%run_id, attempt, task = %assignment.task_name, "run starting");

    let execution = async {
        let stop = StopSignals {
            cancel: cancel.clone(),
            shutdown: ctx.shutdown.clone(),
        };
        let execution = match request {
            Ok(request) => executor::execute(&request, &mut writer, &stop).await,
            Err(message) => {
                Execution::Finished(report_without_output(Outcome::StartFailed, message))
            }
        };
        // Dropping the writer tells the uploader the output is complete
        // (or, for a run left running, all that this process will see).
        drop(writer);
        let report = match execution {
            Execution::Finished(report) => report,
            Execution::LeftRunning { pgid } => {
                // The record stays `started`: the next start of the puppet
                // reports the run rebooted if the machine did reboot in
                // time, and interrupted otherwise.
                tracing::info!(%run_id, pgid, "shutting down during a run that expects a reboot: leaving it running; it is reported when the puppet comes back");
                return None;
            }
        };
        record.phase = Phase::Finished;
        record.finish = Some(report.clone());
        save_or_log(&ctx.store, &record);
        ctx.held.set_stage(&run_id, Stage::Finishing);
        tracing::info!(%run_id, outcome = ?report.outcome, exit_code = report.exit_code, signal = report.signal, "run ended");
        Some(report)
    };
    let uploading = upload::stream_log(
        &ctx.log_client,
        &target,
        &spool_path,
        progress,
        0,
        &ctx.abandon,
    );
    let (report, uploaded) = tokio::join!(execution, uploading);
    if let Some(report) = report {
        finish_after_upload(&ctx, &target, report, uploaded).await;
    }
}

/// The version and deadline of an upgrade run.
fn upgrade_of(assignment: &Assignment) -> Option<(String, Duration)> {
    let spec = assignment.spec.as_ref()?;
    match spec.program.as_ref()?.kind.as_ref()? {
        geppetto_proto::v1::program::Kind::Upgrade(upgrade) => Some((
            upgrade.version.clone(),
            rpc::from_proto_duration(upgrade.deadline.as_ref())
                .filter(|d| !d.is_zero())
                .unwrap_or(crate::upgrade::DEFAULT_DEADLINE),
        )),
        _ => None,
    }
}

/// How an upgrade run went, when it went well.
enum Upgraded {
    /// Nothing to do, and why.
    Already(String),
    /// The binary was swapped; no new run is taken until the restart.
    Swapped(crate::held::PauseGuard),
}

/// An upgrade run (see [`crate::upgrade`]): fetch, quiet, stage, check,
/// swap, restart. Returns without reporting once the binary was swapped:
/// the new process reports the run (or the old one, after a rollback).
async fn run_upgrade(
    ctx: &RunContext,
    assignment: &Assignment,
    mut record: RunRecord,
    target: &LogTarget,
    cancel: &CancellationToken,
    (version, deadline): (String, Duration),
) {
    use crate::upgrade;
    let run_id = &target.run_id;
    let began = std::time::Instant::now();
    record.phase = Phase::Started;
    save_or_log(&ctx.store, &record);
    let log = |line: &str| {
        tracing::info!(%run_id, "upgrade: {line}");
        upgrade::append_line(&ctx.store, run_id, line);
    };
    let outcome = async {
        if version == crate::VERSION {
            log(&format!("this puppet is already {version}; nothing to do"));
            return Ok(Upgraded::Already(format!("already puppet {version}")));
        }
        let Some(relaunch) = &ctx.relaunch else {
            return Err("this puppet was not started as a program of its own (puppet run) and cannot replace itself".to_string());
        };
        let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);
        let name = format!("puppet-{version}-{os}-{arch}");
        let artifacts = assignment.spec.as_ref().map(|s| s.artifacts.as_slice()).unwrap_or_default();
        let Some(binary) = artifacts.iter().find(|a| a.name == name) else {
            let has: Vec<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
            return Err(format!(
                "release {version} has no binary for {os}/{arch} (it has {}): add one with \
                 geppetto puppet-releases add FILE --os {os} --arch {arch} --version {version}",
                if has.is_empty() { "none".to_string() } else { has.join(", ") }
            ));
        };
        log(&format!(
            "upgrading puppet {} to {version}: fetching {name} ({} bytes, sha256 {})",
            crate::VERSION, binary.size, binary.sha256
        ));
        let prepared = match ctx
            .artifacts
            .prepare(&ctx.client, run_id, target.attempt, std::slice::from_ref(binary), cancel)
            .await
        {
            Ok(prepared) => prepared,
            Err(FetchError::Stopped) => return Err("stopped while the new binary was fetched".into()),
            Err(FetchError::Failed(message)) => return Err(message),
        };
        let Some((_, fetched)) = prepared.env.first() else {
            return Err("the new binary was fetched but its file is unknown".into());
        };
        // One upgrade at a time: two would each wait for the other to end.
        let Ok(_one) = ctx.upgrading.clone().try_lock_owned() else {
            return Err("another upgrade is under way on this puppet".into());
        };
        let quiet = ctx.held.pause();
        log("taking no new run; waiting for the runs executing to end");
        tokio::select! {
            () = ctx.held.wait_alone(run_id) => {}
            () = cancel.cancelled() => return Err("cancelled while waiting for other runs to end".into()),
        }
        let staged = relaunch.staged();
        if let Err(e) = upgrade::stage(std::path::Path::new(fetched), &staged) {
            return Err(format!("cannot write the new binary to {}: {e}", staged.display()));
        }
        // Its arguments are not shown: they may hold a token or a proxy's password.
        log(&format!(
            "checking the new binary: {} started with this puppet's arguments and {}",
            staged.display(),
            upgrade::CHECK_FLAG
        ));
        if let Err(why) = upgrade::check_binary(&staged, relaunch, &version, deadline).await {
            let _ = std::fs::remove_file(&staged);
            return Err(format!(
                "the new puppet {version} did not start: {why}; puppet {} stays",
                crate::VERSION
            ));
        }
        log(&format!("the new binary reached the puppeteer as {version}"));
        let now = crate::records::now_ms();
        let pending = upgrade::Pending {
            run_id: run_id.clone(),
            attempt: target.attempt,
            from: crate::VERSION.to_string(),
            to: version.clone(),
            exe: relaunch.exe.clone(),
            previous: relaunch.previous(),
            swapped_ms: now,
            deadline_ms: now + u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX / 2),
            starts: 0,
            rolled_back: None,
        };
        if let Err(e) = upgrade::save_pending(&ctx.state_dir, &pending) {
            let _ = std::fs::remove_file(&staged);
            return Err(format!("cannot record the upgrade in {}: {e}", ctx.state_dir.display()));
        }
        if let Err(e) = upgrade::swap(&relaunch.exe, &staged, &pending.previous) {
            let _ = std::fs::remove_file(&staged);
            let _ = std::fs::remove_file(ctx.state_dir.join(upgrade::PENDING_FILE));
            return Err(format!("cannot replace {}: {e}; puppet {} stays", relaunch.exe.display(), crate::VERSION));
        }
        log(&format!(
            "replaced {} (the previous binary is kept as {} until the new one proves itself); restarting as puppet {version}",
            relaunch.exe.display(),
            pending.previous.display()
        ));
        Ok(Upgraded::Swapped(quiet))
    }
    .await;
    let report = |outcome: Outcome, exit_code: i32, message: String| FinishReport {
        outcome,
        exit_code,
        signal: 0,
        duration: began.elapsed(),
        log_length: ctx.store.spool_len(run_id),
        message,
    };
    let report = match outcome {
        Ok(Upgraded::Swapped(quiet)) => {
            // Restart as the new binary, which reports the run. The pause
            // ends only after the shutdown began: no new run is taken.
            ctx.restart.store(true, std::sync::atomic::Ordering::SeqCst);
            ctx.shutdown.cancel();
            drop(quiet);
            return;
        }
        Ok(Upgraded::Already(message)) => report(Outcome::Exited, 0, message),
        Err(_) if ctx.shutdown.is_cancelled() => return,
        Err(why) => {
            tracing::error!(%run_id, "upgrade failed: {why}");
            upgrade::append_line(&ctx.store, run_id, &why);
            report(Outcome::Exited, 1, why)
        }
    };
    record.phase = Phase::Finished;
    record.finish = Some(report.clone());
    save_or_log(&ctx.store, &record);
    ctx.held.set_stage(run_id, Stage::Finishing);
    report_spooled(ctx, target, report).await;
}

/// Uploads what a run's spool holds beyond what the puppeteer has, then
/// finishes the run.
async fn report_spooled(ctx: &RunContext, target: &LogTarget, report: FinishReport) {
    let spool_len = ctx.store.spool_len(&target.run_id);
    if spool_len == 0 {
        report_and_forget(ctx, target, report, 0).await;
        return;
    }
    let uploaded = match target.committed(&ctx.log_client, &ctx.abandon).await {
        Ok(committed) => {
            // The sender is dropped at once: the spool will not grow.
            let (_, progress) = watch::channel(spool_len);
            upload::stream_log(
                &ctx.log_client,
                target,
                &ctx.store.spool_path(&target.run_id),
                progress,
                committed,
                &ctx.abandon,
            )
            .await
        }
        Err(e) => Err(e),
    };
    finish_after_upload(ctx, target, report, uploaded).await;
}

/// What a run must remember to be judged after a reboot, if its task expects one.
fn reboot_expectation(ctx: &RunContext, assignment: &Assignment) -> Option<RebootExpectation> {
    let spec = assignment.spec.as_ref()?;
    if !spec.expect_reboot {
        return None;
    }
    let window = rpc::from_proto_duration(spec.reboot_window.as_ref())
        .filter(|w| !w.is_zero())
        .unwrap_or(DEFAULT_REBOOT_WINDOW);
    Some(RebootExpectation {
        boot_id: ctx.boot_id.clone(),
        window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
        started_at_ms: crate::records::now_ms(),
    })
}

/// Reports a run found on disk at start-up: uploads what its spool holds
/// and finishes it (as interrupted, unless it had finished).
pub async fn recover_run(ctx: RunContext, mut record: RunRecord) {
    let run_id = record.run_id.clone();
    let _guard = ctx.held.guard(&run_id);
    let target = LogTarget {
        run_id: run_id.clone(),
        attempt: record.attempt,
        limit: record.log_limit,
    };
    let rebooted = record
        .reboot
        .as_ref()
        .is_some_and(|r| !r.boot_id.is_empty() && r.boot_id != ctx.boot_id);
    if record.phase == Phase::Started && !rebooted {
        // The child writes to the spool itself and may have outlived the
        // puppet (after a crash, or a restart without the reboot a run
        // expected): stop it before the spool's length is taken as final.
        // After a reboot there is nothing left to kill, and the noted
        // process group belongs to the previous boot.
        let store = ctx.store.clone();
        let id = run_id.clone();
        let _ = tokio::task::spawn_blocking(move || store.kill_orphan(&id)).await;
    }
    let spool_len = ctx.store.spool_len(&run_id);
    let report = record.recovery_report(spool_len, &ctx.boot_id, crate::records::now_ms());
    if record.phase != Phase::Finished && report.outcome == Outcome::Rebooted {
        tracing::info!(%run_id, attempt = record.attempt, "{}", report.message);
        record.phase = Phase::Finished;
        record.finish = Some(report.clone());
        save_or_log(&ctx.store, &record);
    } else if record.phase != Phase::Finished {
        tracing::warn!(%run_id, attempt = record.attempt, reason = %report.message, "run was cut short by a restart of the puppet; reporting it as interrupted");
        record.phase = Phase::Finished;
        record.finish = Some(report.clone());
        save_or_log(&ctx.store, &record);
    }
    report_spooled(&ctx, &target, report).await;
}

enum Started {
    Proceed,
    /// The server said not to start it; there is nothing to report.
    Dropped,
    /// The puppet is shutting down; the record stays for the next start.
    Stopped,
    /// Not started; report this instead.
    Abort(FinishReport),
}

async fn start(ctx: &RunContext, target: &LogTarget, cancel: &CancellationToken) -> Started {
    if cancel.is_cancelled() {
        return not_started(ctx);
    }
    let message = start_request(target);
    // The operator's cancel token is a child of the shutdown token, so both
    // end the retries.
    let answer = send_start(&ctx.client, message, cancel).await;
    match answer {
        Ok(answer) if !answer.proceed => {
            tracing::info!(run_id = %target.run_id, "the puppeteer says not to start the run");
            Started::Dropped
        }
        Ok(_) if cancel.is_cancelled() => not_started(ctx),
        Ok(_) => Started::Proceed,
        Err(CallError::Stopped) => not_started(ctx),
        Err(CallError::Refused(status)) => {
            tracing::error!(run_id = %target.run_id, code = ?status.code(), error = status.message(), "the puppeteer refused to start the run; dropping it");
            Started::Dropped
        }
    }
}

/// The `StartRun` of a run attempt, stamped now.
pub(crate) fn start_request(target: &LogTarget) -> StartRunRequest {
    StartRunRequest {
        run_id: target.run_id.clone(),
        attempt: target.attempt,
        started_at: Some(rpc::timestamp_now()),
    }
}

/// Sends `StartRun` until answered, refused, or `stop` fires.
pub(crate) async fn send_start(
    client: &Client,
    message: StartRunRequest,
    stop: &CancellationToken,
) -> Result<StartRunResponse, CallError> {
    rpc::retry("StartRun", stop, || {
        let mut client = client.clone();
        let message = message.clone();
        async move {
            rpc::with_deadline(
                CALL_TIMEOUT,
                client.start_run(rpc::request(message, CALL_TIMEOUT)),
            )
            .await
        }
    })
    .await
}

/// Sends `FinishRun` until answered, refused, or `stop` fires.
pub(crate) async fn send_finish(
    client: &Client,
    target: &LogTarget,
    report: &FinishReport,
    stop: &CancellationToken,
) -> Result<FinishRunResponse, CallError> {
    let message = rpc::finish_request(&target.run_id, target.attempt, report);
    rpc::retry("FinishRun", stop, || {
        let mut client = client.clone();
        let message = message.clone();
        async move {
            rpc::with_deadline(
                CALL_TIMEOUT,
                client.finish_run(rpc::request(message, CALL_TIMEOUT)),
            )
            .await
        }
    })
    .await
}

fn not_started(ctx: &RunContext) -> Started {
    if ctx.shutdown.is_cancelled() {
        Started::Stopped
    } else {
        Started::Abort(report_without_output(
            Outcome::Cancelled,
            "cancelled before it started".into(),
        ))
    }
}

fn exec_request(ctx: &RunContext, assignment: &Assignment) -> Result<ExecRequest, String> {
    let spec = assignment.spec.clone().unwrap_or_default();
    let program = rpc::program_of(&spec).ok_or("the assignment holds no program")?;
    let workdir = if spec.workdir.is_empty() {
        ctx.state_dir.clone()
    } else {
        PathBuf::from(&spec.workdir)
    };
    Ok(ExecRequest {
        program,
        env: spec.env.into_iter().collect(),
        workdir,
        timeout: rpc::from_proto_duration(spec.timeout.as_ref()).filter(|t| !t.is_zero()),
        script_path: ctx.store.script_path(&assignment.run_id),
        pid_path: Some(ctx.store.pid_path(&assignment.run_id)),
        leave_running_on_shutdown: spec.expect_reboot,
    })
}

async fn finish_after_upload(
    ctx: &RunContext,
    target: &LogTarget,
    report: FinishReport,
    uploaded: Result<u64, CallError>,
) {
    match uploaded {
        Ok(committed) => report_and_forget(ctx, target, report, committed).await,
        Err(CallError::Stopped) => {
            tracing::info!(run_id = %target.run_id, "shutting down; the run will be reported at the next start");
        }
        Err(CallError::Refused(status)) => {
            tracing::error!(run_id = %target.run_id, code = ?status.code(), error = status.message(), "the puppeteer refused the run's output");
            report_and_forget(ctx, target, report, 0).await;
        }
    }
}

/// Sends `FinishRun` until acknowledged (or refused), then forgets the run.
async fn report_and_forget(
    ctx: &RunContext,
    target: &LogTarget,
    mut report: FinishReport,
    committed: u64,
) {
    // The server may hold more than the spool if the machine lost the
    // spool's tail in a crash; the log is as long as the longer of the two.
    report.log_length = report.log_length.max(committed);
    if finish(ctx, target, &report).await {
        forget(ctx, &target.run_id);
    }
}

/// Returns whether the run is done with (acknowledged or refused).
async fn finish(ctx: &RunContext, target: &LogTarget, report: &FinishReport) -> bool {
    let answer = send_finish(&ctx.client, target, report, &ctx.abandon).await;
    match answer {
        Ok(answer) => {
            // `succeeded`, not the enum's number.
            let state = geppetto_proto::v1::RunState::try_from(answer.state)
                .map(|state| {
                    state
                        .as_str_name()
                        .trim_start_matches("RUN_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| format!("unknown ({})", answer.state));
            tracing::info!(run_id = %target.run_id, %state, "run reported");
            true
        }
        Err(CallError::Stopped) => false,
        Err(CallError::Refused(status)) => {
            tracing::error!(run_id = %target.run_id, code = ?status.code(), error = status.message(), "the puppeteer refused the run's finish; forgetting the run");
            true
        }
    }
}

fn forget(ctx: &RunContext, run_id: &str) {
    if let Err(e) = ctx.store.forget(run_id) {
        tracing::warn!(%run_id, error = %e, "cannot remove the run's files");
    }
}

fn save_or_log(store: &RunStore, record: &RunRecord) {
    if let Err(e) = store.save(record) {
        tracing::error!(run_id = %record.run_id, error = %e, "cannot update the run record");
    }
}

pub(crate) fn report_without_output(outcome: Outcome, message: String) -> FinishReport {
    FinishReport {
        outcome,
        exit_code: 0,
        signal: 0,
        duration: Duration::ZERO,
        log_length: 0,
        message,
    }
}
