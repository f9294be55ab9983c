//! Ownership of a shared database: the node lease.
//!
//! A PostgreSQL store may be shared by several processes. Until the
//! cluster's rules (presence shared between nodes, the background work run
//! by one elected node) are complete, one puppeteer at a time serves a
//! database: it holds a lease row (`meta/node_lease`: its node id, a term,
//! an expiry on the database's clock) and renews it every few seconds. A
//! second puppeteer finding a live lease held by another node refuses to
//! start; one finding an expired lease takes it over with the next term.
//! A node that finds its lease taken (it was paused past the expiry) stops
//! serving rather than share the database unknowingly.
//!
//! The expiry is on the database's clock, so nodes' clocks need not agree.
//! The lease is the seed of the cluster's leader election (CLUSTER-NOTES:
//! a lease row with a term as the fencing token, renewed well within its
//! time to live).

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError, Transactional, abort, decode, encode};

const LEASE: &[u8] = b"node_lease";

/// Who holds the database, until when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeLease {
    pub node: String,
    /// Increases at every change of holder.
    pub term: u64,
    /// Milliseconds since the epoch, database clock.
    pub expires_ms: i64,
}

impl Store {
    /// Takes or renews the lease for `node` for `ttl_ms` from now. Refused
    /// (`Conflict`, naming the holder) while another node's lease is live.
    pub fn hold_lease(&self, node: &str, ttl_ms: i64) -> Result<NodeLease> {
        let now = self.now_ms()?;
        self.meta.transaction(|meta| {
            let current: Option<NodeLease> = match meta.get(LEASE)? {
                Some(v) => match decode(LEASE, &v) {
                    Ok(lease) => Some(lease),
                    Err(e) => return abort(e),
                },
                None => None,
            };
            let term = match &current {
                Some(l) if l.node == node => l.term,
                Some(l) if l.expires_ms > now => {
                    return abort(StoreError::Conflict(format!(
                        "the database is in use by another puppeteer (node {}, for {} s more): \
                         one puppeteer per database for now",
                        l.node,
                        (l.expires_ms - now + 999) / 1000
                    )));
                }
                Some(l) => l.term + 1,
                None => 1,
            };
            let lease = NodeLease {
                node: node.to_string(),
                term,
                expires_ms: now + ttl_ms,
            };
            meta.insert(LEASE, encode(&lease))?;
            Ok(lease)
        })
    }

    /// Gives the lease up (a clean stop), if `node` holds it.
    pub fn release_lease(&self, node: &str) -> Result<()> {
        self.meta.transaction(|meta| {
            if let Some(v) = meta.get(LEASE)?
                && decode::<NodeLease>(LEASE, &v).is_ok_and(|l| l.node == node)
            {
                meta.remove(LEASE)?;
            }
            Ok(())
        })
    }

    /// The lease as stored.
    pub fn node_lease(&self) -> Result<Option<NodeLease>> {
        self.meta.get(LEASE)?.map(|v| decode(LEASE, &v)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::StoreError;
    use crate::store::testing;

    #[test]
    fn one_node_holds_the_lease_until_it_expires_or_is_released() {
        for (_engine, store) in testing::stores() {
            let a = store.hold_lease("a", 60_000).unwrap();
            assert_eq!(a.term, 1);
            assert_eq!(store.hold_lease("a", 60_000).unwrap().term, 1, "renewed");
            match store.hold_lease("b", 60_000) {
                Err(StoreError::Conflict(m)) => assert!(m.contains("node a"), "{m}"),
                other => panic!("b took a live lease: {other:?}"),
            }
            // Expired (a ttl in the past): the next node takes it, next term.
            store.hold_lease("a", -1).unwrap();
            let b = store.hold_lease("b", 60_000).unwrap();
            assert_eq!((b.node.as_str(), b.term), ("b", 2));
            store.release_lease("a").unwrap();
            assert_eq!(
                store.node_lease().unwrap().unwrap().node,
                "b",
                "not a's to release"
            );
            store.release_lease("b").unwrap();
            assert!(store.node_lease().unwrap().is_none());
        }
    }

    #[test]
    fn wake_ups_reach_every_listener_of_a_shared_store() {
        for (_engine, store) in testing::stores() {
            let Some(mut heard) = store.listen() else {
                store.broadcast(&["p:x".into()]).unwrap();
                continue;
            };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            loop {
                store.broadcast(&["p:x".into(), "j:y".into()]).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(100));
                let mut got = Vec::new();
                while let Ok(m) = heard.try_recv() {
                    got.push(m);
                }
                if got.contains(&crate::store::Heard::Message("j:y".into())) {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "nothing heard: {got:?}"
                );
            }
        }
    }
}
