//! Notifications: the puppeteer's own tasks of telling people.
//!
//! The notifier follows the event stream from its cursor. For each event,
//! every rule that wants it gets a delivery, stored together with the
//! cursor's move (see `store::notifications`). Deliveries are then attempted
//! (mail through the configured SMTP relay, or a signed JSON POST), retried
//! with exponential backoff, and given up after `give_up`; a give-up is
//! counted on the rule and announced as a `notification.failed` event.
//!
//! Each (event, rule) makes exactly one delivery, with a stable id (mail
//! Message-ID, webhook header `X-Geppetto-Delivery`). In a cluster only the
//! leader matches and sends, and each attempt is made under a claim checked
//! against the leader's lease (see `store::notifications`): a node deposed
//! or paused mid-attempt cannot record it, and another node sends it again
//! only once the claim has lapsed. An attempt is cut at [`attempt_limit`],
//! well within its claim ([`CLAIM_MARGIN`] more).
//!
//! A delivery is removed right after the relay or the receiver accepted
//! it, so it goes out twice only if the node sending it dies (or is paused
//! past its claim) in between: the stable id lets a receiver drop such a
//! duplicate.

use std::time::Duration;

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;

use crate::app::Shared;
use crate::domain::{Channel, Delivery, Event, Millis, NotificationRule, RunState};
use crate::selector::Selector;

/// How mail leaves: TLS from the start, STARTTLS, or plain (a local relay).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    #[default]
    Starttls,
    Tls,
    None,
}

/// The SMTP relay. `Debug` shows the password redacted, by its type.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default, deserialize_with = "optional_secret")]
    pub password: Option<SecretString>,
    /// The sender, e.g. "Geppetto <geppetto@example.org>".
    pub from: String,
}

/// Reads a secret from the config file as a string: secrecy's own `serde`
/// support is a feature the workspace leaves off.
fn optional_secret<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    use serde::Deserialize;
    Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
}

/// Settings of the notifier.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub smtp: Option<SmtpConfig>,
    /// A delivery still failing this long after its event is given up.
    pub give_up: Duration,
    /// The first retry waits this long; each next one twice as long (capped).
    pub retry_base: Duration,
    pub webhook_timeout: Duration,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            smtp: None,
            give_up: Duration::from_secs(24 * 3600),
            retry_base: Duration::from_secs(10),
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

const RETRY_CAP: Duration = Duration::from_secs(600);

/// A claim on a delivery lasts this much longer than its attempt may.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(10);

/// How long one attempt may take before it is cut: twice the webhook
/// timeout (the request, then the response's body) for a webhook, a minute
/// for mail (each SMTP exchange is bounded at 30 s by the client).
pub fn attempt_limit(config: &NotifyConfig, channel: &Channel) -> Duration {
    match channel {
        Channel::Webhook { .. } => config.webhook_timeout.saturating_mul(2),
        Channel::Email { .. } => Duration::from_secs(60),
    }
}
const BATCH: usize = 500;

/// The JSON body of a webhook (schema `geppetto.notification/v1`).
#[derive(Serialize)]
struct WebhookBody<'a> {
    schema: &'static str,
    delivery_id: &'a str,
    rule_id: &'a str,
    event: WebhookEvent<'a>,
}

#[derive(Serialize)]
struct WebhookEvent<'a> {
    id: u64,
    at_unix_ms: i64,
    kind: &'a str,
    job_id: &'a str,
    run_id: &'a str,
    puppet: &'a str,
    resource: &'a str,
    actor: &'a str,
    summary: &'a str,
}

