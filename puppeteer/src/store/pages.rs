//! Listings, a page at a time.
//!
//! Every listing the API offers reads one page per call, so that no answer
//! grows with the fleet or the history (`ListPuppets` over 10,000 puppets
//! was one 10.9 MB message). A page holds at most `limit` items, and the
//! store looks at no more than `budget` records to fill it: a selective
//! filter over 100,000 puppets answers with short pages, even empty ones,
//! rather than one long scan. A page that may not be the last ends with a
//! [`Cursor`], the key of the last record looked at; the next page starts
//! strictly after it.
//!
//! A cursor is a position, not a snapshot. Between two pages, a record
//! added after the cursor is listed and one added before it is not; a
//! removed one is not; an unchanged one is listed exactly once, since keys
//! never move (names, sequence numbers and positions in a job only grow or
//! vanish).

use std::ops::Bound;

use super::kv::Bytes;

use super::{Result, Store, decode, keys};
use crate::domain::{AuditEntry, Job, Millis, Puppet, Run};

/// Where a listing continues: the key of the last record looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor(pub Vec<u8>);

/// What one page may hold and cost.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// Continue after this position; `None`: from the start.
    pub after: Option<Cursor>,
    /// At most this many items.
    pub limit: usize,
    /// At most this many records looked at (kept or filtered out).
    pub budget: usize,
}

/// One page of a listing.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Where the next page starts; `None` when nothing is left.
    pub next: Option<Cursor>,
}

