//! Artifacts against a real puppeteer: resumable uploads checked by hash,
//! tasks pinning content, downloads permitted only to the runs that use
//! them, resumed from an offset, and paced by the bandwidth budgets of the
//! resources their runs hold.

mod common;
#[path = "common/faultproxy.rs"]
mod faultproxy;

use std::time::{Duration, Instant};

use common::{Admin, FakePuppet, TestServer, script_spec};
use geppetto_proto::client::Channel;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::artifacts_client::ArtifactsClient;
use geppetto_proto::v1::resources_client::ResourcesClient;
use geppetto_test_support::{wait_until, wait_until_async};
use sha2::{Digest, Sha256};
use tonic::Code;

const MIB: usize = 1024 * 1024;

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Deterministic bytes that differ from one artifact to the next.
fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

fn artifacts(admin: &Admin) -> ArtifactsClient<Channel> {
    ArtifactsClient::new(admin.channel.clone())
}

fn resources(admin: &Admin) -> ResourcesClient<Channel> {
    ResourcesClient::new(admin.channel.clone())
}

/// Uploads `data` as `name` in 1 MiB chunks.
async fn upload(admin: &Admin, name: &str, data: &[u8]) -> pb::Artifact {
    admin.upload_artifact(name, data).await
}

fn refs(names: &[&str]) -> Vec<pb::ArtifactRef> {
    names
        .iter()
        .map(|n| pb::ArtifactRef {
            name: n.to_string(),
            ..Default::default()
        })
        .collect()
}

