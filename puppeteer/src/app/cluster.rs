//! Several puppeteers on one shared database (PostgreSQL): what each node
//! does so that they act as one.
//!
//! - **Leadership.** Work that must run once (the sweeper: leases,
//!   presence, gates; the notifier; retention) runs on one node, the
//!   leader, elected through a lease row (`store/cluster.rs`): renewed
//!   every [`RENEW_EVERY`], lasting [`LEASE_TTL`], its term increasing at
//!   each change of holder. A leader that cannot renew for
//!   `LEASE_TTL - 2 × RENEW_EVERY` steps down before its lease can expire,
//!   so two nodes lead at once only if one is paused for longer than that
//!   (then every change either makes is still one serializable
//!   transaction, checked against the state it read). Another node takes
//!   over within `LEASE_TTL + RENEW_EVERY` of a leader's death, at once
//!   after a clean stop (the lease is given up).
//! - **Wake-ups.** A node that changes state wakes its own waiters and sends
//!   the wake-up to the others through the database (`LISTEN/NOTIFY`,
//!   batched: whatever queued while the last batch was sent goes in one
//!   statement). They are hints: a waiter re-reads the store. A node whose
//!   listening connection broke wakes all its waiters once it listens again,
//!   since wake-ups sent meanwhile are lost; held polls also end at their
//!   hold, so nothing waits forever for a lost hint.
//! - **Presence.** A puppet's signs of life reach only the node it talks
//!   to. Every [`SHARE_EVERY`], each node writes the time of the puppets it
//!   heard since its last share, and of those whose poll it holds, to the
//!   shared `seen` record, and reads the others' back into its own
//!   [`crate::presence::Presences`] as signs heard that long ago. A puppet
//!   is therefore never silent on the leader for more than about two shares
//!   more than it is silent, far below the thresholds (late after 65 s, runs
//!   lost after 110 s at the defaults). The times are wall-clock: the
//!   nodes' clocks must agree within a few seconds (NTP).
//!
//! On sled (one process) none of this runs: the node always leads.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::Millis;
use crate::hub::Signal;
use crate::store::{Heard, NodeInfo, Store, StoreError};

use super::{Shared, blocking};

/// How long a leader's lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// How often the leader renews, and the others try to take over.
pub const RENEW_EVERY: Duration = Duration::from_secs(3);

/// How often a node shares the signs of life it heard.
pub const SHARE_EVERY: Duration = Duration::from_secs(5);

/// A node silent this long is gone: its record is removed.
pub const NODE_GONE: Duration = Duration::from_secs(60);

/// How often a node drops its copies of content removed through another.
pub const TIDY_EVERY: Duration = Duration::from_secs(600);

/// Wake-ups sent to the other nodes in one statement at most.
const RELAY_BATCH: usize = 500;

/// This node, as the cluster sees it.
#[derive(Debug)]
pub struct Node {
    /// Random, new at every start.
    pub id: String,
    /// The address it listens on (shown to operators).
    pub listen: String,
    pub started: Millis,
    /// Nodes of the cluster alive as last seen (this one included).
    live: std::sync::atomic::AtomicUsize,
    leading: watch::Receiver<bool>,
    /// Alone, the sender of `leading`, kept so that the channel stays
    /// open (waiting on a closed one returns at once).
    _alone: Option<watch::Sender<bool>>,
}

impl Node {
    /// A node alone on its store: it leads.
    pub fn alone() -> Self {
        let (alone, leading) = watch::channel(true);
        Node {
            id: new_node_id(),
            listen: String::new(),
            started: Millis::now(),
            live: std::sync::atomic::AtomicUsize::new(1),
            leading,
            _alone: Some(alone),
        }
    }

