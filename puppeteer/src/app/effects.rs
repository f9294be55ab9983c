//! What follows a change of runs: waking whoever waits on it, announcing
//! the end of their jobs, and the bookkeeping of runs waiting for resources.
//!
//! A job has ended when all its runs have; its end is announced once per
//! end state (a `job.succeeded` event...). Asked afresh at each run's end,
//! the question reads all the job's runs as soon as they have all ended:
//! at the end of a fan-out to 10,000 puppets, the reports of the last
//! group commit (hundreds, answered together after one flush) each read
//! the 10,000 runs twice, and the puppeteer stalled for tens of seconds.
//! So the puppeteer remembers, in memory, per job ([`JobEnd`]):
//! - where the last search found an unfinished run: the next search
//!   starts there, and a fan-out's runs are read O(N) times in all;
//! - that the job's end was announced: later ends of its runs (the rest of
//!   that group, resent reports) read nothing;
//! - how many times a run of the job was reopened (retried, or any other
//!   change to an unfinished state). A reopening forgets the end; and an
//!   end found by a search that a reopening overlapped is not remembered,
//!   since that search may have read the reopened run before it changed.
//!
//! The memory is lost with the process: after a restart the first run end
//! of a job searches again, and the store's record of the announced end
//! (`report_job_end`) keeps the announcement from being made twice.

use std::collections::HashMap;

use super::AppState;
use super::error::ApiResult;
use crate::domain::{Millis, Run, RunState};
use crate::hub::HubKey;

/// What is known in memory of one job's end (see the module's doc).
#[derive(Debug, Default)]
pub struct JobEnd {
    /// The job's end was announced, and no run of it reopened since.
    ended: bool,
    /// How many times a run of the job was reopened.
    reopened: u64,
}

