//! The scheduler: pure decisions from state and time. No I/O, no clock.
//!
//! # Dispatch
//! Each puppet has a queue of unfinished runs in creation order. When a
//! puppet polls, [`plan_poll`] decides, from that queue and what the puppet
//! says it holds, what the poll answers:
//!
//! - A run `offered` earlier that the puppet does not list among the runs it
//!   holds never reached it (the answer was lost): it is offered again, same
//!   attempt. The puppet recognises a run it already has by id and attempt,
//!   so a redelivery never starts a run twice.
//! - `queued` runs are offered in queue order while the puppet has free
//!   slots: one run at a time with the default single slot.
//! - A run `running` that the puppet no longer holds was lost with the
//!   puppet's process (it restarted without its records): it becomes
//!   `interrupted`. It is never silently re-executed.
//! - Runs the puppet holds that the puppeteer has cancelled, finished, or
//!   never gave it are listed for the puppet to stop and forget.
//!
//! A disabled puppet keeps polling (it is its heartbeat) but is offered
//! nothing.
//!
//! # Slots during a held poll
//! A poll sent while busy says "no free slot" and is then held. When a run
//! it was executing finishes during the hold, its slot is free again: the
//! caller counts such runs in `freed_during_hold` so the next queued run is
//! offered on that same held poll, without waiting for the next one.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::domain::{Job, Millis, Outcome, PuppetState, Run, RunState};

/// What a puppet said in its poll, and what changed since it was sent.
#[derive(Debug, Clone, Copy)]
pub struct PollReport<'a> {
    pub free_slots: u32,
    /// Runs the puppet holds (executing or finishing).
    pub known: &'a HashSet<String>,
    /// Runs whose process ended on the puppet (they hold no slot).
    pub finishing: &'a HashSet<String>,
    /// Runs executing when the poll was sent that have finished since.
    pub freed_during_hold: u32,
    /// Capacity free now, by resource (absent: the resource does not exist).
    pub available: &'a HashMap<String, u32>,
    /// What each queued run's job says (absent: go).
    pub gates: &'a HashMap<String, Gate>,
    /// Jobs that keep strict order: a run of theirs blocked on a resource
    /// holds back every later run on this puppet.
    pub ordered_jobs: &'a HashSet<String>,
}

/// What a poll answers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PollPlan {
    /// Queued runs to offer now (they become `offered`).
    pub offer: Vec<String>,
    /// Offered runs to send again: the puppet never got them.
    pub redeliver: Vec<String>,
    /// Running runs the puppet no longer holds.
    pub interrupted: Vec<String>,
    /// Runs the puppet must stop and forget.
    pub cancel: Vec<String>,
    /// Runs that could start but for a resource: (run, resource).
    pub blocked: Vec<(String, String)>,
}

impl PollPlan {
    /// True when the poll has something to answer (it is not held further).
    pub fn has_news(&self) -> bool {
        !(self.offer.is_empty() && self.redeliver.is_empty() && self.cancel.is_empty())
    }
}

/// Decides a poll's answer. `active` is the puppet's queue of unfinished
/// runs, in order.
pub fn plan_poll(state: PuppetState, active: &[Run], report: &PollReport<'_>) -> PollPlan {
    let mut plan = PollPlan::default();
    let mut free = report.free_slots.saturating_add(report.freed_during_hold);
    let mut available = report.available.clone();
    let mut held_back = false;
    let enabled = state == PuppetState::Enabled;
    let active_ids: HashSet<&str> = active.iter().map(|r| r.id.as_str()).collect();

    for run in active {
        let known = report.known.contains(&run.id);
        match run.state {
            RunState::Offered if !known && enabled && free > 0 => {
                plan.redeliver.push(run.id.clone());
                free -= 1;
            }
            RunState::Running if !known => plan.interrupted.push(run.id.clone()),
            RunState::Running if run.cancel_requested && !report.finishing.contains(&run.id) => {
                plan.cancel.push(run.id.clone());
            }
            RunState::Queued | RunState::Waiting if enabled && free > 0 => {
                if let Some(Gate::Wait(_) | Gate::Skip(_)) = report.gates.get(&run.id) {
                    continue;
                }
                if held_back {
                    continue;
                }
                // A run takes all its resources or none; one that cannot
                // does not block the runs after it.
                match lacking(&available, run) {
                    Some(resource) => {
                        if report.ordered_jobs.contains(&run.job_id) {
                            held_back = true;
                        }
                        plan.blocked.push((run.id.clone(), resource));
                    }
                    None => {
                        for need in &run.needs {
                            *available.get_mut(&need.name).expect("checked") -= need.count;
                        }
                        plan.offer.push(run.id.clone());
                        free -= 1;
                    }
                }
            }
            _ => {}
        }
    }
    let mut stale: Vec<String> = report
        .known
        .iter()
        .filter(|id| !active_ids.contains(id.as_str()) && !report.finishing.contains(*id))
        .cloned()
        .collect();
    stale.sort();
    plan.cancel.extend(stale);
    plan
}

