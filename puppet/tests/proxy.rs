//! The `puppet` binary behind an HTTP CONNECT proxy: a real puppeteer (TLS,
//! sled in a temp dir), a real puppet process, and a CONNECT proxy with
//! Basic authentication that counts its tunnels.

#[path = "support/connect_proxy.rs"]
mod connect_proxy;
#[path = "support/processes.rs"]
mod processes;

use connect_proxy::ConnectProxy;
use processes::{PuppetProcess, Server, credential_file, wait_enrolled};

#[tokio::test]
async fn a_puppet_enrolls_and_runs_a_job_through_an_authenticating_proxy() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(Some(("alice", "s3cret:pw"))).await;
    let secret = server.enroll_secret().await;
    // The password holds a ':', percent-encoded in the URL as curl expects.
    let proxy_url = proxy.url_with("alice", "s3cret%3Apw");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "behind",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    wait_enrolled(&server, "behind").await;
    let log = server
        .run_script("hello", "echo through the tunnel", "behind")
        .await;
    assert_eq!(log, "through the tunnel\n");

    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "the proxy opened no tunnel");
    assert!(tunnels.iter().all(|t| *t == server.target()), "{tunnels:?}");
    assert_eq!(proxy.refused(), 0);
    let output = puppet.output();
    assert!(
        output.contains(&format!("proxy=http://{} (from HTTPS_PROXY)", proxy.addr)),
        "the puppet does not say which proxy it uses:\n{output}"
    );
    assert!(
        !output.contains("s3cret"),
        "the proxy password was logged:\n{output}"
    );
    assert!(credential_file(puppet.dir.path()).is_file());
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_proxy_credentials_are_reported_as_such_and_never_logged() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(Some(("alice", "right"))).await;
    let secret = server.enroll_secret().await;
    let proxy_url = proxy.url_with("alice", "wr0ng-pw");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "wrong",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    let output = puppet
        .wait_output(&format!(
            "the proxy at http://{} (from HTTPS_PROXY) refused the credentials",
            proxy.addr
        ))
        .await;
    assert!(
        !output.contains("wr0ng-pw"),
        "the proxy password was logged:\n{output}"
    );
    assert!(proxy.refused() >= 1);
    assert!(proxy.tunnels().is_empty());
    assert!(!server.puppet_names().await.contains(&"wrong".to_string()));
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn an_unreachable_proxy_is_named_not_the_puppeteer() {
    let server = Server::start().await;
    let secret = server.enroll_secret().await;
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy_url = format!("http://{dead}");
    let puppet = PuppetProcess::start(
        &server,
        &secret,
        "cutoff",
        &[("HTTPS_PROXY", &proxy_url)],
        &[],
    );
    puppet
        .wait_output(&format!(
            "cannot reach the proxy at http://{dead} (from HTTPS_PROXY)"
        ))
        .await;
    puppet.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn no_proxy_and_explicit_settings_override_https_proxy() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(None).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dead_url = format!("http://{dead}");

    // NO_PROXY names the puppeteer's host: the proxy is bypassed.
    let secret = server.enroll_secret().await;
    let direct = PuppetProcess::start(
        &server,
        &secret,
        "bypass",
        &[
            ("HTTPS_PROXY", &proxy.url()),
            ("NO_PROXY", "example.org,localhost"),
        ],
        &[],
    );
    wait_enrolled(&server, "bypass").await;
    assert_eq!(
        server.run_script("t1", "echo direct", "bypass").await,
        "direct\n"
    );
    assert!(proxy.tunnels().is_empty(), "{:?}", proxy.tunnels());
    direct.stop().await;

    // --no-proxy: HTTPS_PROXY (a dead one) is ignored.
    let secret = server.enroll_secret().await;
    let flagged = PuppetProcess::start(
        &server,
        &secret,
        "flagged",
        &[("HTTPS_PROXY", &dead_url)],
        &["--no-proxy"],
    );
    wait_enrolled(&server, "flagged").await;
    flagged.stop().await;
    assert!(proxy.tunnels().is_empty());

    // --proxy wins over HTTPS_PROXY and NO_PROXY.
    let secret = server.enroll_secret().await;
    let explicit = PuppetProcess::start(
        &server,
        &secret,
        "explicit",
        &[("HTTPS_PROXY", &dead_url), ("NO_PROXY", "localhost")],
        &["--proxy", &proxy.url()],
    );
    wait_enrolled(&server, "explicit").await;
    assert_eq!(
        server.run_script("t2", "echo explicit", "explicit").await,
        "explicit\n"
    );
    assert!(!proxy.tunnels().is_empty());
    explicit.stop().await;
    server.stop().await;
}
