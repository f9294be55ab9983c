//! Wake-ups for held polls and streams.
//!
//! A held poll waits on its puppet's key, a log follower on its run's, a job
//! watcher on its job's. Whoever changes the state wakes the key after the
//! change is stored; the waiter then re-reads the store. A waiter registers
//! (enables its `Notified`) before it reads, so a wake-up between its read and
//! its wait is never missed. Keys are typed ([`HubKey`]): a waiter and a
//! waker cannot disagree on how a key is spelt.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// What a waiter waits on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HubKey {
    /// A puppet's held polls (and its puppet waiting for resources).
    Puppet(String),
    /// A run's log followers.
    Run(String),
    /// A job's watchers.
    Job(String),
    /// The event stream's watchers and the notifier.
    Events,
}

impl HubKey {
    pub fn puppet(name: &str) -> Self {
        HubKey::Puppet(name.to_string())
    }

    pub fn run(id: &str) -> Self {
        HubKey::Run(id.to_string())
    }

    pub fn job(id: &str) -> Self {
        HubKey::Job(id.to_string())
    }
}

/// A wake-up that crosses to the other nodes of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    Wake(HubKey),
    Released(String),
}

impl Signal {
    /// As text: a tag, a colon, the name (names hold no NUL, and PostgreSQL
    /// text cannot).
    pub fn encode(&self) -> String {
        match self {
            Signal::Wake(HubKey::Puppet(n)) => format!("p:{n}"),
            Signal::Wake(HubKey::Run(n)) => format!("r:{n}"),
            Signal::Wake(HubKey::Job(n)) => format!("j:{n}"),
            Signal::Wake(HubKey::Events) => "e:".into(),
            Signal::Released(n) => format!("x:{n}"),
        }
    }

    pub fn decode(text: &str) -> Option<Signal> {
        let (tag, name) = text.split_once(':')?;
        let name = name.to_string();
        Some(match tag {
            "p" => Signal::Wake(HubKey::Puppet(name)),
            "r" => Signal::Wake(HubKey::Run(name)),
            "j" => Signal::Wake(HubKey::Job(name)),
            "e" => Signal::Wake(HubKey::Events),
            "x" => Signal::Released(name),
            _ => return None,
        })
    }
}

#[derive(Debug, Default)]
pub struct Hub {
    /// Where wake-ups go to reach the other nodes (a cluster only).
    relay: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<Signal>>,
    // A std mutex: held only to look up or insert an entry, never across an
    // await.
    keys: Mutex<HashMap<HubKey, Arc<Notify>>>,
    /// Puppets with a run waiting for each resource (same kind of lock).
    resource_waiters: Mutex<HashMap<String, std::collections::BTreeSet<String>>>,
}

impl Hub {
    /// The notifier of a key, to wait on.
    pub fn subscribe(&self, key: HubKey) -> Arc<Notify> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.entry(key).or_default().clone()
    }

    /// Wakes every current waiter of a key, on this node and (in a
    /// cluster) on the others.
    pub fn wake(&self, key: HubKey) {
        if let Some(relay) = self.relay.get() {
            let _ = relay.send(Signal::Wake(key.clone()));
        }
        self.wake_here(key);
    }

    /// Sends every later wake-up to the other nodes too, through `relay`.
    pub fn relay_to(&self, relay: tokio::sync::mpsc::UnboundedSender<Signal>) {
        let _ = self.relay.set(relay);
    }

    /// A wake-up from another node: applied here only.
    pub fn heard(&self, signal: Signal) {
        match signal {
            Signal::Wake(key) => self.wake_here(key),
            Signal::Released(resource) => self.release_here(&resource),
        }
    }

    /// Wakes every waiter: wake-ups from other nodes may have been lost
    /// (each waiter re-reads the store and finds what changed).
    pub fn wake_all(&self) {
        let keys: Vec<HubKey> = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for key in keys {
            self.wake_here(key);
        }
        let resources: Vec<String> = self
            .resource_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        for resource in resources {
            self.release_here(&resource);
        }
    }

    fn wake_here(&self, key: HubKey) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(notify) = keys.get(&key) {
            notify.notify_waiters();
            // Nobody else holds it: drop the entry so the map stays small.
            if Arc::strong_count(notify) == 1 {
                keys.remove(&key);
            }
        }
    }
}

impl Hub {
    /// Notes that a run of `puppet` waits for `resource`.
    pub fn wait_for_resource(&self, resource: &str, puppet: &str) {
        self.resource_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(resource.to_string())
            .or_default()
            .insert(puppet.to_string());
    }

    /// Some of `resource` was released: wakes the puppets whose runs wait
    /// for it, so their held polls try again.
    pub fn resource_released(&self, resource: &str) {
        if let Some(relay) = self.relay.get() {
            let _ = relay.send(Signal::Released(resource.to_string()));
        }
        self.release_here(resource);
    }

    fn release_here(&self, resource: &str) {
        let waiters = self
            .resource_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(resource)
            .unwrap_or_default();
        for puppet in waiters {
            self.wake_here(HubKey::Puppet(puppet));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registered_waiter_is_woken() {
        let hub = Hub::default();
        let notify = hub.subscribe(HubKey::job("j"));
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Another kind of key with the same id wakes nobody here.
        hub.wake(HubKey::run("j"));
        assert!(
            futures_util::FutureExt::now_or_never(notified.as_mut()).is_none(),
            "woken by another key"
        );
        hub.wake(HubKey::job("j"));
        tokio::time::timeout(std::time::Duration::from_secs(5), notified)
            .await
            .expect("woken");
    }
}
