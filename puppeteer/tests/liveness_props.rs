//! Property tests of the liveness model (`presence`'s module doc) over
//! simulated time: the real `Presences` (signs of life, held polls, the
//! serving start) on a simulated monotonic clock, judged by the real
//! `scheduler::expired_leases` and presence thresholds once a simulated
//! second, as the sweeper does.
//!
//! A healthy puppet polls with holds from a second to the five-minute
//! ceiling, is answered at any point of a hold (with work or not), reports
//! at any time (during a hold or between polls), and polls again within the
//! lease; the puppeteer may restart, down for minutes, and the wall clock
//! may jump either way. Such a puppet never has its run lost, and is shown
//! late or offline only for a gap between two calls longer than that
//! threshold. A puppet that then dies has its run lost within a sweep
//! of its last sign of life plus the lease, and no sooner.

use std::time::Duration;

use proptest::prelude::*;
use puppeteer::domain::{Millis, Run, RunState};
use puppeteer::presence::{Clock, HeldPoll, Presence, Presences, Thresholds};
use puppeteer::scheduler::expired_leases;

const SWEEP_MS: u64 = 1_000;
const CEILING_MS: u64 = 300_000;

fn running_run() -> Run {
    Run {
        id: "run-1".into(),
        job_id: "job-1".into(),
        puppet: "p".into(),
        task_name: "t".into(),
        task_version: 1,
        state: RunState::Running,
        attempt: 1,
        cause: String::new(),
        outcome: None,
        exit_code: None,
        signal: None,
        created_at: Millis(0),
        started_at: Some(Millis(0)),
        finished_at: None,
        duration_ms: None,
        log_length: 0,
        history: vec![],
        cancel_requested: false,
        queue_seq: 0,
        duplicate_reports: 0,
        needs: vec![],
        holds: vec![],
        log_base: 0,
        max_attempts: 1,
        log_gap: None,
        reboot_window_ms: None,
    }
}

/// One poll of the puppet and what follows it until the next one.
#[derive(Clone, Debug)]
struct Step {
    /// The hold it asks for.
    hold_ms: u64,
    /// Where in the hold the puppeteer answers (1.0: the hold runs out).
    answered_at: f64,
    /// Reports sent beside the held poll, as fractions of the time held.
    reports_during_hold: Vec<f64>,
    /// Reports between the answer and the next poll, each as a fraction of
    /// the lease since the previous sign of life.
    gaps: Vec<f64>,
    /// The puppeteer restarts after this poll, down for this long.
    restart: Option<u64>,
    /// The wall clock jumps by this much (milliseconds, either way).
    wall_jump: i64,
}

fn any_step() -> impl Strategy<Value = Step> {
    (
        prop_oneof![1_000u64..=10_000, 10_000u64..=CEILING_MS, Just(CEILING_MS)],
        prop_oneof![0.0f64..=1.0, Just(1.0), Just(0.99)],
        prop::collection::vec(0.0f64..=1.0, 0..3),
        prop::collection::vec(prop_oneof![0.0f64..=1.0, Just(1.0)], 1..4),
        prop::option::weighted(0.15, 0u64..=600_000),
        prop_oneof![Just(0i64), -7_200_000i64..=7_200_000],
    )
        .prop_map(
            |(hold_ms, answered_at, reports_during_hold, gaps, restart, wall_jump)| Step {
                hold_ms,
                answered_at,
                reports_during_hold,
                gaps,
                restart,
                wall_jump,
            },
        )
}

/// The puppeteer's view of one puppet with one running run, swept once a
/// simulated second.
struct Sim {
    clock: Clock,
    presences: Presences,
    lease: Duration,
    thresholds: Thresholds,
    /// Simulated milliseconds since the start.
    t: u64,
    next_sweep: u64,
    /// Wall clock minus simulated time.
    wall_offset: i64,
    /// When the last sign of life was given (simulated ms).
    last_sign: u64,
    /// The longest silence between two signs of life so far.
    longest_gap: u64,
    lost_at: Option<u64>,
    offline_at: Option<u64>,
    late_at: Option<u64>,
    run: Run,
}

