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

#[derive(Debug, Default)]
pub struct Hub {
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

    /// Wakes every current waiter of a key.
    pub fn wake(&self, key: HubKey) {
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
        let waiters = self
            .resource_waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(resource)
            .unwrap_or_default();
        for puppet in waiters {
            self.wake(HubKey::Puppet(puppet));
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
