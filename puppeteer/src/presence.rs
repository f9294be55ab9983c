//! Presence: online, late or offline, from each puppet's own polls.
//!
//! A puppet with a poll held right now is online. Otherwise it is judged by
//! the time since its last poll against two thresholds: up to `late_after`
//! it is online (between two polls), up to `offline_after` late, beyond it
//! offline. By default `late_after` is the poll hold plus a margin and
//! `offline_after` three times that; both are configurable. A puppet busy with a long silent run stays online, since it keeps
//! polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::{Millis, Puppet};

/// Slack for the gap between two polls (answer, reconnect, scheduling).
pub const MARGIN: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Presence {
    Online,
    Late,
    Offline,
}

/// Which puppets have a poll held right now.
#[derive(Debug, Default)]
pub struct Presences {
    // A std mutex: held only to bump a counter, never across an await.
    /// Per puppet: how many polls are held, and the free slots the last
    /// one reported.
    held: Arc<Mutex<HashMap<String, (u32, u32)>>>,
    // A std mutex: held only to copy a small value in or out.
    /// Per puppet: what its last poll said about the path to it. Kept in
    /// memory only, so that polls write nothing to disk for it; a restarted
    /// puppeteer knows it again at each puppet's next poll.
    paths: Mutex<HashMap<String, PollPath>>,
    /// A mirror of each puppet's stored `reported_presence`, kept by the
    /// sweeper, so that its pass over ten thousand puppets holding polls
    /// need not decode their records every second.
    // A std mutex: held only for a map lookup or insert, never across an await.
    reported: Mutex<HashMap<String, Presence>>,
}

/// The poll hold a puppet uses and why, from its last poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollPath {
    /// The hold it asked for, after the server's cap.
    pub hold: Duration,
    /// Polls cut short by the path, as the puppet counted them since it started.
    pub polls_cut: u32,
}

/// Marks a puppet as holding a poll until dropped.
#[derive(Debug)]
pub struct HeldPoll {
    held: Arc<Mutex<HashMap<String, (u32, u32)>>>,
    name: String,
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = held.get_mut(&self.name) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.name);
            }
        }
    }
}

impl Presences {
    pub fn hold(&self, name: &str, free_slots: u32) -> HeldPoll {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let entry = held.entry(name.to_string()).or_default();
        entry.0 += 1;
        entry.1 = free_slots;
        drop(held);
        HeldPoll {
            held: self.held.clone(),
            name: name.to_string(),
        }
    }

    /// Records the hold of a puppet's poll and its count of cut polls.
    pub fn note_path(&self, name: &str, path: PollPath) {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), path);
    }

    /// The hold of the puppet's last poll since this server started.
    pub fn path(&self, name: &str) -> Option<PollPath> {
        self.paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .copied()
    }

    /// Whether the puppet holds a poll with a free slot: it could take a
    /// run this instant.
    pub fn ready(&self, name: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|(_, free)| *free > 0)
    }

    /// Whether a poll of this puppet is held right now.
    pub fn is_held(&self, name: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    /// Of `names`, those the sweeper's presence pass must look at: all but
    /// the puppets holding a poll whose stored presence is already online.
    /// One lock of each map for the whole pass, not two per puppet.
    pub fn unsettled(&self, names: &[String]) -> Vec<String> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let reported = self.reported.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter(|name| {
                !(held.contains_key(*name) && reported.get(*name) == Some(&Presence::Online))
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

    pub fn of(&self, puppet: &Puppet, now: Millis, thresholds: Thresholds) -> Presence {
        if self.is_held(&puppet.name) {
            return Presence::Online;
        }
        thresholds.judge(puppet.last_seen, now)
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

    /// Presence from the last poll alone.
    pub fn judge(&self, last_seen: Option<Millis>, now: Millis) -> Presence {
        let Some(seen) = last_seen else {
            return Presence::Offline;
        };
        let silence = now.since(seen);
        if silence <= self.late_after {
            Presence::Online
        } else if silence <= self.offline_after {
            Presence::Late
        } else {
            Presence::Offline
        }
    }
}

/// Presence from the last poll alone, with the default thresholds.
pub fn judge(last_seen: Option<Millis>, now: Millis, hold: Duration) -> Presence {
    Thresholds::for_hold(hold).judge(last_seen, now)
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
        let hold = Duration::from_secs(50);
        let seen = Some(Millis(1_000_000));
        assert_eq!(
            judge(seen, Millis(1_000_000 + 60_000), hold),
            Presence::Online
        );
        assert_eq!(
            judge(seen, Millis(1_000_000 + 100_000), hold),
            Presence::Late
        );
        assert_eq!(
            judge(seen, Millis(1_000_000 + 300_000), hold),
            Presence::Offline
        );
        assert_eq!(judge(None, Millis(0), hold), Presence::Offline);
        // A clock that went backwards counts as no silence.
        assert_eq!(judge(seen, Millis(0), hold), Presence::Online);
    }
}
