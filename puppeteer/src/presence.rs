//! Liveness: what the puppeteer knows of each puppet being alive, and the one
//! measure every time-driven decision uses: its **silence**.
//!
//! # The model
//!
//! A puppet talks only when it is its turn. While a poll of it is held, the
//! turn is the puppeteer's: the puppet is waiting for an answer, however long
//! the hold (from a second to the ceiling, `max_poll_hold`), and nothing about
//! it can be concluded. When the puppeteer answers (with work or empty, at any
//! point of the hold) or the poll otherwise ends, the turn passes to the
//! puppet, which polls again at once, or after starting and reporting what it
//! was given (at most `REPORT_FIRST_CAP`, 30 s, of which every report is
//! itself a call), or after a backoff when the path failed.
//!
//! So a puppet's silence is zero while a poll of it is held, and otherwise
//! the time since the later of
//! - the arrival of its last call (any call authenticated as that puppet:
//!   poll, run start, log chunk, finish, artifact fetch; and its enrollment),
//! - the end of its last held poll, however it ended,
//! - the moment this puppeteer started serving (it cannot have heard anyone
//!   while it was down; a restart gives every puppet its full allowance
//!   again).
//!
//! Silence is measured on a monotonic clock ([`Clock`]): a wall clock moved
//! by hand or by NTP neither kills nor revives anyone. The poll hold and its
//! adaptation therefore play no part in any threshold: a puppet whose hold
//! grew to five minutes is as alive during it as one polling every second.
//!
//! What the sweeper may conclude from silence, and nothing else:
//! - **presence**: online up to `late_after`, late up to `offline_after`,
//!   then offline. A puppet not heard since this puppeteer started keeps the
//!   presence stored before the restart if that was offline (it is not
//!   announced back before it polls), otherwise it is judged like any other;
//! - **leases**: a run offered to or running on a puppet is `lost` when the
//!   silence exceeds `lease_timeout` (for a run whose task expects a reboot,
//!   only once the reboot window plus the lease has also passed since it
//!   started), see `scheduler::expired_leases`;
//! - **offline bypass**: a job's `offline_wait` counts the same silence.
//!
//! The defaults keep these consistent: `late_after` (poll timeout + 15 s) is
//! never longer than the lease (poll timeout + 60 s), so a puppet is shown
//! late before its runs are lost; all of them are far longer than a healthy
//! puppet's gap between two calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::Puppet;

/// Slack for the gap between two polls (answer, reconnect, scheduling).
pub const MARGIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Online,
    Late,
    Offline,
}

/// A point on the monotonic clock, in milliseconds from its origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mono(pub u64);

impl Mono {
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Mono) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// The monotonic clock silence is measured on: the machine's, or a
/// simulated one that tests move by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    Real(std::time::Instant),
    Simulated(Arc<AtomicU64>),
}

impl Clock {
    pub fn real() -> Self {
        Clock::Real(std::time::Instant::now())
    }

    /// A simulated clock at zero; [`Clock::advance`] moves it.
    pub fn simulated() -> Self {
        Clock::Simulated(Arc::new(AtomicU64::new(0)))
    }

    pub fn now(&self) -> Mono {
        match self {
            Clock::Real(origin) => Mono(origin.elapsed().as_millis() as u64),
            Clock::Simulated(at) => Mono(at.load(Ordering::SeqCst)),
        }
    }

    /// Moves a simulated clock forward (a real one is left alone).
    pub fn advance(&self, by: Duration) {
        if let Clock::Simulated(at) = self {
            at.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
        }
    }
}

/// What is known in memory of one puppet since this puppeteer started.
#[derive(Clone, Copy, Debug, Default)]
struct Heard {
    /// Polls held right now.
    held: u32,
    /// The free slots the last held poll reported.
    free_slots: u32,
    /// The last sign of life: a call's arrival or a held poll's end.
    last: Option<Mono>,
    /// What its last poll said about the path to it.
    path: Option<PollPath>,
}

