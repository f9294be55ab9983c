//! Upgrading real puppets from one build to another: a real `puppeteer`
//! process serving a second build of the puppet (`--puppet-binary`, the
//! workspace's puppet built again with `GEPPETTO_VERSION` set, into its own
//! target directory), and three puppet processes of the first build, each
//! from its own copy of the binary (each replaces its own). The upgrade is
//! one job, rolling, `--max-failures 1`, at the defaults a user gets (the
//! puppets' poll hold, the upgrade's deadline):
//! - m1 runs another task when the upgrade reaches it (two slots): that run
//!   keeps its result, then m1 swaps and restarts as the new version (same
//!   process id, `exec`) and reports it;
//! - m2's configuration was broken after it started, so its new binary
//!   fails to start in its check: its run fails with the new binary's own
//!   words, its binary is untouched and it goes on polling as before;
//! - m3 is then skipped by the rollout.
//!
//! Needs `cargo` (the one running the tests) to build the second puppet.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ProcServer;
use geppetto_proto::v1 as pb;
use geppetto_test_support::wait_until_async;

/// The version of the second build.
const NEW: &str = "0.1.1-upgrade-test";

/// The `puppet` built beside the `puppeteer` under test: the old version.
fn old_build() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_puppeteer"))
        .parent()
        .unwrap()
        .join("puppet")
}

/// Builds the puppet again as version [`NEW`], in a target directory of its
/// own (so it never disturbs the build under test), without debug info.
fn new_build() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_new).clone()
}

fn build_new() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = workspace.join("target/upgrade-test-build");
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "puppet", "--bin", "puppet"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace)
        .env("GEPPETTO_VERSION", NEW)
        .env("CARGO_PROFILE_DEV_DEBUG", "0")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "the second build of the puppet");
    target.join("debug/puppet")
}

/// A machine: its own copy of the puppet, its config, its state.
struct Machine {
    name: String,
    dir: PathBuf,
    child: tokio::process::Child,
}

impl Machine {
    fn bin(&self) -> PathBuf {
        self.dir.join("bin/puppet")
    }

    fn config(&self) -> PathBuf {
        self.dir.join("puppet.toml")
    }
}

fn start(root: &Path, name: &str, url: &str, ca: &Path, token_file: &Path, slots: u32) -> Machine {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(old_build(), dir.join("bin/puppet")).unwrap();
    let config = format!(
        "server = \"{url}\"\nca = \"{}\"\nenroll_token_file = \"{}\"\nstate_dir = \"{}\"\n\
         name = \"{name}\"\nslots = {slots}\n",
        ca.display(),
        token_file.display(),
        dir.join("state").display()
    );
    std::fs::write(dir.join("puppet.toml"), config).unwrap();
    let child = spawn(
        &dir.join("bin/puppet"),
        &dir.join("puppet.toml"),
        &dir.join("puppet.log"),
    );
    Machine {
        name: name.into(),
        dir,
        child,
    }
}

/// Starts `puppet run --config CONFIG`, logging to `log`. A binary just
/// copied may be busy for a moment (another thread of the test forked while
/// the copy was open for writing: ETXTBSY), so that is tried again.
fn spawn(bin: &Path, config: &Path, log: &Path) -> tokio::process::Child {
    let log = std::fs::File::create(log).unwrap();
    let mut tries = 0;
    loop {
        let started = tokio::process::Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdout(log.try_clone().unwrap())
            .stderr(log.try_clone().unwrap())
            .kill_on_drop(true)
            .spawn();
        match started {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            started => return started.unwrap(),
        }
    }
}

fn version_of(p: &pb::Puppet) -> String {
    p.facts
        .as_ref()
        .map(|f| f.agent_version.clone())
        .unwrap_or_default()
}

fn run_of<'a>(job: &'a pb::Job, puppet: &str) -> &'a pb::RunSummary {
    job.runs
        .iter()
        .find(|r| r.puppet == puppet)
        .unwrap_or_else(|| panic!("no run on {puppet}: {job:?}"))
}

