//! Tasks that end by rebooting the machine (`--expect-reboot`), with a real
//! puppeteer and real puppet processes. A "reboot" here is what a real one
//! does to the puppet: a SIGTERM (systemd stopping the unit), then every
//! process killed, then a new boot id (the puppet reads it from the hidden
//! `--boot-id-file` instead of `/proc/sys/kernel/random/boot_id`) and a new
//! puppet process on the same state directory.

mod common;
#[path = "common/puppetproc.rs"]
mod puppetproc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Admin, TestServer, process_alive, script_spec};
use geppetto_proto::v1 as pb;
use geppetto_test_support::{wait_until, wait_until_async};
use puppetproc::{PuppetOptions, PuppetProc};

/// Hosts the puppet processes of these tests (see `common/puppetproc.rs`).
#[test]
fn puppet_process_entry() {
    puppetproc::entry();
}

const DEADLINE: Duration = Duration::from_secs(90);

/// One simulated machine: its boot id file and the puppet's state dir.
struct Machine {
    dir: tempfile::TempDir,
    name: String,
}

impl Machine {
    fn new(name: &str) -> Self {
        let machine = Machine {
            dir: tempfile::tempdir().unwrap(),
            name: name.into(),
        };
        machine.boot("boot-1");
        machine
    }

    fn boot_file(&self) -> PathBuf {
        self.dir.path().join("boot_id")
    }

