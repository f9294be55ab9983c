//! Pruning finished jobs, with their runs and logs (the retention policy
//! decides which; see `crate::retention`), and the byte count of stored logs.
//!
//! A job's records (job, creation index, runs, puppet index entries) go in
//! one transaction, together with an event per job and a marker per run
//! saying its log chunks are owed for deletion. The chunks are deleted just
//! after (sled's transactions cannot scan a range), then the markers; a crash
//! in between leaves markers that the next pass finishes.

use crate::store::Transactional;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;

use super::keys::{prefix_of, seq_key};
use super::{Result, Store, StoreError, abort, decode};
use crate::domain::{Event, Job, Millis, Run};

/// Prefix of the `meta` keys of runs whose log chunks are owed for deletion.
const OWED_LOGS: &str = "prune_logs";
/// The `meta` key of the last retention pass.
const LAST_PRUNE: &str = "last_prune";

/// A pruned job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrunedJob {
    pub id: String,
    pub runs: u64,
    pub log_bytes: u64,
}

/// What the last retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PruneReport {
    pub at: Millis,
    pub jobs: u64,
    pub runs: u64,
    pub log_bytes: u64,
}

/// Bytes of output stored for a run (the dropped middle of a truncated log
/// is not stored).
pub fn stored_log_bytes(run: &Run) -> u64 {
    run.log_length - run.log_gap.map_or(0, |g| g.dropped)
}

/// Counts the stored output of every run, decoding only what it needs.
pub(crate) fn count_log_bytes(runs: &super::kv::Tree) -> Result<u64> {
    #[derive(Deserialize)]
    struct Lengths {
        log_length: u64,
        #[serde(default)]
        log_gap: Option<crate::domain::LogGap>,
    }
    let mut total = 0;
    for kv in runs.iter() {
        let (k, v) = kv?;
        let l: Lengths = decode(&k, &v)?;
        total += l.log_length - l.log_gap.map_or(0, |g| g.dropped);
    }
    Ok(total)
}

/// The running count of stored log bytes, shared by the store's clones.
pub(crate) type LogBytes = std::sync::Arc<AtomicU64>;

