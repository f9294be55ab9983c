//! Puppets, their enrollment tokens and credentials, and groups of them.

use serde::{Deserialize, Serialize};

use super::{Labels, Millis};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PuppetState {
    Pending,
    Enabled,
    Disabled,
}

/// What a puppet reported about its machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub os_id: String,
    pub kernel: String,
    pub arch: String,
    pub memory_total_bytes: u64,
    pub disk_total_bytes: u64,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub load: Vec<f64>,
    pub memory_available_bytes: u64,
    pub disk_available_bytes: u64,
    pub boot_id: String,
    pub collected_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Puppet {
    pub name: String,
    pub state: PuppetState,
    pub enrolled_at: Millis,
    pub last_seen: Option<Millis>,
    /// Labels the puppet declared for itself.
    pub declared_labels: Labels,
    /// Labels from its enrollment token and from operators; they win.
    pub assigned_labels: Labels,
    pub facts: Facts,
    pub enroll_token_id: String,
    /// Hash of its credential, to revoke it on removal.
    pub credential_hash: String,
    /// A rotated credential not yet picked up by the puppet.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// The previous credential, valid until the time given.
    #[serde(default)]
    pub old_credential: Option<(String, Millis)>,
    /// Its credential was revoked: it is cut off.
    #[serde(default)]
    pub revoked: bool,
    /// The presence last announced in the event stream ("online", "offline").
    #[serde(default)]
    pub reported_presence: Option<String>,
    /// What it offers its site's peers, if it serves its artifact cache.
    #[serde(default)]
    pub peer: Option<PeerOffer>,
}

/// How a puppet serving its artifact cache is reached and trusted (see
/// `peers.rs`). The ticket key is a secret: never shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerOffer {
    pub address: String,
    pub cert_sha256: String,
    pub ticket_key: Vec<u8>,
}

impl std::fmt::Debug for PeerOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerOffer")
            .field("address", &self.address)
            .field("cert_sha256", &self.cert_sha256)
            .finish_non_exhaustive()
    }
}

impl Puppet {
    /// Its site: the value of its `site` label, if any.
    pub fn site(&self) -> Option<String> {
        self.labels().remove("site").filter(|s| !s.is_empty())
    }

    /// Declared labels overridden by assigned ones.
    pub fn labels(&self) -> Labels {
        let mut labels = self.declared_labels.clone();
        labels.extend(self.assigned_labels.clone());
        labels
    }
}

/// A puppet credential being replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new credential, kept until the puppet authenticates with it: it
    /// is sent to the puppet in poll answers until then.
    pub new_secret: String,
    pub new_hash: String,
    /// The old credential stops working then.
    pub old_expires_at: Millis,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    pub id: String,
    pub description: String,
    pub labels: Labels,
    /// `None`: unlimited.
    pub uses_left: Option<u32>,
    pub used: u32,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked: bool,
    pub secret_hash: String,
    /// Puppets enrolling with it are enabled at once, not pending.
    #[serde(default)]
    pub auto_approve: bool,
}

impl EnrollToken {
    /// Why the token cannot be used now, if it cannot.
    pub fn unusable(&self, now: Millis) -> Option<&'static str> {
        if self.revoked {
            Some("the enrollment token was revoked")
        } else if self.expires_at.is_some_and(|e| now >= e) {
            Some("the enrollment token has expired")
        } else if self.uses_left == Some(0) {
            Some("the enrollment token has no uses left")
        } else {
            None
        }
    }
}

/// A named set of puppets: a saved selector or an explicit list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub selector: Option<String>,
    pub puppets: Vec<String>,
    pub description: String,
    pub created_at: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_labels_win() {
        let puppet = Puppet {
            peer: None,
            name: "p".into(),
            state: PuppetState::Enabled,
            enrolled_at: Millis(0),
            last_seen: None,
            declared_labels: [
                ("env".into(), "prod".into()),
                ("os".into(), "debian".into()),
            ]
            .into(),
            assigned_labels: [("env".into(), "test".into())].into(),
            facts: Facts::default(),
            enroll_token_id: "enr-x".into(),
            credential_hash: String::new(),
            rotation: None,
            old_credential: None,
            revoked: false,
            reported_presence: None,
        };
        let labels = puppet.labels();
        assert_eq!(labels["env"], "test");
        assert_eq!(labels["os"], "debian");
    }
}
