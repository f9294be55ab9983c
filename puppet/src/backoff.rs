//! Exponential backoff with full jitter.
//!
//! Every delay is drawn uniformly from zero to an exponentially growing
//! ceiling, so that a fleet of puppets cut off by the same outage does not
//! come back in lockstep and flood the shared uplink or the server.

use std::time::Duration;

use rand::Rng;

/// Backoff state for one kind of retried call.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Base 1 s and cap 60 s, the policy of every call to the puppeteer.
    pub fn standard() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(60))
    }

    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            failures: 0,
        }
    }

    /// The ceiling of the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.failures.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        jitter(Duration::ZERO, ceiling)
    }

    /// The delay for failures that will not heal soon (a revoked
    /// credential): between half the cap and the cap.
    pub fn slow_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jitter(self.cap / 2, self.cap)
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

fn jitter(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return high;
    }
    let nanos = rand::rng().random_range(low.as_nanos()..=high.as_nanos());
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::standard();
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_secs());
            let d = b.next_delay();
            assert!(d <= Duration::from_secs(60));
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_secs(1));
        let slow = b.slow_delay();
        assert!(slow >= Duration::from_secs(30) && slow <= Duration::from_secs(60));
    }
}
