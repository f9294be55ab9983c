//! The artifact downloads under way, in memory, for operators to see (the
//! download itself is the api's `FetchArtifact` stream).

use crate::domain::Run;

/// The artifact downloads under way, by run, in memory: what operators see
/// of a run that is fetching (bytes, rate, estimate). An entry goes when
/// its last artifact is complete (leaving a line in the run's history) or
/// when the run ends.
#[derive(Debug, Default)]
pub struct Fetches(
    // A std mutex: held for a map access, never across an await.
    std::sync::Mutex<std::collections::HashMap<String, Fetch>>,
);

/// One run's downloads.
#[derive(Clone, Debug)]
struct Fetch {
    attempt: u32,
    started: crate::domain::Millis,
    began: std::time::Instant,
    /// Per content: its name, the bytes the puppet holds, its size, and
    /// when its download began.
    parts: std::collections::BTreeMap<String, Part>,
    /// Bytes sent since `began`.
    sent: u64,
}

#[derive(Clone, Debug)]
struct Part {
    name: String,
    have: u64,
    size: u64,
    began: std::time::Instant,
    sent: u64,
}

/// A fetch as shown to operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchView {
    pub artifacts: Vec<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_per_second: u64,
    pub started: crate::domain::Millis,
    pub eta: Option<std::time::Duration>,
}

/// An artifact whose download just completed: its name, size, how long
/// it took here and the bytes sent.
pub(crate) struct Completed {
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) took: std::time::Duration,
    pub(crate) sent: u64,
}

impl Fetches {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Fetch>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A download of `sha256` for the run begins (or resumes) at `offset`.
    pub(crate) fn begin(&self, run: &Run, sha256: &str, name: &str, offset: u64, size: u64) {
        let now = std::time::Instant::now();
        let mut map = self.map();
        let fetch = map.entry(run.id.clone()).or_insert_with(|| Fetch {
            attempt: run.attempt,
            started: crate::domain::Millis::now(),
            began: now,
            parts: Default::default(),
            sent: 0,
        });
        if fetch.attempt != run.attempt {
            *fetch = Fetch {
                attempt: run.attempt,
                started: crate::domain::Millis::now(),
                began: now,
                parts: Default::default(),
                sent: 0,
            };
        }
        let part = fetch.parts.entry(sha256.to_string()).or_insert(Part {
            name: name.to_string(),
            have: offset,
            size,
            began: now,
            sent: 0,
        });
        part.have = offset;
    }

    /// `n` more bytes of `sha256` went to the run's puppet, up to `have`.
    /// Returns the artifact if it is now complete.
    pub(crate) fn sent(&self, run_id: &str, sha256: &str, n: u64, have: u64) -> Option<Completed> {
        let mut map = self.map();
        let fetch = map.get_mut(run_id)?;
        fetch.sent += n;
        let part = fetch.parts.get_mut(sha256)?;
        part.sent += n;
        part.have = have;
        if part.have < part.size {
            return None;
        }
        let part = fetch.parts.remove(sha256)?;
        if fetch.parts.is_empty() {
            map.remove(run_id);
        }
        Some(Completed {
            name: part.name,
            size: part.size,
            took: part.began.elapsed(),
            sent: part.sent,
        })
    }

    /// Forgets the downloads of a run that ended.
    pub fn forget(&self, run_id: &str) {
        self.map().remove(run_id);
    }

    /// The run's downloads under way, if any.
    pub fn of(&self, run_id: &str) -> Option<FetchView> {
        let map = self.map();
        let fetch = map.get(run_id)?;
        let elapsed = fetch.began.elapsed();
        Some(view(fetch, elapsed))
    }
}

/// A fetch as shown, `elapsed` after it began (pure).
fn view(fetch: &Fetch, elapsed: std::time::Duration) -> FetchView {
    let bytes_done: u64 = fetch.parts.values().map(|p| p.have).sum();
    let bytes_total: u64 = fetch.parts.values().map(|p| p.size).sum();
    let rate = if elapsed.as_millis() >= 500 {
        (fetch.sent as u128 * 1000 / elapsed.as_millis()) as u64
    } else {
        0
    };
    FetchView {
        artifacts: fetch.parts.values().map(|p| p.name.clone()).collect(),
        bytes_done,
        bytes_total,
        bytes_per_second: rate,
        started: fetch.started,
        eta: (rate > 0)
            .then(|| std::time::Duration::from_secs(bytes_total.saturating_sub(bytes_done) / rate)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_fetch_shows_bytes_rate_and_an_estimate() {
        let began = Instant::now();
        let mut parts = std::collections::BTreeMap::new();
        parts.insert(
            "aa".to_string(),
            Part {
                name: "patch.tar".into(),
                have: 3_000_000,
                size: 5_000_000,
                began,
                sent: 2_000_000,
            },
        );
        let fetch = Fetch {
            attempt: 1,
            started: crate::domain::Millis(0),
            began,
            parts,
            // Resumed at 1 MB: 2 MB sent in 40 s.
            sent: 2_000_000,
        };
        let shown = view(&fetch, Duration::from_secs(40));
        assert_eq!(shown.artifacts, vec!["patch.tar"]);
        assert_eq!(
            (shown.bytes_done, shown.bytes_total),
            (3_000_000, 5_000_000)
        );
        assert_eq!(shown.bytes_per_second, 50_000);
        assert_eq!(shown.eta, Some(Duration::from_secs(40)));
        // Too early for a rate: no estimate rather than a wild one.
        assert_eq!(view(&fetch, Duration::from_millis(100)).eta, None);
    }
}
