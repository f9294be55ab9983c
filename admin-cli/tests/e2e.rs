//! End to end: the `geppetto` binary, run as an operator runs it, against a
//! real puppeteer (real TLS, generated CA, admin token file) with real
//! puppets running real scripts. Every wait is on a condition with a
//! deadline; nothing sleeps to synchronise.

mod common;
#[path = "common/live.rs"]
mod live;

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use predicates::prelude::*;
use serde_json::Value;

use geppetto_test_support::block_until;
use live::{DEADLINE, Live, mkfifo, single_id};

/// Names in a JSON array of objects with a `name` field.
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// Enrolls puppets `names` with a fresh unlimited token (auto-approving, so
/// they get work at once) and waits until each polls. Returns the secret.
fn with_puppets(live: &mut Live, names: &[&str]) -> String {
    let secret = live
        .ok(&["enroll-tokens", "create", "--auto-approve"])
        .trim()
        .to_string();
    for name in names {
        live.start_puppet(&secret, name);
    }
    for name in names {
        live.wait_polling(name);
    }
    secret
}

#[test]
fn operator_flow_from_enrollment_to_logs() {
    let mut live = Live::start();

    // --- Enroll tokens: only the secret on stdout, the rest on stderr.
    let created = live
        .cli()
        .args([
            "enroll-tokens",
            "create",
            "--uses",
            "5",
            "--labels",
            "site=lab",
            "--description",
            "e2e fleet",
            "--auto-approve",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("created enroll token enr-"));
    let secret = String::from_utf8(created.get_output().stdout.clone()).unwrap();
    let lines: Vec<&str> = secret.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is only the secret: {secret:?}");
    let secret = lines[0].to_string();
    assert!(!secret.is_empty() && !secret.contains(' '), "{secret:?}");

    let tokens = live.json(&["enroll-tokens", "list"]);
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let token_id = tokens[0]["id"].as_str().unwrap().to_string();
    assert!(token_id.starts_with("enr-"), "{token_id}");
    assert_eq!(tokens[0]["status"], "active");
    assert_eq!(tokens[0]["uses_left"], 5);
    assert_eq!(tokens[0]["description"], "e2e fleet");
    assert_eq!(tokens[0]["auto_approve"], true);
    assert!(tokens[0].get("secret").is_none(), "list shows no secret");
    let table = live.ok(&["enroll-tokens", "list"]);
    assert!(table.trim_start().starts_with("ID"), "{table}");
    assert!(
        table.contains(&token_id) && table.contains("active"),
        "{table}"
    );
    assert!(
        table.contains("site=lab") && table.contains("e2e fleet"),
        "{table}"
    );
    assert!(!table.contains(&secret), "the table never shows the secret");

    // --- Puppets: three real agents enroll with that secret.
    for name in ["p1", "p2", "p3"] {
        live.start_puppet(&secret, name);
    }
    for name in ["p1", "p2", "p3"] {
        live.wait_polling(name);
    }
    let tokens = live.json(&["enroll-tokens", "list"]);
    assert_eq!(tokens[0]["used"], 3, "{tokens}");
    assert_eq!(tokens[0]["uses_left"], 2, "{tokens}");

    let list = live.json(&["puppets", "list"]);
    assert_eq!(names(&list), ["p1", "p2", "p3"]);
    for p in list.as_array().unwrap() {
        assert_eq!(p["state"], "enabled", "{p}");
        assert_eq!(p["presence"], "online", "{p}");
        assert_eq!(p["labels"]["site"], "lab", "token labels are given: {p}");
        assert_eq!(p["enroll_token_id"], token_id.as_str(), "{p}");
    }
    let table = live.ok(&["puppets", "list"]);
    assert!(table.trim_start().starts_with("NAME"), "{table}");
    for name in ["p1", "p2", "p3"] {
        assert!(
            table.lines().any(|l| l.trim_start().starts_with(name)
                && l.contains("enabled")
                && l.contains("online")),
            "{name} in:\n{table}"
        );
    }

    let shown = live.ok(&["puppets", "show", "p1"]);
    assert!(
        shown.contains("p1") && shown.contains("site=lab"),
        "{shown}"
    );
    let p1 = live.json(&["puppets", "show", "p1"]);
    assert_eq!(p1["name"], "p1");
    assert!(
        p1["facts"]["hostname"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{p1}"
    );

    let labelled = live.json(&["puppets", "label", "p2", "env=test"]);
    assert_eq!(labelled["labels"]["env"], "test", "{labelled}");
    assert_eq!(labelled["assigned_labels"]["env"], "test", "{labelled}");
    live.ok(&["puppets", "label", "p3", "env=test"]);
    let selected = live.json(&["puppets", "list", "--selector", "env=test"]);
    assert_eq!(names(&selected), ["p2", "p3"]);
    let table = live.ok(&["puppets", "list", "--selector", "env=test"]);
    assert!(table.contains("p2") && table.contains("p3"), "{table}");
    assert!(!table.contains("p1"), "{table}");

    // --- Tasks.
    let out = live.ok(&[
        "tasks",
        "create",
        "hello",
        "--command",
        "echo hi; echo oops >&2",
    ]);
    assert!(
        out.contains("hello") && out.contains("echo hi; echo oops >&2"),
        "{out}"
    );
    let v1 = live.json(&["tasks", "show", "hello"]);
    assert_eq!(v1["version"], 1);
    let v2 = live.json(&["tasks", "update", "hello", "--timeout", "30s"]);
    assert_eq!(v2["version"], 2, "{v2}");
    assert_eq!(v2["timeout_seconds"], 30.0, "{v2}");
    let table = live.ok(&["tasks", "list"]);
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("hello"))
        .unwrap_or_else(|| panic!("no hello in:\n{table}"));
    assert!(
        row.contains(" 2 ") && row.contains("script: echo hi") && row.contains("30s"),
        "{row}"
    );
    let shown = live.json(&["tasks", "show", "hello"]);
    assert_eq!(shown["name"], "hello");
    assert_eq!(shown["version"], 2);
    assert_eq!(shown["timeout_seconds"], 30.0);
    assert_eq!(shown["program"]["kind"], "script");
    assert_eq!(shown["program"]["body"], "echo hi; echo oops >&2");
    let old = live.json(&["tasks", "show", "hello", "--version", "1"]);
    assert_eq!(old["version"], 1);
    assert_eq!(old["timeout_seconds"], v1["timeout_seconds"]);

    // --- A job on three named puppets, waited for.
    let waited = live
        .cli()
        .args([
            "jobs",
            "run",
            "hello",
            "--puppet",
            "p1",
            "--puppet",
            "p2",
            "--puppet",
            "p3",
            "--wait",
            "--all-runs",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("3 runs: 3 succeeded"));
    let stdout = String::from_utf8(waited.get_output().stdout.clone()).unwrap();
    let wait_job = stdout.lines().next().unwrap().to_string();
    assert!(wait_job.starts_with("job-"), "{stdout}");
    for name in ["p1", "p2", "p3"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(name) && l.contains("succeeded")),
            "{name} in:\n{stdout}"
        );
    }
    for name in ["p1", "p2", "p3"] {
        let log = live.ok(&["logs", &wait_job, "--puppet", name]);
        assert_eq!(log, "hi\noops\n", "log of {name}");
    }

    // --- A job on a selector: a disabled puppet is left out.
    let disabled = live.ok(&["puppets", "disable", "p3"]);
    assert!(disabled.contains("disabled"), "{disabled}");
    assert_eq!(live.json(&["puppets", "show", "p3"])["state"], "disabled");
    let out = live.ok(&["jobs", "run", "hello", "--target", "env=test"]);
    let job = single_id(&out, "job");
    let enabled = live.json(&["puppets", "enable", "p3"]);
    assert_eq!(enabled["state"], "enabled", "{enabled}");

    let done = live.wait_job(&job);
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["task_name"], "hello");
    assert_eq!(done["task_version"], 2);
    assert_eq!(done["target"]["selector"], "env=test");
    let runs = done["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "only p2 (p3 was disabled): {done}");
    assert_eq!(runs[0]["puppet"], "p2");
    assert_eq!(runs[0]["exit_code"], 0);
    let run = runs[0]["run_id"].as_str().unwrap().to_string();

    let shown = live.ok(&["jobs", "show", &job]);
    for part in [
        job.as_str(),
        "hello v2",
        "env=test",
        "succeeded",
        "p2",
        run.as_str(),
    ] {
        assert!(shown.contains(part), "{part:?} in:\n{shown}");
    }

    // Newest first; read once through the environment instead of flags.
    let listed = live
        .cli_env()
        .args(["-o", "json", "jobs", "list"])
        .assert()
        .success();
    let listed: Value = serde_json::from_slice(&listed.get_output().stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [job.as_str(), wait_job.as_str()]);
    let table = live.ok(&["jobs", "list"]);
    assert!(table.contains(&job) && table.contains(&wait_job), "{table}");

    let shown = live.ok(&["runs", "show", &run]);
    assert!(shown.contains(&run) && shown.contains(&job), "{shown}");
    let history = &shown[shown.find("history:").expect("a history section")..];
    for state in ["queued", "running", "succeeded"] {
        assert!(history.contains(state), "{state} in:\n{history}");
    }
    let run_json = live.json(&["runs", "show", &run]);
    assert_eq!(run_json["state"], "succeeded");
    assert_eq!(run_json["outcome"], "exited");
    assert_eq!(run_json["exit_code"], 0);
    assert_eq!(run_json["log_length"], 8);
    let states: Vec<&str> = run_json["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{states:?}");
    assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");

    let table = live.ok(&["runs", "list", "--job", &job]);
    assert!(table.trim_start().starts_with("RUN"), "{table}");
    assert!(table.contains(&run) && table.contains("p2"), "{table}");
    let by_puppet = live.json(&["runs", "list", "--puppet", "p2"]);
    assert_eq!(by_puppet.as_array().unwrap().len(), 2, "{by_puppet}");

    assert_eq!(live.ok(&["logs", &run]), "hi\noops\n");
    assert_eq!(live.ok(&["logs", &job, "--puppet", "p2"]), "hi\noops\n");
    assert_eq!(live.ok(&["logs", &job]), "hi\noops\n", "a job's only run");
    // Both transports of the CLI reach the same puppeteer.
    assert_eq!(
        live.ok(&["--transport", "grpc-web", "logs", &run]),
        "hi\noops\n"
    );

    // --- A failing task: `--wait` exits 1 and says why.
    live.ok(&["tasks", "create", "fail", "--command", "exit 3"]);
    let failed = live
        .cli()
        .args(["jobs", "run", "fail", "--puppet", "p1", "--wait"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("p1: failed, exit code 3"))
        .stderr(predicate::str::contains("1 of 1 run did not succeed"));
    let stdout = String::from_utf8(failed.get_output().stdout.clone()).unwrap();
    let fail_job = stdout.lines().next().unwrap().to_string();
    let job_json = live.json(&["jobs", "show", &fail_job]);
    assert_eq!(job_json["state"], "failed", "{job_json}");
    assert_eq!(job_json["runs"][0]["exit_code"], 3, "{job_json}");
    // `jobs watch` of a finished failed job says the same.
    live.cli()
        .args(["jobs", "watch", &fail_job])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("did not succeed"));
}