impl Sim {
    fn new(lease: Duration) -> Self {
        let clock = Clock::simulated();
        let presences = Presences::new(clock.clone());
        let defaults = Thresholds::for_hold(Duration::from_secs(50));
        // The defaults of `Config::presence`: late before lost.
        let late_after = defaults.late_after.min(lease);
        Sim {
            clock,
            presences,
            lease,
            thresholds: Thresholds {
                late_after,
                offline_after: late_after * 3,
            },
            t: 0,
            next_sweep: SWEEP_MS,
            wall_offset: 1_700_000_000_000,
            last_sign: 0,
            longest_gap: 0,
            lost_at: None,
            offline_at: None,
            late_at: None,
            run: running_run(),
        }
    }

    fn wall(&self) -> Millis {
        Millis(self.t as i64 + self.wall_offset)
    }

    /// Lets `ms` pass, sweeping at each whole simulated second.
    fn advance(&mut self, ms: u64) {
        let target = self.t + ms;
        while self.next_sweep <= target {
            self.clock
                .advance(Duration::from_millis(self.next_sweep - self.t));
            self.t = self.next_sweep;
            self.sweep();
            self.next_sweep += SWEEP_MS;
        }
        self.clock.advance(Duration::from_millis(target - self.t));
        self.t = target;
    }

    /// What the sweeper concludes now.
    fn sweep(&mut self) {
        let now = self.wall();
        let silence = self.presences.silence("p");
        if !expired_leases(&[(self.run.clone(), silence)], now, self.lease).is_empty() {
            self.lost_at.get_or_insert(self.t);
        }
        match self.presences.judge("p", false, self.thresholds) {
            Presence::Online => {}
            Presence::Late => {
                self.late_at.get_or_insert(self.t);
            }
            Presence::Offline => {
                self.offline_at.get_or_insert(self.t);
            }
        }
    }

    /// The puppet gives a sign of life now.
    fn sign(&mut self, holding: bool) {
        if !holding {
            self.longest_gap = self.longest_gap.max(self.t - self.last_sign);
        }
        self.last_sign = self.t;
    }

    /// A call of the puppet arrives now.
    fn call(&mut self, holding: bool) {
        self.presences.heard("p");
        self.sign(holding);
    }

    /// A poll arrives now and is held.
    fn poll(&mut self) -> HeldPoll {
        self.sign(false);
        self.presences.hold("p", 1)
    }

    /// The held poll ends now (answered, or its hold ran out).
    fn end_poll(&mut self, held: HeldPoll) {
        drop(held);
        self.sign(true);
    }

    /// The puppeteer stops, stays down `down_ms` (no sweeps, no calls), and
    /// starts again with nothing in memory.
    fn restart(&mut self, down_ms: u64) {
        self.clock.advance(Duration::from_millis(down_ms));
        self.t += down_ms;
        self.next_sweep = self.t + SWEEP_MS;
        self.presences = Presences::new(self.clock.clone());
        // No silence counts from before the start.
        self.last_sign = self.t;
    }

