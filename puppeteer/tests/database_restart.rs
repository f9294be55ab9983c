//! PostgreSQL restarted under load: the puppeteers (two nodes) wait and
//! reconnect by themselves, callers see `Unavailable` meanwhile and retry,
//! and nothing acknowledged is lost: every run of a job under way ends
//! succeeded with its whole log.
//!
//! A file of its own: restarting the test process's PostgreSQL would
//! disturb the other tests of a file.

mod common;

use std::time::Duration;

use common::{Admin, ProcServer, RealPuppet};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

const DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread")]
async fn runs_under_way_survive_a_database_restart() {
    let Some(pg) = geppetto_test_support::postgres::server() else {
        return;
    };
    let store = pg.fresh_database();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for i in 0..2 {
        let data = dir.path().join(format!("node{i}"));
        let server = ProcServer::start_with(
            &data,
            "127.0.0.1:0",
            &["--store", &store, "--poll-timeout", "5s"],
        )
        .await;
        nodes.push((data, server));
    }
    let ca = nodes[0].0.join("tls/ca.pem");
    let token = std::fs::read_to_string(nodes[0].0.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let urls = nodes
        .iter()
        .map(|(_, s)| format!("https://localhost:{}", s.port))
        .collect::<Vec<_>>();
    let all = urls.join(",");
    let admin = || {
        let slot = TokenSlot::default();
        slot.set(Some(&token)).unwrap();
        let endpoint = Endpoint {
            url: all.clone(),
            ca_file: Some(ca.clone()),
            transport: Transport::Grpc,
        };
        Admin::new(Channel::new(&endpoint, slot).unwrap())
    };
    let secret = admin().enroll_secret().await;
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let puppets: Vec<RealPuppet> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let list = format!("{},{}", urls[i % 2], urls[(i + 1) % 2]);
            RealPuppet::start(&list, Some(&ca), &secret, n)
        })
        .collect();
    for n in &names {
        admin().wait_polling(n).await;
    }
    admin()
        .script_task(
            "count",
            "for i in $(seq 1 300); do echo $i; sleep 0.02; done",
            Duration::from_secs(120),
        )
        .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin().run_on("count", &refs).await;
    wait_until_async("every run is running", DEADLINE, async || {
        let job = admin().job(&job.id).await;
        job.runs
            .iter()
            .all(|r| r.state == pb::RunState::Running as i32)
    })
    .await;

    // Kill PostgreSQL and all its processes, start it again.
    pg.restart();

    let job = admin().wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    let expected: String = (1..=300).map(|i| format!("{i}\n")).collect();
    for run in &job.runs {
        let log = admin().log(&run.run_id).await;
        assert_eq!(
            String::from_utf8_lossy(&log),
            expected,
            "the log of {}",
            run.run_id
        );
    }
    for p in puppets {
        p.stop().await;
    }
    for (_, server) in nodes {
        server.kill9().await;
    }
}