/// The HMAC-SHA256 signature of a body, as sent in `X-Geppetto-Signature`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Runs the notifier until `shutdown`.
pub async fn run_notifier(state: Shared, shutdown: tokio_util::sync::CancellationToken) {
    let notify = state.hub.subscribe(super::events::EVENTS_KEY);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Err(e) = match_events(&state) {
            tracing::error!(error = %e, "notifier cannot read the event stream");
        }
        deliver_due(&state).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = &mut notified => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn rule_matches(state: &super::AppState, rule: &NotificationRule, e: &Event) -> bool {
    if !rule.wants(&e.kind) {
        return false;
    }
    if rule.target.is_empty() || e.puppet.is_empty() {
        return true;
    }
    let Ok(selector) = Selector::parse(&rule.target) else {
        return false;
    };
    state
        .store
        .get_puppet(&e.puppet)
        .is_ok_and(|p| selector.matches(&p.labels()))
}

/// Turns new events into stored deliveries.
fn match_events(state: &super::AppState) -> crate::store::Result<()> {
    let store = &state.store;
    let leader = state.node.fence();
    let read = store.notify_cursor()?;
    let cursor = match read {
        Some(c) => c,
        // First start: nothing from before is owed.
        None => {
            let last = store.last_event_id()?;
            store.queue_deliveries(None, last, &[], leader)?;
            return Ok(());
        }
    };
    let events = store.events_after(cursor, BATCH)?;
    let Some(last) = events.last().map(|e| e.id) else {
        return Ok(());
    };
    let rules = store.list_rules()?;
    let now = Millis::now();
    let mut deliveries = Vec::new();
    for event in &events {
        // The notifier's own failures are not notified again by mail.
        if event.kind == "notification.failed" {
            continue;
        }
        for rule in rules.iter().filter(|r| rule_matches(state, r, event)) {
            deliveries.push(Delivery {
                id: delivery_id(event.id, &rule.id),
                rule_id: rule.id.clone(),
                event: event.clone(),
                created_at: now,
                attempts: 0,
                next_at: now,
                last_error: None,
                claim: None,
            });
        }
    }
    if !store.queue_deliveries(read, last, &deliveries, leader)? {
        tracing::info!("the notifier's cursor moved or this node no longer leads; matching again");
    }
    Ok(())
}

/// The id of the delivery of an event to a rule: the same whoever makes
/// it, so a receiver can tell a duplicate.
pub fn delivery_id(event: u64, rule: &str) -> String {
    format!("dlv-{event}-{rule}")
}

/// Attempts every delivery that is due.
async fn deliver_due(state: &Shared) {
    let now = Millis::now();
    let due = match state.store.pending_deliveries() {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the deliveries owed");
            return;
        }
    };
    for owed in due.into_iter().filter(|d| d.next_at <= now) {
        let rule = state.store.get_rule(&owed.rule_id).ok();
        // A removed rule's deliveries are claimed only to be dropped.
        let limit = rule.as_ref().map_or(Duration::ZERO, |r| {
            attempt_limit(&state.config.notify, &r.channel)
        });
        let hold = (limit + CLAIM_MARGIN).as_millis() as i64;
        let mut delivery = match state
            .store
            .claim_delivery(&owed.id, state.node.fence(), hold)
        {
            Ok(Some(d)) => d,
            // Sent meanwhile, claimed by another node, or not leading.
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(error = %e, delivery = %owed.id, "cannot claim a delivery");
                continue;
            }
        };
        let Some(rule) = rule else {
            // The rule was removed: nothing is owed any more.
            let _ = state.store.delivery_sent(&delivery);
            continue;
        };
        let outcome = match tokio::time::timeout(limit, attempt(state, &rule, &delivery)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            )),
        };
        let now = Millis::now();
        let result = match outcome {
            Ok(()) => {
                tracing::info!(delivery = %delivery.id, rule = %rule.id, kind = %delivery.event.kind, "notification sent");
                state.store.delivery_sent(&delivery)
            }
            Err(error) => {
                delivery.attempts += 1;
                delivery.last_error = Some(error.clone());
                if now.since(delivery.created_at) >= state.config.notify.give_up {
                    tracing::warn!(delivery = %delivery.id, rule = %rule.id, %error, "notification given up");
                    let given_up = state.store.delivery_failed(&delivery, &error, now);
                    if matches!(given_up, Ok(true)) {
                        state.metrics.notification_failed();
                        let mut event = super::events::event(
                            "notification.failed",
                            "puppeteer",
                            format!(
                                "notification {} of rule {} for event {} given up after {} attempts: {error}",
                                delivery.id, rule.id, delivery.event.id, delivery.attempts
                            ),
                        );
                        event.job_id = delivery.event.job_id.clone();
                        state.announce(vec![event]);
                    }
                    given_up
                } else {
                    let backoff = state
                        .config
                        .notify
                        .retry_base
                        .saturating_mul(1 << delivery.attempts.min(16).saturating_sub(1))
                        .min(RETRY_CAP);
                    delivery.next_at = now.plus(backoff);
                    tracing::info!(delivery = %delivery.id, rule = %rule.id, %error, retry_in = ?backoff, "notification failed; will retry");
                    state.store.delivery_retry(&delivery, now)
                }
            }
        };
        match result {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                delivery = %delivery.id,
                "the claim on this delivery lapsed during the attempt (another node may send it again); its outcome is not recorded here"
            ),
            Err(e) => tracing::error!(error = %e, "cannot record a delivery"),
        }
        let _ = state.store.flush().await;
    }
}

