//! The agent: enrollment, the poll loop and the run tasks it owns.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::time::{Duration, Instant};

use anyhow::Context;
use geppetto_proto::client::{Channel, Endpoint, TokenSlot};
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_proto::v1::{Assignment, PollRequest, PollResponse};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::AgentConfig;
use crate::enroll::{self, Credential};
use crate::facts::{self, FactsSchedule};
use crate::held::{Admission, HeldRuns, Stage};
use crate::hold::{HoldTuner, PollEnd, Reason};
use crate::records::{RunStore, is_safe_run_id};
use crate::rpc::{self, Retry};
use crate::run::{self, RunContext};

/// Added to the hold for the client-side deadline of a poll: a quarter of
/// the hold, within these bounds. A poll with no answer by then is dropped
/// with its connection, since a path that went silent (a NAT mapping that
/// expired, a dead radio link) may never say so.
const POLL_MARGIN_MIN: Duration = Duration::from_secs(5);
const POLL_MARGIN_MAX: Duration = Duration::from_secs(15);
/// After an answer that brought new runs, the next poll waits for them to
/// be started and, if they execute for at most this long, finished and
/// reported (see [`settle`]).
pub const REPORT_FIRST: Duration = Duration::from_secs(2);
/// The longest the next poll waits for those reports in all: well inside
/// the puppeteer's lease (by default its poll timeout plus a minute), so
/// that a puppet whose reports are slow is not taken for a silent one.
pub const REPORT_FIRST_CAP: Duration = Duration::from_secs(30);
/// How long run tasks may go on reporting after a shutdown began.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long run tasks may take to wind down once reporting was abandoned.
const ABANDON_GRACE: Duration = Duration::from_secs(3);

/// Runs the puppet until `shutdown` is cancelled (then returns `Ok`) or a
/// fatal error (bad configuration, enrollment refused) occurs.
pub async fn run_agent(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.state_dir)
        .with_context(|| {
            format!(
                "cannot create the state directory {}",
                config.state_dir.display()
            )
        })?;
    std::fs::set_permissions(&config.state_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| {
            format!(
                "cannot restrict the state directory {}",
                config.state_dir.display()
            )
        })?;
    let store = RunStore::open(&config.state_dir)
        .with_context(|| format!("cannot create {}/runs", config.state_dir.display()))?;
    let credential = enroll::load_credential(&config.state_dir)?;
    if credential.is_none() && config.enroll_token.is_none() {
        anyhow::bail!(
            "this puppet has no credential in {} and no enrollment token: give --enroll-token TOKEN",
            config.state_dir.display()
        );
    }

    let token_slot = TokenSlot::default();
    let endpoint = Endpoint {
        url: config.server.clone(),
        ca_file: config.ca_file.clone(),
        transport: config.transport,
    };
    let channel = Channel::with_proxy(&endpoint, token_slot.clone(), &config.proxy)?;
    let proxy = channel.proxy().unwrap_or_else(|| "none".into());
    let client = PuppetServiceClient::new(channel);
    tracing::info!(server = %config.server, transport = %config.transport, %proxy, name = %config.name, slots = config.slots, "puppet starting");

    let credential = match credential {
        Some(credential) => credential,
        None => {
            let facts = facts::collect(&config.state_dir);
            match enroll::enroll(&config, &client, facts, &shutdown).await? {
                Some(credential) => credential,
                None => return Ok(()),
            }
        }
    };
    let mut credential = Credential::new(&config.state_dir, token_slot, credential)?;

    let ctx = RunContext {
        log_client: crate::upload::log_client(&client, config.compression),
        client,
        store,
        held: HeldRuns::default(),
        state_dir: config.state_dir.clone(),
        shutdown: shutdown.clone(),
        abandon: CancellationToken::new(),
        artifacts: crate::artifacts::ArtifactCache::new(
            &config.state_dir,
            config.artifact_cache_max,
        ),
        boot_id: facts::boot_id(config.boot_id_file.as_deref()),
    };
    let mut tasks = JoinSet::new();
    recover(&ctx, &mut tasks)?;
    poll_loop(&config, &ctx, &mut credential, &mut tasks).await;
    drain(&ctx, &mut tasks).await;
    Ok(())
}

/// Holds every run recorded by an earlier process and starts reporting it.
fn recover(ctx: &RunContext, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let records = ctx
        .store
        .load_all()
        .context("cannot read the run records")?;
    for record in records {
        match ctx.held.admit(
            &record.run_id,
            record.attempt,
            Stage::Finishing,
            &ctx.shutdown,
        ) {
            Admission::New(_) => {
                tasks.spawn(run::recover_run(ctx.clone(), record));
            }
            _ => tracing::warn!(run_id = %record.run_id, "duplicate run record ignored"),
        }
    }
    Ok(())
}

