//! End to end: a real puppeteer (real TLS, sled in a temp dir) and real
//! puppet agents speaking gRPC-web over HTTP/1.1, executing real processes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{RealPuppet, TestServer, process_alive};
use geppetto_proto::v1 as pb;
use geppetto_test_support::{wait_until, wait_until_async};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_job_on_three_puppets_succeeds_with_exact_logs() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppets: Vec<RealPuppet> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| RealPuppet::start(&server.url, Some(&server.ca), &secret, n))
        .collect();
    for p in &puppets {
        admin.wait_polling(&p.name).await;
    }
    admin
        .script_task(
            "mixed",
            "echo out-1\necho err-1 >&2\nprintf 'a\\nb'\necho c >&2\necho \"env=$GEPPETTO_TEST\"",
            Duration::from_secs(30),
        )
        .await;
    // A task update makes version 2, which the job records.
    admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "mixed".into(),
            env: [("GEPPETTO_TEST".to_string(), "yes".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let job = admin.run_on("mixed", &["p1", "p2", "p3"]).await;
    assert_eq!(job.task_version, 2);
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(job.runs.len(), 3);
    for run in &job.runs {
        assert_eq!(
            admin.log(&run.run_id).await,
            b"out-1\nerr-1\na\nbc\nenv=yes\n",
            "log of {}",
            run.puppet
        );
    }
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn twenty_mib_of_output_arrives_intact() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "big");
    admin.wait_polling("big").await;
    const N: u32 = 2_800_000;
    admin
        .script_task("big", &format!("seq 1 {N}"), Duration::from_secs(300))
        .await;
    let job = admin.run_on("big", &["big"]).await;
    let job = admin.wait_job(&job.id, Duration::from_secs(300)).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let expected: Vec<u8> = (1..=N)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(expected.len() > 20 << 20);
    let log = admin.log(&job.runs[0].run_id).await;
    assert_eq!(log.len(), expected.len());
    assert!(log == expected, "the output differs");
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_timeout_kills_the_whole_process_group() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg.pid");
    admin
        .script_task(
            "slow",
            &format!("sleep 300 &\necho $! > {}\nsleep 300", pidfile.display()),
            Duration::from_secs(2),
        )
        .await;
    let job = admin.run_on("slow", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.runs[0].state, pb::RunState::TimedOut as i32, "{job:?}");
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until("the background sleep is gone", DEADLINE, || {
        !process_alive(pid)
    })
    .await;
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_job_kills_its_process() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    admin
        .script_task(
            "long",
            &format!("echo $$ > {}\necho started\nsleep 300", pidfile.display()),
            Duration::from_secs(600),
        )
        .await;
    let job = admin.run_on("long", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    wait_until_async("the run printed that it started", DEADLINE, async || {
        admin.log(&run_id).await == b"started\n"
    })
    .await;
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(pid));
    admin
        .jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Cancelled as i32, "{job:?}");
    assert_eq!(job.runs[0].state, pb::RunState::Cancelled as i32);
    wait_until("the cancelled process is gone", DEADLINE, || {
        !process_alive(pid)
    })
    .await;
    puppet.stop().await;
    server.stop().await;
}

/// A TCP relay that records what the client sends.
async fn sniffing_proxy(upstream: std::net::SocketAddr) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.split();
                let (mut sr, mut sw) = server.split();
                let up = async {
                    let mut buf = vec![0u8; 16384];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        record.lock().unwrap().extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    (port, seen)
}

#[tokio::test]
async fn the_puppet_speaks_grpc_web_over_http1() {
    // Plain TCP so that a relay in the middle can read the requests.
    let server = TestServer::start_with(|c| c.insecure_plaintext = true).await;
    let addr = server.running.as_ref().unwrap().addr;
    let token = server.admin_token.clone();
    let admin_url = format!("http://127.0.0.1:{}", addr.port());
    let slot = geppetto_proto::client::TokenSlot::default();
    slot.set(Some(&token)).unwrap();
    let channel = geppetto_proto::client::Channel::new(
        &geppetto_proto::client::Endpoint {
            url: admin_url,
            ca_file: None,
            transport: geppetto_proto::client::Transport::Grpc,
        },
        slot,
    )
    .unwrap();
    let mut admin = common::Admin::new(channel);
    let secret = admin.enroll_secret().await;
    let (port, seen) = sniffing_proxy(addr).await;
    let puppet = RealPuppet::start(&format!("http://127.0.0.1:{port}"), None, &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo via-proxy", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(admin.log(&job.runs[0].run_id).await, b"via-proxy\n");
    puppet.stop().await;

    let text = String::from_utf8_lossy(&seen.lock().unwrap()).to_lowercase();
    assert!(
        !text.contains("pri * http/2.0"),
        "no HTTP/2 from the puppet"
    );
    for call in ["enroll", "poll", "startrun", "appendlog", "finishrun"] {
        assert!(
            text.contains(&format!("post /geppetto.v1.puppetservice/{call} http/1.1")),
            "{call} over HTTP/1.1"
        );
    }
    let requests = text.matches("post /").count();
    let grpc_web = text.matches("content-type: application/grpc-web").count();
    assert_eq!(requests, grpc_web, "every request is gRPC-web");
    server.stop().await;
}

#[tokio::test]
async fn puppets_reconnect_after_the_puppeteer_restarts() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(5)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo again", Duration::from_secs(30))
        .await;

    // Stop the puppeteer and start it again on the same port and data dir.
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
    config.poll_timeout = Duration::from_secs(5);
    let running = puppeteer::start(config).await.unwrap();
    let server = TestServer {
        store,
        url: running.url(false),
        ca: running.ca_file.clone().unwrap(),
        admin_token: running.admin_token().unwrap(),
        running: Some(running),
        dir,
    };
    let mut admin = server.admin();
    admin.wait_polling("p1").await;
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(admin.log(&job.runs[0].run_id).await, b"again\n");
    puppet.stop().await;
    server.stop().await;
}
