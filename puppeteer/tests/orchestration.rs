//! Rollout strategies, dependencies, approval gates and classes with real
//! puppets (thresholds of a few seconds, waits on conditions).

mod common;

use std::time::Duration;

use common::{RealPuppet, TestServer, script_spec};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;
use pb::target::Kind;

const DEADLINE: Duration = Duration::from_secs(120);

fn secs(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: n,
        nanos: 0,
    })
}

fn names(list: &[&str]) -> Kind {
    Kind::Puppets(pb::PuppetNames {
        names: list.iter().map(|s| s.to_string()).collect(),
    })
}

fn state_of(job: &pb::Job, puppet: &str) -> (i32, String) {
    let run = job.runs.iter().find(|r| r.puppet == puppet).unwrap();
    (run.state, run.cause.clone())
}

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(2);
        c.max_poll_hold = Duration::from_secs(2);
    })
    .await
}

#[tokio::test]
async fn a_rolling_job_bypasses_a_puppet_that_died_and_retries_it_later() {
    let server = server().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let list = ["p1", "p2", "p3", "p4", "p5"];
    let mut puppets: Vec<Option<RealPuppet>> = list
        .iter()
        .map(|n| Some(RealPuppet::start(&server.url, Some(&server.ca), &secret, n)))
        .collect();
    for n in list {
        admin.wait_polling(n).await;
    }
    admin
        .script_task("step", "sleep 0.5; echo done", Duration::from_secs(60))
        .await;
    let job = admin
        .run_with(
            "step",
            names(&list),
            pb::Strategy {
                rolling: true,
                offline_wait: secs(2),
                ..Default::default()
            },
        )
        .await;
    // p3 dies while p1 runs.
    let j = wait_until_async("p1 runs", DEADLINE, async || {
        let j = admin.job(&job.id).await;
        (state_of(&j, "p1").0 == pb::RunState::Running as i32).then_some(j)
    })
    .await;
    // One at a time.
    let busy = j
        .runs
        .iter()
        .filter(|r| {
            r.state == pb::RunState::Running as i32 || r.state == pb::RunState::Offered as i32
        })
        .count();
    assert_eq!(busy, 1, "{j:?}");
    let p3_state = puppets[2].take().unwrap().kill().await;

    let job = admin.wait_job(&job.id, DEADLINE).await;
    for p in ["p1", "p2", "p4", "p5"] {
        assert_eq!(
            state_of(&job, p).0,
            pb::RunState::Succeeded as i32,
            "{p}: {job:?}"
        );
    }
    let (state, cause) = state_of(&job, "p3");
    assert_eq!(state, pb::RunState::Skipped as i32, "{job:?}");
    assert!(cause.contains("offline"), "{cause}");

    // p3 comes back; the skipped run is retried.
    puppets[2] = Some(RealPuppet::start_in(
        p3_state,
        &server.url,
        Some(&server.ca),
        &secret,
        "p3",
    ));
    admin.wait_polling("p3").await;
    admin
        .jobs
        .retry_job(pb::RetryJobRequest {
            id: job.id.clone(),
            only: "skipped".into(),
        })
        .await
        .unwrap();
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    for p in puppets.into_iter().flatten() {
        p.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn max_failures_stops_a_failing_rollout() {
    let server = server().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let list = ["a", "b", "c", "d"];
    let puppets: Vec<RealPuppet> = list
        .iter()
        .map(|n| RealPuppet::start(&server.url, Some(&server.ca), &secret, n))
        .collect();
    for n in list {
        admin.wait_polling(n).await;
    }
    admin
        .script_task("broken", "echo trying; exit 1", Duration::from_secs(60))
        .await;
    let job = admin
        .run_with(
            "broken",
            names(&list),
            pb::Strategy {
                max_in_flight: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1)),
                }),
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1)),
                }),
                ..Default::default()
            },
        )
        .await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Failed as i32);
    let failed = job
        .runs
        .iter()
        .filter(|r| r.state == pb::RunState::Failed as i32)
        .count();
    let skipped: Vec<&pb::RunSummary> = job
        .runs
        .iter()
        .filter(|r| r.state == pb::RunState::Skipped as i32)
        .collect();
    assert_eq!(failed, 1, "{job:?}");
    assert_eq!(skipped.len(), 3, "{job:?}");
    assert!(skipped.iter().all(|r| r.cause.contains("max failures")));
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn test_then_approval_then_production() {
    let server = server().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let list = ["test-1", "prod-1", "prod-2"];
    let puppets: Vec<RealPuppet> = list
        .iter()
        .map(|n| RealPuppet::start(&server.url, Some(&server.ca), &secret, n))
        .collect();
    for n in list {
        admin.wait_polling(n).await;
    }
    admin.label("test-1", "env", "test").await;
    admin.label("prod-1", "env", "prod").await;
    admin.label("prod-2", "env", "prod").await;
    admin
        .script_task("patch", "echo patched", Duration::from_secs(60))
        .await;

    let test = admin
        .run_with(
            "patch",
            Kind::Selector("env=test".into()),
            pb::Strategy::default(),
        )
        .await;
    let prod = admin
        .run_with(
            "patch",
            Kind::Selector("env=prod".into()),
            pb::Strategy {
                after_job: test.id.clone(),
                approval: true,
                rolling: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(prod.state, pb::JobState::AwaitingApproval as i32);
    let test = admin.wait_job(&test.id, DEADLINE).await;
    assert_eq!(test.state, pb::JobState::Succeeded as i32);
    // Validated on test, still waiting for a human.
    let waiting = admin.job(&prod.id).await;
    assert_eq!(waiting.state, pb::JobState::AwaitingApproval as i32);
    assert!(
        waiting
            .runs
            .iter()
            .all(|r| r.state == pb::RunState::Queued as i32
                || r.state == pb::RunState::Waiting as i32)
    );

    admin
        .jobs
        .approve_job(pb::ApproveJobRequest {
            id: prod.id.clone(),
        })
        .await
        .unwrap();
    let prod = admin.wait_job(&prod.id, DEADLINE).await;
    assert_eq!(prod.state, pb::JobState::Succeeded as i32, "{prod:?}");
    assert_eq!(prod.approved_by, "admin");

    // An upstream failure skips the dependants.
    admin
        .script_task("bad", "exit 2", Duration::from_secs(60))
        .await;
    let bad = admin
        .run_with(
            "bad",
            Kind::Selector("env=test".into()),
            pb::Strategy::default(),
        )
        .await;
    let after_bad = admin
        .run_with(
            "patch",
            Kind::Selector("env=prod".into()),
            pb::Strategy {
                after_job: bad.id.clone(),
                ..Default::default()
            },
        )
        .await;
    let after_bad = admin.wait_job(&after_bad.id, DEADLINE).await;
    assert!(
        after_bad
            .runs
            .iter()
            .all(|r| r.state == pb::RunState::Skipped as i32
                && r.cause.contains("dependency failed")),
        "{after_bad:?}"
    );
    for p in puppets {
        p.stop().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_task_class_keeps_runs_off_other_puppets() {
    let server = server().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let deb = RealPuppet::start(&server.url, Some(&server.ca), &secret, "deb");
    let gentoo = RealPuppet::start(&server.url, Some(&server.ca), &secret, "gen");
    admin.wait_polling("deb").await;
    admin.wait_polling("gen").await;
    admin.label("deb", "os", "debian").await;
    admin.label("gen", "os", "gentoo").await;
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "apt".into(),
            spec: Some(script_spec("echo apt", Duration::from_secs(30))),
            requires: "os=debian".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let job = admin.run_on("apt", &["deb", "gen"]).await;
    assert_eq!(job.runs.len(), 1);
    assert_eq!(job.runs[0].puppet, "deb");
    assert_eq!(job.not_targeted.len(), 1);
    assert_eq!(job.not_targeted[0].puppet, "gen");
    assert!(job.not_targeted[0].cause.contains("os=debian"));
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    // Only puppets outside the class: nothing to do, said clearly.
    let err = admin
        .jobs
        .create_job(pb::CreateJobRequest {
            task_name: "apt".into(),
            task_version: 0,
            target: Some(pb::Target {
                kind: Some(names(&["gen"])),
            }),
            strategy: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    deb.stop().await;
    gentoo.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn a_group_is_a_target() {
    let server = server().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let a = RealPuppet::start(&server.url, Some(&server.ca), &secret, "web-1");
    let b = RealPuppet::start(&server.url, Some(&server.ca), &secret, "db-1");
    admin.wait_polling("web-1").await;
    admin.wait_polling("db-1").await;
    admin.label("web-1", "role", "web").await;
    let mut groups = geppetto_proto::v1::groups_client::GroupsClient::new(admin.channel.clone());
    groups
        .create_group(pb::Group {
            name: "webs".into(),
            members: Some(pb::group::Members::Selector("role in (web,proxy)".into())),
            description: String::new(),
        })
        .await
        .unwrap();
    let shown = groups
        .get_group(pb::GetGroupRequest {
            name: "webs".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(shown.current_members, vec!["web-1"]);
    admin
        .script_task("t", "echo web", Duration::from_secs(30))
        .await;
    let job = admin
        .run_with(
            "t",
            Kind::Selector("group:webs".into()),
            pb::Strategy::default(),
        )
        .await;
    assert_eq!(job.runs.len(), 1);
    assert_eq!(job.runs[0].puppet, "web-1");
    let err = admin
        .jobs
        .create_job(pb::CreateJobRequest {
            task_name: "t".into(),
            task_version: 0,
            target: Some(pb::Target {
                kind: Some(Kind::Selector("group:nope".into())),
            }),
            strategy: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    admin.wait_job(&job.id, DEADLINE).await;
    a.stop().await;
    b.stop().await;
    server.stop().await;
}
