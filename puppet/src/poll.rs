//! The poll loop: one for the agent and for every simulated puppet.
//!
//! A puppet long-polls the puppeteer, saying what it holds and how many runs
//! it can take; the answer brings new runs and cancels. The loop decides
//! everything about the conversation: the hold it asks for (tuned to the
//! path, see [`crate::hold`]), the client-side deadline, the facts it sends,
//! the credential rotation, which assignments it admits (a redelivered run
//! is never started twice, see the crate's docs), reporting new runs before
//! the next poll ([`settle`]), and backing off on errors.
//!
//! What happens to an admitted run is not the loop's business: it asks
//! [`Runs`] for the run's task. The agent's executes a child process with
//! records and a spool on disk (`run::run_assignment`); the simulator's
//! pretends to (`simulate`). So the 10,000-puppet benchmark measures the
//! loop that users run, with only the execution swapped.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use geppetto_proto::v1::{Assignment, Facts, PollRequest, PollResponse};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::enroll::{self, Credential};
use crate::facts::FactsSchedule;
use crate::held::{Admission, HeldRuns, Stage};
use crate::hold::{HoldLimits, HoldTuner, PollEnd, Reason};
use crate::records::is_safe_run_id;
use crate::rpc::{self, Client, Retry};

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

/// What a puppet does besides polling: the one thing the agent and the
/// simulator do differently.
pub trait Runs: Send + Sync {
    /// The facts this puppet reports (sent when they changed, and
    /// periodically: see [`FactsSchedule`]).
    fn facts(&self) -> Facts;
    /// The task that executes a newly admitted run and reports it. It must
    /// hold the run in the loop's [`HeldRuns`] (`held.guard`) until the run
    /// was reported, and stop when `cancel` fires.
    fn run(
        &self,
        assignment: Assignment,
        cancel: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static;
    /// How each poll ended (`true`: answered), for counters.
    fn polled(&self, _answered: bool) {}
    /// What this puppet offers its site's peers (sent until a poll carrying
    /// it is answered); `None`: it serves no peers.
    fn peer_offer(&self) -> Option<geppetto_proto::v1::PeerOffer> {
        None
    }
}

/// One puppet's side of the conversation.
pub struct PollLoop<R> {
    pub runs: R,
    pub client: Client,
    pub held: HeldRuns,
    /// Runs executed at once.
    pub slots: u32,
    pub hold_limits: HoldLimits,
    /// Where the credential is kept, for the message telling how to enroll again.
    pub state_dir: PathBuf,
    pub shutdown: CancellationToken,
}

impl<R: Runs> PollLoop<R> {
    /// Polls until shutdown. Run tasks go into `tasks`, which is reaped
    /// while waiting; what is left at shutdown is the caller's to drain.
    pub async fn run(&self, credential: &mut Credential, tasks: &mut JoinSet<()>) {
        let mut backoff = Backoff::standard();
        let mut schedule = FactsSchedule::default();
        let mut tuner = HoldTuner::new(self.hold_limits);
        let mut offer = self.runs.peer_offer();
        while !self.shutdown.is_cancelled() {
            let hold = tuner.hold();
            let timeout = poll_timeout(hold);
            let snapshot = self.held.snapshot(self.slots);
            let sent_free = snapshot.free_slots;
            let facts = self.runs.facts();
            let send_facts = schedule.due(&facts, Instant::now());
            let message = PollRequest {
                free_slots: snapshot.free_slots,
                known_runs: snapshot.known_runs,
                facts: send_facts.then(|| facts.clone()),
                hold: Some(rpc::to_proto_duration(hold)),
                finishing_runs: snapshot.finishing_runs,
                polls_cut: tuner.polls_cut(),
                peer: offer.clone(),
            };
            let mut client = self.client.clone();
            let sent = Instant::now();
            // Dropping the call on its deadline drops its connection too: a
            // connection with a request in flight is never returned to the pool.
            let call = tokio::time::timeout(timeout, client.poll(rpc::request(message, timeout)));
            let Some(result) = self.await_poll(tasks, sent_free, call).await else {
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
            self.runs.polled(result.is_ok());
            match result {
                Ok(answer) => {
                    backoff.reset();
                    if send_facts {
                        schedule.sent(&facts, Instant::now());
                    }
                    offer = None;
                    take_new_credential(credential, &answer.new_credential);
                    let admitted = self.handle_answer(tasks, answer);
                    self.settle(tasks, &admitted).await;
                }
                Err(status) => {
                    let delay = if rpc::classify(&status) == Retry::Slowly {
                        tracing::error!(
                            error = status.message(),
                            "the puppeteer refused this puppet's credential (revoked, or rotated while it was offline past the grace period); remove {} and enroll again; retrying slowly",
                            enroll::credential_path(&self.state_dir).display()
                        );
                        backoff.slow_delay()
                    } else {
                        tracing::warn!(code = ?status.code(), error = status.message(), "poll failed");
                        backoff.next_delay()
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.shutdown.cancelled() => {}
                    }
                }
            }
        }
    }

    /// Waits for the poll's answer while reaping finished run tasks. Returns
    /// `None` when the poll was abandoned: on shutdown, or when a slot freed
    /// up while the server holds a poll that said fewer slots were free (it
    /// would otherwise not offer work for a whole hold).
    async fn await_poll<F>(
        &self,
        tasks: &mut JoinSet<()>,
        sent_free: u32,
        call: F,
    ) -> Option<F::Output>
    where
        F: Future,
    {
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => return Some(result),
                _ = self.shutdown.cancelled() => return None,
                _ = self.held.slot_freed() => {
                    if self.held.snapshot(self.slots).free_slots > sent_free {
                        return None;
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_task_end(joined),
            }
        }
    }

    /// Handles a poll's answer; returns the runs it admitted.
    fn handle_answer(&self, tasks: &mut JoinSet<()>, answer: PollResponse) -> Vec<String> {
        let mut admitted = Vec::new();
        for assignment in answer.assignments {
            if let Some(run_id) = self.admit(tasks, assignment) {
                admitted.push(run_id);
            }
        }
        for run_id in answer.cancel_runs {
            if self.held.cancel(&run_id) {
                tracing::info!(%run_id, "run cancelled by the puppeteer");
            } else {
                tracing::debug!(%run_id, "cancel for a run this puppet does not hold");
            }
        }
        admitted
    }

    /// Holds a new assignment and starts its task; recognises redeliveries.
    /// Returns the run's id if its task was started.
    fn admit(&self, tasks: &mut JoinSet<()>, assignment: Assignment) -> Option<String> {
        let run_id = assignment.run_id.clone();
        if !is_safe_run_id(&run_id) {
            tracing::error!(%run_id, "ignoring an assignment whose run id is not a safe file name");
            return None;
        }
        // This runs synchronously between two polls: the next poll already
        // lists the run in known_runs.
        match self
            .held
            .admit(&run_id, assignment.attempt, Stage::Starting, &self.shutdown)
        {
            Admission::New(cancel) => {
                tasks.spawn(self.runs.run(assignment, cancel));
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

    /// Reports first, then polls: after an answer that brought new runs,
    /// the next poll waits until those runs were started, and until they
    /// finished and were reported if they execute for at most
    /// [`REPORT_FIRST`] (never longer than [`REPORT_FIRST_CAP`] in all).
    ///
    /// Over HTTP/1.1 a held poll occupies its connection, so a report sent
    /// beside it needs a second connection: a new TCP and TLS handshake (two
    /// round trips on a slow link, and a second descriptor at each end), and
    /// the held poll is dropped with its connection when the run frees its
    /// slot. A run that is done within the grace (most fleet commands)
    /// reports on the connection the poll came back on, and the next poll
    /// follows on the same one. The grace counts execution only: a busy
    /// puppeteer answering a fleet-wide fan-out slowly must not make ten
    /// thousand puppets open a second connection each at the same moment.
    /// The price: a cancel of a run in its first two seconds waits for that
    /// poll, and a longer run reports beside its held poll as before.
    async fn settle(&self, tasks: &mut JoinSet<()>, admitted: &[String]) {
        if admitted.is_empty() {
            return;
        }
        let settled = self.held.settle(admitted, REPORT_FIRST, REPORT_FIRST_CAP);
        tokio::pin!(settled);
        loop {
            tokio::select! {
                _ = &mut settled => return,
                _ = self.shutdown.cancelled() => return,
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => report_task_end(joined),
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

/// Logs a run task that panicked (its run is reported at the next start).
pub fn report_task_end(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "a run task panicked; its run will be reported at the next start");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_deadline_leaves_a_bounded_margin_over_the_hold() {
        assert_eq!(
            poll_timeout(Duration::from_secs(10)),
            Duration::from_secs(15)
        );
        assert_eq!(
            poll_timeout(Duration::from_secs(50)),
            Duration::from_secs(50) + Duration::from_millis(12_500)
        );
        assert_eq!(
            poll_timeout(Duration::from_secs(300)),
            Duration::from_secs(315)
        );
    }
}
