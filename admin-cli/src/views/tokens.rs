//! JSON views of operators' API tokens, and of a new one with its secret.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::expired;
use crate::output::rfc3339;

/// An operator's API token, without its secret.
#[derive(Debug, Serialize)]
pub struct ApiTokenView {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_at: Option<String>,
    /// `null` when it never expires.
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// `active`, `revoked` or `expired`.
    pub status: String,
}

impl From<&pb::ApiToken> for ApiTokenView {
    fn from(t: &pb::ApiToken) -> Self {
        let status = if t.revoked {
            "revoked"
        } else if expired(t.expires_at.as_ref()) {
            "expired"
        } else {
            "active"
        };
        ApiTokenView {
            id: t.id.clone(),
            user: t.user.clone(),
            name: t.name.clone(),
            created_at: rfc3339(t.created_at.as_ref()),
            expires_at: rfc3339(t.expires_at.as_ref()),
            revoked: t.revoked,
            status: status.into(),
        }
    }
}

/// `tokens create -o json`: the token and its secret.
#[derive(Debug, Serialize)]
pub struct CreatedApiTokenView {
    #[serde(flatten)]
    pub token: ApiTokenView,
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn api_token_json() {
        let token = pb::ApiToken {
            id: "tok-1".into(),
            user: "alice".into(),
            name: "laptop".into(),
            created_at: ts(1_700_000_000),
            expires_at: ts(1_700_000_100),
            revoked: false,
        };
        let created = CreatedApiTokenView {
            token: ApiTokenView::from(&token),
            secret: "s3cret".into(),
        };
        assert_eq!(
            serde_json::to_value(created).unwrap(),
            json!({
                "id": "tok-1",
                "user": "alice",
                "name": "laptop",
                "created_at": "2023-11-14T22:13:20Z",
                "expires_at": "2023-11-14T22:15:00Z",
                "revoked": false,
                "status": "expired",
                "secret": "s3cret",
            })
        );
        let revoked = pb::ApiToken {
            revoked: true,
            expires_at: None,
            ..token
        };
        let value = serde_json::to_value(ApiTokenView::from(&revoked)).unwrap();
        assert_eq!(value["status"], "revoked");
        assert_eq!(value["expires_at"], serde_json::Value::Null);
    }
}
