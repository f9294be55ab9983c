//! Liveness end to end: real puppets whose poll hold has grown past the
//! lease, assigned work late in a hold, over both transports. Every run
//! succeeds (issue 21: a run handed to a puppet more than a lease into its
//! hold was marked `lost` a second later, and the puppet killed it).
//!
//! The timings are scaled down from the defaults (a 5-minute hold, a 110 s
//! lease) so that the test takes seconds: a 20 s hold fixed at its floor,
//! start and ceiling, and a 3 s lease. `tests/liveness_props.rs` checks the
//! same model at the defaults over simulated time.

mod common;

use std::time::Duration;

use common::{RealPuppet, TestServer};
use geppetto_proto::client::Transport;
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

const HOLD: Duration = Duration::from_secs(20);
const LEASE: Duration = Duration::from_secs(3);
const DEADLINE: Duration = Duration::from_secs(60);

/// How long the puppet's current poll has been held (its last poll began
/// then), if it holds one.
async fn held_for(admin: &mut common::Admin, name: &str) -> Option<Duration> {
    let puppet = admin
        .puppets
        .get_puppet(pb::GetPuppetRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner();
    if !puppet.polling {
        return None;
    }
    let seen = puppet.last_seen?;
    let seen = std::time::UNIX_EPOCH + Duration::new(seen.seconds as u64, seen.nanos as u32);
    std::time::SystemTime::now().duration_since(seen).ok()
}

#[tokio::test]
async fn work_assigned_late_in_a_hold_longer_than_the_lease_succeeds() {
    let server = TestServer::start_with(|c| {
        c.poll_timeout = HOLD;
        c.max_poll_hold = HOLD;
        c.lease_timeout = Some(LEASE);
    })
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppets: Vec<RealPuppet> = [("web", Transport::GrpcWeb), ("native", Transport::Grpc)]
        .into_iter()
        .map(|(name, transport)| {
            RealPuppet::start_with(
                tempfile::tempdir().unwrap(),
                &server.url,
                Some(&server.ca),
                &secret,
                name,
                |c| {
                    c.transport = transport;
                    c.poll_hold = Some(HOLD);
                    c.poll_hold_floor = Some(HOLD);
                    c.poll_hold_ceiling = Some(HOLD);
                },
            )
        })
        .collect();
    for puppet in &puppets {
        admin.wait_polling(&puppet.name).await;
    }
    // Runs shorter and longer than the puppet's wait for reports before
    // its next poll (2 s): the first is reported before it polls again,
    // the second beside its next held poll.
    admin
        .script_task("quick", "echo quick", Duration::from_secs(60))
        .await;
    admin
        .script_task("slow", "sleep 4; echo slow", Duration::from_secs(60))
        .await;
    let names: Vec<&str> = puppets.iter().map(|p| p.name.as_str()).collect();
    for task in ["quick", "slow", "quick"] {
        // Each puppet's job is created late in its hold: more than twice
        // the lease into its poll.
        let mut jobs = Vec::new();
        for name in &names {
            wait_until_async(
                &format!("{name} has held a poll for twice the lease"),
                DEADLINE,
                async || {
                    held_for(&mut admin, name)
                        .await
                        .is_some_and(|held| held > LEASE * 2)
                },
            )
            .await;
            jobs.push(admin.run_on(task, &[name]).await);
        }
        for job in jobs {
            let job = admin.wait_job(&job.id, DEADLINE).await;
            for run in &job.runs {
                assert_eq!(
                    run.state(),
                    pb::RunState::Succeeded,
                    "{task} on {}: {:?} ({})",
                    run.puppet,
                    run.state(),
                    run.cause
                );
            }
        }
    }
    for puppet in puppets {
        puppet.stop().await;
    }
    server.stop().await;
}
