//! JSON view of a notification rule and of how its deliveries went.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use crate::output::rfc3339;

/// A notification rule: on which events, sent where, and how its deliveries
/// went. Its webhook secret is never in it (the API does not return it).
#[derive(Debug, Serialize)]
pub struct NotificationRuleView {
    pub id: String,
    /// Event kinds: exact (`job.failed`) or prefixes ending in `.` (`run.`).
    pub on: Vec<String>,
    /// The mail address, `null` for a webhook.
    pub email: Option<String>,
    /// The webhook URL, `null` for an email.
    pub webhook: Option<String>,
    /// Whether webhook bodies are signed.
    pub has_secret: bool,
    /// Label selector of the puppets whose events count; `""` for all.
    pub target: String,
    pub created_at: Option<String>,
    pub delivered: u64,
    pub pending: u64,
    pub failed: u64,
    /// `null` when no delivery failed yet.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl From<&pb::NotificationRule> for NotificationRuleView {
    fn from(r: &pb::NotificationRule) -> Self {
        let (email, webhook) = match &r.channel {
            Some(pb::notification_rule::Channel::Email(a)) => (Some(a.clone()), None),
            Some(pb::notification_rule::Channel::Webhook(u)) => (None, Some(u.clone())),
            None => (None, None),
        };
        NotificationRuleView {
            id: r.id.clone(),
            on: r.on.clone(),
            email,
            webhook,
            has_secret: r.has_secret,
            target: r.target.clone(),
            created_at: rfc3339(r.created_at.as_ref()),
            delivered: r.delivered,
            pending: r.pending,
            failed: r.failed,
            last_error: (!r.last_error.is_empty()).then(|| r.last_error.clone()),
            last_error_at: rfc3339(r.last_error_at.as_ref()),
        }
    }
}

impl NotificationRuleView {
    /// Where it sends, in one cell: the address or the URL, `(signed)` when
    /// webhook bodies are signed.
    pub fn to_line(&self) -> String {
        let to = match (&self.email, &self.webhook) {
            (Some(a), _) => a.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => "-".into(),
        };
        if self.has_secret {
            format!("{to} (signed)")
        } else {
            to
        }
    }

    pub fn on_line(&self) -> String {
        if self.on.is_empty() {
            "-".into()
        } else {
            self.on.join(",")
        }
    }

    pub fn target_line(&self) -> String {
        if self.target.is_empty() {
            "all".into()
        } else {
            self.target.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn notification_rule_json() {
        let rule = pb::NotificationRule {
            id: "ntf-1".into(),
            on: vec!["job.failed".into(), "run.".into()],
            channel: Some(pb::notification_rule::Channel::Webhook(
                "https://hooks.example/gp".into(),
            )),
            has_secret: true,
            target: "site=lyon".into(),
            created_at: ts(1_700_000_000),
            delivered: 3,
            failed: 1,
            pending: 2,
            last_error: "HTTP 500".into(),
            last_error_at: ts(1_700_000_060),
        };
        let view = NotificationRuleView::from(&rule);
        assert_eq!(view.to_line(), "https://hooks.example/gp (signed)");
        assert_eq!(view.on_line(), "job.failed,run.");
        assert_eq!(view.target_line(), "site=lyon");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "id": "ntf-1",
                "on": ["job.failed", "run."],
                "email": null,
                "webhook": "https://hooks.example/gp",
                "has_secret": true,
                "target": "site=lyon",
                "created_at": "2023-11-14T22:13:20Z",
                "delivered": 3,
                "pending": 2,
                "failed": 1,
                "last_error": "HTTP 500",
                "last_error_at": "2023-11-14T22:14:20Z",
            })
        );

        let mail = NotificationRuleView::from(&pb::NotificationRule {
            id: "ntf-2".into(),
            on: vec!["puppet.offline".into()],
            channel: Some(pb::notification_rule::Channel::Email(
                "ops@example.org".into(),
            )),
            ..Default::default()
        });
        assert_eq!(mail.to_line(), "ops@example.org");
        assert_eq!(mail.target_line(), "all");
        let value = serde_json::to_value(&mail).unwrap();
        assert_eq!(value["email"], "ops@example.org");
        assert_eq!(value["webhook"], serde_json::Value::Null);
        assert_eq!(value["last_error"], serde_json::Value::Null);
        assert!(value.get("secret").is_none());
    }
}
