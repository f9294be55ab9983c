//! Job-level decisions for queued runs: loading what the scheduler's `gate`
//! needs (the job, its runs, its upstream job, the puppet's silence).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::AppState;
use super::error::ApiResult;
use crate::domain::{Job, Millis, Run, RunState};
use crate::scheduler::{self, Gate, JobView};
use crate::store::StoreError;

type Loaded = (Arc<Job>, Vec<Run>, Option<(Arc<Job>, Vec<Run>)>);

impl AppState {
    fn load_job_view(&self, id: &str) -> ApiResult<Loaded> {
        let job = self.store.job(id)?;
        let runs = if scheduler::gate_reads_job_runs(&job.strategy) {
            self.store.job_runs(&job.id)?
        } else {
            Vec::new()
        };
        let upstream = match &job.strategy.after_job {
            Some(up) => match self.store.job(up) {
                Ok(up) => {
                    let runs = self.store.job_runs(&up.id)?;
                    Some((up, runs))
                }
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        Ok((job, runs, upstream))
    }

    /// How long a puppet has been silent (the model is in `presence`);
    /// `None` while a poll of it is held.
    pub fn silence(&self, puppet: &str) -> Option<Duration> {
        if self.presences.is_held(puppet) {
            return None;
        }
        Some(self.presences.silence(puppet))
    }

    /// What the job gates know of a puppet now.
    pub fn puppet_news(&self, puppet: &str) -> scheduler::PuppetNews {
        let silent_for = self.silence(puppet);
        if silent_for.is_none() {
            return scheduler::PuppetNews::default();
        }
        // Its record only when its presence may be offline: silent past the
        // threshold, or not heard since this puppeteer started.
        let maybe_offline = silent_for.is_some_and(|s| s > self.config.presence.offline_after)
            || !self.presences.heard_since_start(puppet);
        match maybe_offline.then(|| self.store.get_puppet(puppet)) {
            Some(Ok(record)) => scheduler::PuppetNews {
                silent_for,
                offline: self.presences.of(&record, self.config.presence)
                    == crate::presence::Presence::Offline,
                last_seen: record.last_seen,
            },
            _ => scheduler::PuppetNews {
                silent_for,
                ..Default::default()
            },
        }
    }

    /// Capacity to set aside for older waiters of other puppets (FIFO per
    /// resource), for the resources `mine` wait for.
    pub fn fifo_reserve(
        &self,
        puppet: &str,
        mine: &[Run],
        now: Millis,
    ) -> ApiResult<HashMap<String, u32>> {
        let wanted: std::collections::HashSet<&str> = mine
            .iter()
            .filter(|r| matches!(r.state, RunState::Queued | RunState::Waiting))
            .flat_map(|r| r.needs.iter().map(|n| n.name.as_str()))
            .collect();
        if wanted.is_empty() {
            return Ok(HashMap::new());
        }
        let others: Vec<Run> = self
            .store
            .all_active_runs()?
            .into_iter()
            .filter(|r| {
                r.puppet != puppet
                    && matches!(r.state, RunState::Queued | RunState::Waiting)
                    && r.needs.iter().any(|n| wanted.contains(n.name.as_str()))
                    && self.presences.ready(&r.puppet)
            })
            .collect();
        let gates = self.gates_for(&others, now)?;
        let available = self.available_resources(&others)?;
        // A waiter counts only if it could really start now: its job lets
        // it go and every resource it needs has room (one waiting for
        // another, busy resource must not hold this one back).
        let waiters: Vec<(Run, bool)> = others
            .into_iter()
            .map(|r| {
                let fits = r
                    .needs
                    .iter()
                    .all(|n| available.get(&n.name).is_some_and(|free| *free >= n.count));
                let ready = fits && gates.get(&r.id) == Some(&Gate::Go);
                (r, ready)
            })
            .collect();
        Ok(scheduler::fifo_reserve(mine, &waiters))
    }

    /// The jobs among these runs' that keep strict order.
    pub fn ordered_jobs(&self, runs: &[Run]) -> ApiResult<std::collections::HashSet<String>> {
        let mut ordered = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        for run in runs {
            if run.needs.is_empty() || !seen.insert(run.job_id.clone()) {
                continue;
            }
            if self.store.job(&run.job_id)?.strategy.ordered {
                ordered.insert(run.job_id.clone());
            }
        }
        Ok(ordered)
    }

    /// The gate of every queued or waiting run among `runs`.
    pub fn gates_for(&self, runs: &[Run], now: Millis) -> ApiResult<HashMap<String, Gate>> {
        let mut jobs: HashMap<String, Loaded> = HashMap::new();
        let mut gates = HashMap::new();
        for run in runs {
            if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                continue;
            }
            if !jobs.contains_key(&run.job_id) {
                jobs.insert(run.job_id.clone(), self.load_job_view(&run.job_id)?);
            }
            let (job, job_runs, upstream) = &jobs[&run.job_id];
            let view = JobView {
                job,
                runs: job_runs,
                upstream: upstream.as_ref().map(|(j, r)| (&**j, r.as_slice())),
            };
            let news = self.puppet_news(&run.puppet);
            gates.insert(run.id.clone(), scheduler::gate(&view, run, now, news));
        }
        Ok(gates)
    }
}
