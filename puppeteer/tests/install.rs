//! Installing a puppet from its puppeteer: a real `puppeteer` process
//! serving its `puppet` build (`--puppet-binary`), the install script it
//! serves, run into a fresh directory standing for a new machine
//! (`GEPPETTO_INSTALL_ROOT`: no root, no systemd), fetched and run with the
//! CA pinned as the printed command does. The machine gets a puppet that
//! enrolls and polls; running the script again changes nothing; a platform
//! without a binary, a download without a token and a tampered binary are
//! refused. Needs `curl` and `sha256sum` (`.ci/run` checks them), and the
//! `puppet` binary beside the puppeteer's (`cargo test --workspace` builds it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::ProcServer;
use geppetto_test_support::wait_until_async;

/// Why this test cannot run here, if it cannot.
fn missing() -> Option<String> {
    for tool in ["curl", "sha256sum", "sh"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    let puppet = puppet_build();
    if !puppet.is_file() {
        return Some(format!(
            "{} is missing: cargo build -p puppet",
            puppet.display()
        ));
    }
    None
}

/// The `puppet` built beside the `puppeteer` under test.
fn puppet_build() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_puppeteer"))
        .parent()
        .unwrap()
        .join("puppet")
}

fn skip(test: &str) -> bool {
    let Some(why) = missing() else {
        return false;
    };
    if std::env::var_os("GEPPETTO_REQUIRE_INSTALL_TOOLS").is_some() {
        panic!("{test}: {why}, but GEPPETTO_REQUIRE_INSTALL_TOOLS is set");
    }
    let line = "=".repeat(78);
    eprintln!("{line}\nSKIPPED: {test}: {why}\n{line}");
    true
}

struct Machine {
    root: tempfile::TempDir,
}