    /// A new boot: what Linux does at every start.
    fn boot(&self, id: &str) {
        std::fs::write(self.boot_file(), format!("{id}\n")).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn options(&self, server: &TestServer, secret: &str) -> PuppetOptions {
        PuppetOptions {
            server: server.url.clone(),
            ca: server.ca.clone(),
            enroll_token: secret.to_string(),
            name: self.name.clone(),
            state_dir: self.path("state"),
            args: vec![
                "--boot-id-file".into(),
                self.boot_file().display().to_string(),
            ],
            wrapper: vec![],
        }
    }
}

async fn reboot_task(
    admin: &mut Admin,
    name: &str,
    body: &str,
    window: Option<Duration>,
    retries: u32,
) {
    admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: name.into(),
            spec: Some(pb::RunSpec {
                expect_reboot: true,
                reboot_window: window.map(|w| prost_types::Duration::try_from(w).unwrap()),
                ..script_spec(body, Duration::from_secs(300))
            }),
            retries,
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A script that notes its pid, then prints `after` once `go` exists, and
/// stays until killed (the machine going down).
fn going_down_script(machine: &Machine) -> String {
    format!(
        "echo going down\necho $$ > {pid}.tmp && mv {pid}.tmp {pid}\n\
         while [ ! -e {go} ]; do sleep 0.05; done\necho still running after the puppet stopped\n\
         touch {printed}\nexec sleep 120\n",
        pid = machine.path("pid").display(),
        go = machine.path("go").display(),
        printed = machine.path("printed").display(),
    )
}

async fn wait_pid(file: &Path) -> u32 {
    wait_until("the script wrote its pid", DEADLINE, || {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    })
    .await
}

/// Kills a process group, as the end of a shutdown does.
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

async fn get_run(admin: &mut Admin, id: &str) -> pb::Run {
    admin
        .runs
        .get_run(pb::GetRunRequest { id: id.into() })
        .await
        .unwrap()
        .into_inner()
}

/// The whole story of a patch-and-reboot: the puppet is stopped by the
/// shutdown and leaves the script running (what it prints then is kept);
/// the puppeteer keeps the silent puppet's run `running` past its lease,
/// while a run of an ordinary task on another silent puppet is lost; the
/// puppet comes back on a new boot and the run succeeds as `rebooted`.
#[tokio::test]
async fn a_run_that_reboots_the_machine_succeeds_when_the_puppet_comes_back() {
    let server = TestServer::start_with(|c| c.lease_timeout = Some(Duration::from_secs(2))).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let machine = Machine::new("p1");
    let other = Machine::new("p2");
    let options = machine.options(&server, &secret);
    let puppet = PuppetProc::start(options.clone());
    let bystander = PuppetProc::start(other.options(&server, &secret));
    admin.wait_polling("p1").await;
    admin.wait_polling("p2").await;

    reboot_task(
        &mut admin,
        "patch",
        &going_down_script(&machine),
        Some(Duration::from_secs(600)),
        0,
    )
    .await;
    let job = admin.run_on("patch", &["p1"]).await;
    let run_id = job.runs[0].run_id.clone();
    let pid = wait_pid(&machine.path("pid")).await;
    admin
        .script_task(
            "ordinary",
            &format!(
                "echo $$ > {0}.tmp && mv {0}.tmp {0}; exec sleep 120",
                other.path("pid").display()
            ),
            Duration::from_secs(300),
        )
        .await;
    let control = admin.run_on("ordinary", &["p2"]).await;
    let control_pid = wait_pid(&other.path("pid")).await;

    // The machine goes down: systemd stops the puppet first. It leaves the
    // script be, and does not report the run.
    puppet.stop().await;
    assert!(
        process_alive(pid),
        "the puppet killed a run that expects a reboot"
    );
    std::fs::write(machine.path("go"), "").unwrap();
    wait_until(
        "the script printed after the puppet stopped",
        DEADLINE,
        || machine.path("printed").exists(),
    )
    .await;

    // Meanwhile an ordinary run on a puppet that went silent is lost at
    // the end of its 2 s lease; the rebooting run is not.
    let _ = bystander.kill9().await;
    kill_group(control_pid);
    let control_run = control.runs[0].run_id.clone();
    wait_until_async("the ordinary run is lost", DEADLINE, async || {
        get_run(&mut admin, &control_run).await.state == pb::RunState::Lost as i32
    })
    .await;
    let during = get_run(&mut admin, &run_id).await;
    assert_eq!(
        during.state,
        pb::RunState::Running as i32,
        "the rebooting run was not kept running: {during:?}"
    );

    // The end of the shutdown kills everything; the machine boots anew.
    kill_group(pid);
    wait_until("the script is gone", DEADLINE, || !process_alive(pid)).await;
    machine.boot("boot-2");
    let puppet = PuppetProc::start(options);

    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "{job:?}\n{}",
        puppet.log_tail()
    );
    let run = get_run(&mut admin, &run_id).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    assert_eq!(run.outcome, pb::Outcome::Rebooted as i32, "{run:?}");
    assert_eq!(run.attempt, 1);
    assert_eq!(run.duplicate_reports, 0, "{run:?}");
    assert!(
        run.cause.contains("came back on a new boot"),
        "{}",
        run.cause
    );
    assert_eq!(
        admin.log(&run_id).await,
        b"going down\nstill running after the puppet stopped\n",
        "{}",
        puppet.log_tail()
    );
    let facts = admin
        .puppets
        .get_puppet(pb::GetPuppetRequest { name: "p1".into() })
        .await
        .unwrap()
        .into_inner()
        .facts
        .unwrap_or_default();
    assert_eq!(facts.boot_id, "boot-2", "the puppet reports its new boot");
    puppet.stop().await;
    server.stop().await;
}

/// The puppet restarts but the machine did not reboot (same boot id): what
/// is left of the script is killed, the run is interrupted, and the task's
/// retry makes a second attempt, which completes.
#[tokio::test]
async fn a_restart_without_a_reboot_is_an_interruption_and_the_retry_rule_applies() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let machine = Machine::new("p1");
    let options = machine.options(&server, &secret);
    let puppet = PuppetProc::start(options.clone());
    admin.wait_polling("p1").await;
    let pid_file = machine.path("pid");
    let marker = machine.path("marker");
    let executions = machine.path("executions");
    reboot_task(
        &mut admin,
        "patch",
        &format!(
            "echo x >> {executions}\nif [ -e {marker} ]; then echo second; exit 0; fi\ntouch {marker}\n\
             echo $$ > {pid}.tmp && mv {pid}.tmp {pid}\nexec sleep 120\n",
            executions = executions.display(),
            marker = marker.display(),
            pid = pid_file.display()
        ),
        None,
        1,
    )
    .await;
    let job = admin.run_on("patch", &["p1"]).await;
    let pid = wait_pid(&pid_file).await;