/// A puppeteer process serving the new build, with an admin client and an
/// enrollment token in a file.
struct Setup {
    server: ProcServer,
    root: tempfile::TempDir,
    url: String,
    ca: PathBuf,
    token_file: PathBuf,
    channel: geppetto_proto::client::Channel,
    admin: common::Admin,
    new: PathBuf,
}

async fn setup() -> Setup {
    let new = tokio::task::spawn_blocking(new_build).await.unwrap();
    let root = tempfile::tempdir().unwrap();
    let server = ProcServer::start_with(
        &root.path().join("data"),
        "127.0.0.1:0",
        &["--puppet-binary", new.to_str().unwrap()],
    )
    .await;
    let url = format!("https://localhost:{}", server.port);
    let ca = root.path().join("data/tls/ca.pem");
    let mut admin = server.admin(&root.path().join("data"));
    let channel = admin.channel.clone();
    let secret = admin.enroll_secret().await;
    let token_file = root.path().join("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    Setup {
        server,
        root,
        url,
        ca,
        token_file,
        channel,
        admin,
        new,
    }
}

/// A version of the task puppet-upgrade to the served build, with a
/// deadline (`None`: the default, as `geppetto puppets upgrade` leaves it).
async fn upgrade_task(admin: &mut common::Admin, deadline: Option<u64>) -> pb::Task {
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "puppet-upgrade".into(),
            spec: Some(pb::RunSpec {
                program: Some(pb::Program {
                    kind: Some(pb::program::Kind::Upgrade(pb::Upgrade {
                        version: String::new(),
                        deadline: deadline.map(|seconds| prost_types::Duration {
                            seconds: seconds as i64,
                            nanos: 0,
                        }),
                    })),
                }),
                timeout: Some(prost_types::Duration {
                    seconds: 600,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_replaces_puppets_and_stops_at_one_that_fails_to_start() {
    let Setup {
        server: _server,
        root,
        url,
        ca,
        token_file,
        channel,
        mut admin,
        new,
    } = setup().await;
    let m1 = start(root.path(), "m1", &url, &ca, &token_file, 2);
    let m2 = start(root.path(), "m2", &url, &ca, &token_file, 1);
    let m3 = start(root.path(), "m3", &url, &ca, &token_file, 1);
    for m in [&m1, &m2, &m3] {
        admin.wait_polling(&m.name).await;
        assert_eq!(version_of(&admin.puppet(&m.name).await), "0.1.0");
    }
    let m1_pid = m1.child.id().unwrap();
    let old_bytes = std::fs::read(old_build()).unwrap();
    let new_bytes = std::fs::read(&new).unwrap();

    // The served build is a release.
    let mut artifacts = pb::artifacts_client::ArtifactsClient::new(channel.clone());
    let releases = artifacts
        .list_puppet_releases(pb::ListPuppetReleasesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(releases.served_version, NEW);
    assert!(
        releases
            .releases
            .iter()
            .any(|r| r.version == NEW && r.served && r.arch == std::env::consts::ARCH),
        "{releases:?}"
    );

    // m2's configuration is broken after it started: it goes on running,
    // but a new process cannot read it.
    std::fs::write(m2.config(), "server = [this is not TOML\n").unwrap();

    // m1 is busy with a run when the upgrade reaches it.
    admin
        .script_task("slow", "sleep 3; echo kept", Duration::from_secs(60))
        .await;
    let slow = admin.run_on("slow", &["m1"]).await;
    wait_until_async(
        "the slow run is running",
        Duration::from_secs(30),
        async || {
            let job = admin.job(&slow.id).await;
            job.runs
                .first()
                .is_some_and(|r| r.state == pb::RunState::Running as i32)
        },
    )
    .await;

    // The upgrade, as `geppetto puppets upgrade --target all --rolling
    // --max-failures 1` makes it: a version of the task puppet-upgrade (to
    // the served build), and a job.
    let task = upgrade_task(&mut admin, None).await;
    let spec = task.spec.unwrap();
    let Some(pb::program::Kind::Upgrade(upgrade)) = spec.program.unwrap().kind else {
        panic!("an upgrade task");
    };
    assert_eq!(upgrade.version, NEW, "resolved to the served build");
    assert!(
        spec.artifacts
            .iter()
            .any(|a| a.name == format!("puppet-{NEW}-linux-{}", std::env::consts::ARCH)),
        "{:?}",
        spec.artifacts
    );
    let job = admin
        .run_with(
            "puppet-upgrade",
            pb::target::Kind::Selector(String::new()),
            pb::Strategy {
                rolling: true,
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1)),
                }),
                ..Default::default()
            },
        )
        .await;
    let job = admin.wait_job(&job.id, Duration::from_secs(240)).await;

    // The run that was executing kept its result.
    let slow = admin.wait_job(&slow.id, Duration::from_secs(30)).await;
    assert_eq!(
        slow.runs[0].state,
        pb::RunState::Succeeded as i32,
        "{slow:?}"
    );
    assert_eq!(admin.log(&slow.runs[0].run_id).await, b"kept\n");

    // m1: upgraded in place, the same process, reporting the new version.
    let r1 = run_of(&job, "m1");
    let log1 = String::from_utf8_lossy(&admin.log(&r1.run_id).await).into_owned();
    assert_eq!(r1.state, pb::RunState::Succeeded as i32, "{r1:?}\n{log1}");
    assert!(
        log1.contains("waiting for the runs executing to end")
            && log1.contains(&format!("upgraded from puppet 0.1.0 to {NEW}")),
        "{log1}"
    );
    assert_eq!(std::fs::read(m1.bin()).unwrap(), new_bytes);
    assert!(!m1.dir.join("bin/.puppet.previous").exists());
    assert!(!m1.dir.join("bin/.puppet.new").exists());
    assert!(!m1.dir.join("state/upgrade.json").exists());
    assert!(common::process_alive(m1_pid), "m1 restarted in place");
    wait_until_async(
        "m1 reports its new version",
        Duration::from_secs(30),
        async || {
            let p = admin.puppet("m1").await;
            version_of(&p) == NEW && p.polling
        },
    )
    .await;

    // m2: its new binary did not start; nothing changed, it still works.
    let r2 = run_of(&job, "m2");
    assert_eq!(r2.state, pb::RunState::Failed as i32, "{r2:?}");
    assert!(
        r2.cause
            .contains(&format!("the new puppet {NEW} did not start"))
            && r2.cause.contains("puppet 0.1.0 stays"),
        "{r2:?}"
    );
    let log2 = String::from_utf8_lossy(&admin.log(&r2.run_id).await).into_owned();
    assert!(
        log2.contains("did not start: it exited with status 2"),
        "{log2}"
    );
    assert_eq!(std::fs::read(m2.bin()).unwrap(), old_bytes);
    assert!(!m2.dir.join("bin/.puppet.new").exists());
    assert!(!m2.dir.join("bin/.puppet.previous").exists());
    assert!(!m2.dir.join("state/upgrade.json").exists());
    let p2 = admin.puppet("m2").await;
    assert_eq!(version_of(&p2), "0.1.0");

    // m3: the rollout stopped at the failure.
    let r3 = run_of(&job, "m3");
    assert_eq!(r3.state, pb::RunState::Skipped as i32, "{r3:?}");
    assert_eq!(std::fs::read(m3.bin()).unwrap(), old_bytes);
    assert_eq!(job.state, pb::JobState::Failed as i32, "{job:?}");

    // m2 still takes work as the old version.
    admin
        .script_task("hello", "echo hello", Duration::from_secs(30))
        .await;
    let hello = admin.run_on("hello", &["m2", "m1"]).await;
    let hello = admin.wait_job(&hello.id, Duration::from_secs(60)).await;
    assert!(
        hello
            .runs
            .iter()
            .all(|r| r.state == pb::RunState::Succeeded as i32),
        "{hello:?}"
    );
    drop((m1, m2, m3));
}

/// `kill -9` of a puppet in the middle of its upgrade, the moment
/// `upgrade.json` appears (just before or just after the swap, or even
/// after the new binary took over), then a restart while the puppeteer is
/// unreachable (SIGSTOP): whatever the instant, the puppet ends with one
/// whole binary, old or new, its run reports which, and nothing is left
/// behind. When the kill came after the swap, the new binary cannot reach
/// the puppeteer within its deadline and the old one is put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_killed_when_it_records_itself_is_never_half_applied() {
    killed_during_upgrade(Moment::Record).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_killed_at_the_swap_is_never_half_applied() {
    killed_during_upgrade(Moment::Swap).await;
}

/// When the puppet is killed.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// As soon as `upgrade.json` appears (most often before the swap).
    Record,
    /// As soon as the executable's path holds another file (the swap).
    Swap,
}

async fn killed_during_upgrade(moment: Moment) {
    let Setup {
        server,
        root,
        url,
        ca,
        token_file,
        channel: _channel,
        mut admin,
        new,
    } = setup().await;
    let mut m = start(root.path(), "m4", &url, &ca, &token_file, 1);
    admin.wait_polling("m4").await;
    let old_bytes = std::fs::read(old_build()).unwrap();
    let new_bytes = std::fs::read(&new).unwrap();
    upgrade_task(&mut admin, Some(8)).await;
    let job = admin.run_on("puppet-upgrade", &["m4"]).await;

    let pending = m.dir.join("state/upgrade.json");
    let pid = m.child.id().unwrap();
    let (watched, bin) = (pending.clone(), m.bin());
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::metadata(&bin).unwrap().ino();
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        let now = || match moment {
            Moment::Record => watched.exists(),
            Moment::Swap => std::fs::metadata(&bin).is_ok_and(|m| m.ino() != inode),
        };
        while !now() {
            assert!(std::time::Instant::now() < deadline, "no {moment:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    })
    .await
    .unwrap();
    m.child.wait().await.unwrap();
    let swapped = std::fs::read(m.bin()).unwrap() == new_bytes;
    let still_pending = pending.exists();
    eprintln!("killed at {moment:?}: swapped {swapped}, upgrade.json left {still_pending}");

    // Restarted (as systemd would) while the puppeteer cannot answer.
    server.signal("STOP");
    m.child = spawn(&m.bin(), &m.config(), &m.dir.join("puppet-2.log"));
    let settled = pending.clone();
    let waited = tokio::time::timeout(Duration::from_secs(60), async move {
        while settled.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    server.signal("CONT");
    assert!(waited.is_ok(), "the restarted puppet settled the upgrade");

    let job = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    let run = &job.runs[0];
    let bin = std::fs::read(m.bin()).unwrap();
    assert!(bin == old_bytes || bin == new_bytes, "a whole binary");
    let expected = if !still_pending {
        // The new binary had already proved itself.
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
        assert_eq!(bin, new_bytes);
        NEW
    } else if swapped {
        assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
        assert!(
            run.cause.contains("did not reach the puppeteer")
                && run.cause.contains("put back puppet 0.1.0"),
            "{run:?}"
        );
        assert_eq!(bin, old_bytes, "rolled back");
        "0.1.0"
    } else {
        assert_eq!(run.state, pb::RunState::Failed as i32, "{run:?}");
        assert!(run.cause.contains("nothing was changed"), "{run:?}");
        assert_eq!(bin, old_bytes);
        "0.1.0"
    };
    assert!(!m.dir.join("bin/.puppet.new").exists());
    assert!(!m.dir.join("bin/.puppet.previous").exists());
    wait_until_async(
        "m4 polls as the binary it runs",
        Duration::from_secs(30),
        async || {
            let p = admin.puppet("m4").await;
            version_of(&p) == expected && p.polling
        },
    )
    .await;
}
