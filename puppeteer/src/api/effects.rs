//! What follows a change of runs: waking whoever waits on it, and the
//! bookkeeping of runs waiting for resources.

use std::collections::HashMap;

use super::AppState;
use super::error::ApiResult;
use crate::domain::{Millis, Run, RunState};
use crate::hub::{job_key, puppet_key, run_key};

impl AppState {
    /// Wakes the followers of changed runs, and, for runs that no longer hold
    /// resources, the puppets waiting for those resources.
    pub fn ended(&self, runs: &[Run]) {
        self.hub.wake(super::events::EVENTS_KEY);
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
            self.hub.wake(&run_key(&run.id));
            self.hub.wake(&job_key(&run.job_id));
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                for need in &run.needs {
                    self.hub.resource_released(&need.name);
                }
            }
            if run.state == RunState::Queued {
                // A new attempt: its puppet may take it at once.
                self.hub.wake(&puppet_key(&run.puppet));
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
        let job = self.store.job(job_id)?;
        if self.has_unfinished_run(&job)? {
            return Ok(());
        }
        let runs = self.store.get_runs(&job.run_ids)?;
        let state = match crate::scheduler::job_state(&job, &runs) {
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Running | JobState::AwaitingApproval => return Ok(()),
        };
        let failed = runs
            .iter()
            .filter(|r| r.state != RunState::Succeeded)
            .count();
        let mut event = super::events::event(
            format!("job.{state}"),
            "puppeteer",
            format!(
                "job {job_id} ({}) {state}: {} of {} runs did not succeed",
                job.task_name,
                failed,
                runs.len()
            ),
        );
        event.job_id = job_id.to_string();
        if self.store.report_job_end(job_id, state, event)? {
            self.hub.wake(super::events::EVENTS_KEY);
        }
        Ok(())
    }

    /// Whether some run of the job is unfinished (then the job has not
    /// ended). The search starts at the run found unfinished last time and
    /// wraps around, so that over a fan-out to N puppets, where this is asked
    /// at each of the N runs' ends, the runs are read O(N) times in all
    /// rather than N times each.
    fn has_unfinished_run(&self, job: &crate::domain::Job) -> ApiResult<bool> {
        let n = job.run_ids.len();
        let start = self
            .job_cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&job.id)
            .copied()
            .unwrap_or(0);
        for k in 0..n {
            let i = (start + k) % n;
            match self.store.get_run(&job.run_ids[i]) {
                Ok(run) if !run.state.is_terminal() => {
                    self.job_cursors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(job.id.clone(), i);
                    return Ok(true);
                }
                Ok(_) | Err(crate::store::StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.job_cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.id);
        Ok(false)
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
            self.hub.wake(&run_key(&run.id));
            self.hub.wake(&job_key(&run.job_id));
        }
        self.hub.wake(super::events::EVENTS_KEY);
        Ok(())
    }
}
