//! Bandwidth budgets: one token bucket per resource with a `bandwidth`,
//! shared by every artifact download of the runs holding that resource, so
//! that the sum of those downloads stays within the budget (a site's uplink
//! is never saturated by its own puppets).
//!
//! A download reserves the bytes of its next chunk in the bucket of every
//! budgeted resource its run holds, then waits for the longest of the delays
//! the buckets name. Reservations may drive a bucket below zero: later
//! reservations queue behind it, so concurrent downloads share the budget in
//! the order they asked, and over any interval the bytes sent are at most the
//! budget times the interval plus one burst.
//!
//! The bucket itself is pure: time is an argument ([`TokenBucket::reserve`]),
//! so its rules are tested without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The chunk size of a download with no budget.
pub const UNLIMITED_CHUNK: usize = 64 * 1024;
/// The smallest chunk of a budgeted download.
const MIN_CHUNK: usize = 1024;

/// The chunk a download uses under a budget of `rate` bytes per second (the
/// smallest budget among the run's resources): about an eighth of a second
/// of the budget, so a chunk is never a long burst on a slow uplink.
pub fn chunk_size(rate: Option<u64>) -> usize {
    match rate {
        None | Some(0) => UNLIMITED_CHUNK,
        Some(rate) => usize::try_from(rate / 8)
            .unwrap_or(UNLIMITED_CHUNK)
            .clamp(MIN_CHUNK, UNLIMITED_CHUNK),
    }
}

/// A token bucket measured in bytes. `at` values are times since any fixed
/// origin, the same for every call.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    /// Bytes per second.
    rate: u64,
    /// The most bytes that may go at once after an idle period.
    burst: f64,
    /// Bytes available now; negative when reservations are queued.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Duration,
}

impl TokenBucket {
    /// A full bucket of `rate` bytes per second with a burst of one chunk.
    pub fn new(rate: u64, at: Duration) -> Self {
        let burst = chunk_size(Some(rate)) as f64;
        TokenBucket {
            rate: rate.max(1),
            burst,
            tokens: burst,
            updated: at,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate (the budget was updated); what is reserved stays.
    pub fn set_rate(&mut self, rate: u64, at: Duration) {
        self.refill(at);
        self.rate = rate.max(1);
        self.burst = chunk_size(Some(rate)) as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    fn refill(&mut self, at: Duration) {
        let elapsed = at.saturating_sub(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate as f64).min(self.burst);
        self.updated = self.updated.max(at);
    }

    /// Reserves `bytes` at time `at`; returns how long to wait before sending them.
    pub fn reserve(&mut self, bytes: u64, at: Duration) -> Duration {
        self.refill(at);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }
}

/// The buckets of every budgeted resource, shared by all downloads.
#[derive(Debug)]
pub struct Budgets {
    origin: Instant,
    /// A std mutex: reservations are short and never await.
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            origin: Instant::now(),
            buckets: Mutex::default(),
        }
    }
}

impl Budgets {
    /// Reserves `bytes` in the bucket of each `(resource, rate)`; returns
    /// the longest wait among them.
    pub fn reserve(&self, budgets: &[(String, u64)], bytes: u64) -> Duration {
        let at = self.origin.elapsed();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut wait = Duration::ZERO;
        for (name, rate) in budgets {
            let bucket = buckets
                .entry(name.clone())
                .or_insert_with(|| TokenBucket::new(*rate, at));
            if bucket.rate() != *rate {
                bucket.set_rate(*rate, at);
            }
            wait = wait.max(bucket.reserve(bytes, at));
        }
        wait
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_full_bucket_lets_one_burst_through_then_paces() {
        let mut b = TokenBucket::new(8192, Duration::ZERO);
        // The burst is 1 KiB (8192 / 8).
        assert_eq!(b.reserve(1024, Duration::ZERO), Duration::ZERO);
        // The next KiB waits an eighth of a second.
        assert_eq!(b.reserve(1024, Duration::ZERO), S / 8);
        // Queued behind it, another eighth.
        assert_eq!(b.reserve(1024, Duration::ZERO), S / 4);
    }

    #[test]
    fn concurrent_reservations_share_the_rate() {
        // Two downloads of 64 KiB each reserve 1 KiB chunks alternately on a
        // 8 KiB/s budget: the last chunk may go no sooner than
        // (128 KiB - one burst) / rate.
        let rate = 8192u64;
        let mut b = TokenBucket::new(rate, Duration::ZERO);
        let mut last = Duration::ZERO;
        for _ in 0..128 {
            last = b.reserve(1024, Duration::ZERO);
        }
        let floor = (128.0 * 1024.0 - 1024.0) / rate as f64;
        assert!((last.as_secs_f64() - floor).abs() < 1e-9, "{last:?}");
    }

    #[test]
    fn idle_time_refills_up_to_the_burst_only() {
        let mut b = TokenBucket::new(8192, Duration::ZERO);
        assert_eq!(b.reserve(1024, Duration::ZERO), Duration::ZERO);
        // An hour idle gives one burst back, not an hour of bytes.
        let later = Duration::from_secs(3600);
        assert_eq!(b.reserve(1024, later), Duration::ZERO);
        assert_eq!(b.reserve(1024, later), S / 8);
        // Time that passes pays the debt off.
        assert_eq!(b.reserve(0, later + S / 8), Duration::ZERO);
    }

    #[test]
    fn a_new_rate_applies_to_what_comes_next() {
        let mut b = TokenBucket::new(8192, Duration::ZERO);
        b.reserve(1024, Duration::ZERO);
        b.set_rate(1024, Duration::ZERO);
        // The burst shrank to the 1 KiB minimum chunk; 1 KiB at 1 KiB/s is 1 s.
        assert_eq!(b.reserve(1024, Duration::ZERO), S);
    }

    #[test]
    fn chunks_follow_the_budget() {
        assert_eq!(chunk_size(None), 64 * 1024);
        assert_eq!(chunk_size(Some(48 * 1024)), 6 * 1024);
        assert_eq!(chunk_size(Some(100)), 1024);
        assert_eq!(chunk_size(Some(100 << 20)), 64 * 1024);
    }

    #[test]
    fn budgets_wait_for_the_slowest_resource() {
        let budgets = Budgets::default();
        let both = [("fast".to_string(), 1 << 20), ("slow".to_string(), 1024)];
        budgets.reserve(&both, 1024);
        let wait = budgets.reserve(&both, 1024);
        // The slow bucket (1 KiB/s, burst 1 KiB) makes the second KiB wait ~1 s.
        assert!(wait > Duration::from_millis(900), "{wait:?}");
    }
}