#[derive(Debug)]
struct Signs {
    clock: Clock,
    /// When this puppeteer started serving: no silence counts from before.
    since: Mono,
    // A std mutex: held only for a map lookup or update, never across an await.
    /// Kept in memory only, so that polls write nothing to disk for it; a
    /// restarted puppeteer knows each puppet again at its next call.
    puppets: Mutex<HashMap<String, Heard>>,
}

impl Signs {
    fn update(&self, name: &str, f: impl FnOnce(&mut Heard)) {
        let mut puppets = self.puppets.lock().unwrap_or_else(|e| e.into_inner());
        match puppets.get_mut(name) {
            Some(heard) => f(heard),
            None => {
                let mut heard = Heard::default();
                f(&mut heard);
                puppets.insert(name.to_string(), heard);
            }
        }
    }

    fn get(&self, name: &str) -> Option<Heard> {
        self.puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }
}

/// Each puppet's signs of life, polls held and path, and the presence last
/// stored for it.
#[derive(Debug)]
pub struct Presences {
    signs: Arc<Signs>,
    /// A mirror of each puppet's stored `reported_presence`, kept by the
    /// sweeper, so that its pass over ten thousand puppets holding polls
    /// need not decode their records every second.
    // A std mutex: held only for a map lookup or insert, never across an await.
    reported: Mutex<HashMap<String, Presence>>,
    /// The puppets whose polls the cluster's other nodes hold, as they last
    /// said (see `app/cluster.rs`); empty on one node.
    // A std mutex: held to swap or read the set, never across an await.
    remote_held: Mutex<Arc<std::collections::HashSet<String>>>,
}

impl Default for Presences {
    fn default() -> Self {
        Presences::new(Clock::real())
    }
}

/// The poll hold a puppet uses and why, from its last poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollPath {
    /// The hold it asked for, after the server's cap.
    pub hold: Duration,
    /// Polls cut short by the path, as the puppet counted them since it started.
    pub polls_cut: u32,
}

/// Marks a puppet as holding a poll until dropped; its drop, however the
/// poll ended, is a sign of life (the turn passes to the puppet).
#[derive(Debug)]
pub struct HeldPoll {
    signs: Arc<Signs>,
    name: String,
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        let now = self.signs.clock.now();
        let mut puppets = self.signs.puppets.lock().unwrap_or_else(|e| e.into_inner());
        // A puppet removed (forgotten) while its poll was held stays gone.
        if let Some(heard) = puppets.get_mut(&self.name) {
            heard.held = heard.held.saturating_sub(1);
            heard.last = heard.last.max(Some(now));
        }
    }
}

impl Presences {
    /// Starts serving now, on `clock`.
    pub fn new(clock: Clock) -> Self {
        Presences {
            signs: Arc::new(Signs {
                since: clock.now(),
                clock,
                puppets: Default::default(),
            }),
            reported: Default::default(),
            remote_held: Default::default(),
        }
    }

    /// What the other nodes of the cluster said they hold.
    pub fn set_remote_held(&self, held: std::collections::HashSet<String>) {
        *self.remote_held.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(held);
    }

