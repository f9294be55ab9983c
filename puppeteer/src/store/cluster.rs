//! The leader's lease of a shared database, and the cluster's shared
//! signs of life.
//!
//! Several puppeteers may share a PostgreSQL store; one of them leads (runs
//! the work that must run once, see `app/cluster.rs`). The leader holds a
//! lease row (`meta/node_lease`: its node id, a term, an expiry on the
//! database's clock) and renews it well within its time to live; a node
//! finding the lease expired takes it with the next term. The expiry is on
//! the database's clock, so the nodes' clocks play no part in who leads.

use serde::{Deserialize, Serialize};

use crate::domain::Millis;

use super::kv::Batch;
use super::{Result, Store, Transactional, abort, decode, encode};

pub(super) const LEASE: &[u8] = b"node_lease";

/// Who holds the database, until when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeLease {
    pub node: String,
    /// Increases at every change of holder.
    pub term: u64,
    /// Milliseconds since the epoch, database clock.
    pub expires_ms: i64,
}

/// A node of the cluster, as it last described itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    /// The address it listens on.
    pub listen: String,
    pub started_ms: i64,
    /// When it last wrote this record (its own clock).
    pub seen_ms: i64,
    /// The puppets whose polls it holds.
    pub held: Vec<String>,
}

/// Node records in `meta`: this prefix, then the node id.
const NODE_PREFIX: &[u8] = b"node\x01";

fn node_key(id: &str) -> Vec<u8> {
    [NODE_PREFIX, id.as_bytes()].concat()
}

/// The TLS files every node of a cluster serves (PEM): the CA's key is
/// here too, so that a node can renew the server certificate. Whoever can
/// read the database can impersonate the puppeteer: guard it as the key.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SharedTls {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

impl std::fmt::Debug for SharedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedTls").finish_non_exhaustive()
    }
}

impl Store {
    /// Takes or renews the lease for `node` for `ttl_ms` from now; `None`
    /// while another node's lease is live.
    pub fn hold_lease(&self, node: &str, ttl_ms: i64) -> Result<Option<NodeLease>> {
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
                Some(l) if l.expires_ms > now => return Ok(None),
                Some(l) => l.term + 1,
                None => 1,
            };
            let lease = NodeLease {
                node: node.to_string(),
                term,
                expires_ms: now + ttl_ms,
            };
            meta.insert(LEASE, encode(&lease))?;
            Ok(Some(lease))
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

    /// Notes that each of `names` was heard at `now` (the shared `seen`
    /// record a poll also writes), in one batch; names of removed puppets
    /// are skipped.
    pub fn touch_puppets(&self, names: &[String], now: Millis) -> Result<()> {
        let mut batch = Batch::default();
        for name in names {
            if self.puppets.get(name.as_bytes())?.is_some() {
                batch.insert(name.as_bytes(), now.0.to_be_bytes());
            }
        }
        self.seen.apply_batch(batch)
    }

    /// Every puppet's last sign of life as shared by the nodes (ms since
    /// the epoch).
    pub fn last_polls(&self) -> Result<Vec<(String, i64)>> {
        self.seen
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                let at = <[u8; 8]>::try_from(v.as_ref()).map_or(0, i64::from_be_bytes);
                Ok((String::from_utf8_lossy(&k).into_owned(), at))
            })
            .collect()
    }

    /// The cluster's TLS files, offered by a node that made (or has) its
    /// own: the first offer is kept, and every node gets the kept one, so
    /// that all serve the same CA and certificate.
    pub fn share_tls(&self, offer: &SharedTls) -> Result<SharedTls> {
        let key = b"cluster_tls";
        self.meta.transaction(|meta| match meta.get(key)? {
            Some(v) => match decode(key, &v) {
                Ok(kept) => Ok(kept),
                Err(e) => abort(e),
            },
            None => {
                meta.insert(key, encode(offer))?;
                Ok(offer.clone())
            }
        })
    }

    /// Writes this node's record.
    pub fn publish_node(&self, node: &NodeInfo) -> Result<()> {
        self.meta.insert(node_key(&node.id), encode(node))?;
        Ok(())
    }

    /// Every node's record (stale ones included; see `forget_node`).
    pub fn nodes(&self) -> Result<Vec<NodeInfo>> {
        self.meta
            .scan_prefix(NODE_PREFIX)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn forget_node(&self, id: &str) -> Result<()> {
        self.meta.remove(node_key(id))?;
        Ok(())
    }

    /// The lease as stored.
    pub fn node_lease(&self) -> Result<Option<NodeLease>> {
        self.meta.get(LEASE)?.map(|v| decode(LEASE, &v)).transpose()
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing;

    #[test]
    fn one_node_holds_the_lease_until_it_expires_or_is_released() {
        for (_engine, store) in testing::stores() {
            let a = store.hold_lease("a", 60_000).unwrap().unwrap();
            assert_eq!(a.term, 1);
            let renewed = store.hold_lease("a", 60_000).unwrap().unwrap();
            assert_eq!(renewed.term, 1, "renewed");
            assert_eq!(
                store.hold_lease("b", 60_000).unwrap(),
                None,
                "a's lease is live"
            );
            // Expired (a ttl in the past): the next node takes it, next term.
            store.hold_lease("a", -1).unwrap();
            let b = store.hold_lease("b", 60_000).unwrap().unwrap();
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
