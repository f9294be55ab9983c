//! Fairness under connection floods: what one source address may hold, and
//! which connections go first when the process runs short of descriptors.
//!
//! Every accepted connection is admitted here first, under two bounds per
//! source address (IPv4 address, or IPv6 /64 prefix):
//! - all its connections: `max_connections_per_address` (by default a
//!   quarter of the process's connection cap, at least 64), so that one
//!   address cannot take every slot;
//! - its *unproven* connections: `max_unauthenticated_per_address` (256).
//!   A connection is unproven until a request on it carries a valid
//!   credential (a puppet's or a user's). Puppets behind one NAT prove
//!   themselves with their first poll; an attacker without a credential
//!   never does.
//!
//! A connection over either bound is closed at once, counted
//! (`geppetto_connections_refused_total`) and logged at most once every 10 s.
//!
//! When the process is at its connection cap (see
//! [`super::connection_cap`]), the oldest unproven connection is closed to
//! make room, one without a request in progress first, instead of leaving
//! the new one in the kernel's backlog: a flood of connections without a
//! credential delays the puppets and operators that arrive during it by one
//! connection close, not until the flood stops. One eviction at a time: the
//! next waits until the last evicted connection is gone. Proven connections
//! (a puppet's held poll among them) are never evicted.
//!
//! What one address can cost, then: `max_connections_per_address`
//! descriptors (each with at most 8 KiB of HTTP/1 buffers or one HTTP/2
//! connection's state, and at most 128 streams), each closed after its idle
//! time, and evicted first when descriptors run short.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::conn::Activity;

/// The default bound on a source address's unproven connections.
pub const DEFAULT_UNPROVEN_PER_ADDRESS: usize = 256;

/// The default bound on a source address's connections under a process
/// connection cap of `cap`: a quarter of it, at least 64.
pub fn default_per_address(cap: usize) -> usize {
    (cap / 4).max(64)
}

/// How often at most a refusal is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The bounds of [`Admissions`]; 0 means none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub per_address: usize,
    pub unproven_per_address: usize,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    PerAddress,
    UnprovenPerAddress,
}

impl Refused {
    pub fn label(self) -> &'static str {
        match self {
            Refused::PerAddress => "per_address",
            Refused::UnprovenPerAddress => "unauthenticated_per_address",
        }
    }
}

/// The connections open now, by source, and the unproven ones by age.
#[derive(Debug)]
pub struct Admissions {
    bounds: Bounds,
    inner: Mutex<Inner>,
    refused: [Counter; 2],
    /// The refusals logged and to log.
    log: Mutex<RefusalLog>,
    /// Connections evicted and not yet gone.
    evicting: AtomicUsize,
}

/// Refusals are logged at most once per [`LOG_EVERY`]: the first at once,
/// those after it counted, and their count logged when the period ends, so
/// that a burst shorter than the period is in the log too.
#[derive(Debug, Default)]
struct RefusalLog {
    /// When a line was last written.
    last: Option<tokio::time::Instant>,
    /// Refusals not in a line yet.
    since: u64,
    /// A line of those is due at the period's end.
    due: bool,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    by_source: HashMap<IpAddr, Counts>,
    /// Unproven connections, oldest first.
    unproven: BTreeMap<u64, Evictable>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    all: usize,
    unproven: usize,
}

#[derive(Debug)]
struct Evictable {
    activity: Arc<Activity>,
    close: CancellationToken,
    /// The ticket's: a connection proven meanwhile is not evicted.
    proven: Arc<AtomicBool>,
}

/// One admitted connection, until dropped.
#[derive(Debug)]
pub struct Ticket {
    admissions: Arc<Admissions>,
    id: u64,
    source: IpAddr,
    proven: Arc<AtomicBool>,
    /// Counts the connection's requests in progress.
    pub activity: Arc<Activity>,
    /// Cancelled when the connection is evicted.
    pub close: CancellationToken,
}

/// The source a connection is counted under: an IPv6 client usually holds
/// a whole /64, so its prefix is the source.
fn source_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

impl Admissions {
    /// `refused` counts refusals: per address, then unproven per address.
    pub fn new(bounds: Bounds, refused: [Counter; 2]) -> Arc<Self> {
        Arc::new(Admissions {
            bounds,
            inner: Default::default(),
            refused,
            log: Default::default(),
            evicting: AtomicUsize::new(0),
        })
    }

