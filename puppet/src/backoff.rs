//! Exponential backoff with full jitter.
//!
//! Every delay is drawn uniformly from zero to an exponentially growing
//! ceiling, so that a fleet of puppets cut off by the same outage does not
//! come back in lockstep and flood the shared uplink or the server.
//!
//! The random source is the thread's generator, or in tests a seeded one
//! (`Backoff::with_rng`), so that tests of the spread are deterministic.

use std::time::Duration;

use rand::Rng;
#[cfg(test)]
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Backoff state for one kind of retried call.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
    /// `None`: the thread's generator (a `ThreadRng` cannot be kept here: it
    /// is not `Send`, and a backoff lives across awaits).
    rng: Option<StdRng>,
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
            rng: None,
        }
    }

    /// Draws the jitter from `rng` instead of the thread's generator.
    #[cfg(test)]
    pub fn with_rng(mut self, rng: StdRng) -> Self {
        self.rng = Some(rng);
        self
    }

    /// [`Backoff::with_rng`] with a generator seeded with `seed`.
    #[cfg(test)]
    pub fn with_seed(self, seed: u64) -> Self {
        self.with_rng(StdRng::seed_from_u64(seed))
    }

    /// The cap of every delay.
    #[cfg(test)]
    pub fn cap(&self) -> Duration {
        self.cap
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
        self.jitter(Duration::ZERO, ceiling)
    }

    /// The delay for failures that will not heal soon (a revoked
    /// credential): between half the cap and the cap.
    pub fn slow_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.jitter(self.cap / 2, self.cap)
    }

    /// Forgets the failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// A delay drawn uniformly from `low..=high`.
    fn jitter(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return high;
        }
        let range = low.as_nanos()..=high.as_nanos();
        let nanos = match &mut self.rng {
            Some(rng) => rng.random_range(range),
            None => rand::rng().random_range(range),
        };
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
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

    #[test]
    fn delays_stay_within_zero_and_the_ceiling_and_repeat_with_the_seed() {
        let mut b = Backoff::standard().with_seed(7);
        let mut again = Backoff::standard().with_seed(7);
        let mut other = Backoff::standard().with_seed(8);
        let mut differs = false;
        for _ in 0..200 {
            let ceiling = b.ceiling();
            assert!(ceiling <= b.cap());
            let d = b.next_delay();
            assert!(d <= ceiling, "{d:?} above the ceiling {ceiling:?}");
            assert_eq!(d, again.next_delay(), "the same seed gives the same delays");
            differs |= d != other.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(60), "capped");
        assert!(differs, "another seed gives other delays");
        // Full jitter: small delays are as likely as large ones.
        let delays: Vec<Duration> = (0..1000).map(|_| b.next_delay()).collect();
        assert!(delays.iter().any(|d| *d < Duration::from_secs(6)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(54)));
    }

    /// When a puppeteer comes back after an outage, when does each puppet
    /// of a fleet that lost it at the same instant poll again? Each puppet
    /// retries on its own backoff (a seed per puppet stands for its own
    /// random generator); its first attempt after the end of the outage is
    /// its reconnection.
    fn reconnections(puppets: u64, outage: Duration, seed: u64) -> Vec<Duration> {
        (0..puppets)
            .map(|i| {
                let mut backoff = Backoff::standard().with_seed(seed + i);
                let mut t = Duration::ZERO;
                while t < outage {
                    t += backoff.next_delay();
                }
                t - outage
            })
            .collect()
    }

    #[test]
    fn a_fleet_coming_back_after_an_outage_spreads_its_reconnections() {
        const PUPPETS: usize = 1000;
        for outage in [Duration::from_secs(10), Duration::from_secs(300)] {
            let after = reconnections(PUPPETS as u64, outage, 42);
            let mut per_second = std::collections::BTreeMap::<u64, usize>::new();
            for delay in &after {
                assert!(*delay <= Duration::from_secs(60), "{delay:?} past the cap");
                *per_second.entry(delay.as_secs()).or_default() += 1;
            }
            let busiest = per_second.values().copied().max().unwrap();
            let spread = after.iter().max().unwrap().as_secs();
            // In lockstep, all 1000 would come in the same second. After a
            // short outage the ceilings are still low, so the spread is
            // narrower (seed 42: 150 in the busiest second, over 54 s); past
            // the cap it is near uniform over 60 s (37, over 57 s).
            let limit_percent = if outage < Duration::from_secs(60) {
                20
            } else {
                5
            };
            assert!(
                busiest * 100 <= PUPPETS * limit_percent,
                "outage {outage:?}: {busiest} puppets reconnect in the same second"
            );
            assert!(spread >= 8, "outage {outage:?}: all back within {spread} s");
        }
    }
}
