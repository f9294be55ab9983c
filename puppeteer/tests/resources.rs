//! Shared resources with real puppets: capacity is never exceeded, not under
//! load, not across a `kill -9` of the puppeteer, and a dead puppet does not
//! hold a resource past its lease.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Admin, ProcServer, RealPuppet, TestServer, process_alive};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_test_support::{wait_until, wait_until_async};

const DEADLINE: Duration = Duration::from_secs(120);

/// A script recording when it held the resource: "START END" in nanoseconds.
fn interval_script(file: &Path, hold: &str) -> String {
    format!(
        "start=$(date +%s%N)\nsleep {hold}\nend=$(date +%s%N)\necho \"$start $end\" >> {}",
        file.display()
    )
}

/// Reads the recorded intervals and checks that none overlaps another.
fn assert_no_overlap(file: &Path, expected: usize) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut intervals: Vec<(u128, u128)> = text
        .lines()
        .map(|l| {
            let (a, b) = l.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    assert_eq!(intervals.len(), expected, "{text}");
    intervals.sort();
    for pair in intervals.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "two runs held the capacity-1 resource at once: {pair:?}"
        );
    }
}

#[tokio::test]
async fn ten_puppets_share_a_capacity_one_resource() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let names: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    let puppets: Vec<RealPuppet> = names
        .iter()
        .map(|n| RealPuppet::start(&server.url, Some(&server.ca), &secret, n))
        .collect();
    for n in &names {
        admin.wait_polling(n).await;
    }
    admin.resource("uplink", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("intervals");
    admin
        .task_needing("patch", &interval_script(&file, "0.2"), "uplink")
        .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin.run_on("patch", &refs).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_no_overlap(&file, 10);
    let resource =
        geppetto_proto::v1::resources_client::ResourcesClient::new(admin.channel.clone())
            .get_resource(pb::GetResourceRequest {
                name: "uplink".into(),
            })
            .await
            .unwrap()
            .into_inner();
    assert_eq!(resource.used, 0, "everything was released");
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn capacity_holds_across_a_kill_9_of_the_puppeteer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = ProcServer::start(&data, 0, "5s").await;
    let port = server.port;
    let url = format!("https://localhost:{port}");
    let ca = data.join("tls/ca.pem");
    let token = std::fs::read_to_string(data.join("admin-token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = || {
        let slot = TokenSlot::default();
        slot.set(Some(&token)).unwrap();
        let endpoint = Endpoint {
            url: url.clone(),
            ca_file: Some(ca.clone()),
            transport: Transport::Grpc,
        };
        Admin::new(Channel::new(&endpoint, slot).unwrap())
    };
    let secret = admin().enroll_secret().await;
    let names: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    let puppets: Vec<RealPuppet> = names
        .iter()
        .map(|n| RealPuppet::start(&url, Some(&ca), &secret, n))
        .collect();
    for n in &names {
        admin().wait_polling(n).await;
    }
    admin().resource("uplink", 1).await;
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("intervals");
    admin()
        .task_needing("patch", &interval_script(&file, "1"), "uplink")
        .await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin().run_on("patch", &refs).await;
    // Kill it while one run holds the resource and the others wait.
    wait_until_async("one run holds the resource", DEADLINE, async || {
        let job = admin().job(&job.id).await;
        let running = job
            .runs
            .iter()
            .filter(|r| r.state == pb::RunState::Running as i32)
            .count();
        running == 1
    })
    .await;
    let server = ProcServer::start(&data, server.kill9().await, "5s").await;
    let job = admin().wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_no_overlap(&file, 4);
    for p in puppets {
        p.stop().await;
    }
    server.kill9().await;
}

#[tokio::test]
async fn a_dead_puppet_releases_its_resource_when_its_lease_expires() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(2);
        c.max_poll_hold = Duration::from_secs(2);
        c.lease_timeout = Some(Duration::from_secs(3));
    })
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let doomed = RealPuppet::start(&server.url, Some(&server.ca), &secret, "doomed");
    let other = RealPuppet::start(&server.url, Some(&server.ca), &secret, "other");
    admin.wait_polling("doomed").await;
    admin.wait_polling("other").await;
    admin.resource("uplink", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    admin
        .task_needing(
            "hog",
            &format!("echo $$ > {}\nsleep 300", pidfile.display()),
            "uplink",
        )
        .await;
    admin.task_needing("quick", "echo got it", "uplink").await;
    let hog = admin.run_on("hog", &["doomed"]).await;
    wait_until("the hog runs", DEADLINE, || pidfile.exists()).await;
    let quick = admin.run_on("quick", &["other"]).await;

    // The puppet dies without a word; its child is killed by the test.
    let _state = doomed.kill().await;
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    wait_until("the orphan is gone", DEADLINE, || {
        !process_alive(pid as u32)
    })
    .await;

    let quick = admin.wait_job(&quick.id, DEADLINE).await;
    assert_eq!(quick.state, pb::JobState::Succeeded as i32, "{quick:?}");
    let hog = admin.wait_job(&hog.id, DEADLINE).await;
    assert_eq!(hog.runs[0].state, pb::RunState::Lost as i32, "{hog:?}");
    other.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn waiting_runs_are_served_in_fifo_order_per_resource() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let list = ["p1", "p2", "p3"];
    let puppets: Vec<RealPuppet> = list
        .iter()
        .map(|n| RealPuppet::start(&server.url, Some(&server.ca), &secret, n))
        .collect();
    for n in list {
        admin.wait_polling(n).await;
    }
    admin.resource("uplink", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("order");
    let gate = dir.path().join("gate");
    // The hog holds the resource until the test has queued the others.
    admin
        .task_needing(
            "hog",
            &format!("while [ ! -e {} ]; do sleep 0.05; done", gate.display()),
            "uplink",
        )
        .await;
    for tag in ["first", "second", "third", "fourth"] {
        admin
            .task_needing(tag, &format!("echo {tag} >> {}", file.display()), "uplink")
            .await;
    }
    let hog = admin.run_on("hog", &["p1"]).await;
    // Created in this order, on puppets that alternate.
    let mut jobs = Vec::new();
    for (tag, puppet) in [
        ("first", "p3"),
        ("second", "p2"),
        ("third", "p3"),
        ("fourth", "p2"),
    ] {
        jobs.push(admin.run_on(tag, &[puppet]).await);
    }
    std::fs::write(&gate, b"go").unwrap();
    admin.wait_job(&hog.id, DEADLINE).await;
    for job in &jobs {
        let job = admin.wait_job(&job.id, DEADLINE).await;
        assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    }
    let order = std::fs::read_to_string(&file).unwrap();
    assert_eq!(order, "first\nsecond\nthird\nfourth\n");
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}
