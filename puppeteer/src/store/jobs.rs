//! Jobs, their runs, and each puppet's queue of unfinished runs.
//!
//! A job's runs are an index (`job_runs`: job id, position → run id), not a
//! list inside the job's record: a fleet-wide job's record stays small, and
//! changing the job (an approval, its end) rewrites no list of ten thousand
//! ids. Whether a job still has unfinished runs is a counter (`job_open`),
//! kept in the same transaction as every change of a run between unfinished
//! and finished (creation, updates, retries), so the end of a job is known
//! without reading its runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::Transactional;
use crate::store::TxTree;

use super::keys::{prefix_of, seq_key};
use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{Job, Millis, Run, RunState};

/// How many decoded jobs [`JobCache`] keeps; when full it starts over.
const JOB_CACHE_CAPACITY: usize = 64;

/// Decoded jobs, shared by the hot paths that read a job at every poll, run
/// start and run end. A job of a fleet-wide fan-out lists ten thousand run
/// ids (hundreds of KB of JSON): decoding it at each of its ten thousand
/// runs' polls and ends made a fan-out quadratic.
///
/// Every write to the `jobs` tree calls [`JobCache::changed`] after its
/// transaction. A reader caches what it decoded only if no write happened
/// since it started reading (the version did not move), so the cache never
/// keeps a value older than the stored one.
#[derive(Debug, Default)]
pub(crate) struct JobCache {
    // A std mutex: held for one map access, never across an await.
    inner: Mutex<JobCacheInner>,
}

#[derive(Debug, Default)]
struct JobCacheInner {
    /// Bumped by every write to the `jobs` tree.
    version: u64,
    jobs: HashMap<String, Arc<Job>>,
}

impl JobCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, JobCacheInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached job, or the version to hand to [`JobCache::keep`].
    fn get(&self, id: &str) -> std::result::Result<Arc<Job>, u64> {
        let inner = self.lock();
        match inner.jobs.get(id) {
            Some(job) => Ok(job.clone()),
            None => Err(inner.version),
        }
    }

    /// Keeps a job read from the tree, unless the tree changed since `version`.
    fn keep(&self, version: u64, job: &Arc<Job>) {
        let mut inner = self.lock();
        if inner.version != version {
            return;
        }
        if inner.jobs.len() >= JOB_CACHE_CAPACITY {
            inner.jobs.clear();
        }
        inner.jobs.insert(job.id.clone(), job.clone());
    }

    /// The job was written (or removed): forget it.
    pub(crate) fn changed(&self, id: &str) {
        let mut inner = self.lock();
        inner.version += 1;
        inner.jobs.remove(id);
    }
}

impl Store {
    /// The job, shared: for paths that read it often and change nothing
    /// (polls, run starts and ends). Decoded once per change of the job.
    pub fn job(&self, id: &str) -> Result<Arc<Job>> {
        if self.is_shared() {
            // Other nodes change jobs too; this node's cache would not see it.
            return Ok(Arc::new(self.get_job(id)?));
        }
        let version = match self.job_cache.get(id) {
            Ok(job) => return Ok(job),
            Err(version) => version,
        };
        let job = Arc::new(self.get_job(id)?);
        self.job_cache.keep(version, &job);
        Ok(job)
    }