#[test]
fn logs_follow_prints_output_as_it_comes() {
    let mut live = Live::start();
    with_puppets(&mut live, &["p1"]);
    let fifo = live.path("gate");
    mkfifo(&fifo);
    let script = format!("echo first-line; cat '{}'; echo after", fifo.display());
    live.ok(&[
        "tasks",
        "create",
        "live",
        "--command",
        &script,
        "--timeout",
        "2m",
    ]);
    let job = single_id(&live.ok(&["jobs", "run", "live", "--puppet", "p1"]), "job");
    let runs = live.json(&["runs", "list", "--job", &job]);
    let run = runs[0]["id"].as_str().unwrap().to_string();
    // Whatever happens below, the script is not left blocked on the FIFO.
    let _release = Release(fifo.clone());

    let started = Instant::now();
    let mut follow = live
        .cli_std()
        .args(["logs", &run, "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("geppetto logs --follow starts");
    let mut stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let until = started + DEADLINE;
    let mut seen = Vec::new();
    // Read until the first line is there: the run is now blocked on the FIFO.
    while !seen.ends_with(b"first-line\n") {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.extend(bytes),
            Err(e) => {
                let _ = follow.kill();
                panic!(
                    "no first line from logs --follow ({e}); got {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
    }
    assert_eq!(seen, b"first-line\n");
    // The follower is still there, waiting for more.
    assert!(follow.try_wait().unwrap().is_none(), "follow ended early");

    // Release the run: opening for writing blocks until `cat` reads.
    let (done_tx, done_rx) = mpsc::channel();
    let fifo_path = fifo.clone();
    std::thread::spawn(move || {
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo_path)
            .and_then(|mut f| f.write_all(b"released\n"));
        let _ = done_tx.send(result);
    });
    done_rx
        .recv_timeout(until.saturating_duration_since(Instant::now()))
        .expect("the FIFO was opened by the run in time")
        .expect("writing to the FIFO");

    // The rest arrives, then the follower ends by itself.
    loop {
        match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            Ok(bytes) => seen.extend(bytes),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = follow.kill();
                panic!(
                    "logs --follow did not end; got {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
    }
    reader.join().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        "first-line\nreleased\nafter\n"
    );
    let status = block_until("logs --follow exits", DEADLINE, || {
        follow.try_wait().unwrap()
    });
    assert!(status.success(), "logs --follow: {status}");

    let run_json = live.wait_run_state(&run, "succeeded");
    assert_eq!(run_json["exit_code"], 0);
    assert_eq!(live.ok(&["logs", &run]), "first-line\nreleased\nafter\n");
}

/// Opens the FIFO for reading and writing (which never blocks on Linux)
/// and writes a line, so a `cat` blocked on it finishes.
struct Release(std::path::PathBuf);

impl Drop for Release {
    fn drop(&mut self) {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.0)
        {
            let _ = f.write_all(b"");
        }
    }
}

#[test]
fn cancelling_a_running_job_kills_its_run() {
    let mut live = Live::start();
    with_puppets(&mut live, &["p1"]);
    live.ok(&[
        "tasks",
        "create",
        "long",
        "--command",
        "sleep 300",
        "--timeout",
        "10m",
    ]);
    let job = single_id(&live.ok(&["jobs", "run", "long", "--puppet", "p1"]), "job");
    let runs = live.json(&["runs", "list", "--job", &job]);
    let run = runs[0]["id"].as_str().unwrap().to_string();
    live.wait_run_state(&run, "running");

    live.cli()
        .args(["jobs", "cancel", &job])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("cancelled job {job}")));
    let run_json = live.wait_run_state(&run, "cancelled");
    assert!(
        run_json["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "running"),
        "it was running before: {run_json}"
    );
    let job_json = live.wait_job(&job);
    assert_eq!(job_json["state"], "cancelled", "{job_json}");
    // The puppet is free again: a new job on it runs to the end.
    live.ok(&["tasks", "create", "quick", "--command", "echo done"]);
    // Without --all-runs, the summary lists only runs that did not
    // succeed: here none, so stdout is the job's id alone.
    let quick = live
        .cli()
        .args(["jobs", "run", "quick", "--puppet", "p1", "--wait"])
        .assert()
        .success();
    let stdout = String::from_utf8(quick.get_output().stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("job-"), "{stdout}");
    // Cancelling a finished job is refused or changes nothing.
    let again = live.cli().args(["jobs", "cancel", &job]).output().unwrap();
    if again.status.success() {
        assert_eq!(live.json(&["jobs", "show", &job])["state"], "cancelled");
    }
}

#[test]
fn bad_input_is_one_error_line_and_changes_nothing() {
    let live = Live::start();
    live.ok(&["tasks", "create", "hello", "--command", "echo hi"]);
    let tasks_before = live.json(&["tasks", "list"]);
    let jobs_before = live.json(&["jobs", "list"]);

    let one_error_line = |args: &[&str], wanted: &[&str]| {
        let output = live.cli().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "{args:?}: stdout {:?}",
            output.stdout
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line:\n{stderr}");
        assert!(lines[0].starts_with("error: "), "{stderr}");
        for part in wanted {
            assert!(stderr.contains(part), "{args:?}: {part:?} in {stderr}");
        }
    };
    one_error_line(
        &["tasks", "create", "Bad Name", "--command", "x"],
        &["Bad Name", "'B'", "character 1"],
    );
    one_error_line(
        &["jobs", "run", "hello", "--target", "os=debian,,x"],
        &["os=debian,,x", "character"],
    );
    one_error_line(&["runs", "show", "job-xxxx"], &["is a job id"]);
    one_error_line(&["jobs", "show", "job-0000000000"], &["not found"]);
    one_error_line(
        &["jobs", "run", "nosuchtask", "--puppet", "p1"],
        &["not found"],
    );

    let bad_token = live.path("bad-token");
    std::fs::write(&bad_token, "not-the-token\n").unwrap();
    let output = common::geppetto()
        .args(["--server", &live.url])
        .args(["--ca".as_ref(), live.ca.as_os_str()])
        .args(["--token-file".as_ref(), bad_token.as_os_str()])
        .args(["tasks", "create", "other", "--command", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: not authenticated"), "{stderr}");
    assert!(stderr.contains("check --token"), "{stderr}");

    assert_eq!(live.json(&["tasks", "list"]), tasks_before);
    assert_eq!(live.json(&["jobs", "list"]), jobs_before);
    assert_eq!(names(&tasks_before), ["hello"]);
}

#[test]
fn a_resource_of_capacity_one_serialises_runs() {
    let mut live = Live::start();
    with_puppets(&mut live, &["p1", "p2"]);

    let created = live.json(&["resources", "create", "uplink-lyon", "--capacity", "1"]);
    assert_eq!(created["name"], "uplink-lyon");
    assert_eq!(
        (created["capacity"].as_u64(), created["used"].as_u64()),
        (Some(1), Some(0))
    );
    let script = live.path("upgrade.sh");
    std::fs::write(&script, "sleep 1\necho upgraded\n").unwrap();
    live.ok(&[
        "tasks",
        "create",
        "upgrade",
        "--script",
        script.to_str().unwrap(),
        "--resource",
        "uplink-lyon",
        "--retries",
        "2",
    ]);
    let task = live.json(&["tasks", "show", "upgrade"]);
    assert_eq!(
        task["resources"],
        serde_json::json!([{"name": "uplink-lyon", "count": 1}]),
        "{task}"
    );
    assert_eq!(task["retries"], 2, "{task}");
    let shown = live.ok(&["tasks", "show", "upgrade"]);
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("resources:") && l.contains("uplink-lyon")),
        "{shown}"
    );

    // Both puppets want the uplink: one runs, the other waits, then runs.
    let waited = live
        .cli()
        .args([
            "jobs", "run", "upgrade", "--puppet", "p1", "--puppet", "p2", "--wait",
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("2 runs: 2 succeeded"));
    let stdout = String::from_utf8(waited.get_output().stdout.clone()).unwrap();
    let job = stdout.lines().next().unwrap().to_string();
    let runs = live.json(&["runs", "list", "--job", &job]);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let time = |run: &Value, field: &str| {
        humantime::parse_rfc3339(
            run[field]
                .as_str()
                .unwrap_or_else(|| panic!("{field}: {run}")),
        )
        .unwrap()
    };
    let (first, second) = if time(&runs[0], "started_at") <= time(&runs[1], "started_at") {
        (&runs[0], &runs[1])
    } else {
        (&runs[1], &runs[0])
    };
    for run in [first, second] {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["attempt"], 1, "{run}");
    }
    assert!(
        time(second, "started_at") >= time(first, "finished_at"),
        "the runs overlapped: {first}\n{second}"
    );
    assert!(
        second["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["state"] == "waiting" && t["cause"] == "waiting for resource uplink-lyon"),
        "the second run waited for the uplink: {second}"
    );
    let shown = live.ok(&["runs", "show", second["id"].as_str().unwrap()]);
    assert!(
        shown.contains("waiting for resource uplink-lyon"),
        "{shown}"
    );
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("attempt:") && l.trim_end().ends_with('1')),
        "{shown}"
    );

    // Everything was released.
    let resource = live.json(&["resources", "show", "uplink-lyon"]);
    assert_eq!(resource["used"], 0, "{resource}");
    assert_eq!(resource["holders"], serde_json::json!([]), "{resource}");
    assert_eq!(resource["waiters"], serde_json::json!([]), "{resource}");
    let table = live.ok(&["resources", "list"]);
    assert!(table.trim_start().starts_with("NAME"), "{table}");
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.trim_start().starts_with("uplink-lyon"))
        .unwrap_or_else(|| panic!("no uplink-lyon row:\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(row, ["uplink-lyon", "1", "0", "-", "0", "0"], "{table}");
    let shown = live.ok(&["resources", "show", "uplink-lyon"]);
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("used:") && l.trim_end().ends_with('0')),
        "{shown}"
    );

    // Resizing, and removal once no task needs it.
    let resized = live.json(&["resources", "update", "uplink-lyon", "--capacity", "2"]);
    assert_eq!(resized["capacity"], 2, "{resized}");
    let refused = live
        .cli()
        .args(["resources", "remove", "uplink-lyon"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    let updated = live.json(&["tasks", "update", "upgrade", "--no-resources"]);
    assert_eq!(updated["resources"], serde_json::json!([]), "{updated}");
    assert_eq!(updated["retries"], 2, "kept: {updated}");
    live.cli()
        .args(["resources", "remove", "uplink-lyon"])
        .assert()
        .success()
        .stderr(predicate::str::contains("removed resource uplink-lyon"));
    assert_eq!(live.json(&["resources", "list"]), serde_json::json!([]));
}

#[test]
fn a_job_targets_a_group_by_name() {
    let mut live = Live::start();
    with_puppets(&mut live, &["web-1", "db-1"]);
    live.ok(&["puppets", "label", "web-1", "role=web"]);
    live.ok(&["puppets", "label", "db-1", "role=db"]);

    let created = live.json(&[
        "groups",
        "create",
        "webs",
        "--selector",
        "role in (web,proxy)",
        "--description",
        "front ends",
    ]);
    assert_eq!(
        created,
        serde_json::json!({
            "name": "webs",
            "selector": "role in (web,proxy)",
            "puppets": [],
            "description": "front ends",
        })
    );
    live.cli()
        .args(["groups", "create", "dbs", "--puppet", "db-1"])
        .assert()
        .success()
        .stdout("")
        .stderr(predicate::str::contains("created group dbs"));

    let list = live.json(&["groups", "list"]);
    assert_eq!(names(&list), ["dbs", "webs"]);
    assert_eq!(list[0]["selector"], Value::Null, "{list}");
    assert_eq!(list[0]["puppets"], serde_json::json!(["db-1"]), "{list}");
    let table = live.ok(&["groups", "list"]);
    assert!(table.trim_start().starts_with("NAME"), "{table}");
    assert!(
        table.lines().any(|l| l.trim_start().starts_with("webs")
            && l.contains("role in (web,proxy)")
            && l.contains("front ends")),
        "{table}"
    );

    let shown = live.json(&["groups", "show", "webs"]);
    assert_eq!(
        shown["current_members"],
        serde_json::json!(["web-1"]),
        "{shown}"
    );
    let table = live.ok(&["groups", "show", "webs"]);
    assert!(
        table.contains("current members:") && table.contains("web-1"),
        "{table}"
    );
    assert!(!table.contains("db-1"), "{table}");

    live.ok(&["tasks", "create", "deploy", "--command", "echo deployed"]);
    let job = single_id(
        &live.ok(&["jobs", "run", "deploy", "--target", "group:webs"]),
        "job",
    );
    let done = live.wait_job(&job);
    assert_eq!(done["state"], "succeeded", "{done}");
    let runs = done["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "{done}");
    assert_eq!(runs[0]["puppet"], "web-1", "{done}");

    live.cli()
        .args(["groups", "remove", "webs"])
        .assert()
        .success()
        .stderr(predicate::str::contains("removed group webs"));
    assert_eq!(names(&live.json(&["groups", "list"])), ["dbs"]);
    let gone = live
        .cli()
        .args(["jobs", "run", "deploy", "--target", "group:webs"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert_eq!(gone.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

#[test]
fn a_production_job_waits_for_the_test_job_and_an_approval() {
    let mut live = Live::start();
    with_puppets(&mut live, &["prod-1", "test-1"]);
    live.ok(&["puppets", "label", "test-1", "env=test"]);
    live.ok(&["puppets", "label", "prod-1", "env=prod"]);
    live.ok(&["tasks", "create", "patch", "--command", "echo patched"]);

    let test = single_id(
        &live.ok(&["jobs", "run", "patch", "--target", "env=test"]),
        "job",
    );
    let prod = single_id(
        &live.ok(&[
            "jobs",
            "run",
            "patch",
            "--target",
            "env=prod",
            "--after",
            &test,
            "--approval",
            "--rolling",
            "--max-failures",
            "1",
        ]),
        "job",
    );

    // Awaiting approval: shown as such, with the strategy in words.
    let shown = live.ok(&["jobs", "show", &prod]);
    assert!(
        shown
            .lines()
            .any(|l| l.trim_start().starts_with("state:") && l.contains("awaiting approval")),
        "{shown}"
    );
    // The puppeteer may add a default offline wait to a rolling job.
    let strategy = shown
        .lines()
        .find(|l| l.trim_start().starts_with("strategy:"))
        .unwrap_or_else(|| panic!("no strategy line:\n{shown}"));
    assert!(strategy.contains("rolling, max failures 1, "), "{shown}");
    assert!(
        strategy.contains(&format!("after {test}, approval")),
        "{shown}"
    );
    let json = live.json(&["jobs", "show", &prod]);
    assert_eq!(json["state"], "awaiting_approval", "{json}");
    assert_eq!(
        json["strategy"]["max_failures"],
        serde_json::json!({"count": 1})
    );
    assert_eq!(json["strategy"]["max_in_flight"], Value::Null);
    assert_eq!(json["strategy"]["after_job"], test.as_str());
    assert_eq!(json["strategy"]["approval"], true);
    assert_eq!(json["approved_by"], Value::Null, "{json}");
    let list = live.ok(&["jobs", "list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&prod) && l.contains("awaiting approval")),
        "{list}"
    );

    // The prod puppet's queue names the job.
    let queue = live.json(&["puppets", "queue", "prod-1"]);
    assert_eq!(queue["puppet"], "prod-1", "{queue}");
    let entries = queue["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["job_id"] == prod.as_str()),
        "{queue}"
    );
    let table = live.ok(&["puppets", "queue", "prod-1"]);
    assert!(table.trim_start().starts_with('#'), "{table}");
    assert!(table.contains(&prod), "{table}");

    // A watch keeps waiting through the approval gate.
    let mut watch = live
        .cli_std()
        .args(["jobs", "watch", &prod])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = watch.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut seen = Vec::new();
    let until = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&seen).contains("awaiting approval") {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.extend(bytes),
            Err(_) => {
                let _ = watch.kill();
                panic!(
                    "jobs watch never said awaiting approval; got {:?}",
                    String::from_utf8_lossy(&seen)
                );
            }
        }
    }
    assert!(
        watch.try_wait().unwrap().is_none(),
        "jobs watch ended while the job awaits approval: {:?}",
        String::from_utf8_lossy(&seen)
    );

    // The test job succeeds on its own; then the approval lets prod go.
    let test_json = live.wait_job(&test);
    assert_eq!(test_json["state"], "succeeded", "{test_json}");
    live.cli()
        .args(["jobs", "approve", &prod])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!("approved job {prod}")));
    let status = block_until("jobs watch exits", DEADLINE, || watch.try_wait().unwrap());
    reader.join().unwrap();
    seen.extend(rx.try_iter().flatten());
    assert!(
        status.success(),
        "jobs watch: {status}: {}",
        String::from_utf8_lossy(&seen)
    );

    let json = live.json(&["jobs", "show", &prod]);
    assert_eq!(json["state"], "succeeded", "{json}");
    assert_eq!(json["approved_by"], "admin", "{json}");
    assert!(json["approved_at"].is_string(), "{json}");
    assert_eq!(json["rejected"], false, "{json}");
    let shown = live.ok(&["jobs", "show", &prod]);
    assert!(shown.contains("approved by admin"), "{shown}");
    // Approving twice is refused, in one line.
    let again = live
        .cli()
        .args(["jobs", "approve", &prod])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
}

/// Ids and kinds of a JSON array of events.
fn kinds(events: &Value) -> Vec<(u64, String)> {
    events
        .as_array()
        .expect("a JSON array")
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap(),
                e["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn events_tell_a_job_in_order_and_status_sums_up() {
    let mut live = Live::start();
    with_puppets(&mut live, &["p1", "p2"]);

    let status = live.json(&["status"]);
    assert_eq!(status["fleet"]["total"], 2, "{status}");
    assert_eq!(status["fleet"]["online"], 2, "{status}");
    assert_eq!(status["fleet"]["pending"], 0, "{status}");
    assert_eq!(
        status["attention"]["pending_puppets"],
        serde_json::json!([])
    );
    let screen = live.ok(&["status"]);
    assert!(screen.starts_with("fleet: 2 puppets: 2 online"), "{screen}");
    assert!(screen.contains("needs attention: nothing"), "{screen}");

    // Follow from the last event so far: nothing of the job can be missed.
    let before = live.json(&["events"]);
    let last = kinds(&before).last().map_or(0, |(id, _)| *id);
    assert!(last > 0, "enrollments make events: {before}");
    let mut follow = live
        .cli_std()
        .args(["-o", "json", "events", "--follow", "--kind", "job."])
        .args(["--after", &last.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("geppetto events --follow starts");
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    live.ok(&["tasks", "create", "hello", "--command", "echo hi"]);
    let job = single_id(&live.ok(&["jobs", "run", "hello", "--puppet", "p1"]), "job");
    live.wait_job(&job);

    let events = live.json(&["events", "--job", &job]);
    let list = kinds(&events);
    let ids: Vec<u64> = list.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order: {events}");
    let position = |kind: &str| {
        list.iter()
            .position(|(_, k)| k == kind)
            .unwrap_or_else(|| panic!("no {kind} in {events}"))
    };
    assert!(
        position("run.queued") < position("run.succeeded"),
        "{events}"
    );
    assert!(
        position("run.succeeded") < position("job.succeeded"),
        "{events}"
    );
    for e in events.as_array().unwrap() {
        assert_eq!(e["job_id"], job.as_str(), "{e}");
    }
    let runs_only = live.json(&["events", "--job", &job, "--kind", "run."]);
    assert!(
        kinds(&runs_only).iter().all(|(_, k)| k.starts_with("run.")),
        "{runs_only}"
    );
    let table = live.ok(&["events", "--job", &job]);
    assert!(table.trim_start().starts_with("ID"), "{table}");
    assert!(table.contains("job.succeeded"), "{table}");

    // The follower printed the job's events, one JSON object per line.
    let until = Instant::now() + DEADLINE;
    let mut followed = Vec::new();
    while !followed
        .iter()
        .any(|e: &Value| e["kind"] == "job.succeeded")
    {
        let left = until.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no job.succeeded followed: {followed:?}"));
        followed.push(serde_json::from_str(&line).expect("one JSON object per line"));
    }
    assert!(
        followed
            .iter()
            .all(|e| e["kind"].as_str().unwrap().starts_with("job.")
                && e["id"].as_u64().unwrap() > last),
        "{followed:?}"
    );
    // Ctrl-C ends it, successfully.
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = block_until("events --follow exits on SIGINT", DEADLINE, || {
        follow.try_wait().unwrap()
    });
    assert!(status.success(), "{status}");
    reader.join().unwrap();
}

/// Begins an upload of `data` as `name` through the API and sends only its
/// first `sent` bytes, as an upload cut off by a dropped link would.
fn partial_upload(live: &Live, name: &str, data: &[u8], sent: usize) {
    use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
    use geppetto_proto::v1 as pb;
    use sha2::{Digest, Sha256};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let slot = TokenSlot::default();
        let token = std::fs::read_to_string(&live.token_file).unwrap();
        slot.set(Some(token.trim())).unwrap();
        let endpoint = Endpoint {
            url: live.url.clone(),
            ca_file: Some(live.ca.clone()),
            transport: Transport::Grpc,
        };
        let mut client =
            pb::artifacts_client::ArtifactsClient::new(Channel::new(&endpoint, slot).unwrap());
        let status = client
            .begin_upload(pb::BeginUploadRequest {
                name: name.into(),
                sha256: hex::encode(Sha256::digest(data)),
                size: data.len() as u64,
            })
            .await
            .unwrap()
            .into_inner();
        client
            .upload_chunk(pb::UploadChunkRequest {
                upload_id: status.upload_id,
                offset: 0,
                data: data[..sent].to_vec(),
            })
            .await
            .unwrap();
    });
}

#[test]
fn artifacts_upload_resume_and_pin_into_tasks() {
    let live = Live::start();
    let data: Vec<u8> = (0..(2 * 1024 * 1024 + 512 * 1024) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let file = live.path("patch-2.3.tar.gz");
    std::fs::write(&file, &data).unwrap();
    partial_upload(&live, "patch-2.3.tar.gz", &data, 1024 * 1024);

    // The CLI resumes where the puppeteer's copy ends.
    let output = live
        .cli()
        .args(["-o", "json", "artifacts", "upload"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming the upload of patch-2.3.tar.gz at 1.0 MiB of 2.5 MiB"),
        "{stderr}"
    );
    let uploaded: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(uploaded["size"], data.len() as u64);
    assert_eq!(uploaded["uploaded_by"], "admin");
    let sha = uploaded["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);

    let small = live.path("conf.txt");
    std::fs::write(&small, "key=value\n").unwrap();
    let conf = live.json(&[
        "artifacts",
        "upload",
        small.to_str().unwrap(),
        "--name",
        "site-conf",
    ]);
    assert_eq!(conf["name"], "site-conf");
    let list = live.json(&["artifacts", "list"]);
    assert_eq!(names(&list), ["patch-2.3.tar.gz", "site-conf"]);
    let table = live.ok(&["artifacts", "list"]);
    assert!(
        table.contains("2.5 MiB") && table.contains(&sha[..16]),
        "{table}"
    );

    // Resources carry a bandwidth budget.
    let created = live.json(&[
        "resources",
        "create",
        "uplink-lyon",
        "--capacity",
        "2",
        "--bandwidth",
        "48KiB/s",
    ]);
    assert_eq!(created["bandwidth"], 48 * 1024);
    let shown = live.ok(&["resources", "show", "uplink-lyon"]);
    assert!(shown.contains("48 KiB/s"), "{shown}");
    let updated = live.json(&[
        "resources",
        "update",
        "uplink-lyon",
        "--bandwidth",
        "512kbit/s",
    ]);
    assert_eq!(
        (updated["bandwidth"].as_u64(), updated["capacity"].as_u64()),
        (Some(64_000), Some(2))
    );
    live.cli()
        .args([
            "resources",
            "update",
            "uplink-lyon",
            "--bandwidth",
            "48KB/s",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown unit \"KB/s\""));

    // Tasks pin the artifacts' content and name their variables.
    live.ok(&[
        "tasks",
        "create",
        "patch",
        "--command",
        "true",
        "--artifact",
        "patch-2.3.tar.gz",
        "--artifact",
        "site-conf",
    ]);
    let task = live.json(&["tasks", "show", "patch"]);
    assert_eq!(task["artifacts"][0]["sha256"], sha.as_str());
    assert_eq!(
        task["artifacts"][0]["env"],
        "GEPPETTO_ARTIFACT_PATCH_2_3_TAR_GZ"
    );
    assert_eq!(task["artifacts"][1]["env"], "GEPPETTO_ARTIFACT_SITE_CONF");
    live.cli()
        .args([
            "tasks",
            "create",
            "other",
            "--command",
            "true",
            "--artifact",
            "nope",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no artifact \"nope\""));

    // Removal is refused while the task's latest version uses it.
    live.cli()
        .args(["artifacts", "remove", "site-conf"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "used by the latest version of tasks patch",
        ));
    let updated = live.json(&[
        "tasks",
        "update",
        "patch",
        "--clear-artifacts",
        "--artifact",
        "patch-2.3.tar.gz",
    ]);
    assert_eq!(updated["artifacts"].as_array().unwrap().len(), 1);
    live.ok(&["artifacts", "remove", "site-conf"]);
    live.ok(&["artifacts", "remove", "patch-2.3.tar.gz", "--force"]);
    assert_eq!(live.json(&["artifacts", "list"]), serde_json::json!([]));
    // The task version still pins the content.
    assert!(live.path("data/artifacts").join(&sha).is_file());
}

#[test]
fn a_run_waiting_for_an_offline_puppet_says_so_and_can_be_skipped_and_acknowledged() {
    let mut live = Live::start_with(|c| {
        c.late_after = Some(Duration::from_secs(1));
        c.offline_after = Some(Duration::from_secs(2));
    });
    with_puppets(&mut live, &["up", "down"]);
    live.ok(&["tasks", "create", "hello", "--command", "echo hi"]);
    live.stop_puppet("down");
    block_until("down is offline", DEADLINE, || {
        let puppet = live.json(&["puppets", "show", "down"]);
        puppet["presence"] == "offline"
    });

    let job = single_id(
        &live.ok(&["jobs", "run", "hello", "--puppet", "up", "--puppet", "down"]),
        "job",
    );
    // The run on the dead puppet says why it waits, and since when.
    let cause = block_until("the run waits for its offline puppet", DEADLINE, || {
        let runs = live.json(&["runs", "list", "--job", &job]);
        let run = runs
            .as_array()?
            .iter()
            .find(|r| r["puppet"] == "down")?
            .clone();
        let cause = run["cause"].as_str()?.to_string();
        cause
            .starts_with("waiting for its puppet, which is offline, last seen ")
            .then_some(cause)
    });
    let shown = live.ok(&["jobs", "show", &job]);
    assert!(
        shown.contains(" ago)"),
        "how long ago is shown: {shown}\n{cause}"
    );
    let status = live.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "job {job} waits for puppet down, offline (last seen "
        )) && status.contains(&format!("geppetto jobs skip {job} --puppet down")),
        "{status}"
    );

    // Filters: by state across jobs, by state and selector within a job.
    let waiting = live.json(&["runs", "list", "--state", "waiting"]);
    assert_eq!(
        waiting
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["puppet"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["down"],
        "{waiting}"
    );
    live.ok(&["puppets", "label", "up", "role=web"]);
    let web = live.json(&["runs", "list", "--job", &job, "--target", "role=web"]);
    assert_eq!(web.as_array().unwrap().len(), 1, "{web}");
    assert_eq!(web[0]["puppet"], "up", "{web}");
    let shown = live.json(&["jobs", "show", &job, "--state", "waiting,queued"]);
    assert_eq!(shown["runs"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["runs"][0]["puppet"], "down", "{shown}");
    // A filter is bounded: each state at most once.
    let many = vec!["queued"; 17].join(",");
    live.cli()
        .args(["runs", "list", "--state", &many])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("at most 16 states"));
    live.cli()
        .args(["runs", "list", "--state", "sleeping"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown run state"));

    // A started or finished run cannot be skipped; the wrong puppet is named.
    live.wait_run_state(
        live.json(&["runs", "list", "--job", &job])
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["puppet"] == "up")
            .unwrap()["id"]
            .as_str()
            .unwrap(),
        "succeeded",
    );
    live.cli()
        .args(["jobs", "skip", &job, "--puppet", "up"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "only runs that have not started can be skipped",
        ));
    live.cli()
        .args(["jobs", "skip", &job, "--puppet", "nobody"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("has no run on puppet nobody"));
    // Not finished yet: nothing to acknowledge.
    live.cli()
        .args(["jobs", "ack", &job])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("is not finished"));

    // Skipped now: the job ends, and needs attention until acknowledged.
    live.ok(&["jobs", "skip", &job, "--puppet", "down"]);
    let done = live.wait_job(&job);
    let skipped = done["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["puppet"] == "down")
        .unwrap();
    assert_eq!(skipped["state"], "skipped");
    assert!(
        skipped["cause"]
            .as_str()
            .unwrap()
            .starts_with("skipped: skipped by "),
        "{skipped}"
    );
    let status = live.ok(&["status"]);
    assert!(
        status.contains(&format!("job {job} (hello v1) failed")) && !status.contains("waits for"),
        "{status}"
    );
    let failed = live.json(&["jobs", "list", "--state", "failed"]);
    assert!(
        failed
            .as_array()
            .unwrap()
            .iter()
            .all(|j| j["state"] == "failed")
            && failed
                .as_array()
                .unwrap()
                .iter()
                .any(|j| j["id"] == job.as_str()),
        "{failed}"
    );
    live.ok(&["jobs", "ack", &job]);
    let acked = live.json(&["jobs", "show", &job]);
    assert!(acked["acknowledged_by"].is_string(), "{acked}");
    let status = live.ok(&["status"]);
    assert!(status.contains("needs attention: nothing"), "{status}");
}

/// Kinds of the events of a job.
fn job_event_kinds(live: &Live, job: &str) -> Vec<String> {
    live.json(&["events", "--job", job])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn approval_is_asked_once_nothing_else_is_pending_under_four_eyes_and_rejection_is_its_own_end() {
    let mut live = Live::start_with(|c| c.approval_four_eyes = true);
    with_puppets(&mut live, &["p1"]);
    let gate = live.path("gate");
    live.ok(&[
        "tasks",
        "create",
        "wait-for-gate",
        "--command",
        &format!("while [ ! -e {} ]; do sleep 0.1; done", gate.display()),
    ]);
    live.ok(&["tasks", "create", "patch", "--command", "echo patched"]);
    let test = single_id(
        &live.ok(&["jobs", "run", "wait-for-gate", "--puppet", "p1"]),
        "job",
    );
    let prod = single_id(
        &live.ok(&[
            "jobs",
            "run",
            "patch",
            "--puppet",
            "p1",
            "--after",
            &test,
            "--approval",
        ]),
        "job",
    );
    // While the test job runs, prod waits for it, not yet for an approval,
    // and nobody is asked to approve it.
    block_until("prod waits for its dependency", DEADLINE, || {
        let job = live.json(&["jobs", "show", &prod]);
        job["runs"][0]["cause"] == format!("waiting for dependency {test}")
    });
    assert!(
        !job_event_kinds(&live, &prod).contains(&"job.awaiting_approval".to_string()),
        "approval asked before the dependency ended"
    );
    std::fs::write(&gate, b"").unwrap();
    assert_eq!(live.wait_job(&test)["state"], "succeeded");
    block_until("the approval is asked for", DEADLINE, || {
        job_event_kinds(&live, &prod).contains(&"job.awaiting_approval".to_string())
    });
    let job = live.json(&["jobs", "show", &prod]);
    assert_eq!(job["runs"][0]["cause"], "waiting for approval", "{job}");

    // Four eyes: its creator (admin) cannot approve it; another operator can.
    live.cli()
        .args(["jobs", "approve", &prod])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("another operator must approve it"));
    live.ok(&["users", "add", "bob", "--role", "operator"]);
    let token = live.ok(&["tokens", "create", "--user", "bob"]);
    let bob_token = live.path("bob-token");
    std::fs::write(&bob_token, token.trim()).unwrap();
    let bob = || {
        let mut cmd = common::geppetto();
        cmd.args(["--server", &live.url, "--ca"])
            .arg(&live.ca)
            .arg("--token-file")
            .arg(&bob_token);
        cmd
    };
    bob().args(["jobs", "approve", &prod]).assert().success();
    let done = live.wait_job(&prod);
    assert_eq!(
        (done["state"].as_str(), done["approved_by"].as_str()),
        (Some("succeeded"), Some("bob")),
        "{done}"
    );

    // Rejected (its creator may withdraw it): rejected, not failed, with
    // its own event and no job.failed.
    let refused = single_id(
        &live.ok(&["jobs", "run", "patch", "--puppet", "p1", "--approval"]),
        "job",
    );
    live.ok(&["jobs", "reject", &refused]);
    let job = live.wait_job(&refused);
    assert_eq!(job["state"], "rejected", "{job}");
    live.cli()
        .args(["jobs", "watch", &refused])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(format!(
            "job {refused} was rejected by admin"
        )));
    let kinds = job_event_kinds(&live, &refused);
    assert!(kinds.contains(&"job.rejected".to_string()), "{kinds:?}");
    assert!(!kinds.contains(&"job.failed".to_string()), "{kinds:?}");
}

/// A stand-in for a puppet binary: answers `--version` like one.
fn fake_puppet(live: &Live, file: &str, version: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = live.path(file);
    std::fs::write(&path, format!("#!/bin/sh\necho \"puppet {version}\"\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn puppet_releases_and_upgrades_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("puppet");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&served, "#!/bin/sh\necho \"puppet 0.3.0\"\n").unwrap();
        std::fs::set_permissions(&served, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let served_path = served.clone();
    let mut live = Live::start_with(move |c| c.puppet_binary = Some(served_path));
    with_puppets(&mut live, &["p1"]);
    let (os, arch) = (std::env::consts::OS, std::env::consts::ARCH);

    // The served build is a release.
    let list = live.json(&["puppet-releases", "list"]);
    assert_eq!(list["served_version"], "0.3.0", "{list}");
    assert_eq!(list["releases"][0]["version"], "0.3.0", "{list}");
    assert_eq!(list["releases"][0]["served"], true, "{list}");
    assert_eq!(list["releases"][0]["os"], os, "{list}");
    assert_eq!(list["releases"][0]["arch"], arch, "{list}");

    // Another platform needs its version said; this one's is asked.
    let other = fake_puppet(&live, "puppet-aarch64", "0.4.0");
    live.cli()
        .args(["puppet-releases", "add"])
        .arg(&other)
        .args(["--os", "linux", "--arch", "aarch64"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("give --version VERSION"));
    live.cli()
        .args(["puppet-releases", "add"])
        .arg(&other)
        .args(["--os", "linux", "--arch", "aarch64", "--version", "0.4.0"])
        .assert()
        .success()
        .stderr(predicate::str::contains(
            "added puppet 0.4.0 for linux/aarch64",
        ));
    let here = fake_puppet(&live, "puppet-here", "0.4.0");
    live.cli()
        .args(["puppet-releases", "add"])
        .arg(&here)
        .args(["--os", os, "--arch", arch])
        .assert()
        .success()
        .stderr(predicate::str::contains(format!(
            "added puppet 0.4.0 for {os}/{arch}"
        )));
    let table = live.ok(&["puppet-releases", "list"]);
    assert!(
        table.contains("0.4.0") && table.contains("linux/aarch64") && table.contains("0.3.0"),
        "{table}"
    );

    // A version without a release is refused, saying what there is.
    live.cli()
        .args(["puppets", "upgrade", "--puppet", "p1", "--to", "9.9.9"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no release of puppet 9.9.9"))
        .stderr(predicate::str::contains("0.4.0"));

    // An upgrade is a job: here of an in-process puppet, which cannot
    // replace itself and says so; the run fails with that cause.
    let out = live
        .cli()
        .args(["puppets", "upgrade", "--puppet", "p1", "--to", "0.4.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("upgrading to puppet 0.4.0")
            && stderr.contains("linux/aarch64")
            && stderr.contains(&format!("{os}/{arch}")),
        "{stderr}"
    );
    let job = single_id(&String::from_utf8_lossy(&out.stdout), "job");
    let job = live.wait_job(&job);
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        job["runs"][0]["cause"]
            .as_str()
            .unwrap()
            .contains("cannot replace itself"),
        "{job}"
    );
    let task = live.json(&["tasks", "show", "puppet-upgrade"]);
    assert_eq!(task["program"]["kind"], "upgrade", "{task}");
    assert_eq!(task["program"]["version"], "0.4.0", "{task}");

    // A resource given to the task stays with the next upgrades.
    live.ok(&["resources", "create", "upgrades", "--capacity", "1"]);
    live.ok(&[
        "tasks",
        "update",
        "puppet-upgrade",
        "--resource",
        "upgrades",
    ]);
    live.ok(&["puppets", "upgrade", "--puppet", "p1", "--to", "0.3.0"]);
    let task = live.json(&["tasks", "show", "puppet-upgrade"]);
    assert_eq!(task["program"]["version"], "0.3.0", "{task}");
    assert_eq!(task["resources"][0]["name"], "upgrades", "{task}");
}
