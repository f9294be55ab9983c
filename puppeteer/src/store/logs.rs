//! Run output, stored as chunks keyed by their byte offset.
//!
//! Appends are idempotent: a chunk is stored only where it extends the
//! output, so a resend after a lost answer changes nothing, and a chunk
//! that overlaps the end stores only its new bytes. A chunk that would leave
//! a gap is refused. The run's `log_length` moves in the same transaction as
//! the chunk, so the length never promises bytes that are not there.

use sled::Transactional;

use super::keys::{prefix_of, seq_key};
use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::Run;

/// How an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes of the current attempt's output held after the append.
    pub committed: u64,
    /// The chunk added nothing (it was all there already).
    pub duplicate: bool,
}

impl Store {
    /// Appends `data` at `offset` to a run's output after `check` accepted
    /// the run (ownership, state, attempt).
    pub fn append_log(
        &self,
        run_id: &str,
        offset: u64,
        data: &[u8],
        check: impl Fn(&Run) -> Result<()>,
    ) -> Result<Appended> {
        let appended = (&self.runs, &self.logs).transaction(|(runs, logs)| {
            let Some(v) = runs.get(run_id.as_bytes())? else {
                return abort(StoreError::NotFound {
                    kind: "run",
                    id: run_id.to_string(),
                });
            };
            let mut run: Run = match decode(run_id.as_bytes(), &v) {
                Ok(r) => r,
                Err(e) => return abort(e),
            };
            if let Err(e) = check(&run) {
                return abort(e);
            }
            // Offsets are the attempt's own; the attempt's output starts at
            // `log_base` in the run's log.
            let held = run.log_length - run.log_base;
            let end = offset + data.len() as u64;
            if offset > held {
                return abort(StoreError::Conflict(format!(
                    "log chunk at offset {offset} would leave a gap: the server holds {held} bytes; resend from {held}"
                )));
            }
            if end <= held {
                run.duplicate_reports += 1;
                runs.insert(run_id.as_bytes(), encode(&run))?;
                return Ok(Appended {
                    committed: held,
                    duplicate: true,
                });
            }
            let base = run.log_base;
            if run.state.is_terminal() {
                return abort(StoreError::Conflict(format!(
                    "run {run_id} is {} with {held} bytes of output; nothing can be appended",
                    run.state
                )));
            }
            let fresh = &data[(held - offset) as usize..];
            logs.insert(seq_key(run_id, base + held), fresh)?;
            run.log_length = base + end;
            runs.insert(run_id.as_bytes(), encode(&run))?;
            Ok(Appended {
                committed: end,
                duplicate: false,
            })
        })?;
        Ok(appended)
    }

    /// Reads up to `max` bytes of a run's output from `offset`.
    pub fn read_log(&self, run_id: &str, offset: u64, max: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        let start = seq_key(run_id, offset);
        // The chunk holding `offset` starts at or before it.
        let first = self
            .logs
            .range(prefix_of(run_id)..=start.clone())
            .next_back()
            .transpose()?;
        let from = match first {
            Some((k, _)) => k.to_vec(),
            None => start,
        };
        for kv in self.logs.range(from..) {
            let (k, chunk) = kv?;
            if !k.starts_with(&prefix_of(run_id)) {
                break;
            }
            let chunk_start = super::keys::seq_of(&k);
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end <= offset {
                continue;
            }
            let skip = offset.saturating_sub(chunk_start) as usize;
            let want = max - out.len();
            let take = (chunk.len() - skip).min(want);
            out.extend_from_slice(&chunk[skip..skip + take]);
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::*;
    use crate::store::testing::temp_store;

    fn run(id: &str) -> Run {
        Run {
            id: id.into(),
            job_id: "job-1".into(),
            puppet: "p1".into(),
            task_name: "t".into(),
            task_version: 1,
            state: RunState::Running,
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
            queue_seq: 1,
            duplicate_reports: 0,
            needs: vec![],
            holds: vec![],
            log_base: 0,
            max_attempts: 1,
        }
    }

    #[test]
    fn appends_are_idempotent_and_gapless() {
        let (_dir, store) = temp_store();
        let job = Job {
            id: "job-1".into(),
            task_name: "t".into(),
            task_version: 1,
            spec: RunSpec {
                program: Program::Argv {
                    args: vec!["true".into()],
                },
                timeout_ms: 1000,
                env: Default::default(),
                workdir: String::new(),
                artifacts: Vec::new(),
                expect_reboot: false,
                reboot_window_ms: None,
            },
            target: Target::Puppets(vec!["p1".into()]),
            created_at: Millis(0),
            run_ids: vec!["run-a".into()],
            cancelled: false,
            seq: 1,
            strategy: Default::default(),
            approval: Default::default(),
            not_targeted: vec![],
            reported_end: None,
        };
        store.create_job(&job, &[run("run-a")]).unwrap();
        let ok = |_: &Run| Ok(());
        assert_eq!(
            store
                .append_log("run-a", 0, b"hello ", ok)
                .unwrap()
                .committed,
            6
        );
        // A resend of the same chunk changes nothing.
        let again = store.append_log("run-a", 0, b"hello ", ok).unwrap();
        assert!(again.duplicate);
        assert_eq!(again.committed, 6);
        // An overlapping chunk stores only its new bytes.
        assert_eq!(
            store
                .append_log("run-a", 3, b"lo world", ok)
                .unwrap()
                .committed,
            11
        );
        // A gap is refused.
        assert!(store.append_log("run-a", 20, b"x", ok).is_err());
        assert_eq!(store.read_log("run-a", 0, 100).unwrap(), b"hello world");
        assert_eq!(store.read_log("run-a", 4, 3).unwrap(), b"o w");
        assert_eq!(store.read_log("run-a", 8, 100).unwrap(), b"rld");
        assert_eq!(store.read_log("run-a", 11, 100).unwrap(), b"");
        assert_eq!(store.get_run("run-a").unwrap().log_length, 11);
    }
}
