//! Polls across paths that misbehave, through a relay written for the tests
//! (`common::relay`): a proxy that closes idle connections before the hold
//! ends, and a path that goes silent on an open connection. The real puppet
//! adapts its hold to the first, drops and re-establishes the connection on
//! the second, and runs dispatched afterwards complete.

mod common;

use std::time::Duration;

use common::relay::Relay;
use common::{RealPuppet, TestServer};
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

const DEADLINE: Duration = Duration::from_secs(60);

fn hold_of(p: &pb::Puppet) -> Option<Duration> {
    p.poll_hold.and_then(|d| Duration::try_from(d).ok())
}

/// A proxy that closes connections idle for 3 s, and a puppet that starts
/// with a 5 s hold: the first poll is cut, the puppet settles below 3 s,
/// counts the cut, shows both, and still runs what it is given.
#[tokio::test]
async fn a_proxy_idle_timeout_shorter_than_the_hold_lowers_it() {
    let server = TestServer::start().await;
    let relay = Relay::start(
        server.running.as_ref().unwrap().addr,
        Some(Duration::from_secs(3)),
    )
    .await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &relay.url(&server.url),
        Some(&server.ca),
        &secret,
        "p1",
        |c| {
            c.poll_hold = Some(Duration::from_secs(5));
            c.poll_hold_floor = Some(Duration::from_secs(1));
            c.poll_hold_ceiling = Some(Duration::from_secs(10));
        },
    );
    admin.wait_polling("p1").await;

    let view = wait_until_async("the hold adapted to the cut polls", DEADLINE, async || {
        let view = admin.puppet("p1").await;
        if view.polls_cut >= 1 && hold_of(&view).is_some_and(|h| h < Duration::from_secs(3)) {
            Ok(view)
        } else {
            Err(format!("{view:?}"))
        }
    })
    .await;
    assert!(relay.idle_closed() >= 1);
    let settled = hold_of(&view).unwrap();
    assert!(settled >= Duration::from_secs(1), "{settled:?}");

    // Polls at the settled hold pass: several holds later, nothing more is
    // cut, and a run completes.
    let cut = view.polls_cut;
    admin
        .script_task("t", "echo through", Duration::from_secs(30))
        .await;
    tokio::time::sleep(settled * 4).await;
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32);
    assert_eq!(admin.log(&job.runs[0].run_id).await, b"through\n");
    let view = admin.puppet("p1").await;
    assert_eq!(view.polls_cut, cut, "cut again after settling: {view:?}");
    assert!(hold_of(&view).unwrap() < Duration::from_secs(3));

    puppet.stop().await;
    server.stop().await;
}

/// The path goes silent on the open connection (an expired NAT mapping):
/// the poll brings nothing back, the puppet drops it at its hold plus a
/// margin, polls again on a new connection, and gets the run that was
/// offered meanwhile.
#[tokio::test]
async fn a_silent_connection_is_dropped_and_the_puppet_recovers() {
    let server = TestServer::start().await;
    let relay = Relay::start(server.running.as_ref().unwrap().addr, None).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &relay.url(&server.url),
        Some(&server.ca),
        &secret,
        "p1",
        |c| c.poll_hold = Some(Duration::from_secs(2)),
    );
    admin.wait_polling("p1").await;
    admin
        .script_task("t", "echo recovered", Duration::from_secs(30))
        .await;

    relay.blackhole_open_connections();
    let before = relay.accepted();
    let job = admin.run_on("t", &["p1"]).await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    assert_eq!(admin.log(&job.runs[0].run_id).await, b"recovered\n");
    assert!(relay.accepted() > before, "no new connection was made");
    let view = admin.puppet("p1").await;
    assert!(
        view.polls_cut >= 1,
        "the silent poll was not counted: {view:?}"
    );

    puppet.stop().await;
    server.stop().await;
}
