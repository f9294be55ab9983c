//! Storage bounds and bookkeeping, through the API of a real puppeteer:
//! duplicate reports counted, the per-run log limit (head and tail kept,
//! offsets unchanged, reads that jump the gap), retention, server info.

mod common;

use std::time::Duration;

use common::{FakePuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The body of `GET /metrics`.
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get("/metrics")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of one sample line `name value`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// A run offered to and started by a fake puppet.
async fn started_run(server: &TestServer, body: &str) -> (FakePuppet, String) {
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(server, &secret, "p1").await;
    admin.script_task("t", body, Duration::from_secs(60)).await;
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    let polled = puppet.poll(1, &[]).await;
    assert_eq!(polled.assignments[0].run_id, run_id);
    let start = pb::StartRunRequest {
        run_id: run_id.clone(),
        attempt: 1,
        started_at: None,
    };
    assert!(
        puppet
            .client
            .start_run(start)
            .await
            .unwrap()
            .into_inner()
            .proceed
    );
    (puppet, run_id)
}

fn append(run_id: &str, offset: u64, data: &[u8]) -> pb::AppendLogRequest {
    pb::AppendLogRequest {
        run_id: run_id.into(),
        attempt: 1,
        offset,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn finish(run_id: &str, log_length: u64) -> pb::FinishRunRequest {
    pb::FinishRunRequest {
        run_id: run_id.into(),
        attempt: 1,
        outcome: pb::Outcome::Exited as i32,
        exit_code: 0,
        signal: 0,
        duration: None,
        log_length,
        message: String::new(),
    }
}

/// The kept events of a kind (exact, or a prefix ending in ".").
async fn events_of_kind(admin: &common::Admin, kind: &str) -> Vec<pb::Event> {
    pb::events_client::EventsClient::new(admin.channel.clone())
        .list_events(pb::WatchEventsRequest {
            kinds: vec![kind.into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test]
async fn every_kind_of_duplicate_report_is_counted_and_exposed() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(1);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = server.running.as_ref().unwrap().metrics_addr.unwrap();
    let (mut puppet, run_id) = started_run(&server, "true").await;
    let c = &mut puppet.client;
    // StartRun resent.
    let start = pb::StartRunRequest {
        run_id: run_id.clone(),
        attempt: 1,
        started_at: None,
    };
    assert!(c.start_run(start).await.unwrap().into_inner().proceed);
    // A chunk resent whole, then one overlapping the end.
    assert_eq!(
        c.append_log(append(&run_id, 0, b"hello "))
            .await
            .unwrap()
            .into_inner()
            .committed,
        6
    );
    assert_eq!(
        c.append_log(append(&run_id, 0, b"hello "))
            .await
            .unwrap()
            .into_inner()
            .committed,
        6
    );
    assert_eq!(
        c.append_log(append(&run_id, 3, b"lo world\n"))
            .await
            .unwrap()
            .into_inner()
            .committed,
        12
    );
    // FinishRun resent twice.
    for _ in 0..3 {
        c.finish_run(finish(&run_id, 12)).await.unwrap();
    }
    let mut admin = server.admin();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.duplicate_reports, 1 + 2 + 2, "{run:?}");
    assert_eq!(admin.log(&run_id).await, b"hello world\n");
    let text = metrics_text(metrics).await;
    let counted = |report: &str| {
        sample(
            &text,
            &format!("geppetto_duplicate_reports_total{{report=\"{report}\"}}"),
        )
    };
    assert_eq!(counted("start_run"), 1.0, "{text}");
    assert_eq!(counted("append_log"), 2.0, "{text}");
    assert_eq!(counted("finish_run"), 2.0, "{text}");
    // The resends changed nothing: the run's end is counted once, and the
    // job's end (announced at the first report) once.
    assert_eq!(
        sample(&text, r#"geppetto_runs_finished_total{state="succeeded"}"#),
        1.0,
        "{text}"
    );
    let job_ends = events_of_kind(&admin, "job.").await;
    assert_eq!(job_ends.len(), 1, "{job_ends:?}");
    assert_eq!(job_ends[0].kind, "job.succeeded", "{job_ends:?}");
    server.stop().await;
}

/// The end of a job is announced once per end, and again after a retry
/// reopened it: the puppeteer's memory of announced ends is forgotten when
/// a run of the job is queued again.
#[tokio::test]
async fn a_retried_job_announces_its_new_end() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(1)).await;
    let (mut puppet, run_id) = started_run(&server, "false").await;
    let failed = pb::FinishRunRequest {
        exit_code: 1,
        ..finish(&run_id, 0)
    };
    for _ in 0..2 {
        puppet.client.finish_run(failed.clone()).await.unwrap();
    }
    let mut admin = server.admin();
    let kinds = |events: Vec<pb::Event>| events.into_iter().map(|e| e.kind).collect::<Vec<_>>();
    assert_eq!(kinds(events_of_kind(&admin, "job.").await), ["job.failed"]);

    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    admin
        .jobs
        .retry_job(pb::RetryJobRequest {
            id: run.job_id,
            only: "failed".into(),
        })
        .await
        .unwrap();
    let polled = puppet.poll(1, &[]).await;
    assert_eq!(polled.assignments[0].run_id, run_id);
    assert_eq!(polled.assignments[0].attempt, 2);
    let start = pb::StartRunRequest {
        run_id: run_id.clone(),
        attempt: 2,
        started_at: None,
    };
    assert!(
        puppet
            .client
            .start_run(start)
            .await
            .unwrap()
            .into_inner()
            .proceed
    );
    let succeeded = pb::FinishRunRequest {
        attempt: 2,
        ..finish(&run_id, 0)
    };
    for _ in 0..2 {
        puppet.client.finish_run(succeeded.clone()).await.unwrap();
    }
    assert_eq!(
        kinds(events_of_kind(&admin, "job.").await),
        ["job.failed", "job.succeeded"]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_log_past_the_limit_keeps_head_and_tail_at_their_offsets() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(1);
        c.log_limit = Some(2000);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = server.running.as_ref().unwrap().metrics_addr.unwrap();
    let (mut puppet, run_id) = started_run(&server, "true").await;
    let output: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 23) as u8).collect();
    let mut offset = 0;
    for size in [700usize, 400, 3000, 1, 20_000, 25_000, 899] {
        let chunk = &output[offset..offset + size];
        let c = &mut puppet.client;
        let committed = c
            .append_log(append(&run_id, offset as u64, chunk))
            .await
            .unwrap();
        assert_eq!(committed.into_inner().committed, (offset + size) as u64);
        offset += size;
    }
    assert_eq!(offset, output.len());
    // The puppet's count of its output is what the server checks, unchanged.
    let err = puppet
        .client
        .finish_run(finish(&run_id, 2000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    puppet
        .client
        .finish_run(finish(&run_id, 50_000))
        .await
        .unwrap();

    let mut admin = server.admin();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    assert!(run.log_truncated);
    assert_eq!((run.log_length, run.log_dropped), (50_000, 48_000));

    let read = |offset: u64, max_bytes: u32| pb::ReadLogRequest {
        run_id: run_id.clone(),
        offset,
        max_bytes,
    };
    let head = admin.runs.read_log(read(0, 0)).await.unwrap().into_inner();
    assert_eq!(
        (head.offset, head.skipped, head.truncated, head.eof),
        (0, 0, true, false)
    );
    assert_eq!(head.data, &output[..1000]);
    let tail = admin
        .runs
        .read_log(read(1000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (tail.offset, tail.skipped, tail.eof),
        (49_000, 48_000, true)
    );
    assert_eq!(tail.data, &output[49_000..]);
    let inside = admin
        .runs
        .read_log(read(30_000, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((inside.offset, inside.skipped), (49_000, 19_000));
    assert_eq!(inside.data, &output[49_000..49_010]);

    let mut stream = admin
        .runs
        .follow_log(read(0, 0))
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push((chunk.offset, chunk.skipped, chunk.data.len()));
    }
    assert_eq!(chunks, [(0, 0, 1000), (49_000, 48_000, 1000)]);
    let text = metrics_text(metrics).await;
    assert_eq!(
        sample(&text, "geppetto_log_dropped_bytes_total"),
        48_000.0,
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn retention_prunes_the_oldest_finished_jobs_with_runs_and_logs() {
    use geppetto_proto::v1::server_client::ServerClient;

    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(1);
        c.retention.max_jobs = 1;
        c.retention.interval = Duration::from_secs(1);
    })
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo some output", Duration::from_secs(60))
        .await;
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let job = admin.run_on("t", &["p1"]).await;
        admin.wait_job(&job.id, Duration::from_secs(60)).await;
        jobs.push(job);
    }
    let mut info_client = ServerClient::new(server.channel(
        geppetto_proto::client::Transport::Grpc,
        Some(&server.admin_token),
    ));
    // Passes run every second: wait until the two oldest are gone.
    let info = wait_until_async(
        "the two oldest jobs are pruned",
        Duration::from_secs(30),
        async || {
            let info = info_client
                .get_server_info(pb::GetServerInfoRequest {})
                .await
                .unwrap()
                .into_inner();
            let second = admin
                .jobs
                .get_job(pb::GetJobRequest {
                    id: jobs[1].id.clone(),
                })
                .await;
            match second {
                Err(_) => Ok(info),
                Ok(_) => Err(format!("{info:?}")),
            }
        },
    )
    .await;
    for old in &jobs[..2] {
        let gone = admin
            .jobs
            .get_job(pb::GetJobRequest { id: old.id.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        let run = old.runs[0].run_id.clone();
        let gone = admin
            .runs
            .get_run(pb::GetRunRequest { id: run.clone() })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        let gone = admin
            .runs
            .read_log(pb::ReadLogRequest {
                run_id: run,
                offset: 0,
                max_bytes: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
    }
    // The newest finished job is kept, logs included.
    let kept = jobs[2].runs[0].run_id.clone();
    assert_eq!(admin.log(&kept).await, b"some output\n");
    let runs = admin
        .runs
        .list_runs(pb::ListRunsRequest {
            of: Some(pb::list_runs_request::Of::Puppet("p1".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1, "{runs:?}");

    // What was pruned is in the event stream and in the server info.
    let pruned = events_of_kind(&admin, "job.pruned").await;
    let pruned_jobs: Vec<&str> = pruned.iter().map(|e| e.job_id.as_str()).collect();
    assert_eq!(
        pruned_jobs,
        [jobs[0].id.as_str(), jobs[1].id.as_str()],
        "{pruned:?}"
    );
    assert!(
        pruned[0]
            .summary
            .contains("more finished jobs than max_jobs"),
        "{pruned:?}"
    );
    let info = if info.pruned_jobs == 0 {
        info_client
            .get_server_info(pb::GetServerInfoRequest {})
            .await
            .unwrap()
            .into_inner()
    } else {
        info
    };
    assert!(info.last_prune_at.is_some(), "{info:?}");
    assert_eq!(info.log_bytes, 12, "{info:?}");
    assert!(info.data_dir_bytes > 0, "{info:?}");
    assert!(info.retention.contains("beyond the newest 1"), "{info:?}");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    puppet.stop().await;
    server.stop().await;
}

/// Runs `puppeteer ARGS...`; returns success, stdout and stderr.
fn puppeteer_cmd(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_puppeteer"))
        .args(args)
        .output()
        .expect("the puppeteer binary runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn backup_and_restore_round_trip_everything() {
    use geppetto_proto::client::Transport;
    use geppetto_proto::v1::tokens_client::TokensClient;
    use geppetto_proto::v1::users_client::UsersClient;
    use std::ffi::OsStr;

    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(1)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo backed up", Duration::from_secs(60))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    admin.wait_job(&job.id, Duration::from_secs(60)).await;
    let run_id = job.runs[0].run_id.clone();
    let mut users = UsersClient::new(admin.channel.clone());
    users
        .add_user(pb::AddUserRequest {
            name: "alice".into(),
            role: pb::Role::Operator as i32,
        })
        .await
        .unwrap();
    let alice = TokensClient::new(admin.channel.clone())
        .create_token(pb::CreateTokenRequest {
            user: "alice".into(),
            name: "laptop".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;

    let data = server.dir.path().join("data");
    let file = server.dir.path().join("geppetto.backup");
    // Refused while the puppeteer runs, and nothing is written.
    let (ok, _, err) = puppeteer_cmd(&[
        OsStr::new("backup"),
        OsStr::new("--to"),
        file.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(
        !ok && err.contains("in use by a running puppeteer"),
        "{err}"
    );
    assert!(!file.exists());

    let state_dir = puppet.kill().await;
    let TestServer {
        dir,
        running,
        ca,
        admin_token,
        ..
    } = server;
    running.unwrap().stop().await.unwrap();
    let (ok, out, err) = puppeteer_cmd(&[
        OsStr::new("backup"),
        OsStr::new("--to"),
        file.as_os_str(),
        OsStr::new("--data-dir"),
        data.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Wrote") && out.contains("files"), "{out}");

    // Damaged copies are refused, and leave nothing behind.
    let bytes = std::fs::read(&file).unwrap();
    let nowhere = dir.path().join("nowhere");
    for (what, damaged) in [
        ("truncated", bytes[..bytes.len() * 2 / 3].to_vec()),
        ("checksum", {
            // A byte of a record's content (the task's script), not of a
            // length: only the checksum can tell.
            let mut b = bytes.clone();
            let i = b
                .windows(9)
                .position(|w| w == b"backed up")
                .expect("the task's script is in the backup");
            b[i] ^= 0x01;
            b
        }),
    ] {
        let bad = dir.path().join("bad.backup");
        std::fs::write(&bad, damaged).unwrap();
        let (ok, _, err) = puppeteer_cmd(&[
            OsStr::new("restore"),
            OsStr::new("--from"),
            bad.as_os_str(),
            OsStr::new("--data-dir"),
            nowhere.as_os_str(),
        ]);
        assert!(!ok && err.contains(what), "{what}: {err}");
        assert!(!nowhere.exists());
    }

    // Restored into a new dir, the puppeteer serves the same state.
    let restored = dir.path().join("restored");
    let (ok, out, err) = puppeteer_cmd(&[
        OsStr::new("restore"),
        OsStr::new("--from"),
        file.as_os_str(),
        OsStr::new("--data"),
        restored.as_os_str(),
    ]);
    assert!(ok, "{out}{err}");
    // Not twice into the same dir without --force.
    let (ok, _, err) = puppeteer_cmd(&[
        OsStr::new("restore"),
        OsStr::new("--from"),
        file.as_os_str(),
        OsStr::new("--data-dir"),
        restored.as_os_str(),
    ]);
    assert!(!ok && err.contains("not empty"), "{err}");

    let mut config = puppeteer::Config::new(restored.clone(), "127.0.0.1:0".parse().unwrap());
    config.poll_timeout = Duration::from_secs(1);
    let running = puppeteer::start(config).await.unwrap();
    assert!(running.new_admin_token.is_none() && !running.created_tls);
    assert_eq!(running.admin_token().unwrap(), admin_token);
    let server = TestServer {
        url: running.url(false),
        ca: ca.clone(),
        admin_token,
        running: Some(running),
        dir,
        // A backup of the data dir: sled's (PostgreSQL's is pg_dump's).
        store: puppeteer::config::StoreConfig::Sled,
    };
    let mut admin = server.admin();
    let tasks = admin
        .tasks
        .list_tasks(pb::ListTasksRequest {})
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    let got = admin.job(&job.id).await;
    assert_eq!(got.state, pb::JobState::Succeeded as i32, "{got:?}");
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    assert_eq!(admin.log(&run_id).await, b"backed up\n");
    let users = UsersClient::new(admin.channel.clone())
        .list_users(pb::ListUsersRequest {})
        .await
        .unwrap()
        .into_inner()
        .users;
    assert!(users.iter().any(|u| u.name == "alice"), "{users:?}");
    let who = UsersClient::new(server.channel(Transport::Grpc, Some(&alice)))
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.user, "alice", "alice's token still works");
    // The puppet comes back with its own state and credential.
    let puppet =
        common::RealPuppet::start_in(state_dir, &server.url, Some(&server.ca), "unused", "p1");
    admin.wait_polling("p1").await;
    let job = admin.run_on("t", &["p1"]).await;
    let done = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(done.state, pb::JobState::Succeeded as i32);
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_chunk_after_a_skip_is_the_kept_tail_and_the_skip_is_the_gap() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(1);
        c.log_limit = Some(2000);
    })
    .await;
    let (mut puppet, run_id) = started_run(&server, "true").await;
    let output: Vec<u8> = (0..50_000u32).map(|i| b'a' + (i % 23) as u8).collect();
    let c = &mut puppet.client;
    // The head, then (the run ended) the last 1000 bytes after a skip.
    c.append_log(append(&run_id, 0, &output[..1000]))
        .await
        .unwrap();
    // A skip that does not start where the server's bytes end is refused.
    let wrong = pb::AppendLogRequest {
        skipped: 10,
        ..append(&run_id, 49_000, &output[49_000..])
    };
    let err = c.append_log(wrong).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    // Nor one skipping more than its offset, or absurdly far.
    for (offset, skipped) in [(2000, 5000), (1000 + (1 << 41), 1 << 41), (u64::MAX, 1)] {
        let absurd = pb::AppendLogRequest {
            skipped,
            ..append(&run_id, offset, b"x")
        };
        let err = c.append_log(absurd).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    }
    let tail = pb::AppendLogRequest {
        skipped: 48_000,
        ..append(&run_id, 49_000, &output[49_000..])
    };
    let committed = c.append_log(tail.clone()).await.unwrap().into_inner();
    assert_eq!(committed.committed, 50_000);
    // A resend (lost answer) changes nothing.
    let again = c.append_log(tail).await.unwrap().into_inner();
    assert_eq!(again.committed, 50_000);
    c.finish_run(finish(&run_id, 50_000)).await.unwrap();

    let mut admin = server.admin();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert!(run.log_truncated);
    assert_eq!((run.log_length, run.log_dropped), (50_000, 48_000));
    let read = |offset: u64| pb::ReadLogRequest {
        run_id: run_id.clone(),
        offset,
        max_bytes: 0,
    };
    let head = admin.runs.read_log(read(0)).await.unwrap().into_inner();
    assert_eq!(head.data, &output[..1000]);
    let tail = admin.runs.read_log(read(1000)).await.unwrap().into_inner();
    assert_eq!((tail.offset, tail.skipped), (49_000, 48_000));
    assert_eq!(tail.data, &output[49_000..]);
    server.stop().await;
}

/// Bytes of request bodies the puppeteer received so far.
async fn request_bytes(addr: std::net::SocketAddr) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with("geppetto_request_bytes_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_real_puppet_sends_only_the_head_and_the_tail_of_a_log_past_the_limit() {
    let server = TestServer::start_with(|c| {
        c.log_limit = Some(8192);
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = server.running.as_ref().unwrap().metrics_addr.unwrap();
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &server.url,
        Some(&server.ca),
        &secret,
        "p1",
        // Uncompressed, so that the bytes counted are the output's.
        |c| c.compression = puppet::Compression::None,
    );
    admin.wait_polling("p1").await;
    // About 1.9 MB of output: seq 1 300000.
    admin
        .script_task("chatty", "seq 1 300000", Duration::from_secs(120))
        .await;
    let before = request_bytes(metrics).await;
    let job = admin.run_on("chatty", &["p1"]).await;
    let job = admin.wait_job(&job.id, Duration::from_secs(120)).await;
    let run_id = job.runs[0].run_id.clone();
    let received = request_bytes(metrics).await - before;
    let full: String = (1..=300_000).map(|i| format!("{i}\n")).collect();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.log_length, full.len() as u64);
    assert!(run.log_truncated);
    assert_eq!(run.log_dropped, full.len() as u64 - 8192);
    // What crossed: the kept 8 KiB and the calls' own bytes; not 1.9 MB.
    eprintln!(
        "output {} bytes, kept 8192, request bytes during the run {received}",
        full.len()
    );
    assert!(received < 64.0 * 1024.0, "{received} bytes received");
    let read = |offset: u64| pb::ReadLogRequest {
        run_id: run_id.clone(),
        offset,
        max_bytes: 0,
    };
    let head = admin.runs.read_log(read(0)).await.unwrap().into_inner();
    assert_eq!(head.data, full.as_bytes()[..4096]);
    let tail = admin.runs.read_log(read(4096)).await.unwrap().into_inner();
    assert_eq!(tail.offset, full.len() as u64 - 4096);
    assert_eq!(tail.data, full.as_bytes()[full.len() - 4096..]);
    puppet.stop().await;
    server.stop().await;
}

/// What a puppet reports is checked before it is stored: an attempt that
/// never existed is refused (300 such reports grew one run record to
/// 172 KB), an implausible start time is replaced by the puppeteer's, an
/// absurd duration is refused instead of wrapping around.
#[tokio::test]
async fn a_puppets_reports_are_checked_before_they_are_stored() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    admin
        .script_task("t", "true", Duration::from_secs(60))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    puppet.poll(1, &[]).await;
    let start = pb::StartRunRequest {
        run_id: run_id.clone(),
        attempt: 1,
        started_at: Some(prost_types::Timestamp {
            seconds: -100_000_000_000,
            nanos: 0,
        }),
    };
    puppet.client.start_run(start).await.unwrap();
    for attempt in [0, 2, 99] {
        let err = puppet
            .client
            .finish_run(pb::FinishRunRequest {
                attempt,
                ..finish(&run_id, 0)
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("has no attempt"), "{err:?}");
    }
    let err = puppet
        .client
        .finish_run(pb::FinishRunRequest {
            duration: Some(prost_types::Duration {
                seconds: 18_446_744_073_709_553,
                nanos: 0,
            }),
            ..finish(&run_id, 0)
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    puppet.client.finish_run(finish(&run_id, 0)).await.unwrap();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id })
        .await
        .unwrap()
        .into_inner();
    let started = run.started_at.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - started.seconds).abs() < 600, "{started:?}");
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    server.stop().await;
}
