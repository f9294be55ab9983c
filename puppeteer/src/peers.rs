//! The site peer cache: from where a puppet fetches an artifact's content.
//! Pure decisions over the copies recorded (`domain::ContentCopy`) and the
//! time; the application layer (`app/peers.rs`) gathers the facts and
//! stores the outcome.
//!
//! A puppet's site is its `site` label. Puppets of a site that serve their
//! cache (`puppet --peer-listen`) are its peers. When a puppet asks where to
//! fetch some content:
//! - without a site, it fetches from the puppeteer;
//! - otherwise, from a peer of its site that **holds** the content, or else
//!   that is **receiving** it (a peer serves what it has while the rest
//!   arrives): among those, the one serving the fewest fetches now, then
//!   by name. A peer is skipped if it is the asker, is not alive or does
//!   not serve, failed this fetch before, was reported failing for this
//!   content in the last [`SUSPECT_FOR`], has been receiving for longer
//!   than [`RECEIVING_STALE`], or receives (through any chain of peers)
//!   from the asker itself (no cycle can wait on itself);
//! - with no such peer, from the puppeteer: the site's one fetch across its
//!   uplink. Any later asker of the site is sent to that puppet while it
//!   receives, if it serves peers.
//!
//! So a site's uplink carries one copy of the content as long as the
//! puppet fetching it serves its peers, stays alive and serves bytes that
//! hash right. When a peer fails (unreachable, stalled, wrong bytes) the
//! fetcher names it when asking again, and the fetch resumes from the next
//! source at the byte it reached. The puppet checks the whole content's
//! hash before any run uses it, whatever its sources.

use std::collections::HashSet;
use std::time::Duration;

use crate::domain::{ContentCopy, Millis};

/// A peer reported failing for some content is avoided this long.
pub const SUSPECT_FOR: Duration = Duration::from_secs(600);

/// A copy still being received after this long is taken for abandoned.
pub const RECEIVING_STALE: Duration = Duration::from_secs(3600);

/// How long a ticket to a peer is valid (to connect; a transfer under way
/// goes on past it).
pub const TICKET_TTL: Duration = Duration::from_secs(300);

/// Where to fetch from, and why (in words, for logs and operators).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Puppeteer { reason: String },
    Peer { name: String, reason: String },
}

impl Source {
    /// The peer's name; empty for the puppeteer (as a copy records it).
    pub fn peer(&self) -> &str {
        match self {
            Source::Puppeteer { .. } => "",
            Source::Peer { name, .. } => name,
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Source::Puppeteer { reason } | Source::Peer { reason, .. } => reason,
        }
    }
}

/// What is asked: who, of which site, and which peers failed this fetch.
pub struct Ask<'a> {
    pub puppet: &'a str,
    pub site: Option<&'a str>,
    pub failed: &'a HashSet<String>,
    pub now: Millis,
}

/// Chooses the source of `ask` among `copies` (every copy of the content),
/// `serves` telling whether a puppet is alive and serves its peers.
pub fn choose(ask: &Ask<'_>, copies: &[ContentCopy], serves: impl Fn(&str) -> bool) -> Source {
    let Some(site) = ask.site else {
        return Source::Puppeteer {
            reason: "the puppet has no site label".into(),
        };
    };
    let of_site: Vec<&ContentCopy> = copies
        .iter()
        .filter(|c| c.site == site && c.puppet != ask.puppet)
        .collect();
    let usable = |c: &ContentCopy| {
        !ask.failed.contains(&c.puppet)
            && c.suspect_until <= ask.now
            && (c.held || ask.now.since(c.since) < RECEIVING_STALE)
            && !receives_from(copies, &c.puppet, ask.puppet)
            && serves(&c.puppet)
    };
    let serving = |name: &str| {
        copies
            .iter()
            .filter(|c| !c.held && c.source == name)
            .count()
    };
    let best = of_site
        .iter()
        .filter(|c| usable(c))
        .min_by_key(|c| (!c.held, serving(&c.puppet), c.puppet.clone()));
    match best {
        Some(c) => Source::Peer {
            name: c.puppet.clone(),
            reason: format!(
                "peer {} of site {site} {} it",
                c.puppet,
                if c.held { "holds" } else { "is receiving" }
            ),
        },
        None if of_site.is_empty() => Source::Puppeteer {
            reason: format!("the first fetch of site {site}"),
        },
        None => Source::Puppeteer {
            reason: format!(
                "no peer of site {site} can serve it ({} other cop{} unusable: failed, suspect, not serving or offline)",
                of_site.len(),
                if of_site.len() == 1 { "y" } else { "ies" }
            ),
        },
    }
}

