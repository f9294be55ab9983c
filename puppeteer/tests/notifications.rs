//! Notifications against real servers: an SMTP server (Python's aiosmtpd,
//! installed by .ci/run, which requires it; elsewhere the test skips loudly
//! without it) that refuses the first attempt, and an HTTP
//! receiver checking the webhook's signature, with the puppeteer restarted
//! after the refusal.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RealPuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::notifications_client::NotificationsClient;
use geppetto_test_support::{wait_until, wait_until_async};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

const DEADLINE: Duration = Duration::from_secs(60);

/// Set (to anything) where the SMTP server must be there, e.g. in CI: then
/// a missing Python or aiosmtpd fails the test instead of skipping it.
const REQUIRE_VAR: &str = "GEPPETTO_REQUIRE_SMTP";

/// Why the SMTP server cannot run here, if it cannot.
fn smtp_unavailable() -> Option<String> {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    match probe {
        Ok(status) if status.success() => None,
        Ok(_) => Some("Python's aiosmtpd is not installed: pip install aiosmtpd".into()),
        Err(e) => Some(format!("python3 cannot run ({e})")),
    }
}

/// Skips `test` loudly (on stderr, past the harness's capture) when the
/// SMTP server cannot run, or fails it where it is required.
fn skip_without_smtp(test: &str) -> bool {
    use std::io::Write;
    let Some(why) = smtp_unavailable() else {
        return false;
    };
    if std::env::var_os(REQUIRE_VAR).is_some() {
        panic!("{test}: the SMTP server cannot run ({why}) but {REQUIRE_VAR} is set");
    }
    let line = "=".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "{line}\nSKIPPED: {test}: {why}\n{line}"
    );
    true
}

/// Starts the SMTP server; returns it and its port.
async fn smtp_server(out: &Path, refuse_first: bool) -> (tokio::process::Child, u16) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/smtp_relay.py");
    let mut child = tokio::process::Command::new("python3")
        .arg(script)
        .arg(out)
        .arg(if refuse_first { "1" } else { "0" })
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 runs (aiosmtpd is installed by .ci/run: pip install aiosmtpd)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(DEADLINE, async {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("the SMTP server starts (is aiosmtpd installed? pip install aiosmtpd)");
        line.strip_prefix("ready ").unwrap().parse::<u16>().unwrap()
    })
    .await
    .expect("the SMTP server is ready in time");
    (child, port)
}

type Received = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// An HTTP server recording every request.
async fn webhook_receiver() -> (u16, Received) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let record = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body.collect().await?.to_bytes();
                            record.lock().unwrap().push((parts.headers, bytes));
                            Ok::<_, hyper::Error>(http::Response::new(Full::new(Bytes::from("ok"))))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, received)
}

fn mails(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn a_failing_job_sends_one_mail_and_one_signed_webhook_across_a_restart() {
    if skip_without_smtp("a_failing_job_sends_one_mail_and_one_signed_webhook_across_a_restart") {
        return;
    }
    let mail_dir = tempfile::tempdir().unwrap();
    let (_smtp, smtp_port) = smtp_server(mail_dir.path(), true).await;
    let (hook_port, hooks) = webhook_receiver().await;
    let notify = |c: &mut puppeteer::Config| {
        c.notify.smtp = Some(puppeteer::app::notify::SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(smtp_port),
            tls: puppeteer::app::notify::SmtpTls::None,
            username: None,
            password: None,
            from: "Geppetto <geppetto@example.org>".into(),
        });
        c.notify.retry_base = Duration::from_millis(500);
    };
    let server = TestServer::start_with(notify).await;
    let mut admin = server.admin();
    let mut rules = NotificationsClient::new(admin.channel.clone());
    let mail_rule = rules
        .add_rule(pb::AddRuleRequest {
            on: vec!["job.failed".into()],
            channel: Some(pb::add_rule_request::Channel::Email(
                "ops@example.org".into(),
            )),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    rules
        .add_rule(pb::AddRuleRequest {
            on: vec!["job.failed".into()],
            channel: Some(pb::add_rule_request::Channel::Webhook(format!(
                "http://127.0.0.1:{hook_port}/hook"
            ))),
            secret: "s3cret".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task(
            "patch",
            "echo applying\necho boom: disk full >&2\nexit 3",
            Duration::from_secs(30),
        )
        .await;
    let job = admin.run_on("patch", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Failed as i32);

    // The relay refused the first attempt; restart the puppeteer then.
    let refused = mail_dir.path().join("refused");
    wait_until("the relay refuses the first attempt", DEADLINE, || {
        refused.exists()
    })
    .await;
    let TestServer {
        dir,
        running,
        store,
        ..
    } = server;
    let running = running.unwrap();
    let addr = running.addr;
    running.stop().await.unwrap();
    let mut config = puppeteer::Config::new(dir.path().join("data"), addr);
    config.store = store.clone();
    notify(&mut config);
    let running = puppeteer::start(config).await.unwrap();
    let server = TestServer {
        store,
        url: running.url(false),
        ca: running.ca_file.clone().unwrap(),
        admin_token: running.admin_token().unwrap(),
        running: Some(running),
        dir,
    };
    let mut rules = NotificationsClient::new(server.admin().channel.clone());
    let rule = wait_until_async("both notifications are delivered", DEADLINE, async || {
        let listed = rules
            .list_rules(pb::ListRulesRequest {})
            .await
            .unwrap()
            .into_inner()
            .rules;
        let mail = listed.iter().find(|r| r.id == mail_rule.id).unwrap();
        let webhook = listed.iter().find(|r| r.id != mail_rule.id).unwrap();
        if mail.delivered == 1 && webhook.delivered == 1 {
            Ok(mail.clone())
        } else {
            Err(format!("{listed:?}"))
        }
    })
    .await;
    assert_eq!(rule.pending, 0);
    assert!(
        rule.last_error.contains("451") || rule.last_error.is_empty(),
        "{rule:?}"
    );

    let mails = mails(mail_dir.path());
    assert_eq!(mails.len(), 1, "exactly one mail: {mails:?}");
    let mail = &mails[0];
    assert!(mail.contains("Subject: [geppetto] job.failed"), "{mail}");
    assert!(
        mail.contains("boom: disk full"),
        "the failing log's tail: {mail}"
    );
    assert!(
        mail.contains(&format!("geppetto jobs show {}", job.id)),
        "{mail}"
    );

    let hooks = hooks.lock().unwrap().clone();
    assert_eq!(hooks.len(), 1, "exactly one webhook");
    let (headers, body) = &hooks[0];
    let signature = headers["x-geppetto-signature"].to_str().unwrap();
    assert_eq!(signature, puppeteer::app::notify::signature("s3cret", body));
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(json["schema"], "geppetto.notification/v1");
    assert_eq!(json["event"]["kind"], "job.failed");
    assert_eq!(json["event"]["job_id"], job.id.as_str());
    puppet.stop().await;
    server.stop().await;
}