/// Whether a queued run may start now, as far as its job is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    Go,
    /// Not yet; the cause says what it waits for.
    Wait(String),
    /// Never: the run is skipped with this cause.
    Skip(String),
}

/// The job a gate is decided for, with what it depends on.
#[derive(Debug)]
pub struct JobView<'a> {
    pub job: &'a Job,
    pub runs: &'a [Run],
    /// The job named by `after`, with its runs.
    pub upstream: Option<(&'a Job, &'a [Run])>,
}

/// Failed in the sense of max-failures and rollouts.
fn failed(state: RunState) -> bool {
    matches!(
        state,
        RunState::Failed | RunState::TimedOut | RunState::Lost | RunState::Interrupted
    )
}

/// Whether [`gate`] reads the states of the job's runs (`JobView::runs`):
/// only max failures, a rollout and max in flight do. Without them the api
/// layer need not load every run of a job (ten thousand for a fleet-wide
/// job) to gate each of its queued runs.
pub fn gate_reads_job_runs(strategy: &crate::domain::Strategy) -> bool {
    strategy.max_failures.is_some() || strategy.rolling || strategy.max_in_flight.is_some()
}

/// What a gate knows of a run's puppet (see `presence` for the model).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PuppetNews {
    /// How long it has been silent; `None` while a poll of it is held.
    pub silent_for: Option<Duration>,
    /// It is shown offline.
    pub offline: bool,
    /// Its last poll as stored (wall clock), `None` if it never polled.
    pub last_seen: Option<Millis>,
}

