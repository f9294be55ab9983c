//! The `geppetto` binary as scripts see it: help, exit codes, error lines.
//! No puppeteer is needed; see `tests/common` for driving the binary
//! against a real one.

mod common;

use predicates::prelude::*;

use common::geppetto;

#[test]
fn help_lists_the_command_groups() {
    let assert = geppetto().arg("--help").assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    for group in [
        "puppets",
        "enroll-tokens",
        "users",
        "whoami",
        "tokens",
        "audit",
        "tasks",
        "jobs",
        "runs",
        "logs",
        "resources",
        "artifacts",
        "groups",
        "notifications",
        "events",
        "status",
        "completions",
        "man",
    ] {
        assert!(
            out.contains(group),
            "--help does not mention {group}:\n{out}"
        );
    }
    assert!(out.contains("A short tour"), "{out}");
    assert!(out.contains("--auto-approve"), "{out}");
    assert!(out.contains("puppets approve"), "{out}");
    assert!(
        out.contains("geppetto resources create uplink-lyon --capacity 1"),
        "{out}"
    );
    assert!(
        out.contains(
            "geppetto tasks create upgrade --script upgrade.sh --resource uplink-lyon --retries 2"
        ),
        "{out}"
    );
    for line in [
        "TEST=$(geppetto jobs run patch --target env=test)",
        "geppetto jobs run patch --target env=prod --after $TEST --approval --rolling --max-failures 1",
        "geppetto jobs approve job-...",
        "geppetto groups create webs --selector 'role in (web,proxy)'",
        "geppetto jobs run deploy --target group:webs",
        "geppetto notifications add --on job.failed,run.lost,puppet.offline --email ops@example.org",
    ] {
        assert!(out.contains(line), "the tour lacks {line:?}:\n{out}");
    }
}

/// The words each group's --help lists as its subcommands.
fn subcommands_listed(group: &str, words: &[&str]) {
    let assert = geppetto().args([group, "--help"]).assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    let commands: Vec<&str> = out
        .split("Commands:")
        .nth(1)
        .unwrap_or_else(|| panic!("no Commands: section in {group} --help:\n{out}"))
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for word in words {
        assert!(
            commands.contains(word),
            "{group} --help does not list {word}:\n{out}"
        );
    }
}

#[test]
fn new_groups_list_their_commands() {
    subcommands_listed("users", &["add", "list", "set-role", "remove"]);
    subcommands_listed("tokens", &["create", "list", "revoke"]);
    subcommands_listed(
        "puppets",
        &[
            "list", "show", "label", "disable", "enable", "remove", "approve", "reject", "rotate",
            "revoke",
        ],
    );
    subcommands_listed("resources", &["create", "list", "show", "update", "remove"]);
    subcommands_listed("puppets", &["queue"]);
    subcommands_listed("groups", &["create", "list", "show", "remove"]);
    subcommands_listed("notifications", &["add", "list", "remove", "test"]);
    subcommands_listed(
        "jobs",
        &[
            "run", "list", "show", "cancel", "watch", "approve", "reject", "retry",
        ],
    );
}

#[test]
fn help_texts_of_rollouts() {
    let help = |args: &[&str]| {
        let assert = geppetto().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&assert.get_output().stdout).to_string()
    };
    let run = help(&["jobs", "run"]);
    for flag in [
        "--max-in-flight <N|P%>",
        "--max-failures <N|P%>",
        "--rolling",
        "--deadline <DUR>",
        "--offline-wait <DUR>",
        "--after <JOB>",
        "--per-puppet",
        "--approval",
        "--ordered",
        "awaiting approval",
    ] {
        assert!(run.contains(flag), "jobs run --help lacks {flag}:\n{run}");
    }
    let retry = help(&["jobs", "retry"]);
    assert!(retry.contains("--only <RUNS>"), "{retry}");
    for word in ["skipped", "failed", "all", "default: skipped"] {
        assert!(retry.contains(word), "{retry}");
    }
    assert!(help(&["jobs", "approve"]).contains("--approval"));
    let queue = help(&["puppets", "queue"]);
    assert!(queue.contains("in order"), "{queue}");
}