    /// A node of a cluster, leading while `leading` says so.
    pub fn member(id: String, listen: String, leading: watch::Receiver<bool>) -> Self {
        Node {
            id,
            listen,
            started: Millis::now(),
            live: std::sync::atomic::AtomicUsize::new(1),
            leading,
            _alone: None,
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// The node whose lease a change made by work that runs once checks in
    /// its own transaction (`store::notifications`): this node in a
    /// cluster, none alone (nobody else could be doing it).
    pub fn fence(&self) -> Option<&str> {
        self._alone.is_none().then_some(self.id.as_str())
    }

    /// How many nodes the cluster has alive (1 alone).
    pub fn live_nodes(&self) -> usize {
        self.live.load(std::sync::atomic::Ordering::Relaxed).max(1)
    }
}

impl super::AppState {
    /// The bandwidth budgets of these resources, as this node may spend
    /// them: each node of a cluster paces its transfers at an equal share
    /// (the budget ÷ the nodes alive), so that the link a budget models is
    /// never asked for more than the budget whichever nodes its puppets
    /// reach. (A node whose share goes unused leaves it unused.)
    pub fn bandwidth_budgets<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let nodes = self.node.live_nodes() as u64;
        Ok(self
            .store
            .bandwidth_budgets(names)?
            .into_iter()
            .map(|(name, rate)| (name, (rate / nodes).max(1)))
            .collect())
    }
}

pub fn new_node_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn ttl_ms() -> i64 {
    LEASE_TTL.as_millis() as i64
}

/// Tries for the leader's lease every [`RENEW_EVERY`] until `shutdown`,
/// telling `leading`; gives the lease up at the end.
pub async fn elect(
    store: Store,
    node: String,
    leading: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let mut last_renewal: Option<tokio::time::Instant> = None;
    let step_down_after = LEASE_TTL - 2 * RENEW_EVERY;
    loop {
        let (trying, id) = (store.clone(), node.clone());
        match blocking(move || trying.hold_lease(&id, ttl_ms())).await {
            Ok(Some(lease)) => {
                if !*leading.borrow() {
                    tracing::info!(node, term = lease.term, "leading the cluster");
                }
                last_renewal = Some(tokio::time::Instant::now());
                leading.send_replace(true);
            }
            Ok(None) => {
                if *leading.borrow() {
                    tracing::warn!(node, "another node leads now");
                }
                leading.send_replace(false);
            }
            Err(e) => {
                tracing::warn!(node, error = %e, "cannot renew or take the leader's lease");
                if last_renewal.is_none_or(|at| at.elapsed() >= step_down_after) {
                    if *leading.borrow() {
                        tracing::warn!(
                            node,
                            "stepping down: the lease could not be renewed in time"
                        );
                    }
                    leading.send_replace(false);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(RENEW_EVERY) => {}
        }
    }
    leading.send_replace(false);
    let releasing = store.clone();
    if let Err(e) = blocking(move || releasing.release_lease(&node)).await {
        tracing::warn!(error = %e, "cannot give the leader's lease up; it expires by itself");
    }
}

/// Runs `work` while this node leads, until `shutdown`: started when it
/// becomes the leader, cancelled when it stops being one.
pub async fn while_leading<F, Fut>(state: Shared, shutdown: CancellationToken, work: F)
where
    F: Fn(Shared, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut leading = state.node.leading.clone();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ok = leading.wait_for(|l| *l) => if ok.is_err() { return },
        }
        let stop = shutdown.child_token();
        let task = tokio::spawn(work(state.clone(), stop.clone()));
        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = leading.wait_for(|l| !*l) => {}
        }
        stop.cancel();
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(error = %e, "a background task panicked");
        }
    }
}