impl Store {
    /// Bytes of run output stored now, over all runs.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add_log_bytes(&self, delta: i64) {
        if delta >= 0 {
            self.log_bytes.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let less = delta.unsigned_abs();
            let _ = self
                .log_bytes
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(less))
                });
        }
    }

    /// How many jobs are stored (finished or not).
    pub fn job_count(&self) -> Result<usize> {
        self.job_order.len()
    }

    /// Up to `limit` jobs with their runs, in creation order, from the
    /// oldest after creation number `after` (all from the oldest if `None`).
    pub fn jobs_oldest_first(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(Job, Vec<Run>)>> {
        let from = after.map_or(0, |s| s.saturating_add(1));
        let mut out = Vec::new();
        for kv in self.job_order.range(from.to_be_bytes()..) {
            let (_, id) = kv?;
            let id = String::from_utf8_lossy(&id).into_owned();
            let job = match self.get_job(&id) {
                Ok(job) => job,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let run_ids = self.job_run_ids(&job.id)?;
            let mut runs = Vec::with_capacity(run_ids.len());
            for run_id in &run_ids {
                match self.get_run(run_id) {
                    Ok(run) => runs.push(run),
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            out.push((job, runs));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Removes jobs with their runs and logs, in one transaction for the
    /// records. A job with a run that is not finished (an operator retried
    /// it meanwhile) is left alone. `event` says what each pruning was.
    pub fn prune_jobs(
        &self,
        ids: &[String],
        event: impl Fn(&Job, &PrunedJob) -> Event,
    ) -> Result<Vec<PrunedJob>> {
        // A job's runs never change after its creation: their ids are read
        // before the transaction (which cannot scan).
        let mut run_ids = std::collections::HashMap::new();
        for id in ids {
            run_ids.insert(id.clone(), self.job_run_ids(id)?);
        }
        let result = (
            &self.jobs,
            &self.job_order,
            &self.runs,
            &self.queue,
            &self.puppet_runs,
            &self.meta,
            &self.events,
            &self.job_runs,
            &self.job_open,
        )
            .transaction(
                |(jobs, order, runs, queue, puppet_runs, meta, events, job_index, job_open)| {
                    let mut pruned = Vec::new();
                    let mut owed = Vec::new();
                    let mut new_events = Vec::new();
                    'jobs: for id in ids {
                        let Some(v) = jobs.get(id.as_bytes())? else {
                            continue;
                        };
                        let job: Job = match decode(id.as_bytes(), &v) {
                            Ok(job) => job,
                            Err(e) => return abort(e),
                        };
                        let mut job_runs = Vec::new();
                        let ids_of_job = run_ids.get(id).map(Vec::as_slice).unwrap_or_default();
                        for run_id in ids_of_job {
                            let Some(v) = runs.get(run_id.as_bytes())? else {
                                continue;
                            };
                            let run: Run = match decode(run_id.as_bytes(), &v) {
                                Ok(run) => run,
                                Err(e) => return abort(e),
                            };
                            if !run.state.is_terminal() {
                                continue 'jobs;
                            }
                            job_runs.push(run);
                        }
                        let mut done = PrunedJob {
                            id: job.id.clone(),
                            runs: job_runs.len() as u64,
                            log_bytes: 0,
                        };
                        for run in &job_runs {
                            let key = seq_key(&run.puppet, run.queue_seq);
                            queue.remove(key.clone())?;
                            puppet_runs.remove(key)?;
                            runs.remove(run.id.as_bytes())?;
                            meta.insert(owed_key(&run.id), &[])?;
                            done.log_bytes += stored_log_bytes(run);
                            owed.push(run.id.clone());
                        }
                        jobs.remove(id.as_bytes())?;
                        order.remove(job.seq.to_be_bytes())?;
                        job_open.remove(id.as_bytes())?;
                        for i in 0..ids_of_job.len() {
                            job_index.remove(seq_key(id, i as u64))?;
                        }
                        new_events.push(event(&job, &done));
                        pruned.push(done);
                    }
                    super::events::append(meta, events, new_events)?;
                    Ok((pruned, owed))
                },
            );
        for id in ids {
            self.job_cache.changed(id);
        }
        let (pruned, owed) = result?;
        let freed: u64 = pruned.iter().map(|p| p.log_bytes).sum();
        self.add_log_bytes(-(freed as i64));
        for run_id in owed {
            self.delete_owed_logs(&run_id)?;
        }
        Ok(pruned)
    }

    /// Deletes the log chunks of pruned runs whose deletion a crash
    /// interrupted. Returns how many runs it finished.
    pub fn finish_owed_log_deletions(&self) -> Result<usize> {
        let mut owed = Vec::new();
        for kv in self.meta.scan_prefix(prefix_of(OWED_LOGS)) {
            let (k, _) = kv?;
            owed.push(String::from_utf8_lossy(&k[OWED_LOGS.len() + 1..]).into_owned());
        }
        for run_id in &owed {
            self.delete_owed_logs(run_id)?;
        }
        Ok(owed.len())
    }

    fn delete_owed_logs(&self, run_id: &str) -> Result<()> {
        let mut batch = super::kv::Batch::default();
        for kv in self.logs.scan_prefix(prefix_of(run_id)) {
            let (k, _) = kv?;
            batch.remove(k);
        }
        self.logs.apply_batch(batch)?;
        self.meta.remove(owed_key(run_id))?;
        Ok(())
    }

    pub fn set_last_prune(&self, report: &PruneReport) -> Result<()> {
        self.meta.insert(LAST_PRUNE, super::encode(report))?;
        Ok(())
    }

    pub fn last_prune(&self) -> Result<Option<PruneReport>> {
        self.meta
            .get(LAST_PRUNE)?
            .map(|v| decode(LAST_PRUNE.as_bytes(), &v))
            .transpose()
    }
}

fn owed_key(run_id: &str) -> Vec<u8> {
    let mut key = prefix_of(OWED_LOGS);
    key.extend_from_slice(run_id.as_bytes());
    key
}
