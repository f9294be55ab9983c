//! Admin service over notification rules.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::notifications_server::Notifications;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{opt_ts, ts};
use super::error::{ApiError, ApiResult, invalid};
use crate::domain::{Channel, Delivery, Millis, NotificationRule, Role};
use crate::ids::new_id;
use crate::selector::Selector;

#[derive(Debug, Clone)]
pub struct NotificationsApi {
    state: Shared,
}

/// The longest webhook URL, mail address (RFC 5321's path limit), webhook
/// secret and list of event kinds a rule may have.
const MAX_URL: usize = 2048;
const MAX_ADDRESS: usize = 254;
const MAX_SECRET: usize = 256;
const MAX_KINDS: usize = 64;

impl NotificationsApi {
    pub fn new(state: Shared) -> Self {
        NotificationsApi { state }
    }

    /// The rule as `role` may see it: a webhook's full URL (which may hold
    /// credentials) for admins only.
    fn view(&self, rule: &NotificationRule, role: Role) -> ApiResult<pb::NotificationRule> {
        let pending = self
            .state
            .store
            .pending_deliveries()?
            .iter()
            .filter(|d| d.rule_id == rule.id)
            .count() as u64;
        let (channel, has_secret) = match &rule.channel {
            Channel::Email { to } => (pb::notification_rule::Channel::Email(to.clone()), false),
            Channel::Webhook { url, secret } => (
                pb::notification_rule::Channel::Webhook(if role >= Role::Admin {
                    url.clone()
                } else {
                    crate::app::notify::redacted_url(url)
                }),
                secret.is_some(),
            ),
        };
        Ok(pb::NotificationRule {
            id: rule.id.clone(),
            on: rule.on.clone(),
            channel: Some(channel),
            has_secret,
            target: rule.target.clone(),
            created_at: Some(ts(rule.created_at)),
            delivered: rule.delivered,
            failed: rule.failed,
            pending,
            last_error: rule
                .last_error
                .as_ref()
                .map(|(_, e)| e.clone())
                .unwrap_or_default(),
            last_error_at: opt_ts(rule.last_error.as_ref().map(|(at, _)| *at)),
        })
    }

    fn add(&self, req: pb::AddRuleRequest, role: Role) -> ApiResult<pb::NotificationRule> {
        if req.on.is_empty() {
            return Err(invalid(
                "say which events trigger the rule (e.g. job.failed)",
            ));
        }
        if req.on.len() > MAX_KINDS {
            return Err(invalid(format!(
                "a rule names at most {MAX_KINDS} event kinds, this one {}",
                req.on.len()
            )));
        }
        for kind in &req.on {
            let ok = !kind.is_empty()
                && kind.len() <= 100
                && kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/".contains(c));
            if !ok {
                return Err(invalid(format!(
                    "{:?} is not an event kind (at most 100 of [A-Za-z0-9._/], e.g. job.failed, run.)",
                    super::error::bounded(kind.clone(), 100)
                )));
            }
        }
        if !req.target.is_empty() {
            Selector::parse(&req.target)?;
        }
        let channel = match req.channel {
            Some(pb::add_rule_request::Channel::Email(to)) => {
                if to.len() > MAX_ADDRESS {
                    return Err(invalid(format!(
                        "a mail address is at most {MAX_ADDRESS} bytes"
                    )));
                }
                to.parse::<lettre::Address>()
                    .map_err(|e| invalid(format!("invalid mail address {to:?}: {e}")))?;
                if !req.secret.is_empty() {
                    return Err(invalid("a secret is for webhooks only"));
                }
                Channel::Email { to }
            }
            Some(pb::add_rule_request::Channel::Webhook(url)) => {
                // Never repeated in the answer: it may hold credentials, and
                // the answer goes to the audit trail.
                if url.len() > MAX_URL {
                    return Err(invalid(format!(
                        "a webhook URL is at most {MAX_URL} bytes, this one has {}",
                        url.len()
                    )));
                }
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| invalid(format!("invalid webhook URL: {e}")))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(invalid("invalid webhook URL: use http(s)://host/path"));
                }
                if req.secret.len() > MAX_SECRET {
                    return Err(invalid(format!(
                        "a webhook secret is at most {MAX_SECRET} bytes"
                    )));
                }
                Channel::Webhook {
                    url,
                    secret: (!req.secret.is_empty()).then_some(req.secret),
                }
            }
            None => return Err(invalid("give an email address or a webhook URL")),
        };
        let rule = NotificationRule {
            id: new_id("ntf"),
            on: req.on,
            channel,
            target: req.target.trim().to_string(),
            created_at: Millis::now(),
            delivered: 0,
            failed: 0,
            last_error: None,
        };
        self.state.store.add_rule(&rule)?;
        self.view(&rule, role)
    }
}

#[tonic::async_trait]
impl Notifications for NotificationsApi {
    async fn add_rule(
        &self,
        request: Request<pb::AddRuleRequest>,
    ) -> Result<Response<pb::NotificationRule>, Status> {
        self.state
            .mutation(request, "Notifications/AddRule", |req| req.on.join(","))
            .run_noting(
                |caller, req| async move { self.add(req, caller.role) },
                |rule, audit| audit.target(rule.id.clone()),
            )
            .await
            .map(Response::new)
    }

    async fn list_rules(
        &self,
        request: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let caller = self.state.authorize(&request, "Notifications/ListRules")?;
        let rules = self
            .state
            .store
            .list_rules()
            .map_err(ApiError::from)?
            .iter()
            .map(|r| self.view(r, caller.role))
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListRulesResponse { rules }))
    }

    async fn remove_rule(
        &self,
        request: Request<pb::RemoveRuleRequest>,
    ) -> Result<Response<pb::RemoveRuleResponse>, Status> {
        self.state
            .mutation(request, "Notifications/RemoveRule", |req| req.id.clone())
            .run(|_, req| async move {
                super::convert::id_of_kind("ntf", &req.id)?;
                self.state.store.remove_rule(&req.id)?;
                Ok(pb::RemoveRuleResponse {})
            })
            .await
            .map(Response::new)
    }

    async fn test_rule(
        &self,
        request: Request<pb::RemoveRuleRequest>,
    ) -> Result<Response<pb::NotificationRule>, Status> {
        self.state
            .mutation(request, "Notifications/TestRule", |req| req.id.clone())
            .run(|caller, req| async move {
                let id = req.id;
                super::convert::id_of_kind("ntf", &id)?;
                let rule = self.state.store.get_rule(&id)?;
                let now = Millis::now();
                let event = super::events::event(
                    "notification.test",
                    caller.user.clone(),
                    format!("a test of notification rule {id} by {}", caller.user),
                );
                let delivery = Delivery {
                    id: new_id("dlv"),
                    rule_id: rule.id.clone(),
                    event,
                    created_at: now,
                    attempts: 0,
                    next_at: now,
                    last_error: None,
                    claim: None,
                };
                self.state.store.queue_delivery(&delivery)?;
                self.state.hub.wake(super::events::EVENTS_KEY);
                self.view(&rule, caller.role)
            })
            .await
            .map(Response::new)
    }
}
