//! JSON views of enroll tokens, and of a new one with its secret.

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::{expired, sorted};
use crate::output::rfc3339;

#[derive(Debug, Serialize)]
pub struct EnrollTokenView {
    pub id: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// `null` when the token has no use limit.
    pub uses_left: Option<u32>,
    pub unlimited: bool,
    pub used: u32,
    pub created_at: Option<String>,
    /// `null` when it never expires.
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// Puppets enrolling with it are enabled at once (otherwise: pending).
    pub auto_approve: bool,
    /// `active`, `revoked`, `expired` or `used_up`.
    pub status: String,
}

impl From<&pb::EnrollToken> for EnrollTokenView {
    fn from(t: &pb::EnrollToken) -> Self {
        EnrollTokenView {
            id: t.id.clone(),
            description: t.description.clone(),
            labels: sorted(&t.labels),
            uses_left: (!t.unlimited).then_some(t.uses_left),
            unlimited: t.unlimited,
            used: t.used,
            created_at: rfc3339(t.created_at.as_ref()),
            expires_at: rfc3339(t.expires_at.as_ref()),
            revoked: t.revoked,
            auto_approve: t.auto_approve,
            status: token_status(t).into(),
        }
    }
}

fn token_status(t: &pb::EnrollToken) -> &'static str {
    let expired = expired(t.expires_at.as_ref());
    if t.revoked {
        "revoked"
    } else if expired {
        "expired"
    } else if !t.unlimited && t.uses_left == 0 {
        "used_up"
    } else {
        "active"
    }
}

/// `enroll-tokens create -o json`: the token and its secret.
#[derive(Debug, Serialize)]
pub struct CreatedTokenView {
    #[serde(flatten)]
    pub token: EnrollTokenView,
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enroll_token_json() {
        let token = pb::EnrollToken {
            id: "enr-1".into(),
            unlimited: true,
            ..Default::default()
        };
        let created = CreatedTokenView {
            token: EnrollTokenView::from(&token),
            secret: "s".into(),
        };
        let value = serde_json::to_value(created).unwrap();
        assert_eq!(value["id"], "enr-1");
        assert_eq!(value["secret"], "s");
        assert_eq!(value["uses_left"], serde_json::Value::Null);
        assert_eq!(value["status"], "active");
        assert_eq!(value["auto_approve"], false);
    }
}
