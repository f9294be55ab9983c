//! Log chunks travel gzip-compressed: a real puppet process uploads a 1 MiB
//! log through a CONNECT proxy that counts the bytes it forwards (TLS
//! records and HTTP headers included: what would cross a site's uplink),
//! over gRPC-web/HTTP/1.1 and over native gRPC, with compression on and off.

#[path = "support/connect_proxy.rs"]
mod connect_proxy;
#[path = "support/log_upload.rs"]
mod log_upload;
#[path = "support/processes.rs"]
mod processes;

use connect_proxy::ConnectProxy;
use log_upload::{APT_LIKE, upload};
use processes::Server;

const MIB: u64 = 1024 * 1024;

/// What `APT_LIKE` prints.
fn apt_like_expected() -> String {
    let mut log: String = (1..=30000)
        .map(|i| format!("Setting up package-{i} (2.36-9+deb12u4) ...\n"))
        .collect();
    log.truncate(MIB as usize);
    log
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