async fn attempt(
    state: &Shared,
    rule: &NotificationRule,
    delivery: &Delivery,
) -> Result<(), String> {
    match &rule.channel {
        Channel::Email { to } => send_mail(state, to, delivery).await,
        Channel::Webhook { url, secret } => {
            post_webhook(state, url, secret.as_deref(), rule, delivery).await
        }
    }
}

/// Subject and body of the mail for an event.
pub fn compose(state: &super::AppState, event: &Event) -> (String, String) {
    let job = (!event.job_id.is_empty())
        .then(|| state.store.get_job(&event.job_id).ok())
        .flatten();
    let runs = job
        .as_ref()
        .and_then(|job| state.store.job_runs(&job.id).ok())
        .unwrap_or_default();
    let tail = |run: &crate::domain::Run| {
        let from = run.log_length.saturating_sub(2048);
        let (_, chunk) = state.store.read_log(&run.id, from, 2048).ok()?;
        let text = String::from_utf8_lossy(&chunk.data).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        Some(lines[lines.len().saturating_sub(20)..].join("\n"))
    };
    render(event, job.as_ref().map(|job| (job, runs.as_slice())), &tail)
}

/// Runs listed one per line at most.
const MAIL_RUN_LINES: usize = 20;
/// Runs whose output's end is quoted at most.
const MAIL_OUTPUTS: usize = 3;

/// The mail for an event, from the job and runs it names (pure: `tail`
/// gives the end of a run's output). A run's event (`run.lost`...) is about
/// that run alone: its line and its output, not its job's other runs'.
pub fn render(
    event: &Event,
    job: Option<(&crate::domain::Job, &[crate::domain::Run])>,
    tail: &dyn Fn(&crate::domain::Run) -> Option<String>,
) -> (String, String) {
    let subject = format!("[geppetto] {}: {}", event.kind, first_line(&event.summary));
    let mut body = format!(
        "{}\n\nEvent {} ({}) at {}\n",
        event.summary,
        event.id,
        event.kind,
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_millis(event.at.0.max(0) as u64)
        )
    );
    if !event.puppet.is_empty() {
        body.push_str(&format!("Puppet: {}\n", event.puppet));
    }
    let Some((job, runs)) = job else {
        return (subject, body);
    };
    body.push_str(&format!(
        "Job: {} (task {} v{})\n",
        job.id, job.task_name, job.task_version
    ));
    let shown: Vec<&crate::domain::Run> = if event.run_id.is_empty() {
        runs.iter()
            .filter(|r| r.state.is_terminal() && r.state != RunState::Succeeded)
            .collect()
    } else {
        runs.iter().filter(|r| r.id == event.run_id).collect()
    };
    if !event.run_id.is_empty() {
        if let Some(run) = shown.first() {
            body.push_str(&format!("Run: {}\n", run_line(run)));
        }
    } else if !shown.is_empty() {
        body.push_str(&format!(
            "Runs that did not succeed ({} of {}):\n",
            shown.len(),
            runs.len()
        ));
        for run in shown.iter().take(MAIL_RUN_LINES) {
            body.push_str(&format!("  {}\n", run_line(run)));
        }
        if shown.len() > MAIL_RUN_LINES {
            body.push_str(&format!(
                "  ... and {} more\n",
                shown.len() - MAIL_RUN_LINES
            ));
        }
    }
    for run in shown.iter().filter(|r| r.log_length > 0).take(MAIL_OUTPUTS) {
        if let Some(tail) = tail(run) {
            body.push_str(&format!(
                "\n--- end of the output of {} on {} ---\n{tail}\n",
                run.id, run.puppet
            ));
        }
        body.push_str(&format!("More: geppetto logs {}\n", run.id));
    }
    body.push_str(&format!("\nSee: geppetto jobs show {}\n", job.id));
    (subject, body)
}

