//! JSON view of an entry of the audit log.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use crate::output::rfc3339;

#[derive(Debug, Serialize)]
pub struct AuditEntryView {
    pub seq: u64,
    pub at: Option<String>,
    /// The user, `puppet:NAME` for a puppet, or `-` when unauthenticated.
    pub actor: String,
    /// The call, e.g. `Tasks/CreateTask`.
    pub action: String,
    pub target: String,
    pub remote_addr: String,
    /// `ok`, or the status code name of the refusal (`PermissionDenied`).
    pub outcome: String,
    /// The error message of a refusal; empty otherwise.
    pub message: String,
}

impl From<&pb::AuditEntry> for AuditEntryView {
    fn from(e: &pb::AuditEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            at: rfc3339(e.at.as_ref()),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            remote_addr: e.remote_addr.clone(),
            outcome: e.outcome.clone(),
            message: e.message.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn audit_entry_json() {
        let entry = pb::AuditEntry {
            seq: 7,
            at: ts(1_700_000_000),
            actor: "alice".into(),
            action: "Users/AddUser".into(),
            target: "bob".into(),
            remote_addr: "10.0.0.5:51234".into(),
            outcome: "PermissionDenied".into(),
            message: "admins only".into(),
        };
        assert_eq!(
            serde_json::to_value(AuditEntryView::from(&entry)).unwrap(),
            json!({
                "seq": 7,
                "at": "2023-11-14T22:13:20Z",
                "actor": "alice",
                "action": "Users/AddUser",
                "target": "bob",
                "remote_addr": "10.0.0.5:51234",
                "outcome": "PermissionDenied",
                "message": "admins only",
            })
        );
    }
}
