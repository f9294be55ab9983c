//! The site peer cache with a real puppeteer and real puppets (in this
//! process, on loopback): the puppets of a site fetch an artifact across
//! the site's uplink once and from each other otherwise; a peer serving
//! wrong bytes, or one nobody can reach, delays a fetch but never fails a
//! run or hands it wrong bytes. (The same across an emulated slow uplink:
//! `tests/faults.rs`.)

mod common;

use std::time::Duration;

use common::{Admin, RealPuppet, TestServer, script_spec};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::artifacts_client::ArtifactsClient;
use geppetto_proto::v1::resources_client::ResourcesClient;
use sha2::{Digest, Sha256};

const DEADLINE: Duration = Duration::from_secs(120);

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Bytes of artifact content the puppeteer sent, in all.
async fn sent(server: &TestServer) -> u64 {
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

/// A puppet of site `lab` serving its cache on a free loopback port (or
/// telling its peers `advertise`).
fn peer(server: &TestServer, secret: &str, name: &str, advertise: Option<&str>) -> RealPuppet {
    let advertise = advertise.map(str::to_string);
    RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &server.url,
        Some(&server.ca),
        secret,
        name,
        |c| {
            c.labels.insert("site".into(), "lab".into());
            c.peer_listen = Some("127.0.0.1:0".parse().unwrap());
            c.peer_advertise = advertise;
        },
    )
}

/// A task printing the SHA-256 of artifact `blob`.
async fn hashing_task(admin: &mut Admin) {
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "use".into(),
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "blob".into(),
                    ..Default::default()
                }],
                ..script_spec(
                    "sha256sum \"$GEPPETTO_ARTIFACT_BLOB\" | cut -d' ' -f1",
                    Duration::from_secs(60),
                )
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