    /// Lets a healthy puppet live through `step`.
    fn live(&mut self, step: &Step) {
        let held = self.poll();
        let answer_ms = (step.hold_ms as f64 * step.answered_at) as u64;
        let mut reports: Vec<u64> = step
            .reports_during_hold
            .iter()
            .map(|f| (answer_ms as f64 * f) as u64)
            .collect();
        reports.sort_unstable();
        let mut at = 0;
        for report in reports {
            self.advance(report - at);
            self.call(true);
            at = report;
        }
        self.advance(answer_ms - at);
        self.end_poll(held);
        if let Some(down_ms) = step.restart {
            self.restart(down_ms);
        }
        self.wall_offset += step.wall_jump;
        // Each gap ends in a call: reports, then the next poll. None is
        // longer than the lease.
        let lease_ms = self.lease.as_millis() as u64;
        for (i, gap) in step.gaps.iter().enumerate() {
            self.advance((lease_ms as f64 * gap) as u64);
            if i + 1 < step.gaps.len() {
                self.call(false);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A puppet that keeps polling and reporting never has its run lost,
    /// whatever its holds and wherever in a hold it is answered, and its
    /// presence follows the gaps between its calls only.
    #[test]
    fn a_puppet_that_keeps_calling_never_loses_its_run(
        lease_s in prop_oneof![1u64..=10, 10u64..=200, Just(110)],
        steps in prop::collection::vec(any_step(), 1..12),
    ) {
        let mut sim = Sim::new(Duration::from_secs(lease_s));
        for step in &steps {
            sim.live(step);
        }
        let held = sim.poll();
        sim.advance(1);
        sim.end_poll(held);
        prop_assert_eq!(sim.lost_at, None, "run lost at {} ms", sim.lost_at.unwrap_or(0));
        // Shown late or offline only for a gap past its threshold, and
        // surely for one past it by a sweep.
        let gap = Duration::from_millis(sim.longest_gap);
        let sweep = Duration::from_millis(SWEEP_MS);
        let t = sim.thresholds;
        prop_assert!(sim.late_at.is_none() || gap > t.late_after, "late, gap {:?}", gap);
        prop_assert!(sim.late_at.is_some() || gap <= t.late_after + sweep, "not late, gap {:?}", gap);
        prop_assert!(sim.offline_at.is_none() || gap > t.offline_after, "offline, gap {:?}", gap);
        prop_assert!(sim.offline_at.is_some() || gap <= t.offline_after + sweep, "not offline, gap {:?}", gap);
    }

    /// A puppet that dies (between polls, or with a poll held that then
    /// runs out) has its run lost within a sweep of its last sign of life
    /// plus the lease, and is shown late, then offline, at their
    /// thresholds.
    #[test]
    fn a_dead_puppet_loses_its_run_one_lease_after_its_last_sign(
        lease_s in prop_oneof![1u64..=10, 10u64..=200, Just(110)],
        steps in prop::collection::vec(any_step(), 0..6),
        dies_holding in prop::option::of(1_000u64..=CEILING_MS),
    ) {
        let mut sim = Sim::new(Duration::from_secs(lease_s));
        for step in &steps {
            sim.live(step);
        }
        let held = sim.poll();
        sim.advance(1);
        match dies_holding {
            // Its poll is held until its hold runs out: the puppeteer's
            // turn, so nothing is concluded before that.
            Some(hold_ms) => {
                sim.advance(hold_ms);
                prop_assert_eq!(sim.lost_at, None);
                sim.end_poll(held);
            }
            None => sim.end_poll(held),
        }
        prop_assert_eq!(sim.lost_at, None);
        let died = sim.last_sign;
        (sim.late_at, sim.offline_at) = (None, None);
        let lease_ms = lease_s * 1_000;
        let offline_ms = sim.thresholds.offline_after.as_millis() as u64;
        sim.advance(lease_ms.max(offline_ms) + 2 * SWEEP_MS);
        let lost = sim.lost_at.expect("a dead puppet's run is lost");
        prop_assert!(lost > died + lease_ms && lost <= died + lease_ms + SWEEP_MS,
            "lost at {} ms, last sign at {} ms, lease {} ms", lost, died, lease_ms);
        let late = sim.late_at.expect("shown late");
        prop_assert!(late <= lost, "late at {} ms, lost at {} ms", late, lost);
        let offline = sim.offline_at.expect("shown offline");
        prop_assert!(offline > died + offline_ms && offline <= died + offline_ms + SWEEP_MS);
    }
}

/// The case of issue 21, at the defaults users get: a hold grown to the
/// five-minute ceiling, work assigned four minutes into it, a lease of
/// 110 s, the puppet starting the run and polling again a second later.
#[test]
fn work_assigned_late_in_a_long_hold_keeps_its_lease() {
    let mut sim = Sim::new(Duration::from_secs(110));
    let held = sim.poll();
    sim.advance(240_000);
    sim.end_poll(held);
    sim.advance(500);
    sim.call(false); // StartRun
    sim.advance(500);
    let held = sim.poll();
    sim.advance(CEILING_MS);
    sim.end_poll(held);
    sim.advance(1_000);
    assert_eq!(sim.lost_at, None);
    assert_eq!(sim.late_at, None);
}