/// Decides whether `run` (queued or waiting) may start now.
///
/// The rules, in order: cancellation, deadline, rejection, offline bypass,
/// failures (max-failures, or a failed rolling step), dependency, approval,
/// rolling turn, max-in-flight, and last the puppet itself: a run that could go but
/// whose puppet is offline waits for it, saying so (without an offline
/// bypass it would wait forever under a cause that hides why).
pub fn gate(view: &JobView<'_>, run: &Run, now: Millis, puppet: PuppetNews) -> Gate {
    let silent_for = puppet.silent_for;
    use crate::domain::Approval;
    let job = view.job;
    let strategy = &job.strategy;
    if job.cancelled {
        return Gate::Skip("the job was cancelled".into());
    }
    if let Some(deadline) = strategy.deadline_ms
        && now.since(job.created_at) > Duration::from_millis(deadline)
    {
        return Gate::Skip(format!(
            "deadline passed: not started within {}",
            humantime::format_duration(Duration::from_millis(deadline))
        ));
    }
    if let Approval::Rejected { by, .. } = &job.approval {
        return Gate::Skip(format!("the job was rejected by {by}"));
    }
    if let (Some(wait), Some(silent)) = (strategy.offline_wait_ms, silent_for)
        && silent > Duration::from_millis(wait)
    {
        return Gate::Skip(format!(
            "offline: its puppet has not polled for {}",
            humantime::format_duration(Duration::from_secs(silent.as_secs()))
        ));
    }
    let failures = view.runs.iter().filter(|r| failed(r.state)).count();
    match strategy.max_failures {
        Some(limit) if failures >= limit.resolve(view.runs.len()) => {
            return Gate::Skip(format!("max failures reached ({failures})"));
        }
        None if strategy.rolling && failures > 0 => {
            return Gate::Skip("the rollout stopped after a failure".into());
        }
        _ => {}
    }
    if let Some((upstream, upstream_runs)) = view.upstream {
        let id = &upstream.id;
        if strategy.per_puppet {
            match upstream_runs.iter().find(|r| r.puppet == run.puppet) {
                None => return Gate::Skip(format!("dependency {id} has no run on this puppet")),
                Some(r) if r.state == RunState::Succeeded => {}
                Some(r) if r.state.is_terminal() => {
                    return Gate::Skip(format!("dependency failed: {id} was {} here", r.state));
                }
                Some(_) => return Gate::Wait(format!("waiting for dependency {id}")),
            }
        } else {
            match job_state(upstream, upstream_runs) {
                JobState::Succeeded => {}
                JobState::Running | JobState::AwaitingApproval => {
                    return Gate::Wait(format!("waiting for dependency {id}"));
                }
                JobState::Failed | JobState::Cancelled | JobState::Rejected => {
                    return Gate::Skip(format!("dependency failed: {id} did not succeed"));
                }
            }
        }
    }
    // After the dependency: a job waits for its approval only once nothing
    // else it depends on is pending (the approval is asked for then), and a
    // job whose dependency failed is skipped without asking anyone.
    if job.approval == Approval::Awaiting {
        return Gate::Wait(AWAITING_APPROVAL.into());
    }
    if strategy.rolling {
        let mut order: Vec<&Run> = view.runs.iter().collect();
        order.sort_by(|a, b| a.puppet.cmp(&b.puppet));
        let before = order.iter().take_while(|r| r.id != run.id);
        if let Some(current) = before.into_iter().find(|r| !r.state.is_terminal()) {
            return Gate::Wait(format!(
                "waiting for its turn (rolling; now {})",
                current.puppet
            ));
        }
    }
    let in_flight = view
        .runs
        .iter()
        .filter(|r| matches!(r.state, RunState::Offered | RunState::Running))
        .count();
    if let Some(limit) = strategy.max_in_flight {
        let limit = limit.resolve(view.runs.len());
        if in_flight >= limit {
            return Gate::Wait(format!("waiting: {in_flight} runs in flight (max {limit})"));
        }
    }
    if puppet.offline {
        return Gate::Wait(offline_cause(puppet.last_seen));
    }
    Gate::Go
}

/// The cause of a run waiting for its offline puppet. It names the time of
/// the last poll, not the silence, so that it stays the same (and the run
/// is not rewritten) for as long as the puppet is away.
pub fn offline_cause(last_seen: Option<Millis>) -> String {
    match last_seen {
        Some(seen) => {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(seen.0.max(0) as u64);
            format!(
                "{OFFLINE_WAIT}, last seen {}",
                humantime::format_rfc3339_seconds(at)
            )
        }
        None => format!("{OFFLINE_WAIT}, never seen since it enrolled"),
    }
}

/// The cause of a run whose job waits for its approval, and for nothing
/// else it depends on.
pub const AWAITING_APPROVAL: &str = "waiting for approval";

/// How the cause of a run waiting for its offline puppet begins.
pub const OFFLINE_WAIT: &str = "waiting for its puppet, which is offline";

/// Capacity to set aside, per resource, for older runs of other puppets
/// that wait for it and could take it now: waiting runs are served in FIFO
/// order per resource. `mine` are this puppet's unfinished runs; `waiters`
/// the queued runs of other puppets with whether each could start now
/// (its puppet holds a poll with a free slot and its job lets it go).
pub fn fifo_reserve(mine: &[Run], waiters: &[(Run, bool)]) -> HashMap<String, u32> {
    let mut oldest_mine: HashMap<&str, u64> = HashMap::new();
    for run in mine {
        if !matches!(run.state, RunState::Queued | RunState::Waiting) {
            continue;
        }
        for need in &run.needs {
            let seq = oldest_mine.entry(need.name.as_str()).or_insert(u64::MAX);
            *seq = (*seq).min(run.queue_seq);
        }
    }
    let mut reserve = HashMap::new();
    for (waiter, ready) in waiters {
        if !ready {
            continue;
        }
        for need in &waiter.needs {
            if let Some(seq) = oldest_mine.get(need.name.as_str())
                && waiter.queue_seq < *seq
            {
                *reserve.entry(need.name.clone()).or_insert(0) += need.count;
            }
        }
    }
    reserve
}