    /// Stores a job with its runs, and queues each run on its puppet.
    pub fn create_job(&self, job: &Job, runs: &[Run]) -> Result<()> {
        let mut job = job.clone();
        job.run_count = runs.len() as u64;
        let job = &job;
        let open = runs.iter().filter(|r| !r.state.is_terminal()).count() as u64;
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
                |(jobs, order, runs_tree, queue, puppet_runs, meta, events, job_runs, job_open)| {
                    jobs.insert(job.id.as_bytes(), encode(job))?;
                    order.insert(job.seq.to_be_bytes(), job.id.as_bytes())?;
                    job_open.insert(job.id.as_bytes(), &open.to_be_bytes())?;
                    let mut new = Vec::new();
                    for (i, run) in runs.iter().enumerate() {
                        runs_tree.insert(run.id.as_bytes(), encode(run))?;
                        job_runs.insert(seq_key(&job.id, i as u64), run.id.as_bytes())?;
                        let key = seq_key(&run.puppet, run.queue_seq);
                        queue.insert(key.clone(), run.id.as_bytes())?;
                        puppet_runs.insert(key, run.id.as_bytes())?;
                        new.extend(super::events::of_run(run, 0));
                    }
                    super::events::append(meta, events, new)?;
                    Ok(())
                },
            );
        self.job_cache.changed(&job.id);
        result?;
        Ok(())
    }

    pub fn get_job(&self, id: &str) -> Result<Job> {
        match self.jobs.get(id)? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "job",
                id: id.to_string(),
            }),
        }
    }

    /// Changes a job in place, atomically against any other change made
    /// this way: a compare-and-swap, so that a concurrent change (an
    /// approval and the sweeper's request for it) makes `change` run again
    /// on the new value instead of being overwritten. `change` returns
    /// whether it changed anything; the job is returned as stored.
    pub fn update_job(
        &self,
        id: &str,
        mut change: impl FnMut(&mut Job) -> Result<bool>,
    ) -> Result<Job> {
        loop {
            let Some(old) = self.jobs.get(id.as_bytes())? else {
                return Err(StoreError::NotFound {
                    kind: "job",
                    id: id.to_string(),
                });
            };
            let mut job: Job = decode(id.as_bytes(), &old)?;
            if !change(&mut job)? {
                return Ok(job);
            }
            let swapped =
                self.jobs
                    .compare_and_swap(id.as_bytes(), Some(&old), Some(encode(&job).into()))?;
            self.job_cache.changed(id);
            if swapped {
                return Ok(job);
            }
        }
    }

    /// The newest jobs first.
    /// Every job, newest first, decoded one at a time.
    pub fn jobs_newest_first(&self) -> impl Iterator<Item = Result<Job>> + '_ {
        self.job_order.iter().rev().map(move |kv| {
            let (_, id) = kv?;
            self.get_job(&String::from_utf8_lossy(&id))
        })
    }

    pub fn list_jobs(&self, limit: usize) -> Result<Vec<Job>> {
        let mut jobs = Vec::new();
        for kv in self.job_order.iter().rev().take(limit) {
            let (_, id) = kv?;
            jobs.push(self.get_job(&String::from_utf8_lossy(&id))?);
        }
        Ok(jobs)
    }

    pub fn get_run(&self, id: &str) -> Result<Run> {
        match self.runs.get(id)? {
            Some(v) => decode(id.as_bytes(), &v),
            None => Err(StoreError::NotFound {
                kind: "run",
                id: id.to_string(),
            }),
        }
    }

    pub fn get_runs(&self, ids: &[String]) -> Result<Vec<Run>> {
        ids.iter().map(|id| self.get_run(id)).collect()
    }

    /// A puppet's unfinished runs, in queue order.
    pub fn active_runs(&self, puppet: &str) -> Result<Vec<Run>> {
        self.runs_under(&self.queue, puppet)
    }

    /// Every unfinished run of every puppet.
    pub fn all_active_runs(&self) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for kv in self.queue.iter() {
            let (_, id) = kv?;
            match self.get_run(&String::from_utf8_lossy(&id)) {
                Ok(run) => runs.push(run),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }

    /// Every run a puppet was ever given, oldest first.
    pub fn runs_of_puppet(&self, puppet: &str) -> Result<Vec<Run>> {
        self.runs_under(&self.puppet_runs, puppet)
    }

    fn runs_under(&self, index: &super::kv::Tree, puppet: &str) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for kv in index.scan_prefix(prefix_of(puppet)) {
            let (_, id) = kv?;
            match self.get_run(&String::from_utf8_lossy(&id)) {
                Ok(run) => runs.push(run),
                // The index entry was removed between the scan and the read.
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(runs)
    }

    /// Applies `change` to each run in one transaction and returns the runs
    /// that changed (`change` returned true). In the same transaction, a run
    /// that becomes terminal leaves its puppet's queue, and a run that is no
    /// longer offered or running releases the resources it held.
    /// `change` may run more than once (transaction retries): no side effects.
    pub fn update_runs(
        &self,
        ids: &[String],
        change: impl Fn(&mut Run) -> Result<bool>,
    ) -> Result<Vec<Run>> {
        let changed = (
            &self.runs,
            &self.queue,
            &self.resource_usage,
            &self.meta,
            &self.events,
            &self.job_open,
        )
            .transaction(|(runs, queue, usage, meta, events, job_open)| {
                let mut changed = Vec::new();
                let mut new_events = Vec::new();
                for id in ids {
                    let mut run = match load_run(runs, id) {
                        Ok(Ok(run)) => run,
                        Ok(Err(e)) => return abort(e),
                        Err(e) => return Err(e),
                    };
                    let was_terminal = run.state.is_terminal();
                    let history_len = run.history.len();
                    match change(&mut run) {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => return abort(e),
                    }
                    let holding = matches!(run.state, RunState::Offered | RunState::Running);
                    if !holding && !run.holds.is_empty() {
                        for hold in std::mem::take(&mut run.holds) {
                            super::resources::release(usage, &hold)?;
                        }
                    }
                    runs.insert(id.as_bytes(), encode(&run))?;
                    if run.state.is_terminal() && !was_terminal {
                        queue.remove(seq_key(&run.puppet, run.queue_seq))?;
                        count_open(job_open, &run.job_id, -1)?;
                    } else if !run.state.is_terminal() && was_terminal {
                        count_open(job_open, &run.job_id, 1)?;
                    }
                    new_events.extend(super::events::of_run(&run, history_len));
                    changed.push(run);
                }
                super::events::append(meta, events, new_events)?;
                Ok(changed)
            })?;
        Ok(changed)
    }

    /// Offers queued runs to their puppet: each takes all the resources it
    /// needs, or is left queued if one of them lacks capacity now. Returns
    /// the runs offered. Capacity is checked and taken in the same
    /// transaction as the offer, so it is never exceeded.
    pub fn offer_runs(&self, ids: &[String], now: Millis) -> Result<Vec<Run>> {
        let offered = (
            &self.runs,
            &self.resources,
            &self.resource_usage,
            &self.meta,
            &self.events,
        )
            .transaction(|(runs, resources, usage, meta, events)| {
                let mut offered = Vec::new();
                let mut new_events = Vec::new();
                for id in ids {
                    let mut run = match load_run(runs, id) {
                        Ok(Ok(run)) => run,
                        Ok(Err(e)) => return abort(e),
                        Err(e) => return Err(e),
                    };
                    if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                        continue;
                    }
                    match super::resources::acquire(resources, usage, &run.needs)? {
                        Ok(()) => {}
                        Err(_) => continue,
                    }
                    run.holds = run.needs.clone();
                    run.transition(RunState::Offered, now, "offered to its puppet");
                    runs.insert(id.as_bytes(), encode(&run))?;
                    new_events.extend(super::events::of_run(&run, run.history.len() - 1));
                    offered.push(run);
                }
                super::events::append(meta, events, new_events)?;
                Ok(offered)
            })?;
        Ok(offered)
    }
    /// Gives finished runs chosen by `pick` a new attempt: they are queued
    /// again on their puppet, at their original place in its queue.
    pub fn requeue_runs(
        &self,
        ids: &[String],
        now: Millis,
        pick: impl Fn(&Run) -> bool,
    ) -> Result<Vec<Run>> {
        let requeued = (
            &self.runs,
            &self.queue,
            &self.meta,
            &self.events,
            &self.job_open,
        )
            .transaction(|(runs, queue, meta, events, job_open)| {
                let mut requeued = Vec::new();
                let mut new_events = Vec::new();
                for id in ids {
                    let mut run = match load_run(runs, id) {
                        Ok(Ok(run)) => run,
                        Ok(Err(e)) => return abort(e),
                        Err(e) => return Err(e),
                    };
                    if !run.state.is_terminal() || !pick(&run) {
                        continue;
                    }
                    let previous = run.state;
                    run.attempt += 1;
                    run.max_attempts = run.max_attempts.max(run.attempt);
                    run.log_base = run.log_length;
                    run.started_at = None;
                    run.finished_at = None;
                    run.outcome = None;
                    run.exit_code = None;
                    run.signal = None;
                    run.duration_ms = None;
                    run.cancel_requested = false;
                    run.transition(
                        RunState::Queued,
                        now,
                        format!("retried by an operator after it was {previous}"),
                    );
                    runs.insert(id.as_bytes(), encode(&run))?;
                    queue.insert(seq_key(&run.puppet, run.queue_seq), run.id.as_bytes())?;
                    count_open(job_open, &run.job_id, 1)?;
                    new_events.extend(super::events::of_run(&run, run.history.len() - 1));
                    requeued.push(run);
                }
                super::events::append(meta, events, new_events)?;
                Ok(requeued)
            })?;
        Ok(requeued)
    }

    /// The ids of a job's runs, in the order they were created.
    pub fn job_run_ids(&self, job_id: &str) -> Result<Vec<String>> {
        self.job_runs
            .scan_prefix(prefix_of(job_id))
            .map(|kv| kv.map(|(_, id)| String::from_utf8_lossy(&id).into_owned()))
            .collect()
    }

    /// A job's runs, in the order they were created.
    pub fn job_runs(&self, job_id: &str) -> Result<Vec<Run>> {
        self.get_runs(&self.job_run_ids(job_id)?)
    }

    /// How many of a job's runs are unfinished (0: it ended).
    pub fn job_unfinished_runs(&self, job_id: &str) -> Result<u64> {
        Ok(self
            .job_open
            .get(job_id.as_bytes())?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Like [`Store::update_runs`] for one run; returns it whether or not it changed.
    pub fn update_run(&self, id: &str, change: impl Fn(&mut Run) -> Result<bool>) -> Result<Run> {
        let ids = [id.to_string()];
        match self.update_runs(&ids, change)?.pop() {
            Some(run) => Ok(run),
            None => self.get_run(id),
        }
    }
}

/// Moves a job's count of unfinished runs by `delta`, in a transaction.
fn count_open(job_open: &TxTree<'_>, job_id: &str, delta: i64) -> crate::store::TxResult<()> {
    if delta == 0 {
        return Ok(());
    }
    let now = job_open
        .get(job_id.as_bytes())?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map_or(0, u64::from_be_bytes);
    let next = now.saturating_add_signed(delta);
    job_open.insert(job_id.as_bytes(), &next.to_be_bytes())?;
    Ok(())
}

/// Schema 2 to 3: each job's list of run ids becomes the `job_runs` index
/// and its `job_open` count, and leaves the job's record. One job per
/// transaction: a crash in between leaves jobs of both forms, and the next
/// open goes on (a job already moved has no list left).
pub(crate) fn index_runs_of_version_2(store: &Store) -> Result<()> {
    let mut moved = 0u64;
    for kv in store.jobs.iter() {
        let (key, value) = kv?;
        let mut record: serde_json::Value =
            serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                key: String::from_utf8_lossy(&key).into_owned(),
                reason: e.to_string(),
            })?;
        let Some(ids) = record.as_object_mut().and_then(|o| o.remove("run_ids")) else {
            continue;
        };
        let ids: Vec<String> = serde_json::from_value(ids).unwrap_or_default();
        let job_id = String::from_utf8_lossy(&key).into_owned();
        let mut open = 0u64;
        for id in &ids {
            if store.get_run(id).is_ok_and(|r| !r.state.is_terminal()) {
                open += 1;
            }
        }
        record["run_count"] = serde_json::json!(ids.len());
        let record = serde_json::to_vec(&record).expect("a JSON value serializes");
        (&store.jobs, &store.job_runs, &store.job_open).transaction(
            |(jobs, job_runs, job_open)| {
                for (i, id) in ids.iter().enumerate() {
                    job_runs.insert(seq_key(&job_id, i as u64), id.as_bytes())?;
                }
                job_open.insert(job_id.as_bytes(), &open.to_be_bytes())?;
                jobs.insert(job_id.as_bytes(), record.clone())?;
                Ok(())
            },
        )?;
        moved += 1;
    }
    if moved > 0 {
        tracing::info!(
            jobs = moved,
            "schema 2 to 3: the runs of each job became an index"
        );
    }
    Ok(())
}

