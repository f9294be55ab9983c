//! The retention policy: how much finished work the puppeteer keeps.
//!
//! Finished jobs (every run ended) are pruned, oldest first, with their runs
//! and their logs, once any limit is passed: older than `max_age`, more than
//! `max_jobs` finished jobs, or more than `max_log_bytes` of stored output
//! over all runs. Unfinished jobs are never pruned, whatever their age.
//! The decisions here are pure; the pruning task lives in the api layer.

use std::time::Duration;

use anyhow::{Result, bail};

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
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: Duration::from_secs(90 * 24 * 3600),
            max_jobs: 100_000,
            max_log_bytes: 10 << 30,
            interval: Duration::from_secs(600),
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
        Ok(())
    }

    /// The policy in words, for operators.
    pub fn describe(&self) -> String {
        format!(
            "finished jobs are pruned with their runs and logs when older than {}, beyond the newest {}, or while stored logs exceed {}; checked every {}",
            humantime::format_duration(self.max_age),
            self.max_jobs,
            human_bytes(self.max_log_bytes),
            humantime::format_duration(self.interval),
        )
    }
}

/// `10 GiB`, `64 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