/// The first resource the run needs that lacks capacity now.
fn lacking(available: &HashMap<String, u32>, run: &Run) -> Option<String> {
    run.needs
        .iter()
        .find(|need| {
            available
                .get(&need.name)
                .is_none_or(|free| *free < need.count)
        })
        .map(|need| need.name.clone())
}

/// Runs whose lease expired: offered to or running on a puppet silent for
/// longer than `lease`. Input: each run with its puppet's silence, as
/// `presence::Presences::silence` measures it (zero while a poll of it is
/// held; the module doc of `presence` is the whole model).
///
/// A running run that expects a reboot keeps its lease while its puppet is
/// silent (rebooting) until its reboot window, counted from the run's
/// start, is over, plus `lease`: the puppet may come back at the very end
/// of the window and must then have the time to report.
pub fn expired_leases(
    runs: &[(Run, std::time::Duration)],
    now: Millis,
    lease: std::time::Duration,
) -> Vec<String> {
    runs.iter()
        .filter(|(run, silence)| {
            matches!(run.state, RunState::Offered | RunState::Running)
                && *silence > lease
                && reboot_lease_over(run, now, lease)
        })
        .map(|(run, _)| run.id.clone())
        .collect()
}

/// Whether a run is past the silence its expected reboot allows (true for
/// a run that expects none, or has not started).
fn reboot_lease_over(run: &Run, now: Millis, lease: std::time::Duration) -> bool {
    match (run.state, run.reboot_window_ms, run.started_at) {
        (RunState::Running, Some(window), Some(started)) => {
            now.since(started) > std::time::Duration::from_millis(window) + lease
        }
        _ => true,
    }
}

/// The state a run ends in for what its puppet reported.
pub fn finished_state(outcome: Outcome, exit_code: i32) -> RunState {
    match outcome {
        Outcome::Exited if exit_code == 0 => RunState::Succeeded,
        Outcome::Exited | Outcome::Signaled | Outcome::StartFailed => RunState::Failed,
        Outcome::TimedOut => RunState::TimedOut,
        Outcome::Cancelled => RunState::Cancelled,
        Outcome::Interrupted => RunState::Interrupted,
        Outcome::Rebooted => RunState::Succeeded,
    }
}

/// A job's overall state, from its runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    AwaitingApproval,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Refused by an operator (every run skipped), not a failure.
    Rejected,
}