async fn poll_loop(
    config: &AgentConfig,
    ctx: &RunContext,
    credential: &mut Credential,
    tasks: &mut JoinSet<()>,
) {
    let mut backoff = Backoff::standard();
    let mut schedule = FactsSchedule::default();
    let mut tuner = HoldTuner::new(config.hold_limits());
    while !ctx.shutdown.is_cancelled() {
        let hold = tuner.hold();
        let timeout = poll_timeout(hold);
        let snapshot = ctx.held.snapshot(config.slots);
        let mut current_facts = facts::collect(&config.state_dir);
        if config.boot_id_file.is_some() {
            current_facts.boot_id = ctx.boot_id.clone();
        }
        let send_facts = schedule.due(&current_facts, Instant::now());
        let message = PollRequest {
            free_slots: snapshot.free_slots,
            known_runs: snapshot.known_runs,
            facts: send_facts.then(|| current_facts.clone()),
            hold: Some(rpc::to_proto_duration(hold)),
            finishing_runs: snapshot.finishing_runs,
            polls_cut: tuner.polls_cut(),
        };
        let mut client = ctx.client.clone();
        let sent = Instant::now();
        // Dropping the call on its deadline drops its connection too: a
        // connection with a request in flight is never returned to the pool.
        let call = tokio::time::timeout(timeout, client.poll(rpc::request(message, timeout)));
        let Some(result) = await_poll(config, ctx, tasks, snapshot.free_slots, call).await else {
            // Shut down, or a slot was freed: the next poll says so at once.
            continue;
        };
        let (result, end) = match result {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                let end = answered(&answer);
                (Ok(answer), end)
            }
            Ok(Err(status)) if rpc::broke_on_the_way(&status) => (Err(status), PollEnd::Broken),
            Ok(Err(status)) => (Err(status), PollEnd::Other),
            Err(_) => (
                Err(tonic::Status::deadline_exceeded(format!(
                    "no answer from the puppeteer within {}; dropping the connection",
                    humantime::format_duration(timeout)
                ))),
                PollEnd::Silent,
            ),
        };
        if let Some(change) = tuner.observe(hold, sent.elapsed(), end, Instant::now()) {
            log_hold_change(change, tuner.polls_cut());
        }
        match result {
            Ok(answer) => {
                backoff.reset();
                if send_facts {
                    schedule.sent(&current_facts, Instant::now());
                }
                take_new_credential(credential, &answer.new_credential);
                let admitted = handle_answer(ctx, tasks, answer);
                settle(ctx, tasks, &admitted).await;
            }
            Err(status) => {
                let delay = if rpc::classify(&status) == Retry::Slowly {
                    tracing::error!(
                        error = status.message(),
                        "the puppeteer refused this puppet's credential (revoked, or rotated while it was offline past the grace period); remove {} and enroll again; retrying slowly",
                        enroll::credential_path(&config.state_dir).display()
                    );
                    backoff.slow_delay()
                } else {
                    tracing::warn!(code = ?status.code(), error = status.message(), "poll failed");
                    backoff.next_delay()
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = ctx.shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// The client-side deadline of a poll asking for `hold`.
fn poll_timeout(hold: Duration) -> Duration {
    hold + (hold / 4).clamp(POLL_MARGIN_MIN, POLL_MARGIN_MAX)
}

/// What an answered poll says about the path.
fn answered(answer: &PollResponse) -> PollEnd {
    PollEnd::Answered {
        granted: rpc::from_proto_duration(answer.hold.as_ref()),
        empty: answer.assignments.is_empty() && answer.cancel_runs.is_empty(),
    }
}

fn log_hold_change(change: crate::hold::Change, polls_cut: u32) {
    let from = humantime::format_duration(change.from).to_string();
    let to = humantime::format_duration(change.to).to_string();
    match change.reason {
        Reason::Cut { after } => tracing::info!(
            %from, %to, polls_cut,
            cut_after = %humantime::format_duration(after),
            "a poll was cut short by something on the path; lowering the poll hold"
        ),
        Reason::Silent => tracing::info!(
            %from, %to, polls_cut,
            "a poll brought nothing back by its deadline (a silent path); lowering the poll hold"
        ),
        Reason::Probe => {
            tracing::info!(%from, %to, "polls came back cleanly; raising the poll hold")
        }
        Reason::ServerCap => tracing::info!(%from, %to, "the puppeteer caps the poll hold"),
    }
}

/// Waits for the poll's answer while reaping finished run tasks. Returns
/// `None` when the poll was abandoned: on shutdown, or when a slot freed up
/// while the server holds a poll that said fewer slots were free (it would
/// otherwise not offer work for a whole hold).
async fn await_poll<F>(
    config: &AgentConfig,
    ctx: &RunContext,
    tasks: &mut JoinSet<()>,
    sent_free: u32,
    call: F,
) -> Option<F::Output>
where
    F: std::future::Future,
{
    tokio::pin!(call);
    loop {
        tokio::select! {
            result = &mut call => return Some(result),
            _ = ctx.shutdown.cancelled() => return None,
            _ = ctx.held.slot_freed() => {
                if ctx.held.snapshot(config.slots).free_slots > sent_free {
                    return None;
                }
            }
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_task_end(joined),
        }
    }
}

/// Switches to the credential of an operator's rotation, before anything
/// else of the answer is handled. The value itself is never logged.
fn take_new_credential(credential: &mut Credential, new: &str) {
    match credential.rotate(new) {
        Ok(true) => tracing::info!("credential rotated"),
        Ok(false) => {}
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "cannot take the rotated credential; the current one stays in use and the next poll offers the new one again"
        ),
    }
}

/// Handles a poll's answer; returns the runs it admitted.
fn handle_answer(ctx: &RunContext, tasks: &mut JoinSet<()>, answer: PollResponse) -> Vec<String> {
    let mut admitted = Vec::new();
    for assignment in answer.assignments {
        if let Some(run_id) = admit(ctx, tasks, assignment) {
            admitted.push(run_id);
        }
    }
    for run_id in answer.cancel_runs {
        if ctx.held.cancel(&run_id) {
            tracing::info!(%run_id, "run cancelled by the puppeteer");
        } else {
            tracing::debug!(%run_id, "cancel for a run this puppet does not hold");
        }
    }
    admitted
}

/// Reports first, then polls: after an answer that brought new runs, the
/// next poll waits until those runs were started, and until they finished
/// and were reported if they execute for at most [`REPORT_FIRST`]
/// (never longer than [`REPORT_FIRST_CAP`] in all).
///
/// Over HTTP/1.1 a held poll occupies its connection, so a report sent
/// beside it needs a second connection: a new TCP and TLS handshake (two
/// round trips on a slow link, and a second descriptor at each end), and
/// the held poll is dropped with its connection when the run frees its slot.
/// A run that is done within the grace (most fleet commands) reports on
/// the connection the poll came back on, and the next poll follows on the
/// same one. The grace counts execution only: a busy puppeteer answering a
/// fleet-wide fan-out slowly must not make ten thousand puppets open a
/// second connection each at the same moment. The price: a cancel of a run
/// in its first two seconds waits for that poll, and a longer run reports
/// beside its held poll as before.
async fn settle(ctx: &RunContext, tasks: &mut JoinSet<()>, admitted: &[String]) {
    if admitted.is_empty() {
        return;
    }
    let settled = ctx.held.settle(admitted, REPORT_FIRST, REPORT_FIRST_CAP);
    tokio::pin!(settled);
    loop {
        tokio::select! {
            _ = &mut settled => return,
            _ = ctx.shutdown.cancelled() => return,
            Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_task_end(joined),
        }
    }
}

/// Holds a new assignment and starts its task; recognises redeliveries.
/// Returns the run's id if its task was started.
fn admit(ctx: &RunContext, tasks: &mut JoinSet<()>, assignment: Assignment) -> Option<String> {
    let run_id = assignment.run_id.clone();
    if !is_safe_run_id(&run_id) {
        tracing::error!(%run_id, "ignoring an assignment whose run id is not a safe file name");
        return None;
    }
    // This runs synchronously between two polls: the next poll already
    // lists the run in known_runs.
    match ctx
        .held
        .admit(&run_id, assignment.attempt, Stage::Starting, &ctx.shutdown)
    {
        Admission::New(cancel) => {
            tasks.spawn(run::run_assignment(ctx.clone(), assignment, cancel));
            return Some(run_id);
        }
        Admission::Duplicate => {
            tracing::debug!(%run_id, attempt = assignment.attempt, "redelivered assignment ignored: already held");
        }
        Admission::OtherAttempt(held_attempt) => {
            tracing::warn!(%run_id, attempt = assignment.attempt, held_attempt, "assignment of another attempt ignored until the held one is reported");
        }
    }
    None
}

fn report_task_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a run task panicked; its run will be reported at the next start");
    }
}

/// Lets run tasks kill their children and report for a grace period, then
/// abandons what is left to the next start.
async fn drain(ctx: &RunContext, tasks: &mut JoinSet<()>) {
    {
        let reap = async {
            while let Some(joined) = tasks.join_next().await {
                report_task_end(joined);
            }
        };
        tokio::pin!(reap);
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut reap)
            .await
            .is_err()
        {
            ctx.abandon.cancel();
            if tokio::time::timeout(ABANDON_GRACE, &mut reap)
                .await
                .is_err()
            {
                // Only a task stuck on local I/O can get here. Its run record
                // is on disk, so the next start reports the run.
                tracing::warn!("run tasks did not stop in time; aborting them");
            }
        }
    }
    tasks.abort_all();
    tracing::info!("puppet stopped");
}
