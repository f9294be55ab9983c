//! The Prometheus endpoint: a real puppeteer with `metrics_listen` on port 0,
//! a real puppet running a job, and scrapes parsed strictly.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{RealPuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

const DEADLINE: Duration = Duration::from_secs(60);

/// One scrape: status, content type and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("metrics answer in time")
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Samples by `name{labels}` (labels as written, sorted), parsed strictly:
/// every line is `# HELP name text`, `# TYPE name kind`, or
/// `name[{k="v",...}] value`, and every sample belongs to a declared family.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let mut families: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP has a text");
            assert!(valid_name(name), "bad name in {line:?}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
            assert!(valid_name(name), "bad name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        assert!(!line.is_empty(), "empty line");
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("labels end with }");
                let mut labels: Vec<&str> = if inner.is_empty() {
                    Vec::new()
                } else {
                    inner.split(',').collect()
                };
                for l in &labels {
                    let (k, v) = l.split_once('=').expect("label is k=v");
                    assert!(valid_name(k), "bad label name in {line:?}");
                    assert!(
                        v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                        "label value not quoted in {line:?}"
                    );
                }
                labels.sort_unstable();
                (name, labels)
            }
        };
        assert!(valid_name(name), "bad name in {line:?}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| families.get(*base).is_some_and(|k| k == "histogram"))
            .unwrap_or(name);
        assert!(
            families.contains_key(family),
            "sample without # TYPE: {line:?}"
        );
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            format!("{name}{{{}}}", labels.join(","))
        };
        assert!(
            samples.insert(key, value).is_none(),
            "duplicate sample {line:?}"
        );
    }
    samples
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, content_type, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&body)
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:?}"))
}

#[tokio::test]
async fn metrics_follow_a_job() {
    let server = TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let addr = server
        .running
        .as_ref()
        .unwrap()
        .metrics_addr
        .expect("metrics listener bound");

    let (status, _, _) = get(addr, "/elsewhere").await;
    assert_eq!(status, 404);

    let before = scrape(addr).await;
    let succeeded = r#"geppetto_runs_finished_total{state="succeeded"}"#;
    assert_eq!(before.get(succeeded).copied().unwrap_or(0.0), 0.0);
    assert_eq!(
        value(&before, r#"geppetto_puppets{presence="online"}"#),
        0.0
    );
    assert_eq!(value(&before, "geppetto_queue_depth"), 0.0);
    assert!(value(&before, "geppetto_store_size_bytes") > 0.0);

    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "m1");
    admin.wait_polling("m1").await;
    admin
        .script_task("hello", "echo hello", Duration::from_secs(30))
        .await;
    let job = admin.run_on("hello", &["m1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");

    // The puppet polls again after reporting; wait until it is seen online
    // and the run is counted.
    let after = wait_until_async(
        "the metrics show the finished run and the puppet online",
        DEADLINE,
        async || {
            let after = scrape(addr).await;
            if after.get(succeeded) == Some(&1.0)
                && after.get(r#"geppetto_puppets{presence="online"}"#) == Some(&1.0)
            {
                Ok(after)
            } else {
                Err(format!("{after:?}"))
            }
        },
    )
    .await;
    assert_eq!(value(&after, "geppetto_puppets_pending"), 0.0);
    assert_eq!(value(&after, r#"geppetto_runs{state="running"}"#), 0.0);
    assert_eq!(value(&after, "geppetto_queue_depth"), 0.0);
    assert!(value(&after, "geppetto_request_bytes_total") > 0.0);
    assert!(value(&after, "geppetto_response_bytes_total") > 0.0);
    assert_eq!(
        value(&after, "geppetto_dispatch_latency_seconds_count"),
        1.0
    );
    assert!(value(&after, "geppetto_poll_hold_seconds_count") >= 1.0);
    assert_eq!(value(&after, "geppetto_notification_failures_total"), 0.0);

    puppet.stop().await;
    server.stop().await;
}