    puppet.stop().await;
    assert!(
        process_alive(pid),
        "the puppet killed a run that expects a reboot"
    );
    let puppet = PuppetProc::start(options);
    wait_until("the leftover script is killed", DEADLINE, || {
        !process_alive(pid)
    })
    .await;
    let job = admin.wait_job(&job.id, DEADLINE).await;
    assert_eq!(
        job.state,
        pb::JobState::Succeeded as i32,
        "{job:?}\n{}",
        puppet.log_tail()
    );
    let run = get_run(&mut admin, &job.runs[0].run_id).await;
    assert_eq!(run.attempt, 2, "{run:?}");
    assert_eq!(run.outcome, pb::Outcome::Exited as i32);
    let interrupted = run
        .history
        .iter()
        .find(|t| t.state == pb::RunState::Interrupted as i32)
        .expect("the first attempt was interrupted");
    assert_eq!(interrupted.attempt, 1);
    assert!(
        interrupted.cause.contains("same boot id"),
        "{}",
        interrupted.cause
    );
    assert_eq!(std::fs::read_to_string(&executions).unwrap(), "x\nx\n");
    puppet.stop().await;
    server.stop().await;
}

/// A reboot that takes longer than the task allows is not a success.
#[tokio::test]
async fn a_puppet_back_after_the_reboot_window_reports_the_run_interrupted() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let machine = Machine::new("p1");
    let options = machine.options(&server, &secret);
    let puppet = PuppetProc::start(options.clone());
    admin.wait_polling("p1").await;
    reboot_task(
        &mut admin,
        "patch",
        &format!(
            "echo $$ > {0}.tmp && mv {0}.tmp {0}\nexec sleep 120\n",
            machine.path("pid").display()
        ),
        Some(Duration::from_secs(1)),
        0,
    )
    .await;
    let job = admin.run_on("patch", &["p1"]).await;
    let started = Instant::now();
    let pid = wait_pid(&machine.path("pid")).await;
    puppet.stop().await;
    kill_group(pid);
    // The machine takes longer than the 1 s window to come back.
    wait_until("the reboot window is over", DEADLINE, || {
        started.elapsed() > Duration::from_millis(1500)
    })
    .await;
    machine.boot("boot-2");
    let puppet = PuppetProc::start(options);
    let job = admin.wait_job(&job.id, DEADLINE).await;
    let run = get_run(&mut admin, &job.runs[0].run_id).await;
    assert_eq!(
        run.state,
        pb::RunState::Interrupted as i32,
        "{run:?}\n{}",
        puppet.log_tail()
    );
    assert!(
        run.cause.contains("past its reboot window"),
        "{}",
        run.cause
    );
    puppet.stop().await;
    server.stop().await;
}

/// The reboot options are checked and shown by the API.
#[tokio::test]
async fn reboot_options_are_validated_and_updated() {
    let server = TestServer::start().await;
    let mut admin = server.admin();
    reboot_task(&mut admin, "patch", "reboot", None, 0).await;
    let task = admin
        .tasks
        .get_task(pb::GetTaskRequest {
            name: "patch".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let spec = task.spec.unwrap();
    assert!(spec.expect_reboot);
    assert_eq!(spec.reboot_window, None);

    let bad = admin
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "bad".into(),
            spec: Some(pb::RunSpec {
                reboot_window: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..script_spec("true", Duration::from_secs(10))
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().contains("needs expect_reboot"),
        "{}",
        bad.message()
    );

    let updated = admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "patch".into(),
            reboot_window: Some(prost_types::Duration {
                seconds: 1200,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().reboot_window.unwrap().seconds, 1200);
    let too_long = admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "patch".into(),
            reboot_window: Some(prost_types::Duration {
                seconds: 3 * 86_400,
                nanos: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), tonic::Code::InvalidArgument);
    let off = admin
        .tasks
        .update_task(pb::UpdateTaskRequest {
            name: "patch".into(),
            expect_reboot: Some(false),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let spec = off.spec.unwrap();
    assert!(!spec.expect_reboot);
    assert_eq!(spec.reboot_window, None);
    server.stop().await;
}
