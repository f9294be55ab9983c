//! Announcing events: appended to the stream and its watchers woken.

use super::AppState;
use crate::domain::{Event, Millis};
use crate::hub::HubKey;

/// The hub key woken whenever events are appended.
pub const EVENTS_KEY: HubKey = HubKey::Events;

impl AppState {
    /// Appends events announced by the api layer and wakes the watchers.
    pub fn announce(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        match self.store.append_events(events) {
            Ok(_) => self.hub.wake(EVENTS_KEY),
            Err(e) => tracing::error!(error = %e, "cannot append to the event stream"),
        }
    }
}

/// A new event with the common fields set.
pub fn event(
    kind: impl Into<String>,
    actor: impl Into<String>,
    summary: impl Into<String>,
) -> Event {
    Event {
        at: Millis::now(),
        kind: kind.into(),
        actor: actor.into(),
        summary: summary.into(),
        ..Event::default()
    }
}
