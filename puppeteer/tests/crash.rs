//! `kill -9` of the puppeteer process right after it acknowledged something,
//! then a restart on the same data dir and port: every acknowledged object is
//! there, queued runs still dispatch, and the puppet's credential still works.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Admin, FakePuppet, ProcServer, TestServer, script_spec};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use geppetto_test_support::wait_until;

fn channel(port: u16, ca: &Path, transport: Transport, token: &str) -> Channel {
    let slot = TokenSlot::default();
    slot.set(Some(token)).unwrap();
    Channel::new(
        &Endpoint {
            url: format!("https://localhost:{port}"),
            ca_file: Some(ca.to_path_buf()),
            transport,
        },
        slot,
    )
    .unwrap()
}

#[tokio::test]
async fn kill_9_right_after_an_acknowledgement_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let server = ProcServer::start(&data, 0, "2s").await;
    let port = server.port;
    let ca = data.join("tls/ca.pem");
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = || Admin::new(channel(port, &ca, Transport::Grpc, &token));

    // An enrollment token and a puppet, then a crash.
    let secret = admin().enroll_secret().await;
    let mut enroller = PuppetServiceClient::new(channel(port, &ca, Transport::GrpcWeb, "none"));
    let credential = enroller
        .enroll(pb::EnrollRequest {
            enroll_token: secret,
            name: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let server = ProcServer::start(&data, server.kill9().await, "2s").await;
    let puppet = || FakePuppet {
        name: "p1".into(),
        client: PuppetServiceClient::new(channel(port, &ca, Transport::GrpcWeb, &credential)),
        credential: credential.clone(),
    };

    // A task, then a crash.
    admin()
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "t".into(),
            description: String::new(),
            spec: Some(script_spec("echo hi", Duration::from_secs(60))),
            ..Default::default()
        })
        .await
        .unwrap();
    let server = ProcServer::start(&data, server.kill9().await, "2s").await;
    let task = admin()
        .tasks
        .get_task(pb::GetTaskRequest {
            name: "t".into(),
            version: 0,
        })
        .await
        .expect("the acknowledged task survived");
    assert_eq!(task.into_inner().version, 1);

    // A job, then a crash: its run is still queued and still dispatches.
    let job = admin().run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    let server = ProcServer::start(&data, server.kill9().await, "2s").await;
    let answer = puppet().poll(1, &[]).await;
    assert_eq!(answer.assignments[0].run_id, run_id);

    // Started and some output, then a crash.
    puppet()
        .client
        .start_run(pb::StartRunRequest {
            run_id: run_id.clone(),
            attempt: 1,
            started_at: None,
        })
        .await
        .unwrap();
    let committed = puppet()
        .client
        .append_log(pb::AppendLogRequest {
            run_id: run_id.clone(),
            attempt: 1,
            offset: 0,
            data: b"hi\n".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .committed;
    assert_eq!(committed, 3);
    let server = ProcServer::start(&data, server.kill9().await, "2s").await;
    assert_eq!(admin().log(&run_id).await, b"hi\n");
    // The puppet's resend after the crash is accepted once.
    let again = puppet()
        .client
        .append_log(pb::AppendLogRequest {
            run_id: run_id.clone(),
            attempt: 1,
            offset: 0,
            data: b"hi\n".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.committed, 3);

    // Finished, then a crash.
    puppet()
        .client
        .finish_run(pb::FinishRunRequest {
            run_id: run_id.clone(),
            attempt: 1,
            outcome: pb::Outcome::Exited as i32,
            exit_code: 0,
            log_length: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let server = ProcServer::start(&data, server.kill9().await, "2s").await;
    let run = admin()
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    assert_eq!(admin().log(&run_id).await, b"hi\n");
    server.kill9().await;
}

/// The in-process server: a clean stop and start keeps everything too.
#[tokio::test]
async fn a_clean_restart_keeps_everything() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    admin.script_task("t", "true", Duration::from_secs(5)).await;
    let data = server.dir.path().join("data");
    let TestServer {
        dir,
        running,
        store,
        ..
    } = server;
    running.unwrap().stop().await.unwrap();
    let mut config = puppeteer::Config::new(data, "127.0.0.1:0".parse().unwrap());
    config.store = store.clone();
    config.poll_timeout = Duration::from_secs(1);
    let running = puppeteer::start(config).await.unwrap();
    assert!(running.new_admin_token.is_none(), "the token is kept");
    assert!(!running.created_tls, "the certificate is kept");
    let server = TestServer {
        url: running.url(false),
        ca: running.ca_file.clone().unwrap(),
        admin_token: running.admin_token().unwrap(),
        running: Some(running),
        dir,
        store,
    };
    let tasks = server
        .admin()
        .tasks
        .list_tasks(pb::ListTasksRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    server.stop().await;
}

/// Many log chunks acknowledged at once share flushes (group commit); a
/// `kill -9` in the middle of them loses none that was acknowledged.
#[tokio::test]
async fn kill_9_amid_concurrent_acknowledgements_loses_none() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const RUNS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    let server = ProcServer::start(&data, 0, "2s").await;
    let port = server.port;
    let ca = data.join("tls/ca.pem");
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = || Admin::new(channel(port, &ca, Transport::Grpc, &token));
    let secret = admin().enroll_secret().await;
    let credential = PuppetServiceClient::new(channel(port, &ca, Transport::GrpcWeb, "none"))
        .enroll(pb::EnrollRequest {
            enroll_token: secret,
            name: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .credential;
    let mut puppet = FakePuppet {
        name: "p1".into(),
        client: PuppetServiceClient::new(channel(port, &ca, Transport::GrpcWeb, &credential)),
        credential: credential.clone(),
    };
    admin()
        .script_task("t", "true", Duration::from_secs(60))
        .await;
    for _ in 0..RUNS {
        admin().run_on("t", &["p1"]).await;
    }
    let offered = puppet.poll(RUNS as u32, &[]).await.assignments;
    assert_eq!(offered.len(), RUNS);
    let run_ids: Vec<String> = offered.iter().map(|a| a.run_id.clone()).collect();
    for id in &run_ids {
        puppet
            .client
            .start_run(pb::StartRunRequest {
                run_id: id.clone(),
                attempt: 1,
                started_at: None,
            })
            .await
            .unwrap();
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..RUNS).map(|_| AtomicU64::new(0)).collect());
    let mut senders = tokio::task::JoinSet::new();
    for (i, id) in run_ids.iter().enumerate() {
        // Each run on its own connection, so the chunks really are concurrent.
        let mut client = PuppetServiceClient::new(channel(port, &ca, Transport::Grpc, &credential));
        let (id, acked) = (id.clone(), acked.clone());
        senders.spawn(async move {
            let mut offset = 0u64;
            loop {
                let sent = client
                    .append_log(pb::AppendLogRequest {
                        run_id: id.clone(),
                        attempt: 1,
                        offset,
                        data: vec![b'a' + i as u8; 100].into(),
                        ..Default::default()
                    })
                    .await;
                match sent {
                    Ok(answer) => {
                        offset = answer.into_inner().committed;
                        acked[i].store(offset, Ordering::SeqCst);
                    }
                    Err(_) => return,
                }
            }
        });
    }
    let total = || acked.iter().map(|a| a.load(Ordering::SeqCst)).sum::<u64>();
    wait_until(
        "30 chunks a run are acknowledged",
        Duration::from_secs(60),
        || total() >= (RUNS * 30 * 100) as u64,
    )
    .await;
    let port = server.kill9().await;
    while senders.join_next().await.is_some() {}
    let server = ProcServer::start(&data, port, "2s").await;
    for (i, id) in run_ids.iter().enumerate() {
        let log = admin().log(id).await;
        let acknowledged = acked[i].load(Ordering::SeqCst) as usize;
        assert!(
            log.len() >= acknowledged,
            "run {i}: {} bytes kept, {acknowledged} acknowledged",
            log.len()
        );
        assert!(
            log.iter().all(|&b| b == b'a' + i as u8),
            "run {i}: foreign bytes"
        );
    }
    server.kill9().await;
}
