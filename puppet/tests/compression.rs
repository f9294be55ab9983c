//! Log chunks travel gzip-compressed: a real puppet process uploads a 1 MiB
//! log through a CONNECT proxy that counts the bytes it forwards (TLS
//! records and HTTP headers included: what would cross a site's uplink),
//! over gRPC-web/HTTP/1.1 and over native gRPC, with compression on and off.

#[path = "support/connect_proxy.rs"]
mod connect_proxy;
#[path = "support/processes.rs"]
mod processes;

use connect_proxy::ConnectProxy;
use processes::{PuppetProcess, Server, wait_enrolled};

const MIB: u64 = 1024 * 1024;

/// An apt-like log of exactly 1 MiB.
const APT_LIKE: &str =
    "seq -f 'Setting up package-%g (2.36-9+deb12u4) ...' 1 30000 | head -c 1048576";

fn apt_like_expected() -> String {
    let mut log: String = (1..=30000)
        .map(|i| format!("Setting up package-{i} (2.36-9+deb12u4) ...\n"))
        .collect();
    log.truncate(MIB as usize);
    log
}

/// Runs `script` on a new puppet started with `args`, through `proxy`;
/// returns the log and the bytes the puppet sent while the job ran.
async fn upload(
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

#[tokio::test]
async fn a_compressible_log_arrives_intact_in_fewer_bytes_over_both_transports() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(None).await;
    let expected = apt_like_expected();
    for transport in ["grpc-web", "grpc"] {
        let mut sent = Vec::new();
        for compression in ["gzip", "none"] {
            let name = format!("{transport}-{compression}");
            let args = ["--transport", transport, "--compression", compression];
            let (log, bytes) = upload(&server, &proxy, &name, &args, APT_LIKE).await;
            assert!(
                log == expected,
                "{name}: the log arrived altered ({} bytes)",
                log.len()
            );
            sent.push(bytes);
        }
        let (gzip, none) = (sent[0], sent[1]);
        eprintln!("{transport}: 1 MiB apt-like log, {gzip} bytes sent with gzip, {none} without");
        assert!(
            none > MIB,
            "{transport}: only {none} bytes sent without compression"
        );
        assert!(
            gzip * 5 < MIB,
            "{transport}: {gzip} bytes sent with gzip, not a fifth of the log"
        );
    }
    server.stop().await;
}

/// The figures of BENCHMARKS.md ("Compression"): bytes on the wire for
/// logs of real commands. Not a test: its content depends on the machine.
/// `cargo test -p puppet --test compression -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn measure_compression_of_typical_logs() {
    let server = Server::start().await;
    let proxy = ConnectProxy::start(None).await;
    let logs = [
        ("apt-like", APT_LIKE),
        ("ls -lR /usr", "ls -lR /usr 2>/dev/null | head -c 2097152"),
        (
            "dpkg -l + apt-cache show",
            "{ dpkg -l; apt-cache show libc6 coreutils bash systemd openssl; } 2>/dev/null | head -c 2097152",
        ),
        (
            "od hex dump of /dev/urandom (worst case for text)",
            "head -c 1048576 /dev/urandom | od -An -tx1 | head -c 1048576",
        ),
    ];
    for (i, (what, script)) in logs.iter().enumerate() {
        let mut sent = Vec::new();
        let mut length = 0;
        for compression in ["gzip", "none"] {
            let name = format!("m{i}-{compression}");
            let args = ["--compression", compression];
            let (log, bytes) = upload(&server, &proxy, &name, &args, script).await;
            length = log.len();
            sent.push(bytes);
        }
        eprintln!(
            "{what}: {length} bytes of log; on the wire {} with gzip, {} without; ratio {:.1}",
            sent[0],
            sent[1],
            sent[1] as f64 / sent[0] as f64
        );
    }
    server.stop().await;
}