    /// The puppets whose polls this node holds.
    pub fn held_here(&self) -> Vec<String> {
        self.signs
            .puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, heard)| heard.held > 0)
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn clock(&self) -> &Clock {
        &self.signs.clock
    }

    /// A call authenticated as this puppet arrived: a sign of life.
    pub fn heard(&self, name: &str) {
        let now = self.signs.clock.now();
        self.signs.update(name, |heard| {
            heard.last = heard.last.max(Some(now));
        });
    }

    /// A poll of this puppet is held until the guard is dropped.
    pub fn hold(&self, name: &str, free_slots: u32) -> HeldPoll {
        let now = self.signs.clock.now();
        self.signs.update(name, |heard| {
            heard.held += 1;
            heard.free_slots = free_slots;
            heard.last = heard.last.max(Some(now));
        });
        HeldPoll {
            signs: self.signs.clone(),
            name: name.to_string(),
        }
    }

    /// A sign of life heard `ago` by another node of the cluster (see
    /// `app/cluster.rs`): counts as heard then, if later than what this
    /// node knows.
    pub fn heard_ago(&self, name: &str, ago: Duration) {
        let now = self.signs.clock.now();
        let then = Mono(now.0.saturating_sub(ago.as_millis() as u64));
        self.signs.update(name, |heard| {
            heard.last = heard.last.max(Some(then));
        });
    }

    /// The puppets heard since `since` or holding a poll now: what this
    /// node shares with the others.
    pub fn heard_since(&self, since: Mono) -> Vec<String> {
        self.signs
            .puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, heard)| heard.held > 0 || heard.last.is_some_and(|l| l >= since))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Forgets a removed puppet.
    pub fn forget(&self, name: &str) {
        self.signs
            .puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        self.set_reported(name, None);
    }

    /// Records the hold of a puppet's poll and its count of cut polls.
    pub fn note_path(&self, name: &str, path: PollPath) {
        self.signs.update(name, |heard| heard.path = Some(path));
    }

    /// The hold of the puppet's last poll since this server started.
    pub fn path(&self, name: &str) -> Option<PollPath> {
        self.signs.get(name).and_then(|heard| heard.path)
    }

    /// Whether the puppet holds a poll with a free slot: it could take a
    /// run this instant.
    pub fn ready(&self, name: &str) -> bool {
        self.signs
            .get(name)
            .is_some_and(|heard| heard.held > 0 && heard.free_slots > 0)
    }

    /// Whether a poll of this puppet is held right now, by this node or (as
    /// they last said) another node of the cluster.
    pub fn is_held(&self, name: &str) -> bool {
        self.signs.get(name).is_some_and(|heard| heard.held > 0)
            || self
                .remote_held
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(name)
    }

    /// Whether this puppet made a call since this puppeteer started.
    pub fn heard_since_start(&self, name: &str) -> bool {
        self.signs
            .get(name)
            .is_some_and(|heard| heard.last.is_some())
    }

    /// How long the puppet has been silent (see the module's doc): zero
    /// while a poll of it is held. No wall clock is read.
    pub fn silence(&self, name: &str) -> Duration {
        if self
            .remote_held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
        {
            return Duration::ZERO;
        }
        let now = self.signs.clock.now();
        match self.signs.get(name) {
            Some(heard) if heard.held > 0 => Duration::ZERO,
            Some(Heard {
                last: Some(last), ..
            }) => now.since(last.max(self.signs.since)),
            _ => now.since(self.signs.since),
        }
    }

    /// Of `names`, those the sweeper's presence pass must look at: all but
    /// the puppets holding a poll whose stored presence is already online.
    /// One lock of each map for the whole pass, not two per puppet.
    pub fn unsettled(&self, names: &[String]) -> Vec<String> {
        let puppets = self.signs.puppets.lock().unwrap_or_else(|e| e.into_inner());
        let reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter(|name| {
                !(puppets.get(*name).is_some_and(|heard| heard.held > 0)
                    && reported.get(*name) == Some(&Presence::Online))
            })
            .cloned()
            .collect()
    }

    /// The presence last stored for a puppet, as far as the mirror knows.
    pub fn reported(&self, name: &str) -> Option<Presence> {
        self.reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    /// Records the presence stored for a puppet (`None`: forget it).
    pub fn set_reported(&self, name: &str, presence: Option<Presence>) {
        let mut reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        match presence {
            Some(p) => reported.insert(name.to_string(), p),
            None => reported.remove(name),
        };
    }

    /// A puppet's presence now, from its silence. `stored_offline`: its
    /// stored presence says offline (it stays so until heard).
    pub fn judge(&self, name: &str, stored_offline: bool, thresholds: Thresholds) -> Presence {
        if stored_offline && !self.heard_since_start(name) {
            return Presence::Offline;
        }
        thresholds.judge(self.silence(name))
    }

    /// A puppet's presence now, from its record.
    pub fn of(&self, puppet: &Puppet, thresholds: Thresholds) -> Presence {
        self.judge(
            &puppet.name,
            puppet.reported_presence.as_deref() == Some("offline"),
            thresholds,
        )
    }
}

