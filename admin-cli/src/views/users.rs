//! JSON views of users and of `whoami`.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::role;
use crate::output::rfc3339;

#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    pub created_at: Option<String>,
    /// Tokens of the user that still work.
    pub active_tokens: u32,
}

impl From<&pb::User> for UserView {
    fn from(u: &pb::User) -> Self {
        UserView {
            name: u.name.clone(),
            role: role(u.role),
            created_at: rfc3339(u.created_at.as_ref()),
            active_tokens: u.active_tokens,
        }
    }
}

/// `geppetto whoami -o json`.
#[derive(Debug, Serialize)]
pub struct WhoAmIView {
    pub user: String,
    pub role: String,
    pub token_id: String,
}

impl From<&pb::WhoAmIResponse> for WhoAmIView {
    fn from(w: &pb::WhoAmIResponse) -> Self {
        WhoAmIView {
            user: w.user.clone(),
            role: role(w.role),
            token_id: w.token_id.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn user_and_whoami_json() {
        let user = pb::User {
            name: "alice".into(),
            role: pb::Role::Operator as i32,
            created_at: ts(1_700_000_000),
            active_tokens: 2,
        };
        assert_eq!(
            serde_json::to_value(UserView::from(&user)).unwrap(),
            json!({
                "name": "alice",
                "role": "operator",
                "created_at": "2023-11-14T22:13:20Z",
                "active_tokens": 2,
            })
        );
        assert_eq!(role(pb::Role::Admin as i32), "admin");
        assert_eq!(role(pb::Role::Viewer as i32), "viewer");

        let who = pb::WhoAmIResponse {
            user: "admin".into(),
            role: pb::Role::Admin as i32,
            token_id: "tok-1".into(),
        };
        assert_eq!(
            serde_json::to_value(WhoAmIView::from(&who)).unwrap(),
            json!({"user": "admin", "role": "admin", "token_id": "tok-1"})
        );
    }
}
