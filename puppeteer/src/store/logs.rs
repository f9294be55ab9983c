//! Run output, stored as chunks keyed by their byte offset.
//!
//! Appends are idempotent: a chunk is stored only where it extends the
//! output, so a resend after a lost answer changes nothing, and a chunk
//! that overlaps the end stores only its new bytes. A chunk that would leave
//! a gap is refused. The run's `log_length` moves in the same transaction as
//! the chunk, so the length never promises bytes that are not there.
//!
//! A per-run limit ([`LogLimit`]) bounds what is kept: once the output is
//! longer than `head + tail`, the first `head` bytes and the last `tail`
//! bytes are kept and the middle is dropped. Offsets never change: the run's
//! [`LogGap`] says which range is gone, `log_length` stays the full length
//! (so the puppet's `FinishRun` check still holds), and bytes that fall in
//! the gap are acknowledged and counted but never written. Chunks the gap
//! swallows are deleted just after the append's transaction (sled's
//! transactions cannot scan a range); a crash in between leaves dead chunks
//! inside the gap, which readers never look at and the next append removes.

use crate::store::Transactional;
use std::sync::Mutex;

use super::keys::{prefix_of, seq_key, seq_of};
use super::{Result, Store, StoreError, abort, decode, encode};
use crate::domain::{LogGap, Run};

/// How much of a run's output the puppeteer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimit {
    /// Bytes kept from the start of the output.
    pub head: u64,
    /// Bytes kept from the end of the output.
    pub tail: u64,
}

impl LogLimit {
    /// A limit of `total` bytes, half head and half tail.
    pub fn halves(total: u64) -> Self {
        LogLimit {
            head: total / 2,
            tail: total - total / 2,
        }
    }

    pub fn total(&self) -> u64 {
        self.head.saturating_add(self.tail)
    }
}

/// The gap of a log `len` bytes long under `limit`, given its gap so far.
/// Once placed, a gap only grows: its start stays, its end follows the tail.
pub fn next_gap(gap: Option<LogGap>, len: u64, limit: Option<LogLimit>) -> Option<LogGap> {
    let Some(limit) = limit else {
        return gap;
    };
    let kept = len - gap.map_or(0, |g| g.dropped);
    if kept <= limit.total() {
        return gap;
    }
    let at = gap.map_or(limit.head, |g| g.at);
    let end = len
        .saturating_sub(limit.tail)
        .max(gap.map_or(at, |g| g.end()));
    Some(LogGap {
        at,
        dropped: end - at,
    })
}

/// The most bytes one chunk may declare skipped (a run printing a terabyte
/// is not one to believe).
const MAX_SKIP: u64 = 1 << 40;

/// How an append went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Bytes of the current attempt's output held after the append
    /// (dropped bytes included: they were received).
    pub committed: u64,
    /// The chunk added nothing (it was all there already).
    pub duplicate: bool,
    /// Part of the chunk was there already (a resend overlapping the end).
    pub overlap: bool,
    /// Bytes of this chunk that fell into the dropped middle of the log.
    pub dropped: u64,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// Offset of `data` in the output: past the gap if the read started in it.
    pub offset: u64,
    /// Bytes of the gap between the asked offset and `offset`.
    pub skipped: u64,
    /// Contiguous bytes; a read starting before the gap stops at it.
    pub data: Vec<u8>,
}

/// Serializes the removal of chunks swallowed by gaps, so that two of them
/// never rewrite the same straddling chunk. A std mutex: the section is
/// synchronous (a short scan and one batch).
pub(crate) type TrimLock = std::sync::Arc<Mutex<()>>;

impl Store {
    /// Appends `data` at `offset` to a run's output after `check` accepted
    /// the run (ownership, state, attempt), keeping within `limit`.
    pub fn append_log(
        &self,
        run_id: &str,
        offset: u64,
        data: &[u8],
        limit: Option<LogLimit>,
        check: impl Fn(&Run) -> Result<()>,
    ) -> Result<Appended> {
        self.append_log_skipping(run_id, offset, 0, data, limit, check)
    }

