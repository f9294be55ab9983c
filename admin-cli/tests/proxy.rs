//! The `geppetto` binary behind an HTTP CONNECT proxy (`HTTPS_PROXY`), with
//! Basic authentication: it works through the tunnel, and every failure of
//! the proxy is one line naming the proxy, never its password.

mod common;
#[path = "../../puppet/tests/support/connect_proxy.rs"]
mod connect_proxy;
#[path = "common/live.rs"]
#[allow(dead_code)]
mod live;

use connect_proxy::ConnectProxy;
use live::Live;

const PROXY_VARS: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `geppetto -o json tasks list` with exactly these proxy variables.
fn tasks_list(live: &Live, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = live.cli();
    for var in PROXY_VARS {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied())
        .args(["-o", "json", "tasks", "list"])
        .output()
        .expect("geppetto runs")
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_cli_goes_through_the_proxy_and_reports_its_failures_clearly() {
    let live = Live::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime.block_on(ConnectProxy::start(Some(("bob", "pw-ok"))));
    let target = live.url.trim_start_matches("https://").to_string();

    let output = tasks_list(&live, &[("HTTPS_PROXY", &proxy.url_with("bob", "pw-ok"))]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(proxy.tunnels(), vec![target.clone()]);

    // NO_PROXY naming the puppeteer's host bypasses the proxy.
    let output = tasks_list(
        &live,
        &[
            ("HTTPS_PROXY", &proxy.url_with("bob", "pw-ok")),
            ("NO_PROXY", "localhost"),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(proxy.tunnels().len(), 1);

    let output = tasks_list(&live, &[("https_proxy", &proxy.url_with("bob", "bad-pw"))]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert_eq!(
        message.trim(),
        format!(
            "error: the proxy at http://{} (from https_proxy) refused the credentials \
             (407 Proxy Authentication Required): check the user and password in its URL",
            proxy.addr
        )
    );
    assert_eq!(proxy.refused(), 1);

    let output = tasks_list(&live, &[("HTTPS_PROXY", &proxy.url())]);
    assert!(
        stderr(&output).contains("asks for credentials"),
        "{}",
        stderr(&output)
    );

    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let output = tasks_list(&live, &[("HTTPS_PROXY", &format!("http://u:pw-x@{dead}"))]);
    let message = stderr(&output);
    assert!(
        message.starts_with(&format!(
            "error: cannot reach the proxy at http://{dead} (from HTTPS_PROXY): "
        )),
        "{message}"
    );
    assert!(!message.contains("pw-x"), "{message}");

    let output = tasks_list(&live, &[("HTTPS_PROXY", "socks5://u:pw-y@127.0.0.1:1")]);
    let message = stderr(&output);
    assert!(
        message.contains("invalid proxy URL in HTTPS_PROXY"),
        "{message}"
    );
    assert!(!message.contains("pw-y"), "{message}");
    assert_eq!(proxy.tunnels().len(), 1);
}
