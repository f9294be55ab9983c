//! The sweeper: time-driven transitions, once a second (less often when a
//! pass is long, see [`next_sweep_in`]).
//!
//! A run's lease runs out when its puppet has been silent for longer than
//! the lease timeout (silence as `presence` defines it: zero while a poll of
//! it is held, counted from its last call or the end of its last held
//! poll, never from before this puppeteer started). Its offered and running
//! runs are then `lost`: their resources are released, and the retry
//! rule decides whether a new attempt is queued. Should the puppet come back
//! and report on the old attempt, the report is recorded against that
//! attempt and changes nothing current.

use std::time::Duration;

use super::error::ApiResult;
use super::{AppState, blocking};
use crate::domain::{Millis, RunState};
use crate::hub::HubKey;
use crate::scheduler;

pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl AppState {
    /// One pass of the sweeper at `now`.
    pub async fn sweep(&self, now: Millis) -> ApiResult<()> {
        // One read of the unfinished runs serves both passes (ten thousand
        // of them during a fleet-wide fan-out).
        // Both scans grow with the fleet: off the async workers (see
        // `app::blocking`).
        let store = self.store.clone();
        let active = blocking(move || store.all_active_runs()).await?;
        let active = self.expire_leases(active, now).await?;
        self.apply_gates(active, now).await?;
        let store = self.store.clone();
        let names = blocking(move || store.puppet_names()).await?;
        self.announce_presence(&names)?;
        let store = self.store.clone();
        let events_before = Millis(now.0 - self.config.event_retention.as_millis() as i64);
        let audit_before = Millis(now.0 - self.config.audit_retention.as_millis() as i64);
        blocking(move || {
            store.prune_events(events_before)?;
            store.prune_audit(audit_before)
        })
        .await?;
        Ok(())
    }

    /// Announces puppets that went offline, and those that came back.
    fn announce_presence(&self, names: &[String]) -> ApiResult<()> {
        use crate::presence::Presence;
        // A puppet holding a poll is online: nothing to do if that is what
        // was last stored, and no record to decode.
        for name in self.presences.unsettled(names) {
            // With the stored presence mirrored and the signs of life in
            // memory, the presence is judged without decoding the record:
            // only a change needs it.
            if let Some(stored) = self.presences.reported(&name) {
                let presence =
                    self.presences
                        .judge(&name, stored == Presence::Offline, self.config.presence);
                if presence == Presence::Late || presence == stored {
                    continue;
                }
            }
            let puppet = match self.store.get_puppet(&name) {
                Ok(puppet) => puppet,
                Err(crate::store::StoreError::NotFound { .. }) => {
                    self.presences.set_reported(&name, None);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let presence = self.presences.of(&puppet, self.config.presence);
            let word = match presence {
                Presence::Offline => "offline",
                Presence::Online => "online",
                Presence::Late => continue,
            };
            let before = puppet.reported_presence.as_deref();
            self.presences.set_reported(
                &name,
                match before {
                    Some("online") => Some(Presence::Online),
                    Some("offline") => Some(Presence::Offline),
                    _ => None,
                },
            );
            let announce = match (before, word) {
                (Some("offline"), "online") => Some("puppet.online"),
                (Some("online") | None, "offline") => Some("puppet.offline"),
                _ => None,
            };
            if before == Some(word) {
                continue;
            }
            self.store.update_puppet(&puppet.name, |p| {
                p.reported_presence = Some(word.to_string());
                Ok(())
            })?;
            self.presences.set_reported(&name, Some(presence));
            if let Some(kind) = announce {
                let mut event = super::events::event(
                    kind,
                    "puppeteer",
                    if kind == "puppet.offline" {
                        format!(
                            "{} went offline: {} (silent for more than {})",
                            puppet.name,
                            match puppet.last_seen {
                                Some(seen) => format!(
                                    "last seen {}",
                                    humantime::format_rfc3339_seconds(
                                        std::time::UNIX_EPOCH
                                            + Duration::from_millis(seen.0.max(0) as u64)
                                    )
                                ),
                                None => "never seen".into(),
                            },
                            humantime::format_duration(self.config.presence.offline_after)
                        )
                    } else {
                        format!("{} is back online", puppet.name)
                    },
                );
                event.puppet = puppet.name.clone();
                self.announce(vec![event]);
            }
        }
        Ok(())
    }

    /// Job-level decisions for queued runs: skips (deadline, offline,
    /// failures, dependency, rejection) are applied; waits are recorded with
    /// their cause; runs whose wait is over are queued again and their
    /// puppet woken.
    async fn apply_gates(&self, active: Vec<crate::domain::Run>, now: Millis) -> ApiResult<()> {
        use crate::scheduler::Gate;
        let gates = {
            let _dispatch = self.dispatch.lock().unwrap_or_else(|e| e.into_inner());
            let _cluster_dispatch = self.store.dispatch_lock()?;
            self.gates_for(&active, now)?
        };
        let ids: Vec<String> = gates.keys().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        // A run free to go whose puppet holds a poll with a free slot should
        // not wait for that poll's end: wake it (its poll plans again). A
        // puppet without a free slot could not take it anyway: its next
        // poll, sent when a slot frees, plans.
        for run in &active {
            if run.state == RunState::Queued
                && gates.get(&run.id) == Some(&Gate::Go)
                && self.presences.ready(&run.puppet)
            {
                self.hub.wake(HubKey::puppet(&run.puppet));
            }
        }
        let changed = self.store.update_runs(&ids, |run| {
            if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                return Ok(false);
            }
            match gates.get(&run.id) {
                Some(Gate::Skip(cause)) => {
                    run.transition(RunState::Skipped, now, format!("skipped: {cause}"));
                    Ok(true)
                }
                Some(Gate::Wait(cause)) if run.cause != *cause => {
                    run.transition(RunState::Waiting, now, cause.clone());
                    Ok(true)
                }
                Some(Gate::Go)
                    if run.state == RunState::Waiting
                        && !run.cause.starts_with("waiting for resource") =>
                {
                    run.transition(RunState::Queued, now, "ready to start");
                    Ok(true)
                }
                _ => Ok(false),
            }
        })?;
        if changed.is_empty() {
            return Ok(());
        }
        let asked = self.request_approvals(&changed)?;
        self.store.flush().await?;
        self.announce(asked);
        self.ended(&changed);
        for run in &changed {
            if run.state == RunState::Queued {
                self.hub.wake(HubKey::puppet(&run.puppet));
            }
        }
        Ok(())
    }

    /// Asks for the approval of the jobs whose runs just began to wait for
    /// it and for nothing else (`scheduler::AWAITING_APPROVAL`: their
    /// dependency, if any, succeeded), once per job. Returns the events to
    /// announce after the flush.
    fn request_approvals(
        &self,
        changed: &[crate::domain::Run],
    ) -> ApiResult<Vec<crate::domain::Event>> {
        let mut jobs: Vec<&str> = changed
            .iter()
            .filter(|r| r.state == RunState::Waiting && r.cause == scheduler::AWAITING_APPROVAL)
            .map(|r| r.job_id.as_str())
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        let mut events = Vec::new();
        for id in jobs {
            let mut asked = false;
            let job = self.store.update_job(id, |job| {
                asked = job.approval == crate::domain::Approval::Awaiting
                    && !job.approval_requested
                    && !job.cancelled;
                job.approval_requested |= asked;
                Ok(asked)
            })?;
            if !asked {
                continue;
            }
            let mut event = super::events::event(
                "job.awaiting_approval",
                "puppeteer",
                format!(
                    "job {} ({}) awaits approval: geppetto jobs approve {}",
                    job.id, job.task_name, job.id
                ),
            );
            event.job_id = job.id.clone();
            events.push(event);
        }
        Ok(events)
    }

    /// Ends the runs whose lease expired; returns the other unfinished runs.
    async fn expire_leases(
        &self,
        runs: Vec<crate::domain::Run>,
        now: Millis,
    ) -> ApiResult<Vec<crate::domain::Run>> {
        let mut view = Vec::new();
        let mut rest = Vec::new();
        for run in runs {
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                rest.push(run);
                continue;
            }
            let silence = self.presences.silence(&run.puppet);
            view.push((run, silence));
        }
        let lease = self.config.lease_timeout;
        let expired = scheduler::expired_leases(&view, now, lease);
        rest.extend(view.into_iter().map(|(run, _)| run));
        if expired.is_empty() {
            return Ok(rest);
        }
        let changed = self.store.update_runs(&expired, |run| {
            if !matches!(run.state, RunState::Offered | RunState::Running) {
                return Ok(false);
            }
            let cause = match (run.state, run.reboot_window_ms) {
                (RunState::Running, Some(window)) => format!(
                    "lost: its puppet did not come back within the reboot window of {} (and {} more)",
                    humantime::format_duration(Duration::from_millis(window)),
                    humantime::format_duration(lease)
                ),
                _ => format!(
                    "lost: its puppet has not polled for more than {}",
                    humantime::format_duration(lease)
                ),
            };
            run.end_attempt(RunState::Lost, now, cause);
            Ok(true)
        })?;
        self.store.flush().await?;
        for run in &changed {
            tracing::warn!(run = %run.id, puppet = %run.puppet, state = %run.state, "run lease expired");
        }
        self.ended(&changed);
        // Runs that ended here have nothing left to gate; a new attempt
        // (a retry) is read again at the next pass.
        let expired: std::collections::HashSet<&str> = expired.iter().map(String::as_str).collect();
        rest.retain(|run| !expired.contains(run.id.as_str()));
        Ok(rest)
    }
}