    /// [`Store::append_log`] for a chunk whose puppet left out the
    /// `skipped` bytes before it, under the log limit it was given (it keeps
    /// head and tail itself and sends only what will be kept): they are
    /// counted as received and recorded in the gap, never silently missing.
    /// The skip must start where the server's bytes end (a resend of such a
    /// chunk is an ordinary overlap), and may only extend a gap that ends
    /// there: a log has one gap.
    pub fn append_log_skipping(
        &self,
        run_id: &str,
        offset: u64,
        skipped: u64,
        data: &[u8],
        limit: Option<LogLimit>,
        check: impl Fn(&Run) -> Result<()>,
    ) -> Result<Appended> {
        let (appended, gap, stored) = (&self.runs, &self.logs).transaction(|(runs, logs)| {
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
            let mut held = run.log_length - run.log_base;
            let Some(end) = offset.checked_add(data.len() as u64) else {
                return abort(StoreError::Conflict(format!(
                    "log chunk at offset {offset} is past any possible output"
                )));
            };
            let original_gap = run.log_gap;
            // Bytes the skip drops: skipped ones, and stored ones it puts
            // in the middle.
            let (mut skip_dropped, mut unstored) = (0, 0);
            if skipped > 0 && offset > held && !data.is_empty() && !run.state.is_terminal() {
                // A skip is a log limit's middle: far less than a terabyte.
                if offset.checked_sub(skipped) != Some(held) || skipped > MAX_SKIP {
                    return abort(StoreError::Conflict(format!(
                        "log chunk at offset {offset} skips {skipped} bytes but the server holds {held}; resend from {held}"
                    )));
                }
                let at = run.log_base + held;
                run.log_gap = match run.log_gap {
                    // The bytes held past the head were sent while the
                    // output still fitted; they are in the middle now: the
                    // log is what it would be had every byte come.
                    None => {
                        let from = limit.map_or(at, |l| (run.log_base + l.head).min(at));
                        unstored = at - from;
                        Some(LogGap {
                            at: from,
                            dropped: unstored + skipped,
                        })
                    }
                    Some(g) if g.end() == at => Some(LogGap {
                        at: g.at,
                        dropped: g.dropped + skipped,
                    }),
                    Some(_) => {
                        return abort(StoreError::Conflict(format!(
                            "log chunk at offset {offset} skips bytes after the kept tail of a truncated log"
                        )));
                    }
                };
                run.log_length = at + skipped;
                held = offset;
                skip_dropped = skipped + unstored;
            }
            if offset > held {
                return abort(StoreError::Conflict(format!(
                    "log chunk at offset {offset} would leave a gap: the server holds {held} bytes; resend from {held}"
                )));
            }
            if end <= held {
                // An empty chunk asks how much the server holds (a puppet
                // resuming an upload after a restart): not a resend.
                let duplicate = !data.is_empty();
                if duplicate {
                    run.duplicate_reports += 1;
                    runs.insert(run_id.as_bytes(), encode(&run))?;
                }
                let appended = Appended {
                    committed: held,
                    duplicate,
                    overlap: false,
                    dropped: 0,
                };
                return Ok((appended, None, 0));
            }
            let base = run.log_base;
            if run.state.is_terminal() {
                return abort(StoreError::Conflict(format!(
                    "run {run_id} is {} with {held} bytes of output; nothing can be appended",
                    run.state
                )));
            }
            let overlap = offset < held;
            if overlap {
                run.duplicate_reports += 1;
            }
            let fresh = &data[(held - offset) as usize..];
            let (from, to) = (base + held, base + end);
            let old_gap = run.log_gap;
            let gap = next_gap(old_gap, to, limit);
            // Only the parts of the fresh bytes outside the gap are written.
            let keep = |a: u64, b: u64| -> crate::store::TxResult<()> {
                if a < b {
                    let slice = &fresh[(a - from) as usize..(b - from) as usize];
                    logs.insert(seq_key(run_id, a), slice)?;
                }
                Ok(())
            };
            match gap {
                None => keep(from, to)?,
                Some(g) => {
                    keep(from, to.min(g.at))?;
                    keep(from.max(g.end()), to)?;
                }
            }
            let dropped = gap.map_or(0, |g| g.dropped) - old_gap.map_or(0, |g| g.dropped);
            run.log_gap = gap;
            run.log_length = to;
            runs.insert(run_id.as_bytes(), encode(&run))?;
            let appended = Appended {
                committed: end,
                duplicate: false,
                overlap,
                dropped: dropped + skip_dropped,
            };
            let stored = (to - from) as i64 - dropped as i64 - unstored as i64;
            Ok((
                appended,
                (gap != original_gap).then_some(gap).flatten(),
                stored,
            ))
        })?;
        self.add_log_bytes(stored);
        if let Some(gap) = gap {
            self.remove_gap(run_id, gap)?;
        }
        Ok(appended)
    }

