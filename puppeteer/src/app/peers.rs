//! The site peer cache, as the puppeteer runs it: gathers the facts a
//! source decision needs (the copies of the content, which puppets serve
//! and are alive), lets `peers::choose` decide, and stores the outcome on
//! the version it read (`store/copies.rs`), deciding again if another
//! decision of the site came first. Signs the ticket for the peer chosen.
//! Every function here blocks (store): call them on the blocking pool.

use std::collections::HashSet;

use geppetto_proto::ticket::Ticket;

use crate::domain::{ContentCopy, Millis, Puppet};
use crate::peers::{self, Ask, SUSPECT_FOR, Source, TICKET_TTL};
use crate::presence::Presence;
use crate::store::StoreError;

use super::AppState;

/// Where a puppet fetches from: the source, and for a peer its address,
/// certificate hash and ticket.
#[derive(Debug)]
pub struct Found {
    pub source: Source,
    pub peer: Option<(String, String, String)>,
}

/// A peer that failed a fetch, as the fetcher reports it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub peer: String,
    pub reason: String,
    /// It does not hold the content (any more): its copy is forgotten.
    pub gone: bool,
}

/// How many times a decision is taken again when others of the site came
/// first, before it is refused as busy.
const DECISIONS: usize = 20;

/// A failure as kept: at most this many characters.
const REASON_MAX: usize = 200;

fn bounded(reason: &str) -> String {
    reason.chars().take(REASON_MAX).collect()
}

impl AppState {
    /// The source of `sha256` for `puppet`, given the peers that failed
    /// this fetch (each marked suspect for its content).
    pub fn find_source(
        &self,
        puppet: &Puppet,
        sha256: &str,
        failed: &[Failure],
    ) -> Result<Found, StoreError> {
        let now = Millis::now();
        self.note_failures(&puppet.name, sha256, failed, now)?;
        let failed: HashSet<String> = failed.iter().map(|f| f.peer.clone()).collect();
        let site = puppet.site();
        for _ in 0..DECISIONS {
            let version = match &site {
                Some(site) => self.store.copies_version(sha256, site)?,
                None => 0,
            };
            let copies = self.store.copies_of(sha256)?;
            let ask = Ask {
                puppet: &puppet.name,
                site: site.as_deref(),
                failed: &failed,
                now,
            };
            let offers = |name: &str| self.live_offer(name);
            let source = peers::choose(&ask, &copies, |name| offers(name).is_some());
            let Some(site) = &site else {
                return Ok(Found { source, peer: None });
            };
            let copy = ContentCopy {
                sha256: sha256.to_string(),
                puppet: puppet.name.clone(),
                site: site.clone(),
                held: false,
                source: source.peer().to_string(),
                since: now,
                updated: now,
                bytes: 0,
                took_ms: 0,
                suspect_until: Millis(0),
                last_failure: None,
            };
            if !self.store.put_copy_if(version, &copy)? {
                continue;
            }
            let peer = match &source {
                Source::Puppeteer { .. } => None,
                Source::Peer { name, .. } => {
                    let Some(offer) = self.live_offer(name) else {
                        continue;
                    };
                    let ticket = Ticket {
                        sha256: sha256.to_string(),
                        peer: name.clone(),
                        fetcher: puppet.name.clone(),
                        expires_ms: now.plus(TICKET_TTL).0,
                    }
                    .sign(&offer.ticket_key);
                    Some((offer.address, offer.cert_sha256, ticket))
                }
            };
            return Ok(Found { source, peer });
        }
        Err(StoreError::Conflict(format!(
            "too many puppets of the site ask for {sha256} at once: ask again"
        )))
    }

    /// Peers that failed a fetch: a copy gone is forgotten, any other is
    /// avoided for [`SUSPECT_FOR`].
    fn note_failures(
        &self,
        fetcher: &str,
        sha256: &str,
        failed: &[Failure],
        now: Millis,
    ) -> Result<(), StoreError> {
        for f in failed {
            tracing::info!(puppet = fetcher, peer = %f.peer, sha256, reason = %f.reason, "a peer failed a fetch");
            if f.gone {
                self.store.forget_copy(sha256, &f.peer)?;
            } else {
                self.store.suspect_copy(
                    sha256,
                    &f.peer,
                    &bounded(&f.reason),
                    now.plus(SUSPECT_FOR),
                )?;
            }
        }
        Ok(())
    }

    /// The peer offer of a puppet that serves peers and is online.
    fn live_offer(&self, name: &str) -> Option<crate::domain::PeerOffer> {
        let puppet = self.store.get_puppet(name).ok()?;
        if self.presences.of(&puppet, self.config.presence) != Presence::Online {
            return None;
        }
        puppet.peer.filter(|o| !o.address.is_empty())
    }

    /// A fetch ended on `puppet`: it holds the content (recorded with its
    /// source), and the bytes count for its site.
    pub fn fetch_done(
        &self,
        puppet: &Puppet,
        sha256: &str,
        source: &str,
        bytes: u64,
        took_ms: u64,
        failed: &[Failure],
    ) -> Result<ContentCopy, StoreError> {
        let now = Millis::now();
        self.note_failures(&puppet.name, sha256, failed, now)?;
        let site = puppet.site().unwrap_or_default();
        if !source.is_empty() && !site.is_empty() {
            self.metrics.site_bytes(&site, "peer", bytes);
        }
        self.store.copy_held(&ContentCopy {
            sha256: sha256.to_string(),
            puppet: puppet.name.clone(),
            site,
            held: true,
            source: source.to_string(),
            since: now,
            updated: now,
            bytes,
            took_ms,
            suspect_until: Millis(0),
            last_failure: None,
        })
    }
}
