//! Notification rules and the deliveries they owe.

use serde::{Deserialize, Serialize};

use super::{Event, Millis};

/// Where a notification goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email { to: String },
    Webhook { url: String, secret: Option<String> },
}

/// A rule: events of these kinds, about these puppets, go to a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRule {
    pub id: String,
    pub on: Vec<String>,
    pub channel: Channel,
    pub target: String,
    pub created_at: Millis,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub last_error: Option<(Millis, String)>,
}

impl NotificationRule {
    /// Whether an event's kind is one the rule is on.
    pub fn wants(&self, kind: &str) -> bool {
        self.on.iter().any(|k| {
            if k.ends_with('.') {
                kind.starts_with(k.as_str())
            } else {
                kind == k
            }
        })
    }
}

/// A notification owed: stored before it is attempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub rule_id: String,
    pub event: Event,
    pub created_at: Millis,
    pub attempts: u32,
    pub next_at: Millis,
    pub last_error: Option<String>,
    /// Who is attempting it now, if anyone (see `store::notifications`).
    #[serde(default)]
    pub claim: Option<DeliveryClaim>,
}

/// A node's claim on a delivery while it attempts it: the node, its term
/// as leader, and until when (the database's clock, ms since the epoch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryClaim {
    pub node: String,
    pub term: u64,
    pub until_ms: i64,
    /// Random: tells two claims of the same node apart.
    pub nonce: u64,
}
