//! Listings come a page at a time, through the public API of a real
//! puppeteer: every item once and in order across pages, filters that
//! leave short pages, tokens that belong to their listing.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{FakePuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::audit_client::AuditClient;
use pb::list_runs_request::Of;
use tonic::Code;

/// Pages through a listing: `page(token)` gives the items and the next token.
async fn every_page<T, F, Fut>(mut page: F) -> (Vec<T>, usize)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, String)>,
{
    let (mut items, mut pages, mut token) = (Vec::new(), 0, String::new());
    loop {
        let (mut got, next) = page(token.clone()).await;
        pages += 1;
        items.append(&mut got);
        assert_ne!(next, token, "a page must move on");
        if next.is_empty() {
            return (items, pages);
        }
        assert!(pages < 100, "paging does not end");
        token = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppets_runs_jobs_and_audit_come_a_page_at_a_time() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let names: Vec<String> = (0..7).map(|i| format!("pg-{i}")).collect();
    for name in &names {
        FakePuppet::enroll(&server, &secret, name).await;
    }
    admin.label("pg-1", "tier", "gold").await;
    admin.label("pg-5", "tier", "gold").await;

    // Puppets: by name, three to a page.
    let puppets = admin.puppets.clone();
    let (listed, pages) = every_page(|page_token| {
        let mut puppets = puppets.clone();
        async move {
            let page = puppets
                .list_puppets(pb::ListPuppetsRequest {
                    page_size: 3,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert!(page.puppets.len() <= 3);
            (page.puppets, page.next_page_token)
        }
    })
    .await;
    let listed: Vec<String> = listed.into_iter().map(|p| p.name).collect();
    assert_eq!(listed, names);
    assert_eq!(pages, 3);

    // A selector keeps two of them, one to a page.
    let (gold, _) = every_page(|page_token| {
        let mut puppets = puppets.clone();
        async move {
            let page = puppets
                .list_puppets(pb::ListPuppetsRequest {
                    selector: "tier=gold".into(),
                    page_size: 1,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            (page.puppets, page.next_page_token)
        }
    })
    .await;
    let gold: Vec<String> = gold.into_iter().map(|p| p.name).collect();
    assert_eq!(gold, ["pg-1", "pg-5"]);

    // A job's runs, in the job's order, two to a page.
    admin
        .script_task("hello", "echo hi", Duration::from_secs(60))
        .await;
    let targets: Vec<&str> = names.iter().map(String::as_str).collect();
    let job = admin.run_on("hello", &targets).await;
    let runs = admin.runs.clone();
    let job_id = job.id.clone();
    let (job_runs, pages) = every_page(|page_token| {
        let mut runs = runs.clone();
        let of = Some(Of::JobId(job_id.clone()));
        async move {
            let page = runs
                .list_runs(pb::ListRunsRequest {
                    of,
                    page_size: 2,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (page.runs, page.next_page_token)
        }
    })
    .await;
    let in_job_order: Vec<String> = job.runs.iter().map(|r| r.run_id.clone()).collect();
    let listed: Vec<String> = job_runs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(listed, in_job_order);
    assert_eq!(pages, 4);

    // Every unfinished run, by puppet.
    let (active, _) = every_page(|page_token| {
        let mut runs = runs.clone();
        async move {
            let page = runs
                .list_runs(pb::ListRunsRequest {
                    page_size: 3,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (page.runs, page.next_page_token)
        }
    })
    .await;
    let puppets_with_runs: BTreeSet<String> = active.into_iter().map(|r| r.puppet).collect();
    assert_eq!(puppets_with_runs.len(), 7);

    // Jobs, newest first, one to a page.
    admin.run_on("hello", &["pg-0"]).await;
    let newest = admin.run_on("hello", &["pg-1"]).await;
    let jobs = admin.jobs.clone();
    let (listed_jobs, _) = every_page(|page_token| {
        let mut jobs = jobs.clone();
        async move {
            let page = jobs
                .list_jobs(pb::ListJobsRequest {
                    limit: 1,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            (page.jobs, page.next_page_token)
        }
    })
    .await;
    assert_eq!(listed_jobs.len(), 3);
    assert_eq!(listed_jobs[0].id, newest.id);
    assert_eq!(listed_jobs[2].id, job.id);

    // The audit trail, back in time, two to a page, each page oldest first:
    // all pages together are the whole trail.
    let audit = AuditClient::new(admin.channel.clone());
    let whole = audit
        .clone()
        .list_audit(pb::ListAuditRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(whole.next_page_token.is_empty());
    let (paged, _) = every_page(|page_token| {
        let mut audit = audit.clone();
        async move {
            let page = audit
                .list_audit(pb::ListAuditRequest {
                    limit: 2,
                    page_token,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let seqs: Vec<u64> = page.entries.iter().map(|e| e.seq).collect();
            assert!(seqs.is_sorted(), "a page is oldest first: {seqs:?}");
            let mut newest_first = page.entries;
            newest_first.reverse();
            (newest_first, page.next_page_token)
        }
    })
    .await;
    let mut paged: Vec<u64> = paged.into_iter().map(|e| e.seq).collect();
    paged.reverse();
    let whole: Vec<u64> = whole.entries.iter().map(|e| e.seq).collect();
    assert_eq!(paged, whole);

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_of_another_listing_or_tampered_with_is_refused() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    for name in ["a", "b"] {
        FakePuppet::enroll(&server, &secret, name).await;
    }
    let first = admin
        .puppets
        .list_puppets(pb::ListPuppetsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let refused = admin
        .runs
        .list_runs(pb::ListRunsRequest {
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("page_token"), "{refused:?}");
    for bad in ["puppets.not-hex", "x".repeat(5000).as_str()] {
        let refused = admin
            .puppets
            .list_puppets(pb::ListPuppetsRequest {
                page_token: bad.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument);
        // The refusal does not echo a long token back.
        assert!(refused.message().len() < 200, "{}", refused.message());
    }
    server.stop().await;
}

/// At the sizes that ship: 1,001 puppets are one full page of 1,000 and a
/// page of one, for a client that gives no page size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_default_size_a_fleet_past_a_thousand_takes_two_pages() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut enrolling = tokio::task::JoinSet::new();
    let server = std::sync::Arc::new(server);
    for worker in 0..8 {
        let (server, secret) = (server.clone(), secret.clone());
        enrolling.spawn(async move {
            for i in (worker..1001).step_by(8) {
                FakePuppet::enroll(&server, &secret, &format!("fleet-{i:04}")).await;
            }
        });
    }
    while let Some(done) = enrolling.join_next().await {
        done.unwrap();
    }
    let first = admin
        .puppets
        .list_puppets(pb::ListPuppetsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.puppets.len(), 1000);
    assert_eq!(first.puppets[0].name, "fleet-0000");
    let second = admin
        .puppets
        .list_puppets(pb::ListPuppetsRequest {
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = second.puppets.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["fleet-1000"]);
    assert!(second.next_page_token.is_empty());
    std::sync::Arc::into_inner(server)
        .expect("the enrollments are done")
        .stop()
        .await;
}