/// Whether `puppet`'s copy comes, through any chain of peers, from `from`.
fn receives_from(copies: &[ContentCopy], puppet: &str, from: &str) -> bool {
    let mut at = puppet;
    for _ in 0..copies.len() {
        let Some(copy) = copies.iter().find(|c| c.puppet == at) else {
            return false;
        };
        if copy.held || copy.source.is_empty() {
            return false;
        }
        if copy.source == from {
            return true;
        }
        at = &copy.source;
    }
    // A loop among others: not a source worth waiting on.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(puppet: &str, site: &str, held: bool, source: &str) -> ContentCopy {
        ContentCopy {
            sha256: "ab".repeat(32),
            puppet: puppet.into(),
            site: site.into(),
            held,
            source: source.into(),
            since: Millis(1_000),
            updated: Millis(1_000),
            bytes: 0,
            took_ms: 0,
            suspect_until: Millis(0),
            last_failure: None,
        }
    }

    fn ask<'a>(puppet: &'a str, site: Option<&'a str>, failed: &'a HashSet<String>) -> Ask<'a> {
        Ask {
            puppet,
            site,
            failed,
            now: Millis(2_000),
        }
    }

    const ALL: fn(&str) -> bool = |_| true;

    #[test]
    fn the_first_of_a_site_fetches_across_the_uplink_and_the_next_from_it() {
        let none = HashSet::new();
        let first = choose(&ask("a", Some("lyon"), &none), &[], ALL);
        assert_eq!(
            first,
            Source::Puppeteer {
                reason: "the first fetch of site lyon".into()
            }
        );
        let copies = [copy("a", "lyon", false, "")];
        assert_eq!(
            choose(&ask("b", Some("lyon"), &none), &copies, ALL).peer(),
            "a"
        );
        // Another site's copies are not this site's.
        assert_eq!(
            choose(&ask("c", Some("nice"), &none), &copies, ALL).peer(),
            ""
        );
        // No site: the puppeteer.
        assert_eq!(choose(&ask("d", None, &none), &copies, ALL).peer(), "");
    }

    #[test]
    fn holders_come_first_then_the_least_busy() {
        let none = HashSet::new();
        let copies = [
            copy("a", "lyon", false, ""),
            copy("b", "lyon", true, "a"),
            copy("c", "lyon", true, ""),
            copy("d", "lyon", false, "b"),
        ];
        // b and c hold; b serves d now, c nobody.
        assert_eq!(
            choose(&ask("e", Some("lyon"), &none), &copies, ALL).peer(),
            "c"
        );
    }

    #[test]
    fn failed_suspect_stale_offline_and_cyclic_peers_are_skipped() {
        let failed: HashSet<String> = ["a".to_string()].into();
        let mut suspect = copy("b", "lyon", true, "");
        suspect.suspect_until = Millis(5_000);
        let mut stale = copy("c", "lyon", false, "");
        stale.since = Millis(2_000 - RECEIVING_STALE.as_millis() as i64);
        let offline = copy("d", "lyon", true, "");
        // f receives from e, the asker: e must not be sent to f.
        let cyclic = copy("f", "lyon", false, "e");
        let copies = [copy("a", "lyon", true, ""), suspect, stale, offline, cyclic];
        let source = choose(&ask("e", Some("lyon"), &failed), &copies, |p| p != "d");
        assert_eq!(source.peer(), "", "{source:?}");
        assert!(
            source.reason().contains("5 other copies unusable"),
            "{source:?}"
        );
        // Once a's failure is forgotten (a new fetch), a serves again.
        let none = HashSet::new();
        assert_eq!(
            choose(&ask("e", Some("lyon"), &none), &copies, ALL).peer(),
            "a"
        );
    }

    #[test]
    fn a_chain_of_receivers_is_followed_to_the_asker() {
        let copies = [
            copy("a", "lyon", false, "b"),
            copy("b", "lyon", false, "c"),
            copy("c", "lyon", false, ""),
        ];
        assert!(receives_from(&copies, "a", "c"));
        assert!(!receives_from(&copies, "c", "a"));
        let looped = [copy("x", "s", false, "y"), copy("y", "s", false, "x")];
        assert!(receives_from(&looped, "x", "z"), "a loop is never a source");
    }
}
