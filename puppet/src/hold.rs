//! How long the puppet asks the puppeteer to hold an idle poll.
//!
//! The hold is the main lever of an idle puppet's cost on the wire: every
//! poll round trip costs a few hundred bytes, so a 5-minute hold costs a
//! sixth of a 50-second one. But proxies, NAT boxes and firewalls on the
//! path close connections that stay quiet for too long (60 s and 120 s are
//! common), and a poll they cut brings nothing back. So the puppet starts
//! below common idle timeouts and adapts:
//!
//! - A poll **cut** by the path (it broke without an answer before its hold
//!   ran out, or nothing came back at all by the client-side deadline)
//!   lowers the hold below what the path let through, not below the floor,
//!   and is counted (`polls_cut`, shown by `geppetto puppets show`).
//! - After a run of polls that lasted their full hold and came back cleanly,
//!   the hold is raised a step, toward the ceiling: a probe. A probe that is
//!   cut teaches the path's limit, and the hold settles below it.
//! - The puppeteer caps every hold (its `max_poll_hold`): the hold it granted
//!   is the top, too.
//!
//! What was learned about the path and the server is forgotten after
//! [`MEMORY`], so that a path that improved (a proxy removed) or a server
//! that allows more is eventually used; the price is one cut poll an hour
//! at worst.
//!
//! The tuner is pure: time comes in as arguments, so tests are instant.

use std::time::{Duration, Instant};

/// Clean full-length polls needed before the hold is raised a step.
pub const RAISE_AFTER: u32 = 3;
/// How long a learned limit (of the path or of the server) is trusted.
pub const MEMORY: Duration = Duration::from_secs(3600);
/// A failure sooner than this after the poll was sent is a failure to
/// connect or a refusal, not a cut: nothing on a path waits less.
pub const MIN_CUT_AFTER: Duration = Duration::from_secs(1);

/// The bounds of the hold, from the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// The hold asked at start.
    pub start: Duration,
    /// Never asked below this.
    pub floor: Duration,
    /// Never asked above this.
    pub ceiling: Duration,
}

/// How one poll ended, as far as the hold is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollEnd {
    /// The puppeteer answered. `granted` is the hold it applied (its cap);
    /// `empty` means nothing came with it: the hold ran out.
    Answered {
        granted: Option<Duration>,
        empty: bool,
    },
    /// The call broke on the way (connection closed or reset, EOF) without
    /// an answer.
    Broken,
    /// Nothing came back by the client-side deadline; the connection was
    /// dropped.
    Silent,
    /// Anything else: the connection could not be made, or the puppeteer
    /// answered with an error. Says nothing about the path's idle timeout.
    Other,
}

/// Why the hold changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A poll was cut by the path after `after`.
    Cut { after: Duration },
    /// Nothing came back at all: the path dropped the connection silently.
    Silent,
    /// Polls came back cleanly at the full hold: probe higher.
    Probe,
    /// The puppeteer granted less than asked.
    ServerCap,
}

/// A change of the hold, for the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    pub from: Duration,
    pub to: Duration,
    pub reason: Reason,
}

/// Adapts the hold to the path, one observed poll at a time.
#[derive(Clone, Debug)]
pub struct HoldTuner {
    limits: HoldLimits,
    hold: Duration,
    polls_cut: u32,
    clean_streak: u32,
    /// The shortest time after which the path cut a poll, and when.
    path_limit: Option<(Duration, Instant)>,
    /// The hold the puppeteer granted when asked more, and when.
    server_cap: Option<(Duration, Instant)>,
}

impl HoldTuner {
    pub fn new(limits: HoldLimits) -> Self {
        let hold = limits.start.clamp(limits.floor, limits.ceiling);
        HoldTuner {
            limits,
            hold,
            polls_cut: 0,
            clean_streak: 0,
            path_limit: None,
            server_cap: None,
        }
    }

    /// The hold to ask for on the next poll.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    /// Polls cut by the path since the puppet started.
    pub fn polls_cut(&self) -> u32 {
        self.polls_cut
    }