impl AppState {
    /// Wakes the followers of changed runs, and, for runs that no longer hold
    /// resources, the puppets waiting for those resources.
    pub fn ended(&self, runs: &[Run]) {
        self.hub.wake(super::events::EVENTS_KEY);
        for run in runs {
            // A run that ended, or went back to its queue, fetches no more.
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                self.fetches.forget(&run.id);
            }
        }
        for run in runs.iter().filter(|r| !r.state.is_terminal()) {
            self.job_reopened(&run.job_id);
        }
        let mut jobs: Vec<&str> = runs
            .iter()
            .filter(|r| r.state.is_terminal())
            .map(|r| r.job_id.as_str())
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        for job in jobs {
            if let Err(e) = self.announce_job_end(job) {
                tracing::error!(job, error = %e, "cannot announce the end of a job");
            }
        }
        for run in runs {
            self.metrics.run_ended(run);
            self.hub.wake(HubKey::run(&run.id));
            self.hub.wake(HubKey::job(&run.job_id));
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                for need in &run.needs {
                    self.hub.resource_released(&need.name);
                }
            }
            if run.state == RunState::Queued {
                // A new attempt: its puppet may take it at once.
                self.hub.wake(HubKey::puppet(&run.puppet));
            }
        }
    }

    /// After a report that changed nothing: announces the job's end only if
    /// no end of it was ever announced (cheap: the job is cached). A
    /// resend never ends a job, so a job whose end was announced needs no
    /// second look.
    pub fn announce_unreported_job_end(&self, job_id: &str) {
        let unreported = match self.store.job(job_id) {
            Ok(job) => job.reported_end.is_none(),
            Err(e) => {
                tracing::error!(job = job_id, error = %e, "cannot read the job of a run");
                return;
            }
        };
        if unreported && let Err(e) = self.announce_job_end(job_id) {
            tracing::error!(job = job_id, error = %e, "cannot announce the end of a job");
        }
    }

    /// Announces a job's end (once per end state) when all its runs ended.
    pub fn announce_job_end(&self, job_id: &str) -> ApiResult<()> {
        use crate::scheduler::JobState;
        let Some(seen) = self.job_end_unknown(job_id) else {
            return Ok(());
        };
        let job = self.store.job(job_id)?;
        if self.has_unfinished_run(&job)? {
            return Ok(());
        }
        let runs = self.store.job_runs(&job.id)?;
        let state = match crate::scheduler::job_state(&job, &runs) {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Running | JobState::AwaitingApproval => return Ok(()),
            // The rejection was its own event (job.rejected) when decided.
            JobState::Rejected => {
                self.remember_job_end(job_id, seen);
                return Ok(());
            }
        };
        let failed = runs
            .iter()
            .filter(|r| r.state != RunState::Succeeded)
            .count();
        let outcome = match (failed, runs.len()) {
            (0, 1) => "its run succeeded".to_string(),
            (0, n) => format!("all {n} runs succeeded"),
            (_, 1) => "its run did not succeed".to_string(),
            (failed, n) => format!("{failed} of {n} runs did not succeed"),
        };
        let mut event = super::events::event(
            format!("job.{state}"),
            "puppeteer",
            format!("job {job_id} ({}) {state}: {outcome}", job.task_name),
        );
        event.job_id = job_id.to_string();
        if self.store.report_job_end(job_id, state, event)? {
            self.hub.wake(super::events::EVENTS_KEY);
        }
        self.remember_job_end(job_id, seen);
        Ok(())
    }

    /// A run of the job changed to an unfinished state: its end, if it was
    /// known, is not any more.
    pub fn job_reopened(&self, job_id: &str) {
        let mut ends = self.job_ends.lock().unwrap_or_else(|e| e.into_inner());
        let end = match ends.get_mut(job_id) {
            Some(end) => end,
            None => ends.entry(job_id.to_string()).or_default(),
        };
        end.ended = false;
        end.reopened += 1;
    }

    /// The job is gone (pruned): nothing of it is kept.
    pub fn forget_job(&self, job_id: &str) {
        self.job_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(job_id);
    }

    /// `None` if the job's end is known (announced, no run reopened
    /// since); otherwise how many times its runs were reopened so far.
    fn job_end_unknown(&self, job_id: &str) -> Option<u64> {
        if self.store.is_shared() {
            // Another node may reopen a run of the job: ask the store each
            // time (its `reported_end` still announces an end once).
            return Some(0);
        }
        match self
            .job_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(job_id)
        {
            Some(end) if end.ended => None,
            Some(end) => Some(end.reopened),
            None => Some(0),
        }
    }

    /// Remembers that the job ended, unless a run of it was reopened since
    /// `seen` was read.
    fn remember_job_end(&self, job_id: &str, seen: u64) {
        let mut ends = self.job_ends.lock().unwrap_or_else(|e| e.into_inner());
        let end = ends.entry(job_id.to_string()).or_default();
        if end.reopened == seen {
            end.ended = true;
        }
    }

    /// Whether some run of the job is unfinished (then the job has not
    /// ended): the store's count, kept with every run change.
    fn has_unfinished_run(&self, job: &crate::domain::Job) -> ApiResult<bool> {
        Ok(self.store.job_unfinished_runs(&job.id)? > 0)
    }

    /// Free capacity of the resources these runs need.
    pub fn available_resources(&self, runs: &[Run]) -> ApiResult<HashMap<String, u32>> {
        let mut available = HashMap::new();
        for run in runs {
            for need in &run.needs {
                if available.contains_key(&need.name) {
                    continue;
                }
                match self.store.get_resource(&need.name) {
                    Ok(r) => {
                        available.insert(
                            need.name.clone(),
                            r.resource.capacity.saturating_sub(r.used),
                        );
                    }
                    Err(crate::store::StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(available)
    }

    /// Records why runs of `puppet` wait for a resource (once per cause, so
    /// a busy poll loop does not rewrite them), and asks to be woken when the
    /// resource is released.
    pub fn note_blocked(
        &self,
        puppet: &str,
        blocked: &[(String, String)],
        now: Millis,
    ) -> ApiResult<()> {
        if blocked.is_empty() {
            return Ok(());
        }
        for (_, resource) in blocked {
            self.hub.wait_for_resource(resource, puppet);
        }
        let ids: Vec<String> = blocked.iter().map(|(id, _)| id.clone()).collect();
        let changed = self.store.update_runs(&ids, |run| {
            let Some((_, resource)) = blocked.iter().find(|(id, _)| *id == run.id) else {
                return Ok(false);
            };
            let cause = format!("waiting for resource {resource}");
            if !matches!(run.state, RunState::Queued | RunState::Waiting) || run.cause == cause {
                return Ok(false);
            }
            run.transition(RunState::Waiting, now, cause);
            Ok(true)
        })?;
        for run in &changed {
            self.hub.wake(HubKey::run(&run.id));
            self.hub.wake(HubKey::job(&run.job_id));
        }
        self.hub.wake(super::events::EVENTS_KEY);
        Ok(())
    }
}
