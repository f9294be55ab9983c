//! Keeping this node's lease on a shared database (see `store/cluster.rs`):
//! taken at start, renewed every [`RENEW_EVERY`], given up at a clean
//! stop. A node that finds the lease taken by another stops serving.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoreError};

/// How long a lease lasts without renewal: a node that died is replaced
/// after at most this long.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often the holder renews: several renewals fit in one lease, so a
/// slow database or a lost round trip does not lose it.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// A node id: random, new at every start.
pub fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn ttl_ms() -> i64 {
    LEASE_TTL.as_millis() as i64
}

/// Takes the lease at start. A lease left by a node that died (a crash,
/// `kill -9`) expires within [`LEASE_TTL`]: it is waited for, a little
/// longer than that. A lease still renewed after the wait belongs to a
/// live node: refused.
pub fn take(store: &Store, node: &str) -> Result<(), StoreError> {
    let deadline = std::time::Instant::now() + LEASE_TTL + RENEW_EVERY;
    let mut told = false;
    loop {
        match store.hold_lease(node, ttl_ms()) {
            Ok(lease) => {
                tracing::info!(node, term = lease.term, "holding the database's lease");
                return Ok(());
            }
            Err(StoreError::Conflict(why)) if std::time::Instant::now() < deadline => {
                if !told {
                    tracing::warn!("waiting for the database's lease: {why}");
                    told = true;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Renews the lease until `shutdown`, then gives it up. Cancels `stop`
/// (the server's shutdown) if another node took the lease.
pub async fn keep(
    store: Store,
    node: String,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let (renewing, id) = (store.clone(), node.clone());
        let renewed = crate::app::blocking(move || renewing.hold_lease(&id, ttl_ms())).await;
        match renewed {
            Ok(_) => {}
            Err(StoreError::Conflict(why)) => {
                tracing::error!(node, "lost the database's lease; stopping: {why}");
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(node, error = %e, "cannot renew the database's lease yet"),
        }
    }
    let releasing = store.clone();
    if let Err(e) = crate::app::blocking(move || releasing.release_lease(&node)).await {
        tracing::warn!(error = %e, "cannot give the database's lease up; it expires by itself");
    }
}
