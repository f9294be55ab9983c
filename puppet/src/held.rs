//! The runs this puppet holds, shared by the poll loop and the run tasks.
//!
//! The poll loop inserts a run here synchronously when its assignment
//! arrives, before it sends the next poll, so every poll's `known_runs`
//! includes it and a redelivered assignment is recognised. A run leaves the
//! table only when its task ends (the guard's drop, which also runs if the
//! task panics), after `FinishRun` was acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How many forgotten runs are remembered, so that a late duplicate of an
/// assignment that was already finished and acknowledged is not started again.
const TOMBSTONES: usize = 1024;

/// Where a held run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Accepted, `StartRun` not yet answered: it takes a slot.
    Starting,
    /// Started: its artifacts are fetched, then its process runs. It takes a slot.
    Executing,
    /// Its process ended; its log and `FinishRun` are not acknowledged yet.
    Finishing,
}

#[derive(Debug)]
struct Entry {
    attempt: u32,
    stage: Stage,
    cancel: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    runs: BTreeMap<String, Entry>,
    forgotten: VecDeque<(String, u32)>,
    /// Pauses in force (an upgrade under way): no new run is asked for.
    paused: u32,
}

/// What a poll reports about the held runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub free_slots: u32,
    pub known_runs: Vec<String>,
    pub finishing_runs: Vec<String>,
}

/// Whether an assignment is new to the puppet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admission {
    /// New: it is now held, and its task must be started.
    New(CancellationToken),
    /// The same attempt is already held or was already finished.
    Duplicate,
    /// Another attempt of the run is still held.
    OtherAttempt(u32),
}

/// The table, cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct HeldRuns {
    // A std mutex: it is held only for map operations, never across an await.
    table: Arc<Mutex<Table>>,
    slot_freed: Arc<Notify>,
    /// Wakes every waiter of [`HeldRuns::settle`] when a run changes stage
    /// or is forgotten.
    changed: Arc<Notify>,
}

impl HeldRuns {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a run unless it is already known. The cancel token is a child
    /// of `parent`, so a shutdown also reaches the run.
    pub fn admit(
        &self,
        run_id: &str,
        attempt: u32,
        stage: Stage,
        parent: &CancellationToken,
    ) -> Admission {
        let mut table = self.lock();
        if let Some(entry) = table.runs.get(run_id) {
            return if entry.attempt == attempt {
                Admission::Duplicate
            } else {
                Admission::OtherAttempt(entry.attempt)
            };
        }
        if table
            .forgotten
            .iter()
            .any(|(id, a)| id == run_id && *a == attempt)
        {
            return Admission::Duplicate;
        }
        let cancel = parent.child_token();
        table.runs.insert(
            run_id.to_string(),
            Entry {
                attempt,
                stage,
                cancel: cancel.clone(),
            },
        );
        Admission::New(cancel)
    }

    /// Moves a run to another stage; leaving a slot-taking stage wakes the poll loop.
    pub fn set_stage(&self, run_id: &str, stage: Stage) {
        let freed = {
            let mut table = self.lock();
            match table.runs.get_mut(run_id) {
                Some(entry) => {
                    let freed = entry.stage != Stage::Finishing && stage == Stage::Finishing;
                    entry.stage = stage;
                    freed
                }
                None => false,
            }
        };
        self.changed.notify_waiters();
        if freed {
            self.slot_freed.notify_one();
        }
    }