async fn copies(admin: &Admin) -> Vec<pb::ArtifactCopy> {
    ArtifactsClient::new(admin.channel.clone())
        .get_artifact(pb::GetArtifactRequest {
            name: "blob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .copies
}

/// Runs `use` on `puppets`; every run succeeds and prints `digest`.
/// Returns the runs.
async fn run_all(admin: &mut Admin, puppets: &[&str], digest: &str) -> Vec<pb::Run> {
    let job = admin.run_on("use", puppets).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    let mut runs = Vec::new();
    for r in &job.runs {
        let run = admin
            .runs
            .get_run(pb::GetRunRequest {
                id: r.run_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let log = String::from_utf8(admin.log(&r.run_id).await).unwrap();
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}\n{log}");
        assert_eq!(log.trim(), digest, "{}", run.puppet);
        runs.push(run);
    }
    runs
}

/// Four puppets of a site, an artifact behind a budgeted uplink: the
/// puppeteer sends it once; the other three get it from peers (one of them
/// while its source was still receiving it), each copy checked by hash.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_site_fetches_across_its_uplink_once_and_the_rest_from_peers() {
    let server = metered_server().await;
    let mut admin = server.admin();
    // A slow uplink: the first fetch takes about 4 s, so the others ask
    // while it is still receiving.
    ResourcesClient::new(admin.channel.clone())
        .create_resource(pb::CreateResourceRequest {
            name: "uplink-lab".into(),
            capacity: 10,
            bandwidth: 512 * 1024,
            site: "lab".into(),
        })
        .await
        .unwrap();
    let data = content(3, 2 * 1024 * 1024 + 5);
    admin.upload_artifact("blob", &data).await;
    hashing_task(&mut admin).await;
    let secret = admin.enroll_secret().await;
    let names = ["s1", "s2", "s3", "s4"];
    let puppets: Vec<RealPuppet> = names
        .iter()
        .map(|n| peer(&server, &secret, n, None))
        .collect();
    for n in names {
        admin.wait_polling(n).await;
    }
    run_all(&mut admin, &names, &sha(&data)).await;

    let uplink = sent(&server).await;
    assert!(
        uplink as f64 <= data.len() as f64 * 1.1,
        "the uplink carried {uplink} bytes for a {}-byte artifact",
        data.len()
    );
    let copies = copies(&admin).await;
    assert_eq!(copies.len(), 4, "{copies:?}");
    assert!(
        copies.iter().all(|c| c.held && c.site == "lab"),
        "{copies:?}"
    );
    let from_peers = copies.iter().filter(|c| !c.source.is_empty()).count();
    assert_eq!(from_peers, 3, "{copies:?}");

    // s1 evicts the content: the next fetcher sent to it finds it gone,
    // the puppeteer forgets that copy, and another peer serves.
    let cached = puppets[0]
        .state_dir
        .path()
        .join("state/cache")
        .join(sha(&data));
    std::fs::remove_file(&cached).unwrap();
    let late = peer(&server, &secret, "s5", None);
    admin.wait_polling("s5").await;
    let before = sent(&server).await;
    let runs = run_all(&mut admin, &["s5"], &sha(&data)).await;
    let history: Vec<&str> = runs[0].history.iter().map(|t| t.cause.as_str()).collect();
    assert!(
        history.iter().any(|c| c.contains("from peer s")
            && c.contains("peer s1 dropped: the peer does not hold the content")),
        "{history:#?}"
    );
    assert_eq!(
        sent(&server).await,
        before,
        "nothing more crossed the uplink"
    );
    let copies = self::copies(&admin).await;
    assert!(!copies.iter().any(|c| c.puppet == "s1"), "{copies:?}");
    late.stop().await;
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}

/// A peer whose copy went bad on its disk serves wrong bytes: the fetcher
/// finds the hash wrong, reports the peer and fetches elsewhere; its run
/// succeeds with the right bytes, and the copy shows the failure. A peer
/// nobody can reach (its advertised address is closed) is dropped for the
/// puppeteer, with the cause in the run's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn corrupt_and_unreachable_peers_delay_a_fetch_but_never_fail_it() {
    let server = metered_server().await;
    let mut admin = server.admin();
    let data = content(9, 700 * 1024);
    admin.upload_artifact("blob", &data).await;
    hashing_task(&mut admin).await;
    let secret = admin.enroll_secret().await;

    // One holder, whose cached copy is then damaged.
    let holder = peer(&server, &secret, "h1", None);
    admin.wait_polling("h1").await;
    run_all(&mut admin, &["h1"], &sha(&data)).await;
    let cached = holder.state_dir.path().join("state/cache").join(sha(&data));
    let mut bad = std::fs::read(&cached).unwrap();
    bad[1234] ^= 0xff;
    std::fs::write(&cached, &bad).unwrap();
    let before = sent(&server).await;

    let fetcher = peer(&server, &secret, "f1", None);
    admin.wait_polling("f1").await;
    let runs = run_all(&mut admin, &["f1"], &sha(&data)).await;
    let history: Vec<&str> = runs[0].history.iter().map(|t| t.cause.as_str()).collect();
    assert!(
        history
            .iter()
            .any(|c| c.contains("peer h1 dropped: served bytes that do not match")),
        "{history:#?}"
    );
    let copies = copies(&admin).await;
    let h1 = copies.iter().find(|c| c.puppet == "h1").unwrap();
    assert!(h1.last_failure.contains("do not match"), "{h1:?}");
    assert!(h1.suspect_until.is_some(), "{h1:?}");
    // The good bytes came from the puppeteer after the bad ones.
    assert_eq!(sent(&server).await - before, data.len() as u64);

    // A peer that advertises a closed port: the next fetcher cannot reach
    // it and falls back; the cause is in its run's history.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = peer(&server, &secret, "u1", Some(&format!("127.0.0.1:{port}")));
    admin.wait_polling("u1").await;
    // u1 fetches first (h1 is suspect, f1 serves: u1 gets it from f1).
    run_all(&mut admin, &["u1"], &sha(&data)).await;
    // f1 stops serving: the next fetcher's only peer is u1, unreachable.
    fetcher.stop().await;
    let last = peer(&server, &secret, "l1", None);
    admin.wait_polling("l1").await;
    let runs = run_all(&mut admin, &["l1"], &sha(&data)).await;
    let history: Vec<&str> = runs[0].history.iter().map(|t| t.cause.as_str()).collect();
    assert!(
        history
            .iter()
            .any(|c| c.contains("peer u1 dropped: cannot connect")),
        "{history:#?}"
    );
    for p in [holder, unreachable, last] {
        p.stop().await;
    }
    server.stop().await;
}