pub fn job_state(job: &Job, runs: &[Run]) -> JobState {
    if job.approval == crate::domain::Approval::Awaiting && !job.cancelled {
        JobState::AwaitingApproval
    } else if runs.iter().any(|r| !r.state.is_terminal()) {
        JobState::Running
    } else if job.cancelled {
        JobState::Cancelled
    } else if matches!(job.approval, crate::domain::Approval::Rejected { .. }) {
        JobState::Rejected
    } else if runs.iter().all(|r| r.state == RunState::Succeeded) {
        JobState::Succeeded
    } else {
        JobState::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Millis;

    fn run(id: &str, state: RunState) -> Run {
        Run {
            id: id.into(),
            job_id: "job-1".into(),
            puppet: "p".into(),
            task_name: "t".into(),
            task_version: 1,
            state,
            attempt: 1,
            cause: String::new(),
            outcome: None,
            exit_code: None,
            signal: None,
            created_at: Millis(0),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            log_length: 0,
            history: vec![],
            cancel_requested: false,
            queue_seq: 0,
            duplicate_reports: 0,
            needs: vec![],
            holds: vec![],
            log_base: 0,
            max_attempts: 1,
            log_gap: None,
            reboot_window_ms: None,
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn offers_in_order_up_to_free_slots() {
        let active = [run("a", RunState::Queued), run("b", RunState::Queued)];
        let (known, finishing) = (set(&[]), set(&[]));
        let report = PollReport {
            free_slots: 1,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &HashMap::new(),
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.offer, vec!["a"]);
        assert!(plan.has_news());
    }

    #[test]
    fn busy_puppet_gets_nothing_until_its_slot_frees() {
        let active = [run("a", RunState::Running), run("b", RunState::Queued)];
        let (known, finishing) = (set(&["a"]), set(&[]));
        let no_resources = HashMap::new();
        let mut report = PollReport {
            free_slots: 0,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &no_resources,
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        assert_eq!(
            plan_poll(PuppetState::Enabled, &active, &report),
            PollPlan::default()
        );
        // "a" finished during the hold: "b" is offered on the same poll.
        let active = [run("b", RunState::Queued)];
        report.freed_during_hold = 1;
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.offer, vec!["b"]);
        // "a" is known but finished: the puppet is told to forget it.
        assert_eq!(plan.cancel, vec!["a"]);
    }

    #[test]
    fn lost_offer_is_redelivered_not_duplicated() {
        let active = [run("a", RunState::Offered), run("b", RunState::Queued)];
        let (known, finishing) = (set(&[]), set(&[]));
        let report = PollReport {
            free_slots: 1,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &HashMap::new(),
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.redeliver, vec!["a"]);
        assert!(plan.offer.is_empty());
        // Once the puppet holds it, nothing is sent again.
        let known = set(&["a"]);
        let report = PollReport {
            known: &known,
            free_slots: 0,
            ..report
        };
        assert_eq!(
            plan_poll(PuppetState::Enabled, &active, &report),
            PollPlan::default()
        );
    }

    #[test]
    fn running_run_forgotten_by_puppet_is_interrupted() {
        let active = [run("a", RunState::Running)];
        let (known, finishing) = (set(&[]), set(&[]));
        let report = PollReport {
            free_slots: 1,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &HashMap::new(),
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.interrupted, vec!["a"]);
        assert!(!plan.has_news());
    }

    #[test]
    fn cancel_requests_reach_the_puppet_once_running() {
        let mut a = run("a", RunState::Running);
        a.cancel_requested = true;
        let (known, finishing) = (set(&["a", "zombie"]), set(&[]));
        let report = PollReport {
            free_slots: 0,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &HashMap::new(),
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &[a.clone()], &report);
        assert_eq!(plan.cancel, vec!["a", "zombie"]);
        // A run already finishing on the puppet needs no kill.
        let finishing = set(&["a"]);
        let report = PollReport {
            finishing: &finishing,
            ..report
        };
        let plan = plan_poll(PuppetState::Enabled, &[a], &report);
        assert_eq!(plan.cancel, vec!["zombie"]);
    }

    #[test]
    fn disabled_puppet_is_offered_nothing() {
        let active = [run("a", RunState::Queued), run("b", RunState::Offered)];
        let (known, finishing) = (set(&[]), set(&[]));
        let report = PollReport {
            free_slots: 4,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &HashMap::new(),
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        assert_eq!(
            plan_poll(PuppetState::Disabled, &active, &report),
            PollPlan::default()
        );
    }

    fn needing(id: &str, resource: &str, count: u32) -> Run {
        let mut r = run(id, RunState::Queued);
        r.needs = vec![crate::domain::ResourceNeed {
            name: resource.into(),
            count,
        }];
        r
    }

    #[test]
    fn a_run_waiting_for_a_resource_does_not_block_the_next() {
        let active = [needing("a", "uplink", 1), run("b", RunState::Queued)];
        let (known, finishing) = (set(&[]), set(&[]));
        let available: HashMap<String, u32> = [("uplink".to_string(), 0)].into();
        let report = PollReport {
            free_slots: 1,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &available,
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.offer, vec!["b"]);
        assert_eq!(plan.blocked, vec![("a".to_string(), "uplink".to_string())]);
    }

    #[test]
    fn an_ordered_job_blocked_on_a_resource_holds_the_queue() {
        let active = [needing("a", "uplink", 1), run("b", RunState::Queued)];
        let (known, finishing) = (set(&[]), set(&[]));
        let available: HashMap<String, u32> = [("uplink".to_string(), 0)].into();
        let ordered: HashSet<String> = ["job-1".to_string()].into();
        let report = PollReport {
            free_slots: 1,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &available,
            gates: &HashMap::new(),
            ordered_jobs: &ordered,
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert!(plan.offer.is_empty(), "{plan:?}");
    }

    #[test]
    fn older_ready_waiters_elsewhere_are_served_first() {
        let mut mine = needing("mine", "uplink", 1);
        mine.queue_seq = 10;
        let mut older = needing("older", "uplink", 1);
        older.queue_seq = 5;
        let mut younger = needing("younger", "uplink", 1);
        younger.queue_seq = 20;
        let mut older_busy = needing("busy", "uplink", 2);
        older_busy.queue_seq = 1;
        let waiters = vec![(older, true), (younger, true), (older_busy, false)];
        let reserve = fifo_reserve(&[mine], &waiters);
        assert_eq!(reserve.get("uplink"), Some(&1));
    }

    #[test]
    fn capacity_is_shared_within_one_plan() {
        let active = [
            needing("a", "uplink", 1),
            needing("b", "uplink", 1),
            needing("c", "missing", 1),
        ];
        let (known, finishing) = (set(&[]), set(&[]));
        let available: HashMap<String, u32> = [("uplink".to_string(), 1)].into();
        let report = PollReport {
            free_slots: 5,
            known: &known,
            finishing: &finishing,
            freed_during_hold: 0,
            available: &available,
            gates: &HashMap::new(),
            ordered_jobs: &HashSet::new(),
        };
        let plan = plan_poll(PuppetState::Enabled, &active, &report);
        assert_eq!(plan.offer, vec!["a"]);
        assert_eq!(plan.blocked.len(), 2);
    }

    #[test]
    fn leases_expire_only_for_silent_puppets() {
        let lease = std::time::Duration::from_secs(60);
        let running = run("a", RunState::Running);
        let queued = run("b", RunState::Queued);
        let now = Millis(1_000_000);
        let secs = std::time::Duration::from_secs;
        let runs = vec![(running.clone(), secs(61)), (queued, secs(1_000))];
        assert_eq!(expired_leases(&runs, now, lease), vec!["a"]);
        let runs = vec![(running.clone(), lease)];
        assert!(expired_leases(&runs, now, lease).is_empty());
        let runs = vec![(running, std::time::Duration::ZERO)];
        assert!(expired_leases(&runs, now, lease).is_empty());
    }

    #[test]
    fn a_run_expecting_a_reboot_keeps_its_lease_through_the_window() {
        let lease = std::time::Duration::from_secs(60);
        let mut rebooting = run("r", RunState::Running);
        rebooting.reboot_window_ms = Some(600_000);
        rebooting.started_at = Some(Millis(1_000_000));
        let at = |ms: i64| Millis(1_000_000 + ms);
        // Silent since the run started.
        let check = |r: &Run, now: Millis| {
            expired_leases(&[(r.clone(), now.since(Millis(1_000_000)))], now, lease)
        };
        // Silent for longer than the lease, but within window + lease.
        assert!(check(&rebooting, at(120_000)).is_empty());
        assert!(check(&rebooting, at(660_000)).is_empty());
        assert_eq!(check(&rebooting, at(660_001)), vec!["r"]);
        // Offered (not started yet): the plain lease applies.
        let mut offered = rebooting.clone();
        offered.state = RunState::Offered;
        offered.started_at = None;
        assert_eq!(check(&offered, at(120_000)), vec!["r"]);
        // The same run without the expectation is lost after the lease.
        rebooting.reboot_window_ms = None;
        assert_eq!(check(&rebooting, at(120_000)), vec!["r"]);
    }

    #[test]
    fn retryable_ends_make_a_new_attempt() {
        let mut r = run("a", RunState::Running);
        r.max_attempts = 2;
        r.log_length = 10;
        assert!(r.end_attempt(RunState::Lost, Millis(5), "lease expired"));
        assert_eq!((r.state, r.attempt, r.log_base), (RunState::Queued, 2, 10));
        // The last attempt stays in its end state.
        assert!(!r.end_attempt(RunState::Interrupted, Millis(6), "puppet restarted"));
        assert_eq!(r.state, RunState::Interrupted);
        // A failure is never retried.
        let mut f = run("f", RunState::Running);
        f.max_attempts = 5;
        assert!(!f.end_attempt(RunState::Failed, Millis(5), "exit 1"));
    }

    #[test]
    fn outcomes_map_to_states() {
        assert_eq!(finished_state(Outcome::Exited, 0), RunState::Succeeded);
        assert_eq!(finished_state(Outcome::Exited, 3), RunState::Failed);
        assert_eq!(finished_state(Outcome::Signaled, 0), RunState::Failed);
        assert_eq!(finished_state(Outcome::TimedOut, 0), RunState::TimedOut);
        assert_eq!(finished_state(Outcome::Cancelled, 0), RunState::Cancelled);
        assert_eq!(
            finished_state(Outcome::Interrupted, 0),
            RunState::Interrupted
        );
    }
}