/// When a silent puppet becomes late, then offline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub late_after: Duration,
    pub offline_after: Duration,
}

impl Thresholds {
    /// The defaults for a poll hold.
    pub fn for_hold(hold: Duration) -> Self {
        Thresholds {
            late_after: hold + MARGIN,
            offline_after: (hold + MARGIN) * 3,
        }
    }

    /// Presence from a silence.
    pub fn judge(&self, silence: Duration) -> Presence {
        if silence <= self.late_after {
            Presence::Online
        } else if silence <= self.offline_after {
            Presence::Late
        } else {
            Presence::Offline
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_puppets_not_known_online_and_polling_are_unsettled() {
        let presences = Presences::default();
        let names = || vec!["a".to_string(), "b".to_string(), "c".to_string()];
        assert_eq!(presences.unsettled(&names()), names());
        let _a = presences.hold("a", 1);
        let _b = presences.hold("b", 1);
        presences.set_reported("a", Some(Presence::Online));
        presences.set_reported("c", Some(Presence::Online));
        // a: polling and stored online; b: polling, stored unknown; c: not polling.
        assert_eq!(presences.unsettled(&names()), vec!["b", "c"]);
        drop(_a);
        assert_eq!(presences.unsettled(&names()), names());
    }

    #[test]
    fn presence_follows_silence() {
        let t = Thresholds::for_hold(Duration::from_secs(50));
        assert_eq!(t.judge(Duration::from_secs(60)), Presence::Online);
        assert_eq!(t.judge(Duration::from_secs(100)), Presence::Late);
        assert_eq!(t.judge(Duration::from_secs(300)), Presence::Offline);
    }

    #[test]
    fn a_held_poll_is_silence_zero_however_long_and_its_end_a_sign_of_life() {
        let clock = Clock::simulated();
        let presences = Presences::new(clock.clone());
        let held = presences.hold("p", 1);
        clock.advance(Duration::from_secs(600));
        assert_eq!(presences.silence("p"), Duration::ZERO);
        drop(held);
        assert_eq!(presences.silence("p"), Duration::ZERO);
        clock.advance(Duration::from_secs(7));
        assert_eq!(presences.silence("p"), Duration::from_secs(7));
        presences.heard("p");
        assert_eq!(presences.silence("p"), Duration::ZERO);
    }

    #[test]
    fn silence_counts_from_the_start_not_from_before_it() {
        let clock = Clock::simulated();
        let presences = Presences::new(clock.clone());
        presences.heard("p");
        clock.advance(Duration::from_secs(1000));
        // Restarted: nobody's silence counts from before.
        let restarted = Presences::new(clock.clone());
        clock.advance(Duration::from_secs(5));
        assert_eq!(restarted.silence("p"), Duration::from_secs(5));
        assert_eq!(restarted.silence("never-heard"), Duration::from_secs(5));
        assert_eq!(presences.silence("p"), Duration::from_secs(1005));
    }

    #[test]
    fn a_puppet_stored_offline_stays_offline_until_heard() {
        let clock = Clock::simulated();
        let presences = Presences::new(clock.clone());
        let t = Thresholds::for_hold(Duration::from_secs(50));
        let judge = |p: &Presences| p.judge("p", true, t);
        assert_eq!(judge(&presences), Presence::Offline);
        presences.heard("p");
        assert_eq!(judge(&presences), Presence::Online);
        clock.advance(Duration::from_secs(66));
        assert_eq!(judge(&presences), Presence::Late);
    }
}
