//! Several puppeteer URLs, comma-separated: a client (the CLI's channel, a
//! puppet) whose first URL cannot be reached sends each call to the next in
//! turn, and stays with the one that answered.

mod common;

use std::time::Duration;

use common::{RealPuppet, TestServer};
use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppets_client::PuppetsClient;

/// A loopback URL nothing listens on (the port was bound, then freed).
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}")
}

fn puppets(server: &TestServer, url: &str, transport: Transport) -> PuppetsClient<Channel> {
    let token = TokenSlot::default();
    token.set(Some(&server.admin_token)).unwrap();
    let endpoint = Endpoint {
        url: url.to_string(),
        ca_file: Some(server.ca.clone()),
        transport,
    };
    PuppetsClient::new(Channel::new(&endpoint, token).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_to_the_next_url_when_one_cannot_be_reached() {
    let server = TestServer::start().await;
    let urls = format!("{}, {}", dead_url().await, server.url);
    for transport in [Transport::Grpc, Transport::GrpcWeb] {
        let mut client = puppets(&server, &urls, transport);
        for _ in 0..3 {
            client
                .list_puppets(pb::ListPuppetsRequest::default())
                .await
                .unwrap_or_else(|e| panic!("{transport}: {e:?}"));
        }
    }

    // Nothing reachable: the call fails with the last connection error, as
    // with one URL.
    let nowhere = format!("{},{}", dead_url().await, dead_url().await);
    let refused = puppets(&server, &nowhere, Transport::Grpc)
        .list_puppets(pb::ListPuppetsRequest::default())
        .await
        .unwrap_err();
    let mut cause = std::error::Error::source(&refused);
    let mut connect = false;
    while let Some(e) = cause {
        connect |= geppetto_proto::client::is_connect_error(e);
        cause = e.source();
    }
    assert!(connect, "{refused:?}");

    // A puppet given the same list enrolls, polls and runs a job.
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = RealPuppet::start(&urls, Some(&server.ca), &secret, "listed");
    admin.wait_polling("listed").await;
    admin
        .script_task("hello", "echo hello", Duration::from_secs(30))
        .await;
    let job = admin.run_on("hello", &["listed"]).await;
    let job = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(job.state, pb::JobState::Succeeded as i32, "{job:?}");
    puppet.stop().await;
    server.stop().await;
}