/// `web-1: failed, exit 3: exited with 3 (run-...)`: the state, how the
/// process ended, and the cause.
fn run_line(run: &crate::domain::Run) -> String {
    use crate::domain::Outcome;
    let state = run.state.name().replace('_', " ");
    let mut line = format!("{}: {state}", run.puppet);
    match (run.outcome, run.exit_code, run.signal) {
        (Some(Outcome::Exited), Some(code), _) => line.push_str(&format!(", exit {code}")),
        (Some(Outcome::Signaled), _, Some(signal)) => line.push_str(&format!(", signal {signal}")),
        _ => {}
    }
    // Causes often begin with the state ("skipped: ..."): not twice.
    let cause = run
        .cause
        .strip_prefix(&format!("{state}:"))
        .unwrap_or(&run.cause)
        .trim();
    if !cause.is_empty() {
        line.push_str(&format!(": {cause}"));
    }
    line.push_str(&format!(" ({})", run.id));
    line
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

async fn send_mail(state: &Shared, to: &str, delivery: &Delivery) -> Result<(), String> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let Some(smtp) = &state.config.notify.smtp else {
        return Err("no SMTP relay is configured ([smtp] in the puppeteer's config)".into());
    };
    let (subject, body) = compose(state, &delivery.event);
    let message = Message::builder()
        .from(
            smtp.from
                .parse()
                .map_err(|e| format!("invalid sender {:?}: {e}", smtp.from))?,
        )
        .to(to
            .parse()
            .map_err(|e| format!("invalid address {to:?}: {e}"))?)
        .subject(subject)
        .message_id(Some(format!("<{}@geppetto>", delivery.id)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| format!("cannot build the mail: {e}"))?;
    let builder = match smtp.tls {
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
            .map_err(|e| format!("SMTP relay {}: {e}", smtp.host))?,
        SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)
            .map_err(|e| format!("SMTP relay {}: {e}", smtp.host))?,
    };
    let mut builder = builder.timeout(Some(Duration::from_secs(30)));
    if let Some(port) = smtp.port {
        builder = builder.port(port);
    }
    if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose_secret().to_owned(),
        ));
    }
    builder
        .build()
        .send(message)
        .await
        .map(|_| ())
        .map_err(|e| format!("SMTP relay {}: {e}", smtp.host))
}

/// A webhook URL as logs and roles below admin see it: scheme, host and
/// port only. Its credentials (user and password, a token in the path as
/// chat services put them, or in the query) stay with admins.
pub fn redacted_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("?");
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = match uri.path_and_query().map(|p| p.as_str()) {
                None | Some("") | Some("/") => "",
                Some(_) => "/…",
            };
            format!("{scheme}://{host}{port}{rest}")
        }
        Err(_) => "(an invalid URL)".into(),
    }
}

async fn post_webhook(
    state: &Shared,
    url: &str,
    secret: Option<&str>,
    rule: &NotificationRule,
    delivery: &Delivery,
) -> Result<(), String> {
    let e = &delivery.event;
    let body = serde_json::to_vec(&WebhookBody {
        schema: "geppetto.notification/v1",
        delivery_id: &delivery.id,
        rule_id: &rule.id,
        event: WebhookEvent {
            id: e.id,
            at_unix_ms: e.at.0,
            kind: &e.kind,
            job_id: &e.job_id,
            run_id: &e.run_id,
            puppet: &e.puppet,
            resource: &e.resource,
            actor: &e.actor,
            summary: &e.summary,
        },
    })
    .expect("serializable");
    let mut request = http::Request::post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("geppetto/", env!("CARGO_PKG_VERSION")),
        )
        .header("x-geppetto-delivery", &delivery.id)
        .header("x-geppetto-event", &e.kind);
    if let Some(secret) = secret {
        request = request.header("x-geppetto-signature", signature(secret, &body));
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("invalid webhook request: {e}"))?;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(rustls::RootCertStore {
        roots: webpki_roots_list(),
    })
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    let timeout = state.config.notify.webhook_timeout;
    let url = redacted_url(url);
    let response = tokio::time::timeout(timeout, client.request(request))
        .await
        .map_err(|_| {
            format!(
                "webhook {url}: no answer within {}",
                humantime::format_duration(timeout)
            )
        })?
        .map_err(|e| format!("webhook {url}: {e}"))?;
    let status = response.status();
    let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("webhook {url} answered {status}"))
    }
}