    /// Deletes the stored bytes inside a run's gap: whole chunks go, chunks
    /// straddling an edge keep their part outside it.
    fn remove_gap(&self, run_id: &str, gap: LogGap) -> Result<()> {
        let _trimming = self.log_trim.lock().unwrap_or_else(|e| e.into_inner());
        let mut batch = super::kv::Batch::default();
        let at = seq_key(run_id, gap.at);
        if let Some((k, chunk)) = self
            .logs
            .range(prefix_of(run_id)..at.clone())
            .next_back()
            .transpose()?
        {
            let start = seq_of(&k);
            if start + chunk.len() as u64 > gap.at {
                batch.insert(k, &chunk[..(gap.at - start) as usize]);
            }
        }
        for kv in self.logs.range(at..seq_key(run_id, gap.end())) {
            let (k, chunk) = kv?;
            let start = seq_of(&k);
            batch.remove(k);
            if start + chunk.len() as u64 > gap.end() {
                let kept = &chunk[(gap.end() - start) as usize..];
                batch.insert(seq_key(run_id, gap.end()), kept);
            }
        }
        self.logs.apply_batch(batch)?;
        Ok(())
    }

    /// Reads up to `max` bytes of a run's output from `offset`, jumping over
    /// the dropped middle of a truncated log. Returns the run as read.
    pub fn read_log(&self, run_id: &str, offset: u64, max: usize) -> Result<(Run, LogRead)> {
        // A read racing an append that moves the gap can find a tail chunk
        // already removed; it reads again with the newer gap.
        let mut tries = 0;
        loop {
            let run = self.get_run(run_id)?;
            let (mut at, mut skipped, mut segment_end) = (offset, 0, run.log_length);
            if let Some(gap) = run.log_gap {
                if at < gap.at {
                    segment_end = gap.at;
                } else if at < gap.end() {
                    skipped = gap.end() - at;
                    at = gap.end();
                }
            }
            let want = (segment_end.saturating_sub(at)).min(max as u64) as usize;
            let data = self.read_chunks(run_id, at, want)?;
            tries += 1;
            if data.len() == want || tries == 3 {
                let read = LogRead {
                    offset: at,
                    skipped,
                    data,
                };
                return Ok((run, read));
            }
        }
    }

