//! The event stream: a job's whole life, gap-free ids, resume after a
//! disconnect, and a clear error for pruned events.

mod common;

use std::time::Duration;

use common::{RealPuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::events_client::EventsClient;
use geppetto_test_support::wait_until_async;
use tonic::Code;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_job_s_whole_life_is_in_the_stream_and_resumes_without_gaps() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let mut events = EventsClient::new(admin.channel.clone());
    // Watch from now on, only this job's run and job events.
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&server.url, Some(&server.ca), &secret, "p1");
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo hi", Duration::from_secs(30))
        .await;
    let job = admin.run_on("t", &["p1"]).await;
    let mut stream = events
        .watch_events(pb::WatchEventsRequest {
            from_start: true,
            job_id: job.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while let Some(e) = stream.message().await.unwrap() {
            kinds.push(e.kind.clone());
            if e.kind == "job.succeeded" {
                break;
            }
        }
    })
    .await
    .expect("the job's events arrive");
    assert_eq!(
        kinds,
        vec![
            "run.queued",
            "run.offered",
            "run.running",
            "run.succeeded",
            "job.succeeded"
        ]
    );

    // Every id, no gap, in order; resuming after any id gives the rest.
    let all = events
        .list_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(all.len() >= 8, "{all:?}");
    for pair in all.windows(2) {
        assert_eq!(pair[1].id, pair[0].id + 1, "a gap between {pair:?}");
    }
    let kinds: Vec<&str> = all.iter().map(|e| e.kind.as_str()).collect();
    assert!(kinds.contains(&"puppet.enrolled"), "{kinds:?}");
    assert!(kinds.contains(&"admin.Tasks/CreateTask"), "{kinds:?}");
    let cut = all[all.len() / 2].id;
    let mut resumed = events
        .watch_events(pb::WatchEventsRequest {
            after_id: cut,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let expected: Vec<u64> = all.iter().map(|e| e.id).filter(|id| *id > cut).collect();
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        while got.len() < expected.len() {
            got.push(resumed.message().await.unwrap().unwrap().id);
        }
    })
    .await
    .expect("the resumed stream catches up");
    assert_eq!(got, expected);

    // A live event reaches the resumed stream.
    admin
        .tasks
        .remove_task(pb::RemoveTaskRequest { name: "t".into() })
        .await
        .unwrap();
    let next = tokio::time::timeout(DEADLINE, resumed.message())
        .await
        .expect("a live event")
        .unwrap()
        .unwrap();
    assert_eq!(next.id, expected.last().unwrap() + 1);
    assert_eq!(next.kind, "admin.Tasks/RemoveTask");
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn asking_for_pruned_events_is_a_clear_error() {
    let server = TestServer::start_with(|c| c.event_retention = Duration::from_secs(1)).await;
    let mut admin = server.admin();
    let mut events = EventsClient::new(admin.channel.clone());
    admin.script_task("a", "true", Duration::from_secs(5)).await;
    admin.script_task("b", "true", Duration::from_secs(5)).await;
    admin.script_task("c", "true", Duration::from_secs(5)).await;
    wait_until_async("the first three events are pruned", DEADLINE, async || {
        let oldest = events
            .list_events(pb::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .oldest_id;
        oldest > 3
    })
    .await;
    let err = events
        .watch_events(pb::WatchEventsRequest {
            after_id: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("pruned"), "{}", err.message());
    server.stop().await;
}

/// The audit trail is pruned by its retention, as events are.
#[tokio::test]
async fn audit_entries_older_than_the_retention_are_pruned() {
    let server = TestServer::start_with(|c| c.audit_retention = Duration::from_secs(2)).await;
    let mut admin = server.admin();
    let mut audit = geppetto_proto::v1::audit_client::AuditClient::new(admin.channel.clone());
    admin.script_task("a", "true", Duration::from_secs(5)).await;
    let entries = audit
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(
        entries.iter().any(|e| e.action == "Tasks/CreateTask"),
        "{entries:?}"
    );
    wait_until_async("every audit entry is pruned", DEADLINE, async || {
        let entries = audit
            .list_audit(pb::ListAuditRequest::default())
            .await
            .unwrap()
            .into_inner()
            .entries;
        if entries.is_empty() {
            Ok(())
        } else {
            Err(format!("{entries:?}"))
        }
    })
    .await;
    server.stop().await;
}

/// `ListEvents` answers at most 1,000 events at a time, whatever the limit
/// asked: more come page by page, after the last id received.
#[tokio::test]
async fn list_events_pages_by_a_thousand() {
    use geppetto_proto::v1::events_client::EventsClient;
    use geppetto_proto::v1::resources_client::ResourcesClient;
    let server = common::TestServer::start().await;
    let admin = server.admin();
    let mut resources = ResourcesClient::new(admin.channel.clone());
    for i in 0..1_100 {
        resources
            .create_resource(pb::CreateResourceRequest {
                name: format!("r{i}"),
                capacity: 1,
                bandwidth: 0,
                site: String::new(),
            })
            .await
            .unwrap();
    }
    let mut events = EventsClient::new(admin.channel.clone());
    let ask = |after_id: u64| pb::WatchEventsRequest {
        after_id,
        kinds: vec!["resource.created".into()],
        limit: 100_000,
        ..Default::default()
    };
    let first = events
        .list_events(ask(0))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(first.len(), 1_000);
    let after = first.last().unwrap().id;
    let second = events
        .list_events(ask(after))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(second.len(), 100);
    assert!(second[0].id > after);
    server.stop().await;
}