    /// Cancels a held run; returns whether it was held.
    pub fn cancel(&self, run_id: &str) -> bool {
        match self.lock().runs.get(run_id) {
            Some(entry) => {
                entry.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops holding a run and remembers that this attempt is done.
    pub fn forget(&self, run_id: &str) {
        let freed = {
            let mut table = self.lock();
            let Some(entry) = table.runs.remove(run_id) else {
                return;
            };
            if table.forgotten.len() >= TOMBSTONES {
                table.forgotten.pop_front();
            }
            table
                .forgotten
                .push_back((run_id.to_string(), entry.attempt));
            entry.stage != Stage::Finishing
        };
        self.changed.notify_waiters();
        if freed {
            self.slot_freed.notify_one();
        }
    }

    /// Whether any of these runs is still held.
    pub fn holds_any(&self, run_ids: &[String]) -> bool {
        let table = self.lock();
        run_ids.iter().any(|id| table.runs.contains_key(id))
    }

    /// Waits until none of `run_ids` is held any more (each one's task
    /// ended: its finish was acknowledged, or it gave up). Runs still
    /// starting or finishing (talking to the puppeteer) are always waited
    /// for; once every remaining run is executing, for `grace` more at
    /// most. Never longer than `cap` in all. Returns whether they all were
    /// forgotten.
    pub async fn settle(&self, run_ids: &[String], grace: Duration, cap: Duration) -> bool {
        let cap = tokio::time::Instant::now() + cap;
        let mut executing_until: Option<tokio::time::Instant> = None;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a change between the check and
            // the wait still wakes it.
            changed.as_mut().enable();
            let (held, reporting) = {
                let table = self.lock();
                let stages: Vec<Stage> = run_ids
                    .iter()
                    .filter_map(|id| table.runs.get(id).map(|e| e.stage))
                    .collect();
                let reporting = stages.iter().any(|s| *s != Stage::Executing);
                (!stages.is_empty(), reporting)
            };
            if !held {
                return true;
            }
            let until = if reporting {
                cap
            } else {
                let until =
                    *executing_until.get_or_insert_with(|| tokio::time::Instant::now() + grace);
                until.min(cap)
            };
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(until) => return !self.holds_any(run_ids),
            }
        }
    }

    /// What the next poll reports.
    pub fn snapshot(&self, slots: u32) -> Snapshot {
        let table = self.lock();
        let busy = table
            .runs
            .values()
            .filter(|e| e.stage != Stage::Finishing)
            .count();
        let slots = if table.paused > 0 { 0 } else { slots };
        Snapshot {
            free_slots: slots.saturating_sub(u32::try_from(busy).unwrap_or(u32::MAX)),
            known_runs: table.runs.keys().cloned().collect(),
            finishing_runs: table
                .runs
                .iter()
                .filter(|(_, e)| e.stage == Stage::Finishing)
                .map(|(id, _)| id.clone())
                .collect(),
        }
    }

    /// Takes no new run until the guard is dropped (an upgrade: the next
    /// polls say no slot is free).
    pub fn pause(&self) -> PauseGuard {
        self.lock().paused += 1;
        PauseGuard { held: self.clone() }
    }

    /// Waits until no run but `run_id` is starting or executing (runs
    /// finishing are reporting, with their outcome on disk).
    pub async fn wait_alone(&self, run_id: &str) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let others = self
                .lock()
                .runs
                .iter()
                .any(|(id, e)| id != run_id && e.stage != Stage::Finishing);
            if !others {
                return;
            }
            changed.await;
        }
    }

    /// Resolves when a slot may have been freed since the last call.
    pub async fn slot_freed(&self) {
        self.slot_freed.notified().await;
    }

    /// A guard that forgets the run when dropped, even by a panic.
    pub fn guard(&self, run_id: &str) -> HeldGuard {
        HeldGuard {
            held: self.clone(),
            run_id: run_id.to_string(),
        }
    }
}

/// Ends a pause when dropped.
#[derive(Debug)]
pub struct PauseGuard {
    held: HeldRuns,
}

impl Drop for PauseGuard {
    fn drop(&mut self) {
        {
            let mut table = self.held.lock();
            table.paused = table.paused.saturating_sub(1);
        }
        self.held.slot_freed.notify_one();
    }
}

/// Forgets its run when dropped.
#[derive(Debug)]
pub struct HeldGuard {
    held: HeldRuns,
    run_id: String,
}

