//! The puppet protocol and the admin API against a real puppeteer, driven by
//! hand: dispatch, redelivery, idempotent reports, cancellation, isolation
//! between puppets, authentication and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{FakePuppet, TestServer, script_spec};
use geppetto_proto::client::Transport;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::jobs_client::JobsClient;
use tonic::Code;

#[tokio::test]
async fn a_held_poll_receives_a_new_run_at_once() {
    // With a 10 minute hold, only an immediate dispatch can answer in time.
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(600);
        c.max_poll_hold = Duration::from_secs(600);
    })
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    admin
        .script_task("hello", "echo hi", Duration::from_secs(60))
        .await;

    let poll = tokio::spawn(async move { puppet.poll(1, &[]).await });
    admin.wait_polling("p1").await;
    let created = Instant::now();
    let job = admin.run_on("hello", &["p1"]).await;
    let answer = tokio::time::timeout(Duration::from_secs(60), poll)
        .await
        .expect("the held poll answered")
        .unwrap();
    let latency = created.elapsed();
    eprintln!("dispatch latency (job created -> held poll answered): {latency:?}");
    assert_eq!(answer.assignments.len(), 1);
    assert_eq!(answer.assignments[0].run_id, job.runs[0].run_id);
    assert_eq!(answer.assignments[0].attempt, 1);
    server.stop().await;
}

#[tokio::test]
async fn reports_are_idempotent_and_lost_offers_redelivered() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(1)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    admin
        .script_task("t", "true", Duration::from_secs(60))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();

    // The answer is "lost": the puppet polls again without the run.
    let first = puppet.poll(1, &[]).await;
    let again = puppet.poll(1, &[]).await;
    assert_eq!(first.assignments[0].run_id, run_id);
    assert_eq!(again.assignments[0].run_id, run_id);
    assert_eq!(again.assignments[0].attempt, first.assignments[0].attempt);
    // Once held, it is not sent again.
    let held = puppet.poll(0, &[&run_id]).await;
    assert!(held.assignments.is_empty());

    for _ in 0..2 {
        let start = puppet
            .client
            .start_run(pb::StartRunRequest {
                run_id: run_id.clone(),
                attempt: 1,
                started_at: None,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(start.proceed);
    }
    let append = |offset: u64, data: &'static [u8]| pb::AppendLogRequest {
        run_id: run_id.clone(),
        attempt: 1,
        offset,
        data: data.to_vec().into(),
        ..Default::default()
    };
    let c = puppet
        .client
        .append_log(append(0, b"hello "))
        .await
        .unwrap();
    assert_eq!(c.into_inner().committed, 6);
    let c = puppet
        .client
        .append_log(append(0, b"hello "))
        .await
        .unwrap();
    assert_eq!(c.into_inner().committed, 6);
    let c = puppet
        .client
        .append_log(append(6, b"world\n"))
        .await
        .unwrap();
    assert_eq!(c.into_inner().committed, 12);
    let gap = puppet
        .client
        .append_log(append(40, b"x"))
        .await
        .unwrap_err();
    assert_eq!(gap.code(), Code::FailedPrecondition, "{gap:?}");

    let finish = pb::FinishRunRequest {
        run_id: run_id.clone(),
        attempt: 1,
        outcome: pb::Outcome::Exited as i32,
        exit_code: 0,
        signal: 0,
        duration: None,
        log_length: 12,
        message: String::new(),
    };
    // A finish that claims less output than stored is refused.
    let short = pb::FinishRunRequest {
        log_length: 3,
        ..finish.clone()
    };
    let err = puppet.client.finish_run(short).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    for _ in 0..2 {
        let state = puppet
            .client
            .finish_run(finish.clone())
            .await
            .unwrap()
            .into_inner()
            .state;
        assert_eq!(state, pb::RunState::Succeeded as i32);
    }
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    let states: Vec<i32> = run.history.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        vec![
            pb::RunState::Queued as i32,
            pb::RunState::Offered as i32,
            pb::RunState::Running as i32,
            pb::RunState::Succeeded as i32
        ]
    );
    assert!(
        run.history
            .iter()
            .all(|t| t.at.is_some() && !t.cause.is_empty())
    );
    assert_eq!(admin.log(&run_id).await, b"hello world\n");
    server.stop().await;
}

