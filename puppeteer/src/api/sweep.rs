//! The sweeper: time-driven transitions, once a second.
//!
//! A run's lease is renewed by every poll of its puppet. When a puppet holds
//! no poll and has been silent for longer than the lease timeout, its offered
//! and running runs are `lost`: their resources are released, and the retry
//! rule decides whether a new attempt is queued. Should the puppet come back
//! and report on the old attempt, the report is recorded against that
//! attempt and changes nothing current.

use std::time::Duration;

use super::AppState;
use super::error::ApiResult;
use crate::domain::{Millis, RunState};
use crate::scheduler;

pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl AppState {
    /// One pass of the sweeper at `now`.
    pub async fn sweep(&self, now: Millis) -> ApiResult<()> {
        let runs = self.store.all_active_runs()?;
        let mut view = Vec::new();
        for run in runs {
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                continue;
            }
            let last_seen = self
                .store
                .get_puppet(&run.puppet)
                .ok()
                .and_then(|p| p.last_seen);
            let polling = self.presences.is_held(&run.puppet);
            view.push((run, last_seen, polling));
        }
        let lease = self.config.lease_timeout;
        let expired = scheduler::expired_leases(&view, now, lease);
        if expired.is_empty() {
            return Ok(());
        }
        let cause = format!(
            "lost: its puppet has not polled for more than {}",
            humantime::format_duration(lease)
        );
        let changed = self.store.update_runs(&expired, |run| {
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                return Ok(false);
            }
            run.end_attempt(RunState::Lost, now, cause.clone());
            Ok(true)
        })?;
        self.store.flush().await?;
        for run in &changed {
            tracing::warn!(run = %run.id, puppet = %run.puppet, state = %run.state, "run lease expired");
        }
        self.ended(&changed);
        Ok(())
    }
}

/// Runs the sweeper until `shutdown`.
pub async fn run_sweeper(state: super::Shared, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = state.sweep(Millis::now()).await {
                    tracing::error!(error = %e, "sweeper pass failed");
                }
            }
        }
    }
}
