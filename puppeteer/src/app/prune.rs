//! The pruning task: applies the retention policy (`crate::retention`) in
//! the background, every `interval` and once shortly after start.
//!
//! A pass walks the jobs oldest first in small stretches. Each stretch is
//! read, decided and pruned in `spawn_blocking` (sled calls block), and each
//! batch of jobs is its own transaction, so the API never waits on a pass
//! for more than one small batch. Each pruned job leaves a `job.pruned`
//! event; the pass's totals are kept for `GetServerInfo`.

use std::collections::HashSet;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AppState, Shared, blocking};
use crate::domain::{Event, Millis};
use crate::retention::{Candidate, Totals};
use crate::scheduler::{JobState, job_state};
use crate::store::{PruneReport, StoreError, stored_log_bytes};

/// Jobs read and decided at a time.
const STRETCH: usize = 200;
/// Jobs pruned in one transaction.
const BATCH: usize = 50;
/// The first pass, after start.
const FIRST_PASS: Duration = Duration::from_secs(10);

pub async fn run_pruner(state: Shared, shutdown: CancellationToken) {
    let every = state.config.retention.interval;
    let mut next = tokio::time::Instant::now() + FIRST_PASS.min(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        next = tokio::time::Instant::now() + every;
        let expiring = state.clone();
        match blocking(move || expiring.expire_uploads(Millis::now())).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "discarded abandoned artifact uploads"),
            Err(e) => tracing::error!(error = %e, "cannot discard abandoned artifact uploads"),
        }
        match state.prune(Millis::now(), &shutdown).await {
            Ok(report) if report.jobs > 0 => tracing::info!(
                jobs = report.jobs,
                runs = report.runs,
                log_bytes = report.log_bytes,
                "retention pruned finished jobs"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "retention pass failed"),
        }
    }
}

impl AppState {
    /// One retention pass at `now`; stops early at shutdown.
    pub async fn prune(
        self: &std::sync::Arc<Self>,
        now: Millis,
        shutdown: &CancellationToken,
    ) -> Result<PruneReport, StoreError> {
        let state = self.clone();
        let (mut totals, protected) = blocking(move || state.retention_start()).await?;
        let mut report = PruneReport {
            at: now,
            ..Default::default()
        };
        let mut after = None;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let state = self.clone();
            let protected = protected.clone();
            let stretch = blocking(move || {
                state
                    .prune_stretch(after, &mut totals, &protected, now)
                    .map(|(pruned, last, done)| (pruned, last, done, totals))
            })
            .await?;
            let (pruned, last, done, left) = stretch;
            totals = left;
            if !pruned.is_empty() {
                self.hub.wake(super::events::EVENTS_KEY);
            }
            for p in &pruned {
                self.forget_job(&p.id);
                report.jobs += 1;
                report.runs += p.runs;
                report.log_bytes += p.log_bytes;
            }
            self.metrics
                .pruned_runs(pruned.iter().map(|p| p.runs).sum());
            match last {
                Some(seq) if !done => after = Some(seq),
                _ => break,
            }
        }
        self.store.set_last_prune(&report)?;
        Ok(report)
    }

    /// Discards the artifact uploads that began longer than `upload_max_age`
    /// before `now`, and partial files no upload owns (left by a crash
    /// between the two deletions). Returns how many uploads were discarded.
    pub fn expire_uploads(&self, now: Millis) -> Result<usize, StoreError> {
        let max_age = self.config.retention.upload_max_age;
        let mut discarded = 0;
        let mut live = HashSet::new();
        for upload in self.store.uploads()? {
            if now.since(upload.started_at) > max_age {
                // The record first: a crash in between leaves only a file
                // no upload owns, which the next pass deletes.
                self.store.remove_upload(&upload.id)?;
                self.discard_upload(&upload.id);
                tracing::info!(upload = %upload.id, name = %upload.name, committed = upload.committed, size = upload.size, "artifact upload abandoned; discarded");
                discarded += 1;
            } else {
                live.insert(upload.id);
            }
        }
        // A partial file created between the listing above and this one
        // belongs to an upload that began meanwhile: only files of uploads
        // unknown to a fresh read are removed.
        let orphans: Vec<String> = self
            .blobs
            .partial_ids()
            .map_err(StoreError::Files)?
            .into_iter()
            .filter(|id| !live.contains(id))
            .collect();
        for id in orphans {
            if matches!(self.store.get_upload(&id), Err(StoreError::NotFound { .. })) {
                self.blobs.discard(&id);
            }
        }
        Ok(discarded)
    }

    /// Finishes log deletions a crash interrupted, and counts what is stored.
    fn retention_start(&self) -> Result<(Totals, HashSet<String>), StoreError> {
        self.store.finish_owed_log_deletions()?;
        let active = self.store.all_active_runs()?;
        let unfinished: HashSet<String> = active.iter().map(|r| r.job_id.clone()).collect();
        // Jobs that unfinished jobs wait on stay, whatever their age.
        let mut protected = HashSet::new();
        for id in &unfinished {
            if let Ok(job) = self.store.get_job(id)
                && let Some(up) = job.strategy.after_job
            {
                protected.insert(up);
            }
        }
        let totals = Totals {
            finished_jobs: (self.store.job_count()? as u64).saturating_sub(unfinished.len() as u64),
            log_bytes: self.store.log_bytes(),
        };
        Ok((totals, protected))
    }

    /// Decides and prunes one stretch of jobs after creation number `after`.
    /// Returns what was pruned, the last creation number seen, and whether
    /// the pass is over.
    fn prune_stretch(
        &self,
        after: Option<u64>,
        totals: &mut Totals,
        protected: &HashSet<String>,
        now: Millis,
    ) -> Result<(Vec<crate::store::PrunedJob>, Option<u64>, bool), StoreError> {
        let jobs = self.store.jobs_oldest_first(after, STRETCH)?;
        let last = jobs.last().map(|(job, _)| job.seq);
        let candidates: Vec<Candidate> = jobs
            .iter()
            .map(|(job, runs)| {
                let finished = !matches!(
                    job_state(job, runs),
                    JobState::Running | JobState::AwaitingApproval
                );
                let ended_at = runs
                    .iter()
                    .filter_map(|r| r.finished_at)
                    .max()
                    .unwrap_or(job.created_at);
                Candidate {
                    id: job.id.clone(),
                    created_at: job.created_at,
                    ended_at: finished.then_some(ended_at),
                    protected: protected.contains(&job.id),
                    log_bytes: runs.iter().map(stored_log_bytes).sum(),
                }
            })
            .collect();
        let plan = self.config.retention.plan(&candidates, totals, now);
        let mut pruned = Vec::new();
        for batch in plan.prune.chunks(BATCH) {
            let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            let why = |id: &str| {
                batch
                    .iter()
                    .find(|(b, _)| b == id)
                    .map_or("retention", |(_, why)| *why)
            };
            pruned.extend(self.store.prune_jobs(&ids, |job, done| Event {
                at: now,
                kind: "job.pruned".into(),
                job_id: job.id.clone(),
                actor: "puppeteer".into(),
                summary: format!(
                    "job {} ({}) pruned by retention ({}): {} runs, {} bytes of logs",
                    job.id,
                    job.task_name,
                    why(&job.id),
                    done.runs,
                    done.log_bytes
                ),
                ..Event::default()
            })?);
        }
        let done = plan.done || jobs.len() < STRETCH;
        Ok((pruned, last, done))
    }
}