fn load_run(
    runs: &TxTree<'_>,
    id: &str,
) -> std::result::Result<Result<Run>, crate::store::kv::TxError> {
    Ok(match runs.get(id.as_bytes())? {
        Some(v) => decode(id.as_bytes(), &v),
        None => Err(StoreError::NotFound {
            kind: "run",
            id: id.to_string(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::logs::tests::{job, run};
    use crate::store::testing;

    #[test]
    fn the_shared_job_follows_every_write() {
        for (_engine, store) in testing::stores() {
            store.create_job(&job(), &[run("run-a")]).unwrap();
            let first = store.job("job-1").unwrap();
            assert!(!first.cancelled);
            // Read again without a write: the same decoded job.
            // (Cached on sled only: other nodes write a shared store.)
            assert!(store.is_shared() || Arc::ptr_eq(&first, &store.job("job-1").unwrap()));

            store
                .update_job("job-1", |job| {
                    job.cancelled = true;
                    Ok(true)
                })
                .unwrap();
            assert!(store.job("job-1").unwrap().cancelled);

            let event = crate::domain::Event {
                job_id: "job-1".into(),
                ..Default::default()
            };
            assert!(store.report_job_end("job-1", "cancelled", event).unwrap());
            assert_eq!(
                store.job("job-1").unwrap().reported_end.as_deref(),
                Some("cancelled")
            );
        }
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = JobCache::default();
        let old = Arc::new(job());
        let version = cache.get("job-1").unwrap_err();
        // A write lands between the read of the tree and keeping what it read.
        cache.changed("job-1");
        cache.keep(version, &old);
        assert!(cache.get("job-1").is_err());
        // A read after the write is kept.
        let version = cache.get("job-1").unwrap_err();
        cache.keep(version, &old);
        assert!(cache.get("job-1").is_ok());
    }
}

#[cfg(test)]
mod index_tests {
    use crate::domain::{Millis, RunState};
    use crate::store::logs::tests::{job, run};
    use crate::store::testing;

    #[test]
    fn a_jobs_runs_are_an_index_and_its_end_a_count() {
        for (_engine, store) in testing::stores() {
            let runs = [run("run-a"), run("run-b"), run("run-c")];
            store.create_job(&job(), &runs).unwrap();
            assert_eq!(store.get_job("job-1").unwrap().run_count, 3);
            assert_eq!(
                store.job_run_ids("job-1").unwrap(),
                ["run-a", "run-b", "run-c"]
            );
            assert_eq!(store.job_unfinished_runs("job-1").unwrap(), 3);
            let finish = |id: &str| {
                store
                    .update_run(id, |r| {
                        r.transition(RunState::Succeeded, Millis(1), "done");
                        Ok(true)
                    })
                    .unwrap();
            };
            finish("run-a");
            finish("run-b");
            // A change that does not finish it counts nothing twice.
            finish("run-b");
            assert_eq!(store.job_unfinished_runs("job-1").unwrap(), 1);
            store
                .requeue_runs(&["run-a".into()], Millis(2), |_| true)
                .unwrap();
            assert_eq!(store.job_unfinished_runs("job-1").unwrap(), 2);
            finish("run-a");
            finish("run-c");
            assert_eq!(store.job_unfinished_runs("job-1").unwrap(), 0);
        }
    }

    /// A data dir of schema 2 (each job listing its run ids) is moved to
    /// the index at open.
    #[test]
    fn schema_2_jobs_get_their_index_at_open() {
        for (_engine, store) in testing::stores() {
            let mut done = run("run-b");
            done.state = RunState::Succeeded;
            store.create_job(&job(), &[run("run-a"), done]).unwrap();
            // Back to the old form: the list in the record, no index.
            let mut old: serde_json::Value =
                serde_json::from_slice(&store.jobs.get("job-1").unwrap().unwrap()).unwrap();
            old.as_object_mut().unwrap().remove("run_count");
            old["run_ids"] = serde_json::json!(["run-a", "run-b"]);
            store
                .jobs
                .insert("job-1", serde_json::to_vec(&old).unwrap())
                .unwrap();
            for i in 0..2u64 {
                store.job_runs.remove(super::seq_key("job-1", i)).unwrap();
            }
            store.job_open.remove("job-1").unwrap();
            store
                .meta
                .insert("schema_version", &2u32.to_be_bytes())
                .unwrap();

            store.check_schema().unwrap();
            assert_eq!(store.job_run_ids("job-1").unwrap(), ["run-a", "run-b"]);
            assert_eq!(store.job_unfinished_runs("job-1").unwrap(), 1);
            let record =
                String::from_utf8(store.jobs.get("job-1").unwrap().unwrap().to_vec()).unwrap();
            assert!(!record.contains("run_ids"), "{record}");
            assert_eq!(store.get_job("job-1").unwrap().run_count, 2);
            // Once more changes nothing.
            store.check_schema().unwrap();
            assert_eq!(store.job_run_ids("job-1").unwrap().len(), 2);
        }
    }
}