impl Drop for HeldGuard {
    fn drop(&mut self) {
        self.held.forget(&self.run_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_is_recognised_while_held_and_after_forgetting() {
        let held = HeldRuns::default();
        let root = CancellationToken::new();
        assert!(matches!(
            held.admit("run-1", 1, Stage::Starting, &root),
            Admission::New(_)
        ));
        assert_eq!(
            held.admit("run-1", 1, Stage::Starting, &root),
            Admission::Duplicate
        );
        assert_eq!(
            held.admit("run-1", 2, Stage::Starting, &root),
            Admission::OtherAttempt(1)
        );
        held.forget("run-1");
        assert_eq!(
            held.admit("run-1", 1, Stage::Starting, &root),
            Admission::Duplicate
        );
        assert!(matches!(
            held.admit("run-1", 2, Stage::Starting, &root),
            Admission::New(_)
        ));
    }

    #[test]
    fn slots_and_known_runs_follow_the_stages() {
        let held = HeldRuns::default();
        let root = CancellationToken::new();
        held.admit("run-a", 1, Stage::Starting, &root);
        held.admit("run-b", 1, Stage::Finishing, &root);
        let snap = held.snapshot(2);
        assert_eq!(snap.free_slots, 1);
        assert_eq!(snap.known_runs, ["run-a", "run-b"]);
        assert_eq!(snap.finishing_runs, ["run-b"]);
        held.set_stage("run-a", Stage::Finishing);
        assert_eq!(held.snapshot(2).free_slots, 2);
        assert_eq!(held.snapshot(0).free_slots, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn settle_waits_for_reports_and_for_a_short_execution_only() {
        const GRACE: Duration = Duration::from_secs(2);
        const CAP: Duration = Duration::from_secs(30);
        let held = HeldRuns::default();
        let root = CancellationToken::new();
        assert!(held.settle(&[], GRACE, CAP).await, "nothing to wait for");

        // A slow start (longer than the grace), a quick execution, a slow
        // finish: all waited for, the grace counts only the execution.
        held.admit("run-a", 1, Stage::Starting, &root);
        let ids = vec!["run-a".to_string()];
        let start = tokio::time::Instant::now();
        let other = held.clone();
        let run = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            other.set_stage("run-a", Stage::Executing);
            tokio::time::sleep(Duration::from_secs(1)).await;
            other.set_stage("run-a", Stage::Finishing);
            tokio::time::sleep(Duration::from_secs(5)).await;
            other.forget("run-a");
        });
        assert!(held.settle(&ids, GRACE, CAP).await);
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        run.await.unwrap();

        // An execution longer than the grace: the wait ends after the grace.
        held.admit("run-b", 1, Stage::Executing, &root);
        let ids = vec!["run-b".to_string()];
        let start = tokio::time::Instant::now();
        assert!(!held.settle(&ids, GRACE, CAP).await);
        assert_eq!(start.elapsed(), GRACE);

        // A report that never ends: the cap ends the wait.
        held.admit("run-c", 1, Stage::Finishing, &root);
        let ids = vec!["run-c".to_string()];
        let start = tokio::time::Instant::now();
        assert!(!held.settle(&ids, GRACE, CAP).await);
        assert_eq!(start.elapsed(), CAP);
    }

    #[tokio::test]
    async fn a_pause_takes_no_new_run_and_waits_for_the_others() {
        let held = HeldRuns::default();
        let shutdown = CancellationToken::new();
        held.admit("run-up", 1, Stage::Executing, &shutdown);
        held.admit("run-other", 1, Stage::Executing, &shutdown);
        let pause = held.pause();
        assert_eq!(held.snapshot(4).free_slots, 0);
        let alone = held.wait_alone("run-up");
        tokio::pin!(alone);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut alone)
                .await
                .is_err(),
            "another run is executing"
        );
        held.set_stage("run-other", Stage::Finishing);
        tokio::time::timeout(Duration::from_secs(5), alone)
            .await
            .expect("alone once the other run finished");
        drop(pause);
        assert_eq!(held.snapshot(4).free_slots, 3);
    }

    #[test]
    fn cancel_and_shutdown_reach_the_run() {
        let held = HeldRuns::default();
        let root = CancellationToken::new();
        let Admission::New(token) = held.admit("run-a", 1, Stage::Executing, &root) else {
            panic!("not admitted");
        };
        assert!(held.cancel("run-a"));
        assert!(token.is_cancelled());
        assert!(!held.cancel("run-unknown"));
        let Admission::New(token) = held.admit("run-b", 1, Stage::Executing, &root) else {
            panic!("not admitted");
        };
        root.cancel();
        assert!(token.is_cancelled());
    }
}