/// A pass of the sweeper takes at most about one part in this many of the
/// time: see [`next_sweep_in`].
const SWEEP_SHARE: u32 = 20;

/// How long to wait before the next pass, after one that took `took`:
/// [`SWEEP_EVERY`], or longer when a pass is long, so that the sweeper uses
/// at most about 1/[`SWEEP_SHARE`] of the time. A pass reads every
/// unfinished run: during a fleet-wide fan-out (ten thousand of them) a
/// pass a second took a third of the puppeteer's CPU. Time-driven
/// transitions (leases, deadlines, presence) then come a little later.
pub fn next_sweep_in(took: Duration) -> Duration {
    SWEEP_EVERY.max(took.saturating_mul(SWEEP_SHARE))
}

/// Runs the sweeper until `shutdown`.
pub async fn run_sweeper(state: super::Shared, shutdown: tokio_util::sync::CancellationToken) {
    let mut wait = SWEEP_EVERY;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {
                let began = tokio::time::Instant::now();
                if let Err(e) = state.sweep(Millis::now()).await {
                    tracing::error!(error = %e, "sweeper pass failed");
                }
                wait = next_sweep_in(began.elapsed());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_pass_spaces_the_next() {
        assert_eq!(next_sweep_in(Duration::ZERO), SWEEP_EVERY);
        assert_eq!(next_sweep_in(Duration::from_millis(40)), SWEEP_EVERY);
        assert_eq!(
            next_sweep_in(Duration::from_millis(150)),
            Duration::from_secs(3)
        );
    }
}