#[tokio::test]
async fn a_running_run_the_puppet_forgot_is_interrupted_not_rerun() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(1)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    admin
        .script_task("t", "true", Duration::from_secs(60))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    puppet.poll(1, &[]).await;
    puppet
        .client
        .start_run(pb::StartRunRequest {
            run_id: run_id.clone(),
            attempt: 1,
            started_at: None,
        })
        .await
        .unwrap();
    // The puppet comes back without the run.
    let answer = puppet.poll(1, &[]).await;
    assert!(answer.assignments.is_empty());
    let job = admin.wait_job(&job.id, Duration::from_secs(10)).await;
    assert_eq!(job.runs[0].state, pb::RunState::Interrupted as i32);
    server.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_run_reaches_its_held_poll() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = Duration::from_secs(600);
        c.max_poll_hold = Duration::from_secs(600);
    })
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    admin
        .script_task("t", "sleep 100", Duration::from_secs(600))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    puppet.poll(1, &[]).await;
    puppet
        .client
        .start_run(pb::StartRunRequest {
            run_id: run_id.clone(),
            attempt: 1,
            started_at: None,
        })
        .await
        .unwrap();
    let known = run_id.clone();
    let mut p = FakePuppet {
        name: puppet.name.clone(),
        client: puppet.client.clone(),
        credential: puppet.credential.clone(),
    };
    let held = tokio::spawn(async move { p.poll(0, &[&known]).await });
    admin.wait_polling("p1").await;
    admin
        .jobs
        .cancel_job(pb::CancelJobRequest { id: job.id.clone() })
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the held poll answered")
        .unwrap();
    assert_eq!(answer.cancel_runs, vec![run_id.clone()]);
    let state = puppet
        .client
        .finish_run(pb::FinishRunRequest {
            run_id: run_id.clone(),
            attempt: 1,
            outcome: pb::Outcome::Cancelled as i32,
            signal: 9,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(state, pb::RunState::Cancelled as i32);
    let job = admin.wait_job(&job.id, Duration::from_secs(10)).await;
    assert_eq!(job.state, pb::JobState::Cancelled as i32);
    server.stop().await;
}

#[tokio::test]
async fn puppets_touch_only_their_own_runs_and_no_admin_service() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(1)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut a = FakePuppet::enroll(&server, &secret, "a").await;
    let mut b = FakePuppet::enroll(&server, &secret, "b").await;
    admin
        .script_task("t", "true", Duration::from_secs(60))
        .await;
    let job = admin.run_on("t", &["b"]).await;
    let b_run = job.runs[0].run_id.clone();
    b.poll(1, &[]).await;

    // A cannot start, append to, or finish B's run.
    let err = a
        .client
        .start_run(pb::StartRunRequest {
            run_id: b_run.clone(),
            attempt: 1,
            started_at: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .client
        .append_log(pb::AppendLogRequest {
            run_id: b_run.clone(),
            attempt: 1,
            offset: 0,
            data: b"x".to_vec().into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = a
        .client
        .finish_run(pb::FinishRunRequest {
            run_id: b_run.clone(),
            attempt: 1,
            outcome: pb::Outcome::Exited as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A puppet asking about runs it never had is told to drop them.
    let answer = a.poll(1, &[&b_run]).await;
    assert_eq!(answer.cancel_runs, vec![b_run.clone()]);

    // A puppet credential cannot call admin services, e.g. read B's log.
    let mut as_puppet = common::Admin::new(server.channel(Transport::Grpc, Some(&a.credential)));
    let err = as_puppet
        .runs
        .read_log(pb::ReadLogRequest {
            run_id: b_run.clone(),
            offset: 0,
            max_bytes: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_puppet
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // No token, or an unknown one: Unauthenticated.
    for token in [None, Some("gpa_not-a-real-token")] {
        let mut jobs = JobsClient::new(server.channel(Transport::Grpc, token));
        let err = jobs
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let mut jobs = JobsClient::new(server.channel(Transport::GrpcWeb, token));
        let err = jobs
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?} over grpc-web");
    }
    // An admin token cannot pose as a puppet.
    let mut poser = geppetto_proto::v1::puppet_service_client::PuppetServiceClient::new(
        server.channel(Transport::GrpcWeb, Some(&server.admin_token)),
    );
    let err = poser.poll(pb::PollRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;

    let task = |name: &str, spec: Option<pb::RunSpec>| pb::CreateTaskRequest {
        name: name.into(),
        description: String::new(),
        spec,
        ..Default::default()
    };
    let good = script_spec("true", Duration::from_secs(10));
    let mut negative = good.clone();
    negative.timeout = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    let over_a_week = script_spec("true", Duration::from_secs(8 * 24 * 3600));
    let empty_script = script_spec("  ", Duration::from_secs(10));
    let cases = [
        (task("", Some(good.clone())), "empty"),
        (task("Bad Name", Some(good.clone())), "character"),
        (task(&"x".repeat(64), Some(good.clone())), "63"),
        (task("t", None), "spec"),
        (task("t", Some(negative)), "negative"),
        (task("t", Some(over_a_week)), "out of range"),
        (task("t", Some(empty_script)), "empty"),
    ];
    for (request, needle) in cases {
        let err = admin.tasks.create_task(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{request:?}");
        assert!(
            err.message().contains(needle),
            "{:?} lacks {needle:?}",
            err.message()
        );
    }
    let tasks = admin
        .tasks
        .list_tasks(pb::ListTasksRequest {})
        .await
        .unwrap();
    assert!(tasks.into_inner().tasks.is_empty(), "nothing was created");

    // Malformed selectors point at the character.
    admin
        .script_task("t", "true", Duration::from_secs(10))
        .await;
    let err = admin
        .jobs
        .create_job(pb::CreateJobRequest {
            task_name: "t".into(),
            task_version: 0,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Selector("os=debian,,env=x".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("at character 11"),
        "{}",
        err.message()
    );
    let err = admin
        .puppets
        .list_puppets(pb::ListPuppetsRequest {
            selector: "os!debian".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Unknown things are NotFound; ids of the wrong kind InvalidArgument.
    let err = admin.run_on_err("nope", &["p1"]).await;
    assert_eq!(err.code(), Code::NotFound);
    let err = admin.run_on_err("t", &["ghost"]).await;
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .jobs
        .get_job(pb::GetJobRequest {
            id: "job-0000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .runs
        .get_run(pb::GetRunRequest {
            id: "job-0000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("job id"), "{}", err.message());
    let jobs = admin
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .unwrap();
    assert!(jobs.into_inner().jobs.is_empty(), "no job was created");

    // Messages over the size limits.
    let job = admin.run_on("t", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    puppet.poll(1, &[]).await;
    let big = |n: usize| pb::AppendLogRequest {
        run_id: run_id.clone(),
        attempt: 1,
        offset: 0,
        data: vec![b'x'; n].into(),
        ..Default::default()
    };
    let err = puppet.client.append_log(big(2 << 20)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = puppet.client.append_log(big(5 << 20)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{err:?}"
    );
    let run = admin
        .runs
        .get_run(pb::GetRunRequest { id: run_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.log_length, 0);

    // A used-up or unknown enrollment token is refused.
    let mut enroller = geppetto_proto::v1::puppet_service_client::PuppetServiceClient::new(
        server.channel(Transport::GrpcWeb, None),
    );
    let err = enroller
        .enroll(pb::EnrollRequest {
            enroll_token: "gpe_nope".into(),
            name: "p2".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = enroller
        .enroll(pb::EnrollRequest {
            enroll_token: secret.clone(),
            name: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    server.stop().await;
}

trait RunOnErr {
    async fn run_on_err(&mut self, task: &str, puppets: &[&str]) -> tonic::Status;
}

impl RunOnErr for common::Admin {
    async fn run_on_err(&mut self, task: &str, puppets: &[&str]) -> tonic::Status {
        self.jobs
            .create_job(pb::CreateJobRequest {
                task_name: task.into(),
                task_version: 0,
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::Puppets(pb::PuppetNames {
                        names: puppets.iter().map(|s| s.to_string()).collect(),
                    })),
                }),
                ..Default::default()
            })
            .await
            .unwrap_err()
    }
}

/// A puppet older than the puppeteer serves is refused at its poll with
/// FAILED_PRECONDITION and what to do; its own version and unknown ones are
/// served; `status` counts the fleet's versions.
#[tokio::test]
async fn a_puppet_too_old_is_refused_with_how_to_upgrade_it() {
    use geppetto_proto::v1::server_client::ServerClient;
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut old = FakePuppet::enroll(&server, &secret, "old").await;
    let poll = |facts: Option<pb::Facts>| pb::PollRequest {
        facts,
        hold: Some(prost_types::Duration {
            seconds: 0,
            nanos: 1_000_000,
        }),
        ..Default::default()
    };
    let facts = |v: &str| pb::Facts {
        agent_version: v.into(),
        ..Default::default()
    };
    let refused = old
        .client
        .poll(poll(Some(facts("0.0.9"))))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("0.0.9 is older than")
            && refused.message().contains("Installing puppets"),
        "{refused:?}"
    );
    // Later polls, without facts, are refused too (the version is kept).
    let again = old.client.poll(poll(None)).await.unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition);
    // Upgraded: served.
    old.client
        .poll(poll(Some(facts(env!("CARGO_PKG_VERSION")))))
        .await
        .unwrap();
    let mut silent = FakePuppet::enroll(&server, &secret, "silent").await;
    silent.client.poll(poll(None)).await.unwrap();

    let info = ServerClient::new(admin.channel.clone())
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<(String, u32)> = info
        .puppet_versions
        .iter()
        .map(|v| (v.version.clone(), v.puppets))
        .collect();
    assert!(
        versions.contains(&(env!("CARGO_PKG_VERSION").to_string(), 1)),
        "{versions:?}"
    );
    assert!(
        versions.contains(&("unknown".to_string(), 1)),
        "{versions:?}"
    );
    assert_eq!(info.puppets_older, 0);
    server.stop().await;
}

/// `Check`, which a puppet's new binary calls before an upgrade swaps it
/// in: it answers for an enrolled puppet of a version served, refuses an
/// older one with FAILED_PRECONDITION saying how to upgrade, refuses a
/// caller without a credential and an oversized version, and changes
/// nothing (the puppet's facts keep its running version).
#[tokio::test]
async fn check_says_whether_a_version_is_served_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = FakePuppet::enroll(&server, &secret, "p1").await;
    let check = |version: &str| pb::CheckRequest {
        agent_version: version.into(),
    };

    let answer = puppet
        .client
        .check(check("0.1.0"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.server_version, env!("CARGO_PKG_VERSION"));
    puppet.client.check(check("9.0.0-rc1")).await.unwrap();

    let old = puppet.client.check(check("0.0.9")).await.unwrap_err();
    assert_eq!(old.code(), Code::FailedPrecondition, "{old:?}");
    assert!(old.message().contains("older than"), "{old:?}");

    let long = puppet
        .client
        .check(check(&"1".repeat(65)))
        .await
        .unwrap_err();
    assert_eq!(long.code(), Code::InvalidArgument, "{long:?}");

    let mut stranger = pb::puppet_service_client::PuppetServiceClient::new(
        server.channel(Transport::GrpcWeb, None),
    );
    let anonymous = stranger.check(check("0.1.0")).await.unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");

    let shown = admin
        .puppets
        .get_puppet(pb::GetPuppetRequest { name: "p1".into() })
        .await
        .unwrap()
        .into_inner();
    let version = shown.facts.map(|f| f.agent_version).unwrap_or_default();
    assert!(version.is_empty(), "a check stores nothing: {version:?}");
}