#[test]
fn bad_rollout_options_exit_2() {
    for (flag, bad, says) in [
        ("--max-in-flight", "0", "at least 1"),
        ("--max-failures", "0%", "from 1% to 100%"),
        ("--max-failures", "101%", "from 1% to 100%"),
        ("--max-in-flight", "x%", "not a whole number"),
        ("--max-in-flight", "-1", "not a whole number"),
    ] {
        geppetto()
            .args(["jobs", "run", "t", "--target", "a=b", flag, bad])
            .assert()
            .code(2)
            .stderr(predicate::str::starts_with("error:"))
            .stderr(predicate::str::contains(format!("invalid limit \"{bad}\"")))
            .stderr(predicate::str::contains(says));
    }
    geppetto()
        .args(["jobs", "run", "t", "--target", "a=b", "--per-puppet"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--after <JOB>"));
    geppetto()
        .args(["jobs", "retry", "job-1", "--only", "lost"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("skipped"));
}

#[test]
fn help_texts_of_resources_and_retries() {
    let help = |args: &[&str]| {
        let assert = geppetto().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&assert.get_output().stdout).to_string()
    };
    for path in [&["tasks", "create"][..], &["tasks", "update"]] {
        let out = help(path);
        for flag in ["--resource <NAME[:COUNT]>", "--retries", "--requires"] {
            assert!(out.contains(flag), "{path:?} --help lacks {flag}:\n{out}");
        }
    }
    let update = help(&["tasks", "update"]);
    assert!(update.contains("--no-resources"), "{update}");
    assert!(!help(&["tasks", "create"]).contains("--no-resources"));
    for path in [&["resources", "create"][..], &["resources", "update"]] {
        let out = help(path);
        assert!(out.contains("--capacity"), "{out}");
    }
}

#[test]
fn help_texts_of_groups() {
    let help = |args: &[&str]| {
        let assert = geppetto().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&assert.get_output().stdout).to_string()
    };
    let run = help(&["jobs", "run"]);
    assert!(
        run.contains("group:NAME"),
        "jobs run --help lacks group:NAME:\n{run}"
    );
    let create = help(&["groups", "create"]);
    for flag in [
        "--selector <SEL>",
        "--puppet <NAME>",
        "--description <TEXT>",
    ] {
        assert!(
            create.contains(flag),
            "groups create --help lacks {flag}:\n{create}"
        );
    }
    assert!(help(&["groups"]).contains("group:NAME"));
    // Exactly one way to give the members.
    for bad in [
        &["groups", "create", "g"][..],
        &[
            "groups",
            "create",
            "g",
            "--selector",
            "a=b",
            "--puppet",
            "p",
        ],
    ] {
        geppetto().args(bad).assert().code(2).stderr(
            predicate::str::contains("--selector").or(predicate::str::contains("--puppet")),
        );
    }
}

#[test]
fn help_texts_of_notifications() {
    let help = |args: &[&str]| {
        let assert = geppetto().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&assert.get_output().stdout).to_string()
    };
    let add = help(&["notifications", "add"]);
    for text in [
        "--on <EVENT[,EVENT]>",
        "--email <ADDR>",
        "--webhook <URL>",
        "--secret <S>",
        "--target <SELECTOR>",
        "job.succeeded",
        "job.failed",
        "run.failed",
        "run.lost",
        "puppet.offline",
        "puppet.online",
        "job.awaiting_approval",
        "puppet.pending",
        "prefix",
        "run.",
    ] {
        assert!(
            add.contains(text),
            "notifications add --help lacks {text}:\n{add}"
        );
    }
    let group = help(&["notifications"]);
    assert!(group.contains("X-Geppetto-Signature"), "{group}");
    assert!(group.contains("notifications test ntf-"), "{group}");
    // Exactly one channel, a secret only for a webhook, at least one event.
    for bad in [
        &["notifications", "add", "--on", "job.failed"][..],
        &[
            "notifications",
            "add",
            "--on",
            "job.failed",
            "--email",
            "a@b",
            "--webhook",
            "https://x",
        ],
        &[
            "notifications",
            "add",
            "--on",
            "job.failed",
            "--email",
            "a@b",
            "--secret",
            "s",
        ],
        &["notifications", "add", "--email", "a@b"],
    ] {
        geppetto()
            .args(bad)
            .assert()
            .code(2)
            .stderr(predicate::str::contains("--"));
    }
}