/// Which runs a listing reads.
#[derive(Clone, Copy, Debug)]
pub enum RunsOf<'a> {
    /// Every run a puppet was ever given, oldest first.
    Puppet(&'a str),
    /// Every unfinished run, by puppet, each puppet's in queue order.
    Active,
    /// A job's runs, in the job's order.
    Job(&'a Job),
}

/// What a listing does with one record.
enum Pick<T> {
    Keep(T),
    /// Looked at, filtered out.
    Skip,
    /// The listing ends before this record (and no cursor is given).
    End,
}

impl<T> Pick<T> {
    fn kept_if(keep: bool, item: T) -> Self {
        if keep { Pick::Keep(item) } else { Pick::Skip }
    }
}

/// Fills a page from `entries`, deciding on each with `pick`.
fn fill<T>(
    entries: impl Iterator<Item = Result<(Bytes, Bytes)>>,
    request: &PageRequest,
    mut pick: impl FnMut(&[u8], &[u8]) -> Result<Pick<T>>,
) -> Result<Page<T>> {
    let limit = request.limit.max(1);
    let budget = request.budget.max(limit);
    let mut items = Vec::new();
    let mut looked = 0;
    let mut last = None;
    let mut entries = entries.peekable();
    for entry in entries.by_ref() {
        let (key, value) = entry?;
        looked += 1;
        match pick(&key, &value)? {
            Pick::Keep(item) => items.push(item),
            Pick::Skip => {}
            Pick::End => return Ok(Page { items, next: None }),
        }
        last = Some(key);
        if items.len() >= limit || looked >= budget {
            break;
        }
    }
    let more = entries.peek().is_some();
    Ok(Page {
        items,
        next: last.filter(|_| more).map(|key| Cursor(key.to_vec())),
    })
}

/// The range of keys strictly after the cursor, within `prefix`.
fn after(prefix: &[u8], cursor: Option<&Cursor>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = match cursor {
        Some(Cursor(key)) if key.as_slice() >= prefix => Bound::Excluded(key.clone()),
        _ => Bound::Included(prefix.to_vec()),
    };
    (start, end_of(prefix))
}

/// The bound just past every key starting with `prefix`.
fn end_of(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

impl Store {
    /// Puppets by name, those `keep` accepts.
    pub fn puppets_page(
        &self,
        request: &PageRequest,
        keep: impl Fn(&Puppet) -> bool,
    ) -> Result<Page<Puppet>> {
        let entries = self.puppets.range(after(b"", request.after.as_ref()));
        fill(entries, request, |key, value| {
            let mut puppet: Puppet = decode(key, value)?;
            self.overlay_seen(&mut puppet)?;
            Ok(Pick::kept_if(keep(&puppet), puppet))
        })
    }

    /// Runs of a puppet, of a job, or every unfinished one; those `keep`
    /// accepts. A run removed between the index's read and the run's is
    /// skipped.
    pub fn runs_page(
        &self,
        of: RunsOf<'_>,
        request: &PageRequest,
        keep: impl Fn(&Run) -> bool,
    ) -> Result<Page<Run>> {
        let pick = |_: &[u8], id: &[u8]| -> Result<Pick<Run>> {
            match self.get_run(&String::from_utf8_lossy(id)) {
                Ok(run) => Ok(Pick::kept_if(keep(&run), run)),
                Err(super::StoreError::NotFound { .. }) => Ok(Pick::Skip),
                Err(e) => Err(e),
            }
        };
        match of {
            RunsOf::Puppet(name) => {
                let prefix = keys::prefix_of(name);
                let entries = self
                    .puppet_runs
                    .range(after(&prefix, request.after.as_ref()));
                fill(entries, request, pick)
            }
            RunsOf::Active => {
                let entries = self.queue.range(after(b"", request.after.as_ref()));
                fill(entries, request, pick)
            }
            RunsOf::Job(job) => {
                // The job's index, keyed by position (u64 BE) under its id.
                let prefix = keys::prefix_of(&job.id);
                let entries = self.job_runs.range(after(&prefix, request.after.as_ref()));
                fill(entries, request, pick)
            }
        }
    }

    /// Jobs, newest first.
    pub fn jobs_page(
        &self,
        request: &PageRequest,
        keep: impl Fn(&Job) -> bool,
    ) -> Result<Page<Job>> {
        let entries = match &request.after {
            Some(Cursor(key)) => self.job_order.range(..key.clone()).rev(),
            None => self.job_order.range::<Vec<u8>, _>(..).rev(),
        };
        fill(entries, request, |_, id| {
            match self.get_job(&String::from_utf8_lossy(id)) {
                Ok(job) => Ok(Pick::kept_if(keep(&job), job)),
                // Pruned between the index's read and the job's.
                Err(super::StoreError::NotFound { .. }) => Ok(Pick::Skip),
                Err(e) => Err(e),
            }
        })
    }

    /// Audit entries, newest first, back to `since`; those of `actor` only
    /// when given.
    pub fn audit_page(
        &self,
        since: Option<Millis>,
        actor: Option<&str>,
        request: &PageRequest,
    ) -> Result<Page<AuditEntry>> {
        let entries = match &request.after {
            Some(Cursor(key)) => self.audit.range(..key.clone()).rev(),
            None => self.audit.range::<Vec<u8>, _>(..).rev(),
        };
        // Entries are in time order: the first one before `since` ends the
        // listing.
        fill(entries, request, |key, value| {
            let entry: AuditEntry = decode(key, value)?;
            if since.is_some_and(|s| entry.at < s) {
                return Ok(Pick::End);
            }
            Ok(Pick::kept_if(actor.is_none_or(|a| entry.actor == a), entry))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::encode;
    use crate::store::testing::{self, job, run};

    fn put_puppet(store: &Store, name: &str, even: bool) {
        let puppet = Puppet {
            peer: None,
            name: name.into(),
            state: crate::domain::PuppetState::Enabled,
            enrolled_at: Millis(0),
            last_seen: None,
            declared_labels: [("even".to_string(), even.to_string())].into(),
            assigned_labels: Default::default(),
            facts: Default::default(),
            enroll_token_id: String::new(),
            credential_hash: String::new(),
            rotation: None,
            old_credential: None,
            revoked: false,
            reported_presence: None,
        };
        store.puppets.insert(name, encode(&puppet)).unwrap();
    }

    fn request(after: Option<Cursor>, limit: usize, budget: usize) -> PageRequest {
        PageRequest {
            after,
            limit,
            budget,
        }
    }

    /// Pages through a listing to its end; returns the pages' sizes too.
    fn all_pages<T>(mut page: impl FnMut(Option<Cursor>) -> Page<T>) -> (Vec<T>, Vec<usize>) {
        let (mut items, mut sizes, mut after) = (Vec::new(), Vec::new(), None);
        loop {
            let Page {
                items: mut got,
                next,
            } = page(after);
            sizes.push(got.len());
            items.append(&mut got);
            match next {
                Some(cursor) => after = Some(cursor),
                None => return (items, sizes),
            }
        }
    }

    fn names(puppets: &[Puppet]) -> Vec<&str> {
        puppets.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn puppets_page_by_name_and_the_last_page_has_no_cursor() {
        for (_engine, store) in testing::stores() {
            for i in 0..10 {
                put_puppet(&store, &format!("p{i:02}"), i % 2 == 0);
            }
            let (all, sizes) = all_pages(|after| {
                store
                    .puppets_page(&request(after, 4, 100), |_| true)
                    .unwrap()
            });
            assert_eq!(all.len(), 10);
            assert_eq!(names(&all)[..3], ["p00", "p01", "p02"]);
            assert_eq!(sizes, [4, 4, 2]);
            // A page that ends exactly at the end says so.
            let exact = store
                .puppets_page(&request(None, 10, 100), |_| true)
                .unwrap();
            assert_eq!((exact.items.len(), exact.next), (10, None));
        }
    }

    #[test]
    fn a_filter_looks_at_no_more_than_the_budget_per_page() {
        for (_engine, store) in testing::stores() {
            for i in 0..30 {
                // Only p00 and p29 match.
                put_puppet(&store, &format!("p{i:02}"), i == 0 || i == 29);
            }
            let looked = std::cell::Cell::new(0);
            let (kept, sizes) = all_pages(|after| {
                store
                    .puppets_page(&request(after, 5, 10), |p| {
                        looked.set(looked.get() + 1);
                        p.declared_labels["even"] == "true"
                    })
                    .unwrap()
            });
            assert_eq!(names(&kept), ["p00", "p29"]);
            // Three pages of ten looked at: short and empty pages, each bounded.
            assert_eq!(sizes, [1, 0, 1]);
            assert_eq!(looked.get(), 30);
        }
    }

    #[test]
    fn records_added_or_removed_between_pages_are_never_listed_twice() {
        for (_engine, store) in testing::stores() {
            for name in ["b", "d", "f", "h"] {
                put_puppet(&store, name, true);
            }
            let first = store
                .puppets_page(&request(None, 2, 100), |_| true)
                .unwrap();
            assert_eq!(names(&first.items), ["b", "d"]);
            // Before the cursor (not listed), after it (listed), one removed.
            put_puppet(&store, "a", true);
            put_puppet(&store, "e", true);
            store.puppets.remove("f").unwrap();
            let second = store
                .puppets_page(&request(first.next, 10, 100), |_| true)
                .unwrap();
            assert_eq!(names(&second.items), ["e", "h"]);
            assert_eq!(second.next, None);
        }
    }

    #[test]
    fn runs_page_by_puppet_by_job_and_unfinished() {
        for (_engine, store) in testing::stores() {
            let job = job();
            let mut runs = Vec::new();
            for i in 0..7 {
                let mut r = run(&format!("run-{i}"));
                r.puppet = if i < 4 { "p1".into() } else { "p2".into() };
                r.queue_seq = i;
                runs.push(r);
            }
            store.create_job(&job, &runs).unwrap();

            let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
            let (of_job, sizes) = all_pages(|after| {
                store
                    .runs_page(RunsOf::Job(&job), &request(after, 3, 100), |_| true)
                    .unwrap()
            });
            assert_eq!(sizes, [3, 3, 1]);
            assert_eq!(ids(of_job), store.job_run_ids(&job.id).unwrap());
            assert_eq!(store.job_run_ids(&job.id).unwrap().len(), 7);
            let (of_p1, _) = all_pages(|after| {
                store
                    .runs_page(RunsOf::Puppet("p1"), &request(after, 3, 100), |_| true)
                    .unwrap()
            });
            assert_eq!(ids(of_p1), ["run-0", "run-1", "run-2", "run-3"]);
            let (of_p2, _) = all_pages(|after| {
                store
                    .runs_page(RunsOf::Puppet("p2"), &request(after, 2, 100), |_| true)
                    .unwrap()
            });
            assert_eq!(ids(of_p2), ["run-4", "run-5", "run-6"]);
            let (active, _) = all_pages(|after| {
                store
                    .runs_page(RunsOf::Active, &request(after, 2, 100), |r| {
                        r.puppet == "p2"
                    })
                    .unwrap()
            });
            assert_eq!(ids(active).len(), 3);
        }
    }

    #[test]
    fn audit_pages_go_back_in_time_and_stop_at_since() {
        for (_engine, store) in testing::stores() {
            for i in 0..9 {
                store
                    .append_audit(AuditEntry {
                        seq: 0,
                        at: Millis(i * 1000),
                        actor: if i % 3 == 0 { "alice" } else { "bob" }.into(),
                        action: format!("a{i}"),
                        target: String::new(),
                        remote_addr: String::new(),
                        outcome: "ok".into(),
                        message: String::new(),
                    })
                    .unwrap();
            }
            let actions = |entries: Vec<AuditEntry>| {
                entries.into_iter().map(|e| e.action).collect::<Vec<_>>()
            };
            let (all, sizes) = all_pages(|after| {
                store
                    .audit_page(Some(Millis(3000)), None, &request(after, 4, 100))
                    .unwrap()
            });
            assert_eq!(sizes, [4, 2]);
            assert_eq!(actions(all), ["a8", "a7", "a6", "a5", "a4", "a3"]);
            let (alice, _) = all_pages(|after| {
                store
                    .audit_page(None, Some("alice"), &request(after, 1, 100))
                    .unwrap()
            });
            assert_eq!(actions(alice), ["a6", "a3", "a0"]);
        }
    }

    #[test]
    fn jobs_page_newest_first() {
        for (_engine, store) in testing::stores() {
            for i in 1..=5 {
                let mut j = job();
                j.id = format!("job-{i}");
                j.seq = i;
                store.create_job(&j, &[]).unwrap();
            }
            let (jobs, sizes) = all_pages(|after| {
                store
                    .jobs_page(&request(after, 2, 100), |j| j.id != "job-3")
                    .unwrap()
            });
            let ids: Vec<_> = jobs.into_iter().map(|j| j.id).collect();
            assert_eq!(ids, ["job-5", "job-4", "job-2", "job-1"]);
            assert_eq!(sizes, [2, 2]);
        }
    }
}