    /// Up to `want` contiguous stored bytes from `offset`.
    fn read_chunks(&self, run_id: &str, offset: u64, want: usize) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        if want == 0 {
            return Ok(out);
        }
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
        let mut at = offset;
        for kv in self.logs.range(from..) {
            let (k, chunk) = kv?;
            if !k.starts_with(&prefix_of(run_id)) {
                break;
            }
            let chunk_start = seq_of(&k);
            let chunk_end = chunk_start + chunk.len() as u64;
            if chunk_end <= at {
                continue;
            }
            if chunk_start > at {
                // Missing bytes (removed meanwhile): stop at what is contiguous.
                break;
            }
            let skip = (at - chunk_start) as usize;
            let take = (chunk.len() - skip).min(want - out.len());
            out.extend_from_slice(&chunk[skip..skip + take]);
            at += take as u64;
            if out.len() >= want {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::*;
    use crate::store::testing;

    pub(crate) fn run(id: &str) -> Run {
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
            log_gap: None,
            reboot_window_ms: None,
        }
    }

    pub(crate) fn job() -> Job {
        Job {
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
            run_count: 1,
            cancelled: false,
            seq: 1,
            strategy: Default::default(),
            approval: Default::default(),
            not_targeted: vec![],
            reported_end: None,
            acknowledged: None,
            created_by: None,
            approval_requested: false,
        }
    }

    #[test]
    fn appends_are_idempotent_and_gapless() {
        for (_engine, store) in testing::stores() {
            store.create_job(&job(), &[run("run-a")]).unwrap();
            let ok = |_: &Run| Ok(());
            assert_eq!(
                store
                    .append_log("run-a", 0, b"hello ", None, ok)
                    .unwrap()
                    .committed,
                6
            );
            // A resend of the same chunk changes nothing.
            let again = store.append_log("run-a", 0, b"hello ", None, ok).unwrap();
            assert!(again.duplicate);
            assert_eq!(again.committed, 6);
            // An empty chunk asks what is held: not a resend.
            let asked = store.append_log("run-a", 0, b"", None, ok).unwrap();
            assert_eq!((asked.duplicate, asked.committed), (false, 6));
            assert_eq!(store.get_run("run-a").unwrap().duplicate_reports, 1);
            // An overlapping chunk stores only its new bytes.
            assert_eq!(
                store
                    .append_log("run-a", 3, b"lo world", None, ok)
                    .unwrap()
                    .committed,
                11
            );
            // A gap is refused.
            assert!(store.append_log("run-a", 20, b"x", None, ok).is_err());
            assert_eq!(
                store.read_log("run-a", 0, 100).unwrap().1.data,
                b"hello world"
            );
            assert_eq!(store.read_log("run-a", 4, 3).unwrap().1.data, b"o w");
            assert_eq!(store.read_log("run-a", 8, 100).unwrap().1.data, b"rld");
            assert_eq!(store.read_log("run-a", 11, 100).unwrap().1.data, b"");
            assert_eq!(store.get_run("run-a").unwrap().log_length, 11);
        }
    }

    #[test]
    fn gaps_grow_from_the_head_and_follow_the_tail() {
        let limit = Some(LogLimit { head: 4, tail: 6 });
        assert_eq!(next_gap(None, 10, limit), None);
        let g = next_gap(None, 13, limit).unwrap();
        assert_eq!((g.at, g.dropped), (4, 3));
        let g = next_gap(Some(g), 20, limit).unwrap();
        assert_eq!((g.at, g.dropped), (4, 10));
        assert_eq!(next_gap(Some(g), 20, None), Some(g));
    }

    #[test]
    fn a_long_log_keeps_its_head_and_tail() {
        for (_engine, store) in testing::stores() {
            store.create_job(&job(), &[run("run-a")]).unwrap();
            let ok = |_: &Run| Ok(());
            let limit = Some(LogLimit { head: 10, tail: 10 });
            let output: Vec<u8> = (0..1000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let mut offset = 0;
            let mut dropped = 0;
            for size in [3usize, 15, 1, 200, 7, 400, 2, 372] {
                let chunk = &output[offset..offset + size];
                let appended = store
                    .append_log("run-a", offset as u64, chunk, limit, ok)
                    .unwrap();
                assert_eq!(appended.committed, (offset + size) as u64);
                dropped += appended.dropped;
                // A resend of a chunk now in the gap is acknowledged as a duplicate.
                assert!(
                    store
                        .append_log("run-a", offset as u64, chunk, limit, ok)
                        .unwrap()
                        .duplicate
                );
                offset += size;
            }
            assert_eq!(offset, 1000);
            let run = store.get_run("run-a").unwrap();
            assert_eq!(run.log_length, 1000);
            let gap = run.log_gap.unwrap();
            assert_eq!((gap.at, gap.dropped, dropped), (10, 980, 980));
            // Only the head and the tail are stored.
            let stored: usize = store.logs.iter().map(|kv| kv.unwrap().1.len()).sum();
            assert_eq!(stored, 20);
            let (_, head) = store.read_log("run-a", 0, 100).unwrap();
            assert_eq!((head.offset, head.skipped), (0, 0));
            assert_eq!(head.data, &output[..10]);
            let (_, tail) = store.read_log("run-a", 10, 100).unwrap();
            assert_eq!((tail.offset, tail.skipped), (990, 980));
            assert_eq!(tail.data, &output[990..]);
            let (_, inside) = store.read_log("run-a", 995, 3).unwrap();
            assert_eq!(inside.data, &output[995..998]);
            assert_eq!(store.read_log("run-a", 1000, 10).unwrap().1.data, b"");
        }
    }
}