#[test]
fn help_texts_of_approval_and_access() {
    let help = |args: &[&str]| {
        let assert = geppetto().args(args).arg("--help").assert().success();
        String::from_utf8_lossy(&assert.get_output().stdout).to_string()
    };
    let create = help(&["enroll-tokens", "create"]);
    assert!(create.contains("--auto-approve"), "{create}");
    assert!(create.contains("pending"), "{create}");
    let enable = help(&["puppets", "enable"]);
    assert!(!enable.contains("approves"), "{enable}");
    let add = help(&["users", "add"]);
    for role in ["admin", "operator", "viewer"] {
        assert!(add.contains(role), "{add}");
    }
    let audit = help(&["audit"]);
    for flag in ["--since", "--user", "--limit"] {
        assert!(audit.contains(flag), "{audit}");
    }
    let rotate = help(&["puppets", "rotate"]);
    assert!(rotate.contains("--grace"), "{rotate}");
    let create = help(&["tokens", "create"]);
    for flag in ["--user", "--name", "--expires"] {
        assert!(create.contains(flag), "{create}");
    }
}

#[test]
fn every_command_has_help() {
    for path in [
        &["puppets", "list"][..],
        &["puppets", "label"],
        &["enroll-tokens", "create"],
        &["users", "add"],
        &["users", "set-role"],
        &["users", "remove"],
        &["whoami"],
        &["tokens", "create"],
        &["tokens", "list"],
        &["tokens", "revoke"],
        &["audit"],
        &["puppets", "approve"],
        &["puppets", "reject"],
        &["puppets", "rotate"],
        &["puppets", "revoke"],
        &["tasks", "create"],
        &["tasks", "update"],
        &["jobs", "run"],
        &["jobs", "watch"],
        &["jobs", "approve"],
        &["jobs", "reject"],
        &["jobs", "retry"],
        &["puppets", "queue"],
        &["runs", "list"],
        &["logs"],
        &["resources", "create"],
        &["resources", "list"],
        &["resources", "show"],
        &["resources", "update"],
        &["resources", "remove"],
        &["groups", "create"],
        &["groups", "list"],
        &["groups", "show"],
        &["groups", "remove"],
        &["notifications"],
        &["notifications", "add"],
        &["notifications", "list"],
        &["notifications", "remove"],
        &["notifications", "test"],
    ] {
        geppetto()
            .args(path)
            .arg("--help")
            .assert()
            .success()
            .stdout(predicate::str::contains("Usage: geppetto"));
    }
}

