//! `cargo bench -p puppet --bench compression`
//!
//! The figures of `BENCHMARKS.md` ("Compression"): bytes on the wire for
//! logs of real commands, with gzip and without. A real puppet process (the
//! binary built with this bench) uploads each log through a CONNECT proxy
//! that counts the bytes it forwards, to a puppeteer in this process; one
//! line per log on stderr. The logs are the machine's own (`ls -lR /usr`,
//! `dpkg -l`), so the figures are too: the test suite checks only the
//! apt-like case (`tests/compression.rs`).

#[path = "../../tests/support/connect_proxy.rs"]
mod connect_proxy;
#[path = "../../tests/support/log_upload.rs"]
mod log_upload;
#[path = "../../tests/support/processes.rs"]
mod processes;

use connect_proxy::ConnectProxy;
use log_upload::{APT_LIKE, upload};
use processes::Server;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("usage: compression (no options; prints one line per log)");
        return;
    }
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