/// Output and success of a command.
fn run(command: &mut Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Fetches the script as the install command does (CA pinned) and runs it
/// for `machine` with `extra` environment.
fn install(
    url: &str,
    ca: &Path,
    machine: &Machine,
    token_file: Option<&Path>,
    extra: &[(&str, &str)],
) -> (bool, String) {
    let script = machine.root.path().with_extension("install.sh");
    let (ok, text) = run(Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(ca)
        .arg(format!("{url}/install.sh"))
        .arg("-o")
        .arg(&script));
    assert!(ok, "the script is served: {text}");
    let mut command = Command::new("sh");
    command
        .arg(&script)
        .args(["--server", url, "--ca-file"])
        .arg(ca)
        .args(["--name", "m1", "--labels", "site=lab,os=test"])
        .env("GEPPETTO_INSTALL_ROOT", machine.root.path())
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    if let Some(file) = token_file {
        command.arg("--token-file").arg(file);
    }
    for (k, v) in extra {
        command.env(k, v);
    }
    run(&mut command)
}

/// Every regular file under `dir` with its modification time.
fn files(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.extend(files(&entry.path()));
        } else {
            out.push((entry.path(), meta.modified().unwrap()));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_install_script_makes_an_enrolled_puppet_and_changes_nothing_the_second_time() {
    let test = "the_install_script_makes_an_enrolled_puppet_and_changes_nothing_the_second_time";
    if skip(test) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The build served, in a file of its own (tampered with below).
    let served = dir.path().join("puppet");
    std::fs::copy(puppet_build(), &served).unwrap();
    let server = ProcServer::start_with(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--puppet-binary", served.to_str().unwrap()],
    )
    .await;
    let url = format!("https://localhost:{}", server.port);
    let ca = dir.path().join("data/tls/ca.pem");
    let mut admin = server.admin(&dir.path().join("data"));
    let secret = admin.enroll_secret().await;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();

    // A platform without a binary is refused, with what there is.
    let machine = Machine {
        root: tempfile::tempdir().unwrap(),
    };
    let (ok, text) = install(
        &url,
        &ca,
        &machine,
        Some(&token_file),
        &[("GEPPETTO_INSTALL_ARCH", "sparc64")],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("no puppet for this machine (linux/sparc64)"),
        "{text}"
    );
    assert!(
        !machine.root.path().join("usr").exists(),
        "nothing installed"
    );

    // The unit installed is deploy/puppet.service.
    let (ok, unit) = run(Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}/install/puppet.service")));
    assert!(
        ok && unit
            .contains("ExecStart=/usr/local/bin/puppet run --config /etc/geppetto/puppet.toml"),
        "{unit}"
    );

    // The binary needs an enrollment token.
    let arch = std::env::consts::ARCH;
    let (_, code) = run(Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}/install/puppet/linux/{arch}")));
    assert_eq!(code, "401");

    // Another platform's build, added as a release, is served too (and its
    // hash, version and bytes are the release's).
    let other_build = b"#!/bin/sh\necho 'puppet 0.1.0'\n".to_vec();
    let release = admin
        .upload_artifact("puppet-0.1.0-linux-riscv64", &other_build)
        .await;
    let (ok, line) = run(Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}/install/puppet/linux/riscv64.sha256")));
    assert!(ok, "{line}");
    assert_eq!(
        line.trim(),
        format!("{} {} 0.1.0", release.sha256, other_build.len())
    );
    let (ok, bytes) = run(Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(&ca)
        .arg("-H")
        .arg(format!("Authorization: Bearer {secret}"))
        .arg(format!("{url}/install/puppet/linux/riscv64")));
    assert!(ok, "{bytes}");
    assert_eq!(bytes.as_bytes(), other_build.as_slice());
    let (_, missing) = run(Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .arg(format!("{url}/install/puppet/linux/mips.sha256")));
    assert!(
        missing.contains("linux/riscv64") && missing.contains(&format!("linux/{arch}")),
        "the platforms known are named: {missing}"
    );

    // A fresh machine: installed, enrolled, and nothing of the token left.
    let (ok, text) = install(&url, &ca, &machine, Some(&token_file), &[]);
    assert!(ok, "{text}");
    let root = machine.root.path();
    let bin = root.join("usr/local/bin/puppet");
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        std::fs::read(&served).unwrap()
    );
    let state = root.join("var/lib/geppetto-puppet");
    assert_eq!(
        std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(state.join("credential").is_file(), "{text}");
    let config = std::fs::read_to_string(root.join("etc/geppetto/puppet.toml")).unwrap();
    assert!(
        config.contains("name = \"m1\"") && config.contains("site = \"lab\""),
        "{config}"
    );
    for (file, _) in files(root) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret),
            "the token is left in {}",
            file.display()
        );
    }
    // Without systemd: the command that starts it.
    let start = text
        .lines()
        .skip_while(|l| !l.contains("start it with"))
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"))
        .trim()
        .to_string();
    let mut words = start.split_whitespace();
    let mut puppet = tokio::process::Command::new(words.next().unwrap())
        .args(words)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until_async(
        "the installed puppet polls",
        Duration::from_secs(60),
        async || {
            admin
                .puppets
                .get_puppet(geppetto_proto::v1::GetPuppetRequest { name: "m1".into() })
                .await
                .is_ok_and(|p| p.into_inner().polling)
        },
    )
    .await;

    // Again: nothing changes, and no token is asked for.
    let before = files(root);
    let (ok, again) = install(&url, &ca, &machine, None, &[]);
    assert!(ok, "{again}");
    assert!(again.contains("nothing changed"), "{again}");
    assert_eq!(files(root), before, "{again}");

    // A binary tampered with on the puppeteer after it was hashed: refused,
    // nothing installed.
    let mut bytes = std::fs::read(&served).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&served, &bytes).unwrap();
    let other = Machine {
        root: tempfile::tempdir().unwrap(),
    };
    let (ok, text) = install(&url, &ca, &other, Some(&token_file), &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("does not match its SHA-256"), "{text}");
    assert!(!other.root.path().join("usr/local/bin/puppet").exists());
    puppet.kill().await.unwrap();
}