async fn task_with(admin: &mut Admin, name: &str, artifacts: &[&str], needs: &[&str]) -> pb::Task {
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: name.into(),
            spec: Some(pb::RunSpec {
                artifacts: refs(artifacts),
                ..script_spec("true", Duration::from_secs(60))
            }),
            resources: needs
                .iter()
                .map(|n| pb::ResourceNeed {
                    name: n.to_string(),
                    count: 1,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Fetches a whole artifact (from `offset`), returning its bytes.
async fn fetch(
    puppet: &mut FakePuppet,
    assignment: &pb::Assignment,
    sha256: &str,
    offset: u64,
) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = puppet
        .client
        .fetch_artifact(pb::FetchArtifactRequest {
            run_id: assignment.run_id.clone(),
            attempt: assignment.attempt,
            sha256: sha256.into(),
            offset,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(chunk) = stream.message().await? {
        assert_eq!(chunk.offset, offset + out.len() as u64);
        out.extend_from_slice(&chunk.data);
    }
    Ok(out)
}

#[tokio::test]
async fn uploads_resume_are_idempotent_and_publish_only_a_matching_hash() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let mut client = artifacts(&admin);
    let data = content(1, 2 * MIB + 300_000);
    let begin = pb::BeginUploadRequest {
        name: "tool.bin".into(),
        sha256: sha(&data),
        size: data.len() as u64,
    };
    let first = client
        .begin_upload(begin.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((first.committed, first.size), (0, data.len() as u64));
    let chunk = |offset: usize, len: usize| pb::UploadChunkRequest {
        upload_id: first.upload_id.clone(),
        offset: offset as u64,
        data: data[offset..offset + len].to_vec(),
    };
    let after = client
        .upload_chunk(chunk(0, MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.committed, MIB as u64);

    // The client was cut off: beginning again resumes the same upload.
    let resumed = client
        .begin_upload(begin.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.upload_id, first.upload_id);
    assert_eq!(resumed.committed, MIB as u64);
    // A resent chunk is acknowledged and changes nothing; one overlapping
    // the end of what is held adds only its new bytes.
    let again = client
        .upload_chunk(chunk(0, MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.committed, MIB as u64);
    let overlap = client
        .upload_chunk(chunk(MIB / 2, MIB))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(overlap.committed, (MIB + MIB / 2) as u64);

    // Bad chunks: a gap, too large, past the end, an unknown upload.
    let gap = client.upload_chunk(chunk(2 * MIB, 1000)).await.unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");
    assert!(gap.message().contains("send from byte"), "{gap:?}");
    let big = client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: first.upload_id.clone(),
            offset: (MIB + MIB / 2) as u64,
            data: vec![0; MIB + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::InvalidArgument, "{big:?}");
    let past = client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: first.upload_id.clone(),
            offset: (MIB + MIB / 2) as u64,
            data: vec![0; MIB],
        })
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::InvalidArgument, "{past:?}");
    let unknown = client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: "upl-000000000000".into(),
            offset: 0,
            data: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    // Committing early is refused and publishes nothing.
    let early = client
        .commit_upload(pb::CommitUploadRequest {
            upload_id: first.upload_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");

    let mut at = MIB + MIB / 2;
    while at < data.len() {
        let len = MIB.min(data.len() - at);
        at = client
            .upload_chunk(chunk(at, len))
            .await
            .unwrap()
            .into_inner()
            .committed as usize;
    }
    let artifact = client
        .commit_upload(pb::CommitUploadRequest {
            upload_id: first.upload_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(artifact.sha256, sha(&data));
    assert_eq!(artifact.size, data.len() as u64);
    assert_eq!(artifact.uploaded_by, "admin");
    let stored = std::fs::read(
        server
            .dir
            .path()
            .join("data/artifacts")
            .join(&artifact.sha256),
    )
    .unwrap();
    assert!(stored == data, "the stored content differs");

    // The same content under another name does not travel again.
    let twin = client
        .begin_upload(pb::BeginUploadRequest {
            name: "tool-copy".into(),
            ..begin.clone()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(twin.committed, data.len() as u64);

    // Bytes that do not hash to the announced SHA-256 are never published.
    let liar = client
        .begin_upload(pb::BeginUploadRequest {
            name: "liar".into(),
            sha256: sha(b"something else"),
            size: 5,
        })
        .await
        .unwrap()
        .into_inner();
    client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: liar.upload_id.clone(),
            offset: 0,
            data: b"hello".to_vec(),
        })
        .await
        .unwrap();
    let mismatch = client
        .commit_upload(pb::CommitUploadRequest {
            upload_id: liar.upload_id,
        })
        .await
        .unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument, "{mismatch:?}");
    assert!(
        mismatch.message().contains("nothing was published"),
        "{mismatch:?}"
    );
    let missing = client
        .get_artifact(pb::GetArtifactRequest {
            name: "liar".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // Bad input at the start.
    for (name, sha256) in [
        ("", sha(b"x")),
        ("../etc", sha(b"x")),
        ("ok", "XYZ".to_string()),
        ("ok", sha(b"x").to_uppercase()),
    ] {
        let bad = client
            .begin_upload(pb::BeginUploadRequest {
                name: name.into(),
                sha256,
                size: 1,
            })
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{name}: {bad:?}");
    }
    let list = client
        .list_artifacts(pb::ListArtifactsRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = list.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["tool.bin"]);
    server.stop().await;
}

#[tokio::test]
async fn tasks_pin_artifacts_and_only_their_runs_may_fetch_them() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let one = content(2, 200_000);
    let two = content(3, 70_000);
    upload(&admin, "patch.tar.gz", &one).await;
    upload(&admin, "conf", &two).await;

    let task = task_with(&mut admin, "patch", &["patch.tar.gz", "conf"], &[]).await;
    let pinned = task.spec.unwrap().artifacts;
    assert_eq!(pinned.len(), 2);
    assert_eq!(pinned[0].sha256, sha(&one));
    assert_eq!(pinned[0].size, one.len() as u64);
    assert_eq!(pinned[0].env, "GEPPETTO_ARTIFACT_PATCH_TAR_GZ");
    assert_eq!(pinned[1].env, "GEPPETTO_ARTIFACT_CONF");

    // Unknown names and names clashing on their variable are refused.
    let unknown = admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "other".into(),
            spec: Some(pb::RunSpec {
                artifacts: refs(&["nope"]),
                ..script_spec("true", Duration::from_secs(60))
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("upload it first"), "{unknown:?}");
    upload(&admin, "patch-tar.gz", b"clash").await;
    let clash = admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "other".into(),
            spec: Some(pb::RunSpec {
                artifacts: refs(&["patch.tar.gz", "patch-tar.gz"]),
                ..script_spec("true", Duration::from_secs(60))
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::InvalidArgument, "{clash:?}");
    let clash = admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "patch".into(),
            artifacts: vec!["patch-tar.gz".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Code::InvalidArgument, "{clash:?}");

    // A removal while the latest version uses it is refused, unless forced.
    let used = artifacts(&admin)
        .remove_artifact(pb::RemoveArtifactRequest {
            name: "conf".into(),
            force: false,
        })
        .await
        .unwrap_err();
    assert_eq!(used.code(), Code::FailedPrecondition, "{used:?}");
    assert!(used.message().contains("patch"), "{used:?}");
    let shown = artifacts(&admin)
        .get_artifact(pb::GetArtifactRequest {
            name: "conf".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.used_by, ["patch"]);

    let secret = admin.enroll_secret().await;
    let mut p1 = FakePuppet::enroll(&server, &secret, "p1").await;
    let mut p2 = FakePuppet::enroll(&server, &secret, "p2").await;
    admin.run_on("patch", &["p1"]).await;
    let answer = p1.poll(1, &[]).await;
    let assignment = answer.assignments[0].clone();
    let spec = assignment.spec.clone().unwrap();
    assert_eq!(spec.artifacts, pinned);

    // A forced removal keeps the content the task version pinned.
    artifacts(&admin)
        .remove_artifact(pb::RemoveArtifactRequest {
            name: "conf".into(),
            force: true,
        })
        .await
        .unwrap();
    let got = fetch(&mut p1, &assignment, &sha(&two), 0).await.unwrap();
    assert!(got == two, "conf differs");
    let tail = fetch(&mut p1, &assignment, &sha(&one), 150_000)
        .await
        .unwrap();
    assert!(tail == one[150_000..], "the resumed tail differs");
    let end = fetch(&mut p1, &assignment, &sha(&one), one.len() as u64)
        .await
        .unwrap();
    assert!(end.is_empty());

    // What may not be fetched.
    let past = fetch(&mut p1, &assignment, &sha(&one), one.len() as u64 + 1)
        .await
        .unwrap_err();
    assert_eq!(past.code(), Code::OutOfRange, "{past:?}");
    let foreign = fetch(&mut p1, &assignment, &sha(b"clash"), 0)
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::PermissionDenied, "{foreign:?}");
    let other = fetch(&mut p2, &assignment, &sha(&one), 0)
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::PermissionDenied, "{other:?}");
    let stale = pb::Assignment {
        attempt: assignment.attempt + 1,
        ..assignment.clone()
    };
    let stale = fetch(&mut p1, &stale, &sha(&one), 0).await.unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition, "{stale:?}");
    let bad = fetch(&mut p1, &assignment, "nothex", 0).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");

    // A new upload under a name changes new versions only.
    let newer = content(4, 1000);
    upload(&admin, "patch.tar.gz", &newer).await;
    let updated = admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "patch".into(),
            artifacts: vec!["patch.tar.gz".into()],
            replace_artifacts: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let refs = updated.spec.unwrap().artifacts;
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].sha256, sha(&newer));
    let got = fetch(&mut p1, &assignment, &sha(&one), 0).await.unwrap();
    assert!(got == one, "the pinned content changed");

    // Removing the task deletes the content only its versions pinned.
    let stored = |data: &[u8]| server.dir.path().join("data/artifacts").join(sha(data));
    assert!(stored(&one).is_file() && stored(&two).is_file());
    admin
        .tasks
        .remove_task(pb::RemoveTaskRequest {
            name: "patch".into(),
        })
        .await
        .unwrap();
    assert!(!stored(&one).exists() && !stored(&two).exists());
    assert!(stored(&newer).is_file(), "the name still points at it");
    server.stop().await;
}

#[tokio::test]
async fn resources_take_and_show_a_bandwidth_budget() {
    let server = TestServer::start().await;
    let admin = server.admin();
    let mut client = resources(&admin);
    let created = client
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink-lyon".into(),
            capacity: 2,
            bandwidth: 48 * 1024,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((created.capacity, created.bandwidth), (2, 48 * 1024));
    // Only the budget changes; capacity 0 keeps the capacity.
    let updated = client
        .update_resource(pb::UpdateResourceRequest {
            site: None,
            name: "uplink-lyon".into(),
            capacity: 0,
            bandwidth: Some(1000),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((updated.capacity, updated.bandwidth), (2, 1000));
    let resized = client
        .update_resource(pb::UpdateResourceRequest {
            site: None,
            name: "uplink-lyon".into(),
            capacity: 3,
            bandwidth: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((resized.capacity, resized.bandwidth), (3, 1000));
    let nothing = client
        .update_resource(pb::UpdateResourceRequest {
            site: None,
            name: "uplink-lyon".into(),
            capacity: 0,
            bandwidth: None,
        })
        .await
        .unwrap_err();
    assert_eq!(nothing.code(), Code::InvalidArgument, "{nothing:?}");
    let huge = client
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "huge".into(),
            capacity: 1,
            bandwidth: u64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::InvalidArgument, "{huge:?}");
    server.stop().await;
}

#[tokio::test]
async fn concurrent_downloads_share_the_budget_of_the_resource_they_hold() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    const BUDGET: u64 = 64 * 1024;
    resources(&admin)
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink".into(),
            capacity: 2,
            bandwidth: BUDGET,
        })
        .await
        .unwrap();
    let data = content(5, 96 * 1024);
    upload(&admin, "blob", &data).await;
    task_with(&mut admin, "budgeted", &["blob"], &["uplink"]).await;
    task_with(&mut admin, "free", &["blob"], &[]).await;
    let secret = admin.enroll_secret().await;
    let mut p1 = FakePuppet::enroll(&server, &secret, "p1").await;
    let mut p2 = FakePuppet::enroll(&server, &secret, "p2").await;
    admin.run_on("budgeted", &["p1", "p2"]).await;
    let a1 = p1.poll(1, &[]).await.assignments[0].clone();
    let a2 = p2.poll(1, &[]).await.assignments[0].clone();

    let started = Instant::now();
    let digest = sha(&data);
    let (r1, r2) = tokio::join!(
        fetch(&mut p1, &a1, &digest, 0),
        fetch(&mut p2, &a2, &digest, 0)
    );
    let elapsed = started.elapsed();
    assert!(r1.unwrap() == data && r2.unwrap() == data);
    // Both downloads draw on one budget: together they cannot beat it,
    // beyond the one chunk a full bucket lets through at once.
    let burst = BUDGET / 8;
    let floor = Duration::from_secs_f64((2 * data.len() as u64 - burst) as f64 / BUDGET as f64);
    eprintln!(
        "two downloads of {} bytes on a {BUDGET} B/s budget: {elapsed:?} (floor {floor:?})",
        data.len()
    );
    assert!(elapsed >= floor, "{elapsed:?} < {floor:?}");

    // A run holding no budgeted resource is not paced.
    p1.client
        .finish_run(pb::FinishRunRequest {
            run_id: a1.run_id.clone(),
            attempt: a1.attempt,
            outcome: pb::Outcome::Exited as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    admin.run_on("free", &["p1"]).await;
    let a3 = p1.poll(1, &[]).await.assignments[0].clone();
    let started = Instant::now();
    fetch(&mut p1, &a3, &digest, 0).await.unwrap();
    assert!(started.elapsed() < floor / 2, "{:?}", started.elapsed());
    server.stop().await;
}

/// The artifact bytes the puppeteer streamed so far.
async fn bytes_sent(server: &TestServer) -> u64 {
    let addr = server.running.as_ref().unwrap().metrics_addr.unwrap();
    common::scrape_metrics(addr)
        .await
        .get("geppetto_artifact_bytes_sent_total")
        .copied()
        .unwrap_or(0.0) as u64
}

async fn metered_server() -> TestServer {
    TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

/// A task whose script prints the SHA-256 of each artifact it gets.
async fn hashing_task(
    admin: &mut Admin,
    name: &str,
    artifacts: &[&str],
    retries: u32,
    needs: &[&str],
) {
    let body: String = artifacts
        .iter()
        .map(|a| format!("sha256sum \"${}\"\n", artifact_env(a)))
        .collect();
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: name.into(),
            spec: Some(pb::RunSpec {
                artifacts: refs(artifacts),
                ..script_spec(&body, Duration::from_secs(60))
            }),
            retries,
            resources: needs
                .iter()
                .map(|n| pb::ResourceNeed {
                    name: n.to_string(),
                    count: 1,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn artifact_env(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("GEPPETTO_ARTIFACT_{tail}")
}

/// Runs `task` on `puppet` to its end; returns the run and its output.
async fn run_to_end(admin: &mut Admin, task: &str, puppet: &str) -> (pb::Run, String) {
    let job = admin.run_on(task, &[puppet]).await;
    admin.wait_job(&job.id, Duration::from_secs(60)).await;
    let run_id = job.runs[0].run_id.clone();
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    let log = String::from_utf8(admin.log(&run_id).await).unwrap();
    (run, log)
}

#[tokio::test]
async fn real_puppets_fetch_artifacts_once_verify_them_and_hand_their_paths_to_the_run() {
    let server = metered_server().await;
    let mut admin = server.admin();
    let big = content(6, 1536 * 1024);
    let small = content(7, 10_000);
    upload(&admin, "big.bin", &big).await;
    upload(&admin, "small.txt", &small).await;
    hashing_task(&mut admin, "use", &["big.bin", "small.txt"], 0, &[]).await;
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;

    let (run, log) = run_to_end(&mut admin, "use", "p1").await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}\n{log}");
    assert!(
        log.contains(&sha(&big)) && log.contains(&sha(&small)),
        "{log}"
    );
    let cache = puppet.state_dir.path().join("state/cache");
    assert!(
        log.contains(&cache.join(sha(&big)).display().to_string()),
        "{log}"
    );
    let sent = bytes_sent(&server).await;
    assert_eq!(sent, (big.len() + small.len()) as u64);

    // A second run finds both in the cache: nothing crosses the link again.
    let (run, log) = run_to_end(&mut admin, "use", "p1").await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}\n{log}");
    assert!(log.contains(&sha(&big)), "{log}");
    assert_eq!(bytes_sent(&server).await, sent, "the cache was not used");

    // A cached file damaged on disk is detected, deleted and fetched again.
    let cached = cache.join(sha(&big));
    let mut damaged = std::fs::read(&cached).unwrap();
    damaged[1000] ^= 0xff;
    std::fs::write(&cached, &damaged).unwrap();
    let (run, log) = run_to_end(&mut admin, "use", "p1").await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}\n{log}");
    assert!(log.contains(&sha(&big)), "{log}");
    assert_eq!(bytes_sent(&server).await, sent + big.len() as u64);
    assert!(std::fs::read(&cached).unwrap() == big);

    // Content that never hashes right (damaged on the server) fails the run
    // before it starts, with the reason, after one more try.
    std::fs::remove_file(cache.join(sha(&small))).unwrap();
    let stored = server.dir.path().join("data/artifacts").join(sha(&small));
    let mut bad = small.clone();
    bad[0] ^= 0xff;
    std::fs::write(&stored, &bad).unwrap();
    let (run, log) = run_to_end(&mut admin, "use", "p1").await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
    assert_eq!(run.outcome, pb::Outcome::StartFailed as i32, "{run:?}");
    assert!(run.cause.contains("does not match its SHA-256"), "{run:?}");
    assert!(log.is_empty(), "the script ran: {log}");
    assert!(!cache.join(format!("{}.part", sha(&small))).exists());
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_download_cut_by_a_puppet_kill_resumes_from_the_bytes_it_held() {
    let server = metered_server().await;
    let mut admin = server.admin();
    // A budget slows the download enough to cut it in the middle.
    const BUDGET: u64 = 256 * 1024;
    resources(&admin)
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink".into(),
            capacity: 1,
            bandwidth: BUDGET,
        })
        .await
        .unwrap();
    let data = content(8, 1024 * 1024);
    upload(&admin, "patch.bin", &data).await;
    hashing_task(&mut admin, "patch", &["patch.bin"], 1, &["uplink"]).await;
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let job = admin.run_on("patch", &["p1"]).await;

    let part = puppet
        .state_dir
        .path()
        .join(format!("state/cache/{}.part", sha(&data)));
    wait_until(
        "a third of the artifact is downloaded",
        Duration::from_secs(30),
        || std::fs::metadata(&part).is_ok_and(|m| m.len() > data.len() as u64 / 3),
    )
    .await;
    let state_dir = puppet.kill().await;
    let sent_before = bytes_sent(&server).await;
    let held = std::fs::metadata(&part).unwrap().len();
    assert!(
        held < data.len() as u64,
        "the download finished before the kill"
    );

    // The restarted puppet reports the run interrupted; its retry fetches
    // only what the partial file lacks.
    let puppet =
        common::RealPuppet::start_in(state_dir, &server.url, Some(&server.ca), &secret, "p1");
    let ended = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    let run = admin
        .runs
        .get_run(pb::GetRunRequest {
            id: job.runs[0].run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        run.state,
        pb::RunState::Succeeded as i32,
        "{ended:?}\n{run:?}"
    );
    assert_eq!(run.attempt, 2, "{run:?}");
    let log = String::from_utf8(admin.log(&run.id).await).unwrap();
    assert!(log.contains(&sha(&data)), "{log}");
    let resent = bytes_sent(&server).await - sent_before;
    // A chunk or two may have been in flight when the puppet died.
    let slack = 2 * 64 * 1024;
    eprintln!(
        "held {held} of {} bytes at the kill; {resent} bytes sent after it",
        data.len()
    );
    assert!(
        resent <= data.len() as u64 - held + slack,
        "resent {resent}, held {held}"
    );
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_download_cut_by_the_link_resumes_in_the_same_attempt() {
    let server = metered_server().await;
    let mut admin = server.admin();
    const BUDGET: u64 = 256 * 1024;
    resources(&admin)
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink".into(),
            capacity: 1,
            bandwidth: BUDGET,
        })
        .await
        .unwrap();
    let data = content(9, 1024 * 1024);
    upload(&admin, "patch.bin", &data).await;
    hashing_task(&mut admin, "patch", &["patch.bin"], 0, &["uplink"]).await;
    let upstream = server.running.as_ref().unwrap().addr;
    let proxy = faultproxy::FaultProxy::start(upstream).await;
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&proxy.url(), Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let job = admin.run_on("patch", &["p1"]).await;
    let part = puppet
        .state_dir
        .path()
        .join(format!("state/cache/{}.part", sha(&data)));
    wait_until(
        "a third of the artifact is downloaded",
        Duration::from_secs(30),
        || std::fs::metadata(&part).is_ok_and(|m| m.len() > data.len() as u64 / 3),
    )
    .await;
    // Every connection (the stream and the held poll) is cut at once.
    proxy.cut_all();
    let sent_before = bytes_sent(&server).await;
    let held = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    admin.wait_job(&job.id, Duration::from_secs(60)).await;
    let run = admin
        .runs
        .get_run(pb::GetRunRequest {
            id: job.runs[0].run_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.attempt, 1, "the cut cost the attempt: {run:?}");
    let log = String::from_utf8(admin.log(&run.id).await).unwrap();
    assert!(log.contains(&sha(&data)), "{log}");
    let resent = bytes_sent(&server).await - sent_before;
    eprintln!(
        "held {held} of {} bytes at the cut; {resent} bytes sent after it",
        data.len()
    );
    let slack = 2 * 64 * 1024;
    assert!(
        resent <= data.len() as u64 - held + slack,
        "resent {resent}, held {held}"
    );
    puppet.stop().await;
    server.stop().await;
}

/// An upload nobody finishes is discarded once it is older than the
/// retention's `upload_max_age`, with its partial file; so is a partial
/// file no upload owns (left by a crash between the two deletions).
#[tokio::test]
async fn abandoned_uploads_are_discarded_with_their_partial_files() {
    let server = TestServer::start_with(|c| {
        c.retention.upload_max_age = Duration::from_secs(1);
        c.retention.interval = Duration::from_secs(1);
    })
    .await;
    let admin = server.admin();
    let mut client = artifacts(&admin);
    let data = content(7, MIB);
    let begun = client
        .begin_upload(pb::BeginUploadRequest {
            name: "abandoned.bin".into(),
            sha256: sha(&data),
            size: data.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: begun.upload_id.clone(),
            offset: 0,
            data: data[..1000].to_vec(),
        })
        .await
        .unwrap();
    let uploads = server.dir.path().join("data/artifacts/uploads");
    let partial = uploads.join(&begun.upload_id);
    assert!(partial.exists(), "the partial file is where expected");
    let stray = uploads.join("upload-left-by-a-crash");
    std::fs::write(&stray, b"half").unwrap();

    wait_until(
        "the abandoned upload is discarded",
        Duration::from_secs(30),
        || !partial.exists() && !stray.exists(),
    )
    .await;
    let err = client
        .upload_chunk(pb::UploadChunkRequest {
            upload_id: begun.upload_id.clone(),
            offset: 1000,
            data: data[1000..2000].to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    // Beginning again starts over, from byte 0.
    let again = client
        .begin_upload(pb::BeginUploadRequest {
            name: "abandoned.bin".into(),
            sha256: sha(&data),
            size: data.len() as u64,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.committed, 0);
    assert_ne!(again.upload_id, begun.upload_id);
    server.stop().await;
}

#[tokio::test]
async fn a_run_fetching_its_artifacts_says_so_with_bytes_rate_and_estimate() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    // 1 MiB at 128 KiB/s: about 8 s of fetching.
    const BUDGET: u64 = 128 * 1024;
    resources(&admin)
        .create_resource(pb::CreateResourceRequest {
            site: String::new(),
            name: "uplink".into(),
            capacity: 1,
            bandwidth: BUDGET,
        })
        .await
        .unwrap();
    let data = content(9, 1024 * 1024);
    upload(&admin, "patch.bin", &data).await;
    hashing_task(&mut admin, "patch", &["patch.bin"], 0, &["uplink"]).await;
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    let job = admin.run_on("patch", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();

    // Mid-download: the run and its job both show the fetch.
    let fetch = wait_until_async(
        "the run shows its fetch under way",
        Duration::from_secs(60),
        async || {
            let run = admin
                .runs
                .get_run(pb::GetRunRequest { id: run_id.clone() })
                .await
                .unwrap()
                .into_inner();
            match run.fetch.clone() {
                Some(fetch) if fetch.bytes_per_second > 0 && fetch.bytes_done > 0 => Ok(fetch),
                _ => Err(format!("{run:?}")),
            }
        },
    )
    .await;
    assert_eq!(fetch.artifacts, vec!["patch.bin"]);
    assert_eq!(fetch.bytes_total, data.len() as u64);
    assert!(fetch.bytes_done < fetch.bytes_total, "{fetch:?}");
    // Paced by the budget: the rate shown is about it, and so the estimate.
    assert!(
        fetch.bytes_per_second <= BUDGET * 2,
        "rate {} for a budget of {BUDGET}",
        fetch.bytes_per_second
    );
    assert!(
        fetch.eta.is_some() && fetch.started_at.is_some(),
        "{fetch:?}"
    );
    let shown = admin.job(&job.id).await;
    assert!(shown.runs[0].fetch.is_some(), "{shown:?}");

    // Done: no fetch any more, and the timeline keeps how long it took.
    let ended = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(ended.runs[0].state, pb::RunState::Succeeded as i32);
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id })
        .await
        .unwrap()
        .into_inner();
    assert!(run.fetch.is_none(), "{run:?}");
    let noted = run
        .history
        .iter()
        .find(|t| {
            t.cause
                .starts_with("fetched artifact patch.bin: 1.0 MiB from the puppeteer in ")
        })
        .unwrap_or_else(|| panic!("no fetch in the history: {:?}", run.history));
    assert_eq!(noted.state, pb::RunState::Running as i32);
    puppet.stop().await;
    server.stop().await;
}

/// An upload is its beginner's: another operator can neither add to it nor
/// commit it, and beginning the same content gets them an upload of their
/// own; a user's unfinished uploads are bounded.
#[tokio::test]
async fn an_upload_belongs_to_the_user_who_began_it() {
    use geppetto_proto::v1::tokens_client::TokensClient;
    use geppetto_proto::v1::users_client::UsersClient;
    let server = TestServer::start().await;
    let admin = server.admin();
    UsersClient::new(admin.channel.clone())
        .add_user(pb::AddUserRequest {
            name: "otto".into(),
            role: pb::Role::Operator as i32,
        })
        .await
        .unwrap();
    let otto_token = TokensClient::new(admin.channel.clone())
        .create_token(pb::CreateTokenRequest {
            user: "otto".into(),
            name: "t".into(),
            ttl: None,
        })
        .await
        .unwrap()
        .into_inner()
        .secret;
    let mut otto = ArtifactsClient::new(
        server.channel(geppetto_proto::client::Transport::Grpc, Some(&otto_token)),
    );
    let mut client = artifacts(&admin);
    let data = content(7, 1000);
    let begin = pb::BeginUploadRequest {
        name: "mine.bin".into(),
        sha256: sha(&data),
        size: data.len() as u64,
    };
    let upload = client
        .begin_upload(begin.clone())
        .await
        .unwrap()
        .into_inner();
    let chunk = pb::UploadChunkRequest {
        upload_id: upload.upload_id.clone(),
        offset: 0,
        data: data.clone(),
    };
    let refused = otto.upload_chunk(chunk.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let theirs = otto.begin_upload(begin.clone()).await.unwrap().into_inner();
    assert_ne!(theirs.upload_id, upload.upload_id);
    client.upload_chunk(chunk).await.unwrap();
    let commit = pb::CommitUploadRequest {
        upload_id: upload.upload_id.clone(),
    };
    let refused = otto.commit_upload(commit.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    client.commit_upload(commit).await.unwrap();

    // Otto has one unfinished upload; fifteen more are allowed, not sixteen.
    for i in 1..puppeteer::api::MAX_OPEN_UPLOADS {
        otto.begin_upload(pb::BeginUploadRequest {
            name: format!("many-{i}.bin"),
            ..begin.clone()
        })
        .await
        .unwrap();
    }
    let refused = otto
        .begin_upload(pb::BeginUploadRequest {
            name: "one-too-many.bin".into(),
            ..begin.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("unfinished uploads"),
        "{refused:?}"
    );
    server.stop().await;
}
