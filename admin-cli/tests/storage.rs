//! Bounded logs as an operator sees them: a real puppet prints more than the
//! puppeteer's (small) per-run limit; `geppetto logs` prints the head, a
//! marker line and the tail, warns, and exits non-zero; `runs show` says the
//! log is truncated and by how much.

#[allow(dead_code)]
mod common;
#[path = "common/live.rs"]
#[allow(dead_code)]
mod live;

use live::Live;
use predicates::prelude::*;

#[test]
fn a_truncated_log_is_marked_and_never_passes_as_complete() {
    // 4 KiB per run: the first 2 KiB and the last 2 KiB are kept.
    let mut live = Live::start_with(|c| c.log_limit = Some(4096));
    let secret = live
        .ok(&["enroll-tokens", "create", "--auto-approve"])
        .trim()
        .to_string();
    live.start_puppet(&secret, "p1");
    live.wait_polling("p1");
    live.ok(&["tasks", "create", "chatty", "--command", "seq 1 20000"]);
    let out = live.ok(&["jobs", "run", "chatty", "--puppet", "p1", "--wait"]);
    let job = out.lines().next().unwrap().to_string();
    let runs = live.json(&["runs", "list", "--job", &job]);
    let run = runs[0]["id"].as_str().unwrap().to_string();

    let full: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    let full = full.as_bytes();
    let dropped = full.len() - 4096;

    let shown = live.json(&["runs", "show", &run]);
    assert_eq!(shown["state"], "succeeded", "{shown}");
    assert_eq!(shown["log_length"], full.len(), "the full length is known");
    assert_eq!(shown["log_truncated"], true, "{shown}");
    assert_eq!(shown["log_dropped"], dropped, "{shown}");
    let table = live.ok(&["runs", "show", &run]);
    assert!(
        table.contains(&format!("TRUNCATED, {dropped} bytes dropped")),
        "{table}"
    );

    let marker = format!(
        "[geppetto: {dropped} bytes dropped here: the log exceeded the server's per-run log limit (log_limit)]"
    );
    for transport in ["grpc", "grpc-web"] {
        let output = live
            .cli()
            .args(["--transport", transport, "logs", &run])
            .assert()
            .code(1)
            .stderr(predicate::str::contains("INCOMPLETE"))
            .stderr(predicate::str::contains(format!("dropped {dropped} bytes")));
        let stdout = &output.get_output().stdout;
        let mut expected = full[..2048].to_vec();
        if expected.last() != Some(&b'\n') {
            expected.push(b'\n');
        }
        expected.extend_from_slice(marker.as_bytes());
        expected.push(b'\n');
        expected.extend_from_slice(&full[full.len() - 2048..]);
        assert_eq!(
            String::from_utf8_lossy(stdout),
            String::from_utf8_lossy(&expected),
            "head, marker, tail"
        );
    }
    // --follow on the finished run: the same bytes, the same verdict.
    live.cli()
        .args(["logs", &run, "--follow"])
        .assert()
        .code(1)
        .stdout(predicate::str::contains(marker.as_str()))
        .stderr(predicate::str::contains("INCOMPLETE"));
}