    /// Admits a connection from `addr`, or says why not (counted, and
    /// logged sparingly).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Ticket, Refused> {
        let source = source_of(addr);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let counts = inner.by_source.get(&source).copied().unwrap_or_default();
        let over = |count: usize, bound: usize| bound != 0 && count >= bound;
        let refusal = if over(counts.all, self.bounds.per_address) {
            Some(Refused::PerAddress)
        } else if over(counts.unproven, self.bounds.unproven_per_address) {
            Some(Refused::UnprovenPerAddress)
        } else {
            None
        };
        if let Some(refused) = refusal {
            drop(inner);
            self.refused(source, refused);
            return Err(refused);
        }
        let id = inner.next;
        inner.next += 1;
        let counts = inner.by_source.entry(source).or_default();
        counts.all += 1;
        counts.unproven += 1;
        let activity = Arc::new(Activity::new());
        let close = CancellationToken::new();
        let proven = Arc::new(AtomicBool::new(false));
        inner.unproven.insert(
            id,
            Evictable {
                activity: activity.clone(),
                close: close.clone(),
                proven: proven.clone(),
            },
        );
        Ok(Ticket {
            admissions: self.clone(),
            id,
            source,
            proven,
            activity,
            close,
        })
    }

    fn refused(self: &Arc<Self>, source: IpAddr, why: Refused) {
        self.refused[why as usize].inc();
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.since += 1;
        let now = tokio::time::Instant::now();
        if let Some(last) = log.last.filter(|last| now - *last < LOG_EVERY) {
            if !log.due
                && let Ok(runtime) = tokio::runtime::Handle::try_current()
            {
                log.due = true;
                let me = Arc::clone(self);
                runtime.spawn(async move {
                    tokio::time::sleep_until(last + LOG_EVERY).await;
                    me.log_refusals_since(source, why);
                });
            }
            return;
        }
        drop(log);
        self.log_refusals_since(source, why);
    }

    /// Writes the line of the refusals not logged yet, if any.
    fn log_refusals_since(&self, source: IpAddr, why: Refused) {
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.due = false;
        let refused = std::mem::take(&mut log.since);
        if refused == 0 {
            return;
        }
        log.last = Some(tokio::time::Instant::now());
        drop(log);
        tracing::warn!(
            %source,
            bound = why.label(),
            refused_since_last_line = refused,
            "refused a connection: its source holds as many as allowed"
        );
    }

    /// Closes the oldest unproven connection, one without a request in
    /// progress first, unless an evicted one is still closing. Returns
    /// whether one was.
    pub fn evict_one(&self) -> bool {
        if self.evicting.load(Ordering::SeqCst) > 0 {
            return false;
        }
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let candidates = || {
            inner
                .unproven
                .values()
                .filter(|c| !c.close.is_cancelled() && !c.proven.load(Ordering::SeqCst))
        };
        let victim = candidates()
            .find(|c| c.activity.is_idle())
            .or_else(|| candidates().next());
        match victim {
            Some(victim) => {
                self.evicting.fetch_add(1, Ordering::SeqCst);
                victim.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Connections open from `addr`'s source: all, and unproven.
    pub fn counts(&self, addr: IpAddr) -> (usize, usize) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let counts = inner
            .by_source
            .get(&source_of(addr))
            .copied()
            .unwrap_or_default();
        (counts.all, counts.unproven)
    }
}

impl Ticket {
    /// Whether a request on this connection carried a valid credential.
    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }

    /// A request on this connection carried a valid credential: it is no
    /// longer counted as unproven, nor evictable.
    pub fn prove(&self) {
        if self.proven.swap(true, Ordering::Relaxed) {
            return;
        }
        let mut inner = self
            .admissions
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        inner.unproven.remove(&self.id);
        if let Some(counts) = inner.by_source.get_mut(&self.source) {
            counts.unproven -= 1;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.close.is_cancelled() {
            self.admissions.evicting.fetch_sub(1, Ordering::SeqCst);
        }
        let mut inner = self
            .admissions
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let proven = self.proven.load(Ordering::Relaxed);
        if !proven {
            inner.unproven.remove(&self.id);
        }
        if let Some(counts) = inner.by_source.get_mut(&self.source) {
            counts.all -= 1;
            if !proven {
                counts.unproven -= 1;
            }
            if counts.all == 0 {
                inner.by_source.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admissions(per_address: usize, unproven_per_address: usize) -> Arc<Admissions> {
        Admissions::new(
            Bounds {
                per_address,
                unproven_per_address,
            },
            Default::default(),
        )
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A burst of refusals shorter than the logging period: the first is
    /// logged at once, the others when the period ends; none is lost.
    #[tokio::test(start_paused = true)]
    async fn every_refusal_of_a_burst_reaches_the_log() {
        let a = admissions(1, 1);
        let _held = a.admit(ip("192.0.2.1")).unwrap();
        let pending = || a.log.lock().unwrap().since;
        a.admit(ip("192.0.2.1")).unwrap_err();
        assert_eq!(pending(), 0, "the first refusal is logged at once");
        for _ in 0..4 {
            a.admit(ip("192.0.2.1")).unwrap_err();
        }
        assert_eq!(pending(), 4, "the rest of the burst waits for the period");
        assert!(a.log.lock().unwrap().due);
        tokio::time::sleep(LOG_EVERY + Duration::from_millis(1)).await;
        assert_eq!(pending(), 0, "logged when the period ended");
        assert!(!a.log.lock().unwrap().due);
        // The next refusal falls in the new period: counted for its end.
        a.admit(ip("192.0.2.1")).unwrap_err();
        assert_eq!(pending(), 1);
        tokio::time::sleep(LOG_EVERY + Duration::from_millis(1)).await;
        assert_eq!(pending(), 0);
    }

    #[test]
    fn a_source_holds_at_most_its_bounds_and_gets_them_back() {
        let a = admissions(4, 2);
        let first = a.admit(ip("192.0.2.1")).unwrap();
        let second = a.admit(ip("192.0.2.1")).unwrap();
        // Two unproven: a third is refused until one proves itself.
        assert_eq!(
            a.admit(ip("192.0.2.1")).unwrap_err(),
            Refused::UnprovenPerAddress
        );
        // Another address is not affected.
        let other = a.admit(ip("192.0.2.2")).unwrap();
        first.prove();
        second.prove();
        let third = a.admit(ip("192.0.2.1")).unwrap();
        third.prove();
        let fourth = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(a.counts(ip("192.0.2.1")), (4, 1));
        assert_eq!(a.admit(ip("192.0.2.1")).unwrap_err(), Refused::PerAddress);
        drop((first, second, third, fourth, other));
        assert_eq!(a.counts(ip("192.0.2.1")), (0, 0));
        assert!(a.inner.lock().unwrap().by_source.is_empty());
        assert!(a.inner.lock().unwrap().unproven.is_empty());
        assert_eq!(
            a.refused[0].get() + a.refused[1].get(),
            2,
            "each refusal counted"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_prefix() {
        let a = admissions(2, 0);
        let _one = a.admit(ip("2001:db8:1:2::1")).unwrap();
        let _two = a.admit(ip("2001:db8:1:2:ffff::9")).unwrap();
        assert_eq!(
            a.admit(ip("2001:db8:1:2::abcd")).unwrap_err(),
            Refused::PerAddress
        );
        assert!(a.admit(ip("2001:db8:1:3::1")).is_ok());
        // An IPv4-mapped address is its IPv4 address.
        let _v4 = a.admit(ip("::ffff:192.0.2.7")).unwrap();
        assert_eq!(a.counts(ip("192.0.2.7")), (1, 1));
    }

    /// Oldest idle unproven first, then the oldest busy unproven one; never
    /// a proven one; one at a time (the next when the last evicted is gone).
    #[test]
    fn eviction_takes_unproven_connections_idle_ones_first_one_at_a_time() {
        let a = admissions(0, 0);
        let busy = a.admit(ip("192.0.2.2")).unwrap();
        let proven = a.admit(ip("192.0.2.3")).unwrap();
        let idle = a.admit(ip("192.0.2.4")).unwrap();
        proven.prove();
        let _request = busy.activity.begin();
        assert!(a.evict_one());
        assert!(idle.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !proven.close.is_cancelled());
        // The evicted one is still closing: no second eviction yet.
        assert!(!a.evict_one());
        drop(idle);
        // No idle one left: the busy unproven one goes; never the proven.
        assert!(a.evict_one());
        assert!(busy.close.is_cancelled());
        drop(busy);
        assert!(!a.evict_one());
        assert!(!proven.close.is_cancelled());
        assert_eq!(a.evicting.load(Ordering::SeqCst), 0);
    }
}