    /// Learns from one poll that asked for `asked` and ended after `elapsed`.
    /// Returns the change of the hold, if any.
    pub fn observe(
        &mut self,
        asked: Duration,
        elapsed: Duration,
        end: PollEnd,
        now: Instant,
    ) -> Option<Change> {
        self.forget_old(now);
        let from = self.hold;
        let reason = match end {
            PollEnd::Answered { granted, empty } => {
                let granted = granted.unwrap_or(asked);
                if granted < asked {
                    // Capped: the server's limit, not the path's.
                    self.server_cap = Some((granted, now));
                    self.hold = self.hold.min(granted);
                    Reason::ServerCap
                } else if empty && elapsed >= granted.mul_f64(0.9) {
                    self.clean_streak += 1;
                    if self.clean_streak < RAISE_AFTER {
                        return None;
                    }
                    self.clean_streak = 0;
                    let top = self.top();
                    let step = (self.hold * 3 / 2).max(self.hold + Duration::from_secs(1));
                    self.hold = step.min(top).max(self.hold);
                    Reason::Probe
                } else {
                    // Work came early: the path was fine for that long,
                    // which says nothing new.
                    return None;
                }
            }
            PollEnd::Broken if elapsed >= MIN_CUT_AFTER && elapsed < asked => {
                self.cut(elapsed, now);
                self.lower_to(elapsed * 3 / 4);
                Reason::Cut { after: elapsed }
            }
            PollEnd::Silent => {
                // Cut somewhere within the hold; we cannot tell where.
                self.cut(asked, now);
                self.lower_to(asked / 2);
                Reason::Silent
            }
            PollEnd::Broken | PollEnd::Other => {
                self.clean_streak = 0;
                return None;
            }
        };
        // Whole milliseconds: what the proto carries and the log shows.
        self.hold = Duration::from_millis(u64::try_from(self.hold.as_millis()).unwrap_or(u64::MAX));
        (self.hold != from).then_some(Change {
            from,
            to: self.hold,
            reason,
        })
    }

    fn cut(&mut self, after: Duration, now: Instant) {
        self.polls_cut = self.polls_cut.saturating_add(1);
        self.clean_streak = 0;
        let shortest = match self.path_limit {
            Some((limit, _)) => limit.min(after),
            None => after,
        };
        self.path_limit = Some((shortest, now));
    }

    /// Lowers the hold to `wanted`, but not below the floor.
    fn lower_to(&mut self, wanted: Duration) {
        let floor = self.floor();
        self.hold = wanted.max(floor).min(self.hold.max(floor));
    }

    /// The floor, unless the puppeteer allows less.
    fn floor(&self) -> Duration {
        match self.server_cap {
            Some((cap, _)) => self.limits.floor.min(cap),
            None => self.limits.floor,
        }
    }

    /// The highest hold worth probing now.
    fn top(&self) -> Duration {
        let mut top = self.limits.ceiling;
        if let Some((limit, _)) = self.path_limit {
            top = top.min(limit * 3 / 4).max(self.limits.floor);
        }
        if let Some((cap, _)) = self.server_cap {
            top = top.min(cap);
        }
        top
    }

