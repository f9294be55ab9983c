//! Bytes on the wire for a log: a real puppet process behind the counting
//! CONNECT proxy runs a script, for the compression test and benchmark.

use crate::connect_proxy::ConnectProxy;
use crate::processes::{PuppetProcess, Server, wait_enrolled};

/// An apt-like log of exactly 1 MiB.
pub const APT_LIKE: &str =
    "seq -f 'Setting up package-%g (2.36-9+deb12u4) ...' 1 30000 | head -c 1048576";

/// Runs `script` on a new puppet started with `args`, through `proxy`;
/// returns the log and the bytes the puppet sent while the job ran.
pub async fn upload(
    server: &Server,
    proxy: &ConnectProxy,
    name: &str,
    args: &[&str],
    script: &str,
) -> (String, u64) {
    let secret = server.enroll_secret().await;
    let proxy_url = proxy.url();
    let mut all = vec!["--proxy", proxy_url.as_str()];
    all.extend_from_slice(args);
    let puppet = PuppetProcess::start(server, &secret, name, &[], &all);
    wait_enrolled(server, name).await;
    let before = proxy.bytes_up();
    let log = server
        .run_script(&format!("log-{name}"), script, name)
        .await;
    let sent = proxy.bytes_up() - before;
    puppet.stop().await;
    (log, sent)
}