/// Sends this node's wake-ups to the others and applies theirs, until
/// `shutdown` (see the module doc).
pub fn relay(state: &Shared, shutdown: CancellationToken) {
    let Some(mut heard) = state.store.listen() else {
        return;
    };
    let (tx, mut outgoing) = tokio::sync::mpsc::unbounded_channel::<Signal>();
    state.hub.relay_to(tx);
    let sending = state.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let first = tokio::select! {
                () = stop.cancelled() => return,
                s = outgoing.recv() => match s { Some(s) => s, None => return },
            };
            let mut batch = vec![first];
            while batch.len() < RELAY_BATCH {
                match outgoing.try_recv() {
                    Ok(s) => batch.push(s),
                    Err(_) => break,
                }
            }
            batch.sort_by_key(Signal::encode);
            batch.dedup();
            let prefix = format!("{}|", sending.node.id);
            let messages: Vec<String> = batch
                .iter()
                .map(|s| format!("{prefix}{}", s.encode()))
                .collect();
            let store = sending.store.clone();
            if let Err(e) = blocking(move || store.broadcast(&messages)).await {
                tracing::warn!(error = %e, "cannot send wake-ups to the other nodes");
            }
        }
    });
    let receiving = state.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                m = heard.recv() => match m { Some(m) => m, None => return },
            };
            match message {
                Heard::Message(text) => {
                    let Some((node, signal)) = text.split_once('|') else {
                        continue;
                    };
                    if node == receiving.node.id {
                        continue;
                    }
                    if let Some(signal) = Signal::decode(signal) {
                        receiving.hub.heard(signal);
                    }
                }
                Heard::Missed => receiving.hub.wake_all(),
            }
        }
    });
}

/// Shares the signs of life this node heard and takes the others', every
/// [`SHARE_EVERY`], until `shutdown` (see the module doc).
pub async fn share_presence(state: Shared, shutdown: CancellationToken) {
    if !state.store.is_shared() {
        return;
    }
    let mut last_share = state.presences.clock().now();
    let mut imported: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(SHARE_EVERY) => {}
        }
        let now = state.presences.clock().now();
        let names = state.presences.heard_since(last_share);
        last_share = now;
        let me = NodeInfo {
            id: state.node.id.clone(),
            listen: state.node.listen.clone(),
            started_ms: state.node.started.0,
            seen_ms: Millis::now().0,
            held: state.presences.held_here(),
        };
        let store = state.store.clone();
        let leader = state.node.is_leader();
        let shared = blocking(move || -> Result<_, StoreError> {
            store.touch_puppets(&names, Millis::now())?;
            store.publish_node(&me)?;
            let mut remote = HashSet::new();
            let mut live = 1;
            for node in store.nodes()? {
                let age = Millis::now().0 - node.seen_ms;
                if age > NODE_GONE.as_millis() as i64 {
                    // Gone (killed, stopped): its record goes, by the leader.
                    if leader {
                        store.forget_node(&node.id)?;
                    }
                } else if node.id != me.id && age <= 3 * SHARE_EVERY.as_millis() as i64 {
                    remote.extend(node.held);
                    live += 1;
                }
            }
            Ok((store.last_polls()?, remote, live))
        })
        .await;
        let sightings = match shared {
            Ok((sightings, remote, live)) => {
                state.presences.set_remote_held(remote);
                state
                    .node
                    .live
                    .store(live, std::sync::atomic::Ordering::Relaxed);
                sightings
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot share presence with the other nodes");
                continue;
            }
        };
        let wall = Millis::now().0;
        for (name, at) in sightings {
            if imported.get(&name) == Some(&at) {
                continue;
            }
            let ago = Duration::from_millis(wall.saturating_sub(at).max(0) as u64);
            state.presences.heard_ago(&name, ago);
            imported.insert(name, at);
        }
    }
}

/// Drops this node's copies of removed content every [`TIDY_EVERY`],
/// until `shutdown` (see `app/content.rs`). Nothing to do alone.
pub async fn tidy_copies(state: Shared, shutdown: CancellationToken) {
    if !state.store.is_shared() {
        return;
    }
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TIDY_EVERY) => {}
        }
        let tidying = state.clone();
        match blocking(move || tidying.drop_removed_copies(TIDY_EVERY)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                copies = n,
                "dropped this node's copies of removed artifact content"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot drop copies of removed artifact content"),
        }
    }
}
