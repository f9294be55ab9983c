//! The retention policy: how much finished work the puppeteer keeps.
//!
//! Finished jobs (every run ended) are pruned, oldest first, with their runs
//! and their logs, once any limit is passed: older than `max_age`, more than
//! `max_jobs` finished jobs, or more than `max_log_bytes` of stored output
//! over all runs. Unfinished jobs are never pruned, whatever their age.
//! Artifact uploads left unfinished for longer than `upload_max_age` after
//! they began are discarded with their partial files.
//! The decisions here are pure; the pruning task lives in the api layer.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::domain::Millis;

/// The retention limits in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Finished jobs created longer ago than this are pruned.
    pub max_age: Duration,
    /// At most this many finished jobs are kept (the newest).
    pub max_jobs: u64,
    /// Stored output over all runs is kept under this many bytes.
    pub max_log_bytes: u64,
    /// How often the pruning task looks.
    pub interval: Duration,
    /// An artifact upload not committed this long after it began is
    /// abandoned: its partial file is deleted.
    pub upload_max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_jobs: 100_000,
            max_log_bytes: 10 << 30,
            interval: Duration::from_secs(600),
            upload_max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

impl Retention {
    pub fn validate(&self) -> Result<()> {
        if self.max_age < Duration::from_secs(60) {
            bail!("retention max_age must be at least 1m");
        }
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(24 * 3600)
        {
            bail!("retention interval must be between 1s and 1 day");
        }
        if self.upload_max_age < Duration::from_secs(1) {
            bail!("retention upload_max_age must be at least 1s");
        }
        Ok(())
    }

    /// The policy in words, for operators.
    pub fn describe(&self) -> String {
        format!(
            "finished jobs are pruned with their runs and logs when older than {}, beyond the newest {}, or while stored logs exceed {}; unfinished artifact uploads are discarded {} after they began; checked every {}",
            human_duration(self.max_age),
            self.max_jobs,
            bytesize::ByteSize(self.max_log_bytes),
            human_duration(self.upload_max_age),
            human_duration(self.interval),
        )
    }
}

/// `90 days`, `36h`, `10m`: days when whole, else humantime's words.
fn human_duration(d: Duration) -> String {
    const DAY: u64 = 24 * 3600;
    let secs = d.as_secs();
    if secs >= DAY && secs.is_multiple_of(DAY) {
        format!("{} days", secs / DAY)
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// A job as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// When its last run ended; `None` while it is not finished.
    pub ended_at: Option<Millis>,
    pub created_at: Millis,
    /// An unfinished job waits on it (`--after`): kept whatever its age.
    pub protected: bool,
    /// Stored output of its runs.
    pub log_bytes: u64,
}

/// What is stored now, as pruning goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub finished_jobs: u64,
    pub log_bytes: u64,
}

/// The decision for a stretch of jobs, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Jobs to prune, with why.
    pub prune: Vec<(String, &'static str)>,
    /// No later job can be pruned now: the pass is over.
    pub done: bool,
}

impl Retention {
    /// Decides, for `candidates` in creation order (oldest first), which go.
    /// `totals` is updated as if the chosen jobs were gone, so that the next
    /// stretch continues where this one ended.
    pub fn plan(&self, candidates: &[Candidate], totals: &mut Totals, now: Millis) -> Plan {
        let cutoff = Millis(now.0.saturating_sub(self.max_age.as_millis() as i64));
        let mut plan = Plan::default();
        for c in candidates {
            let over_count = totals.finished_jobs > self.max_jobs;
            let over_bytes = totals.log_bytes > self.max_log_bytes;
            // Jobs are in creation order and a job ends after it was created:
            // once one is young and no total is over, none after can go.
            if !over_count && !over_bytes && c.created_at >= cutoff {
                plan.done = true;
                return plan;
            }
            let Some(ended_at) = c.ended_at else {
                continue;
            };
            if c.protected {
                continue;
            }
            let why = if ended_at < cutoff {
                "older than max_age"
            } else if over_count {
                "more finished jobs than max_jobs"
            } else if over_bytes {
                "stored logs over max_log_bytes"
            } else {
                continue;
            };
            totals.finished_jobs = totals.finished_jobs.saturating_sub(1);
            totals.log_bytes = totals.log_bytes.saturating_sub(c.log_bytes);
            plan.prune.push((c.id.clone(), why));
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;

    fn job(id: &str, created_day: i64, ended_day: Option<i64>, log_bytes: u64) -> Candidate {
        Candidate {
            id: id.into(),
            created_at: Millis(created_day * DAY),
            ended_at: ended_day.map(|d| Millis(d * DAY + 1)),
            protected: false,
            log_bytes,
        }
    }

    fn policy(max_jobs: u64, max_log_bytes: u64) -> Retention {
        Retention {
            max_age: Duration::from_secs(10 * 24 * 3600),
            max_jobs,
            max_log_bytes,
            ..Default::default()
        }
    }

    fn ids(plan: &Plan) -> Vec<&str> {
        plan.prune.iter().map(|(id, _)| id.as_str()).collect()
    }

    #[test]
    fn old_finished_jobs_go_unfinished_and_protected_ones_stay() {
        let now = Millis(100 * DAY);
        let mut protected = job("c", 2, Some(3), 0);
        protected.protected = true;
        let jobs = [
            job("a", 1, Some(1), 10),
            job("b", 2, None, 10),
            protected,
            job("d", 85, Some(95), 10),
            job("e", 95, Some(95), 10),
        ];
        let mut totals = Totals {
            finished_jobs: 4,
            log_bytes: 50,
        };
        let plan = policy(100, 1000).plan(&jobs, &mut totals, now);
        // d was created long ago but ended recently: it stays.
        assert_eq!(ids(&plan), ["a"]);
        assert!(plan.done, "e is young and nothing is over");
        assert_eq!(
            totals,
            Totals {
                finished_jobs: 3,
                log_bytes: 40
            }
        );
        assert_eq!(plan.prune[0].1, "older than max_age");
    }

    #[test]
    fn counts_and_bytes_prune_the_oldest_first() {
        let now = Millis(100 * DAY);
        let jobs: Vec<Candidate> = (0..10)
            .map(|i| job(&format!("j{i}"), 95, Some(95), 100))
            .collect();
        let mut totals = Totals {
            finished_jobs: 10,
            log_bytes: 1000,
        };
        let plan = policy(7, 1000).plan(&jobs, &mut totals, now);
        assert_eq!(ids(&plan), ["j0", "j1", "j2"]);
        assert!(plan.done);
        let mut totals = Totals {
            finished_jobs: 10,
            log_bytes: 1000,
        };
        let plan = policy(100, 450).plan(&jobs, &mut totals, now);
        assert_eq!(ids(&plan), ["j0", "j1", "j2", "j3", "j4", "j5"]);
        assert_eq!(plan.prune[0].1, "stored logs over max_log_bytes");
        assert_eq!(totals.log_bytes, 400);
    }

    #[test]
    fn the_policy_reads_well() {
        let words = Retention::default().describe();
        assert!(words.contains("90 days"), "{words}");
        assert!(
            words.contains("100000") && words.contains("10.0 GiB"),
            "{words}"
        );
    }
}