#[test]
fn usage_errors_exit_2() {
    geppetto()
        .args(["puppets", "frobnicate"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("error:"));
    geppetto()
        .args(["enroll-tokens", "create", "--expires", "soon"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid duration \"soon\""));
    geppetto()
        .args(["users", "add", "alice", "--role", "root"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("operator"));
    geppetto()
        .args(["tokens", "revoke", "enr-1"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("enroll-tokens revoke"));
    geppetto()
        .args(["audit", "--since", "yesterday"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid duration"));
    geppetto()
        .args(["puppets", "label", "web-1", "os"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("write key=value"));
    for bad in ["uplink:0", ":2", "a:b"] {
        geppetto()
            .args(["tasks", "create", "t", "--command", "x", "--resource", bad])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "invalid resource \"{bad}\""
            )));
    }
    geppetto()
        .args(["resources", "create", "uplink", "--capacity", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::starts_with("error:"));
    for (bad, why) in [
        ("48", "the unit is missing"),
        ("48 kibps", "unknown unit"),
        ("fast", "KiB/s"),
    ] {
        geppetto()
            .args([
                "resources",
                "create",
                "uplink",
                "--capacity",
                "1",
                "--bandwidth",
                bad,
            ])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(format!(
                "invalid bandwidth \"{bad}\""
            )))
            .stderr(predicate::str::contains(why));
    }
    geppetto()
        .args(["resources", "update", "uplink"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--capacity"));
}

#[test]
fn tasks_create_needs_a_program() {
    geppetto()
        .args(["tasks", "create", "foo", "--timeout", "1m"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--command"))
        .stderr(predicate::str::contains("--exec"));
}

#[test]
fn unreachable_server_is_one_error_line() {
    let assert = geppetto()
        .args([
            "--server",
            "https://127.0.0.1:1",
            "--token",
            "x",
            "puppets",
            "list",
        ])
        .assert()
        .code(1)
        .stdout("");
    let err = String::from_utf8_lossy(&assert.get_output().stderr).to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: cannot reach the puppeteer at https://127.0.0.1:1"),
        "{err}"
    );
}

#[test]
fn logs_refuses_an_id_of_another_kind() {
    geppetto()
        .args(["--token", "x", "logs", "enr-123"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "neither a run id (run-...) nor a job id (job-...)",
        ));
}

#[test]
fn a_bad_ca_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "not a certificate").unwrap();
    geppetto()
        .args(["--token", "x", "--ca"])
        .arg(&ca)
        .args(["puppets", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("CA file"))
        .stderr(predicate::str::contains("ca.pem"));
}

#[test]
fn a_missing_token_is_explained() {
    geppetto()
        .args(["puppets", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no API token"));
}

#[test]
fn the_config_file_is_used_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "server = \"https://127.0.0.1:2\"\ntoken = \"t\"\n").unwrap();
    geppetto()
        .arg("--config")
        .arg(&config)
        .args(["tasks", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("https://127.0.0.1:2"));
    geppetto()
        .arg("--config")
        .arg(&config)
        .args(["--server", "https://127.0.0.1:1", "tasks", "list"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("https://127.0.0.1:1"));
}

#[test]
fn completions_and_man_need_no_server() {
    let assert = geppetto().args(["completions", "bash"]).assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(out.contains("geppetto"), "{out}");
    assert!(out.contains("events") && out.contains("status"), "{out}");
    for shell in ["zsh", "fish"] {
        geppetto()
            .args(["completions", shell])
            .assert()
            .success()
            .stdout(predicate::str::contains("geppetto"));
    }
    geppetto().args(["completions", "tcsh"]).assert().code(2);

    let assert = geppetto().arg("man").assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(out.starts_with(".TH geppetto 1"), "{out}");
    assert!(
        out.contains(".SH SUBCOMMANDS") || out.contains("events"),
        "{out}"
    );
    assert!(out.contains("geppetto"), "{out}");
}

#[test]
fn new_commands_document_themselves() {
    let assert = geppetto()
        .args(["completions", "--help"])
        .assert()
        .success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(
        out.contains("geppetto completions bash > /etc/bash_completion.d/geppetto"),
        "{out}"
    );
    let assert = geppetto().args(["man", "--help"]).assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    assert!(
        out.contains("geppetto man > /usr/local/share/man/man1/geppetto.1"),
        "{out}"
    );
    let assert = geppetto().args(["events", "--help"]).assert().success();
    let out = String::from_utf8_lossy(&assert.get_output().stdout).to_string();
    for flag in [
        "--follow",
        "--kind",
        "--job",
        "--puppets",
        "--after",
        "--limit",
    ] {
        assert!(out.contains(flag), "events --help lacks {flag}:\n{out}");
    }
    geppetto()
        .args(["events", "--follow", "--limit", "3"])
        .assert()
        .code(2);
}