    fn forget_old(&mut self, now: Instant) {
        let stale = |learned: Option<(Duration, Instant)>| {
            learned.filter(|(_, at)| now.saturating_duration_since(*at) < MEMORY)
        };
        self.path_limit = stale(self.path_limit);
        self.server_cap = stale(self.server_cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn tuner() -> HoldTuner {
        HoldTuner::new(HoldLimits {
            start: 50 * S,
            floor: 10 * S,
            ceiling: 300 * S,
        })
    }

    fn clean(t: &mut HoldTuner, now: Instant) -> Option<Change> {
        let hold = t.hold();
        t.observe(
            hold,
            hold,
            PollEnd::Answered {
                granted: Some(hold),
                empty: true,
            },
            now,
        )
    }

    #[test]
    fn clean_polls_probe_up_to_the_ceiling() {
        let mut t = tuner();
        let now = Instant::now();
        let mut holds = vec![t.hold()];
        for _ in 0..30 {
            if let Some(change) = clean(&mut t, now) {
                assert_eq!(change.reason, Reason::Probe);
                holds.push(change.to);
            }
        }
        assert_eq!(t.hold(), 300 * S);
        assert!(holds.windows(2).all(|w| w[0] < w[1]), "{holds:?}");
        assert_eq!(t.polls_cut(), 0);
    }

    #[test]
    fn a_cut_lowers_the_hold_below_it_and_probes_settle_below_the_limit() {
        let mut t = tuner();
        let now = Instant::now();
        // A proxy closes idle connections after 30 s.
        let change = t.observe(50 * S, 30 * S, PollEnd::Broken, now).unwrap();
        assert_eq!(change.to, Duration::from_millis(22_500));
        assert_eq!(change.reason, Reason::Cut { after: 30 * S });
        assert_eq!(t.polls_cut(), 1);
        for _ in 0..30 {
            clean(&mut t, now);
        }
        assert!(t.hold() < 30 * S, "{:?}", t.hold());
        assert_eq!(t.polls_cut(), 1);
    }

    #[test]
    fn a_probe_that_is_cut_settles_below_it() {
        let mut t = tuner();
        let now = Instant::now();
        // The path lets 100 s through but not 112 s.
        for _ in 0..30 {
            if t.hold() > 100 * S {
                let asked = t.hold();
                t.observe(asked, 100 * S, PollEnd::Broken, now).unwrap();
            } else {
                clean(&mut t, now);
            }
        }
        assert_eq!(t.polls_cut(), 1);
        assert!(t.hold() <= 75 * S && t.hold() >= 50 * S, "{:?}", t.hold());
    }

    #[test]
    fn never_below_the_floor() {
        let mut t = tuner();
        let now = Instant::now();
        t.observe(50 * S, 4 * S, PollEnd::Broken, now).unwrap();
        assert_eq!(t.hold(), 10 * S);
        assert_eq!(t.observe(10 * S, 4 * S, PollEnd::Broken, now), None);
        assert_eq!(t.hold(), 10 * S);
        assert_eq!(t.polls_cut(), 2);
    }

    #[test]
    fn silence_halves_the_hold_and_counts_as_cut() {
        let mut t = tuner();
        let change = t
            .observe(50 * S, 65 * S, PollEnd::Silent, Instant::now())
            .unwrap();
        assert_eq!(change.to, 25 * S);
        assert_eq!(change.reason, Reason::Silent);
        assert_eq!(t.polls_cut(), 1);
    }

    #[test]
    fn quick_failures_and_refusals_are_not_cuts() {
        let mut t = tuner();
        let now = Instant::now();
        assert_eq!(
            t.observe(50 * S, Duration::from_millis(20), PollEnd::Broken, now),
            None
        );
        assert_eq!(t.observe(50 * S, 20 * S, PollEnd::Other, now), None);
        // Work that arrives early is no sign of trouble.
        let early = PollEnd::Answered {
            granted: Some(50 * S),
            empty: false,
        };
        assert_eq!(t.observe(50 * S, 3 * S, early, now), None);
        assert_eq!((t.hold(), t.polls_cut()), (50 * S, 0));
    }

    #[test]
    fn the_server_cap_is_the_top() {
        let mut t = tuner();
        let now = Instant::now();
        for _ in 0..3 {
            clean(&mut t, now);
        }
        assert_eq!(t.hold(), 75 * S);
        let capped = PollEnd::Answered {
            granted: Some(50 * S),
            empty: true,
        };
        let change = t.observe(75 * S, 50 * S, capped, now).unwrap();
        assert_eq!((change.to, change.reason), (50 * S, Reason::ServerCap));
        for _ in 0..10 {
            clean(&mut t, now);
        }
        assert_eq!(t.hold(), 50 * S);
        assert_eq!(t.polls_cut(), 0);
    }

    #[test]
    fn a_server_cap_below_the_floor_wins_without_oscillating() {
        let mut t = tuner();
        let now = Instant::now();
        let capped = PollEnd::Answered {
            granted: Some(2 * S),
            empty: true,
        };
        assert!(t.observe(50 * S, 2 * S, capped, now).is_some());
        assert_eq!(t.hold(), 2 * S);
        for _ in 0..10 {
            assert_eq!(clean(&mut t, now), None);
        }
        assert_eq!(t.hold(), 2 * S);
    }

    #[test]
    fn what_was_learned_is_forgotten_after_a_while() {
        let mut t = tuner();
        let now = Instant::now();
        t.observe(50 * S, 40 * S, PollEnd::Broken, now).unwrap();
        for _ in 0..30 {
            clean(&mut t, now);
        }
        assert_eq!(t.hold(), 30 * S);
        let later = now + MEMORY;
        for _ in 0..3 {
            clean(&mut t, later);
        }
        assert_eq!(t.hold(), 45 * S);
    }

    #[test]
    fn a_small_start_below_the_floor_is_raised_to_it() {
        let t = HoldTuner::new(HoldLimits {
            start: 2 * S,
            floor: 10 * S,
            ceiling: 300 * S,
        });
        assert_eq!(t.hold(), 10 * S);
    }
}
