//! The event stream: gap-free, increasing ids.
//!
//! The next id lives in `meta` under `event_seq`; every append reads and
//! bumps it in the same transaction that stores the event, so ids never
//! skip or repeat. Run transitions append their event inside the very
//! transaction that changes the run (see `jobs.rs`), so the stream holds
//! every transition exactly once. Old events are pruned by age; the oldest
//! id kept is `event_oldest` in `meta`.

use crate::store::Transactional;
use crate::store::{TxError, TxTree};

use super::{Result, Store, decode, encode};
use crate::domain::{Event, Millis, Run};

type TxResult<T> = std::result::Result<T, TxError>;

const SEQ: &[u8] = b"event_seq";
const OLDEST: &[u8] = b"event_oldest";

fn read_u64(tree: &TxTree<'_>, key: &[u8]) -> TxResult<u64> {
    Ok(tree
        .get(key)?
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
        .unwrap_or(0))
}

/// Appends events within a transaction over `meta` and `events`; returns
/// them with their ids.
pub(crate) fn append(
    meta: &TxTree<'_>,
    events: &TxTree<'_>,
    new: Vec<Event>,
) -> TxResult<Vec<Event>> {
    let mut next = read_u64(meta, SEQ)?;
    let mut out = Vec::with_capacity(new.len());
    for mut event in new {
        next += 1;
        event.id = next;
        events.insert(next.to_be_bytes(), encode(&event))?;
        out.push(event);
    }
    meta.insert(SEQ, &next.to_be_bytes())?;
    Ok(out)
}

/// The events of a run's transitions from `from` on in its history.
pub(crate) fn of_run(run: &Run, from: usize) -> Vec<Event> {
    run.history[from.min(run.history.len())..]
        .iter()
        .map(|t| Event::of_run(run, t))
        .collect()
}

impl Store {
    /// Announces that a job ended in `state`, once per end: true when the
    /// event was appended now.
    pub fn report_job_end(&self, job_id: &str, state: &str, event: Event) -> Result<bool> {
        let reported =
            (&self.jobs, &self.meta, &self.events).transaction(|(jobs, meta, events)| {
                let Some(v) = jobs.get(job_id.as_bytes())? else {
                    return Ok(false);
                };
                let mut job: crate::domain::Job = match decode(job_id.as_bytes(), &v) {
                    Ok(j) => j,
                    Err(e) => return super::abort(e),
                };
                if job.reported_end.as_deref() == Some(state) {
                    return Ok(false);
                }
                job.reported_end = Some(state.to_string());
                jobs.insert(job_id.as_bytes(), encode(&job))?;
                append(meta, events, vec![event.clone()])?;
                Ok(true)
            });
        self.job_cache.changed(job_id);
        reported
    }

    /// Appends events (not about run transitions, which come with them).
    pub fn append_events(&self, new: Vec<Event>) -> Result<Vec<Event>> {
        if new.is_empty() {
            return Ok(vec![]);
        }
        let appended = (&self.meta, &self.events)
            .transaction(|(meta, events)| append(meta, events, new.clone()))?;
        Ok(appended)
    }

    /// Events with an id above `after`, oldest first, at most `limit`.
    pub fn events_after(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for kv in self.events.range((after + 1).to_be_bytes()..) {
            let (k, v) = kv?;
            out.push(decode(&k, &v)?);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The id of the newest event (0 when there is none).
    pub fn last_event_id(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(SEQ)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(0))
    }

    /// The id of the oldest event kept (1 when nothing was pruned).
    pub fn oldest_event_id(&self) -> Result<u64> {
        Ok(self
            .meta
            .get(OLDEST)?
            .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])))
            .unwrap_or(1))
    }

    /// Removes events older than `before`; returns how many.
    pub fn prune_events(&self, before: Millis) -> Result<usize> {
        let mut removed = 0;
        let mut last = None;
        for kv in self.events.iter() {
            let (k, v) = kv?;
            let event: Event = decode(&k, &v)?;
            if event.at >= before {
                break;
            }
            self.events.remove(k)?;
            last = Some(event.id);
            removed += 1;
        }
        if let Some(id) = last {
            self.meta.insert(OLDEST, &(id + 1).to_be_bytes())?;
        }
        Ok(removed)
    }
}