fn webpki_roots_list() -> Vec<rustls_pki_types::TrustAnchor<'static>> {
    webpki_roots::TLS_SERVER_ROOTS.to_vec()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_webhook_url_is_shown_without_its_credentials() {
        use super::redacted_url;
        assert_eq!(
            redacted_url("https://user:PASS@hooks.example.org:8443/services/T0/B0/XyZ?token=t"),
            "https://hooks.example.org:8443/…"
        );
        assert_eq!(redacted_url("http://h.example/"), "http://h.example");
        assert_eq!(redacted_url("http://h.example"), "http://h.example");
        assert_eq!(redacted_url("not a url"), "(an invalid URL)");
    }

    #[test]
    fn the_smtp_password_is_read_from_the_file_and_never_shown() {
        use secrecy::ExposeSecret;
        let smtp: super::SmtpConfig = toml::from_str(
            "host = \"smtp.example.org\"\nusername = \"geppetto\"\npassword = \"pw-s3cret\"\nfrom = \"g@example.org\"",
        )
        .unwrap();
        assert_eq!(
            smtp.password.as_ref().map(|p| p.expose_secret()),
            Some("pw-s3cret")
        );
        let shown = format!("{smtp:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("REDACTED"),
            "{shown}"
        );
        let without: super::SmtpConfig =
            toml::from_str("host = \"h\"\nfrom = \"g@example.org\"").unwrap();
        assert!(without.password.is_none());
    }

    use super::*;
    use crate::domain::{Job, Millis, Outcome, Run};

    /// The store's test run, on `puppet`, in `state` for `cause`.
    fn run(id: &str, puppet: &str, state: RunState, cause: &str) -> Run {
        Run {
            puppet: puppet.into(),
            task_name: "patch".into(),
            state,
            cause: cause.into(),
            ..crate::store::testing::run(id)
        }
    }

    fn job() -> Job {
        Job {
            task_name: "patch".into(),
            ..crate::store::testing::job()
        }
    }

    fn event(kind: &str, run_id: &str) -> Event {
        Event {
            id: 7,
            at: Millis(0),
            kind: kind.into(),
            job_id: "job-1".into(),
            run_id: run_id.into(),
            puppet: String::new(),
            resource: String::new(),
            actor: "puppeteer".into(),
            summary: "something happened".into(),
        }
    }

    fn runs() -> Vec<Run> {
        let mut failed = run("run-a", "web-1", RunState::Failed, "exited with 3");
        (failed.outcome, failed.exit_code, failed.log_length) = (Some(Outcome::Exited), Some(3), 9);
        let mut lost = run(
            "run-b",
            "web-2",
            RunState::Lost,
            "lost: its puppet was silent for more than 1m50s",
        );
        lost.log_length = 5;
        let skipped = run(
            "run-c",
            "web-3",
            RunState::Skipped,
            "skipped: max failures reached (1)",
        );
        let ok = run("run-d", "web-4", RunState::Succeeded, "exited with 0");
        vec![failed, lost, skipped, ok]
    }

    fn tail(run: &Run) -> Option<String> {
        Some(format!("output of {}", run.id))
    }

    #[test]
    fn a_job_mail_says_each_run_that_did_not_succeed_with_its_exit_and_cause() {
        let (job, runs) = (job(), runs());
        let (subject, body) = render(&event("job.failed", ""), Some((&job, &runs)), &tail);
        assert_eq!(subject, "[geppetto] job.failed: something happened");
        assert!(
            body.contains("Runs that did not succeed (3 of 4):"),
            "{body}"
        );
        assert!(
            body.contains("  web-1: failed, exit 3: exited with 3 (run-a)"),
            "{body}"
        );
        assert!(
            body.contains("  web-3: skipped: max failures reached (1) (run-c)"),
            "{body}"
        );
        assert!(!body.contains("web-4"), "{body}");
        // Outputs of the runs that have some; none for the skipped one.
        assert!(body.contains("output of run-a") && body.contains("output of run-b"));
        assert!(!body.contains("output of run-c"), "{body}");
    }

    #[test]
    fn a_run_mail_is_about_that_run_alone() {
        let (job, runs) = (job(), runs());
        let (_, body) = render(&event("run.lost", "run-b"), Some((&job, &runs)), &tail);
        assert!(
            body.contains("Run: web-2: lost: its puppet was silent for more than 1m50s (run-b)"),
            "{body}"
        );
        assert!(body.contains("output of run-b"), "{body}");
        assert!(
            !body.contains("run-a") && !body.contains("Runs that did not succeed"),
            "{body}"
        );
    }
}
