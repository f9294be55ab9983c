//! A puppet replacing itself with another version (`geppetto puppets
//! upgrade`): a run whose program is an `Upgrade`.
//!
//! # The steps, and what each failure leaves
//!
//! 1. **Fetch**: the run's artifacts are the release's binaries, one per
//!    platform (`puppet-VERSION-OS-ARCH`); the puppet fetches its own
//!    platform's like any artifact (cached, resumed, hash-checked, from a
//!    site peer when there is one). None for this platform, or a failed
//!    fetch: the run fails, nothing changed.
//! 2. **Quiet**: the puppet takes no new run, and waits for the runs it is
//!    executing to end and be reported (their results are kept: nothing is
//!    cut short).
//! 3. **Stage and check**: the binary is copied beside the executable
//!    (`.NAME.new`, same file system, so that the swap is a rename) and
//!    started in a check mode (`puppet run ... --upgrade-check`, the same
//!    configuration and state as this process) that reads them, reaches the
//!    puppeteer and asks it whether it would serve this puppet as that
//!    version (`Check`), within the deadline. It must say it is the version
//!    the release names. Any failure (it cannot execute, crashes, cannot
//!    read the configuration, cannot reach the puppeteer, is refused, is
//!    another version): the staged file is removed, the run fails with the
//!    check's own words, the old binary never moved.
//! 4. **Swap**: `STATE_DIR/upgrade.json` is written first (the run, both
//!    versions, the deadline), then the executable is hard-linked to
//!    `.NAME.previous` and the staged file renamed over it: at every instant
//!    the executable's path holds one whole binary, old or new.
//! 5. **Restart**: the puppet shuts down as for SIGTERM (no run is
//!    executing) and executes the new binary in its place, same process id,
//!    same arguments, same environment.
//! 6. **Prove**: the new version, finding `upgrade.json` at start, counts
//!    the start and checks in (`Check`) before anything else, retrying until
//!    the deadline. Then it removes `.NAME.previous` and `upgrade.json` and
//!    reports the run succeeded, its log saying from what to what. If it
//!    cannot within the deadline (or has been started more than
//!    [`MAX_STARTS`] times, e.g. by systemd after crashes), it renames
//!    `.NAME.previous` back over the executable, notes why in `upgrade.json`
//!    and executes the old binary, which reports the run failed with that
//!    cause.
//!
//! Whichever binary starts with `upgrade.json` present decides by its own
//! version ([`decide`]): the new one proves itself or rolls back; the old
//! one reports the upgrade failed (rolled back, or cut short before the
//! swap by a crash) and cleans up. So a crash or `kill -9` at any step
//! leaves either the old binary running and the run failed, or the new one
//! proving itself; an upgrade is never half-applied. What it cannot undo: a
//! new binary that passed its check and then crashes at every start before
//! reading `upgrade.json`; without a supervisor restarting it (systemd's
//! `Restart=`), nothing can run the old one again.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use geppetto_proto::v1::{CheckRequest, CheckResponse};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::records::{self, FinishReport, Outcome, Phase, RunStore};
use crate::rpc::{self, CALL_TIMEOUT, CallError, Client};

/// The record of an upgrade under way, in the state directory.
pub const PENDING_FILE: &str = "upgrade.json";
/// Starts of the new version allowed before it is rolled back.
pub const MAX_STARTS: u32 = 3;
/// When the task does not say.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// The flag of the check mode.
pub const CHECK_FLAG: &str = "--upgrade-check";
/// How the check mode's line of success starts (followed by the version).
const CHECKED: &str = "upgrade-check: puppet";

/// How this process was started, to start another binary the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relaunch {
    /// The executable's path, taken at start (before any swap).
    pub exe: PathBuf,
    /// The arguments after the program name.
    pub args: Vec<OsString>,
}

impl Relaunch {
    /// This process, as the operating system started it.
    pub fn of_this_process() -> Option<Relaunch> {
        Some(Relaunch {
            exe: std::env::current_exe().ok()?,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Where the previous binary is kept during an upgrade.
    pub fn previous(&self) -> PathBuf {
        sibling(&self.exe, "previous")
    }

    /// Where a new binary is staged.
    pub fn staged(&self) -> PathBuf {
        sibling(&self.exe, "new")
    }
}

fn sibling(exe: &Path, suffix: &str) -> PathBuf {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "puppet".into());
    exe.with_file_name(format!(".{name}.{suffix}"))
}

/// An upgrade under way, as `upgrade.json` holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub run_id: String,
    pub attempt: u32,
    pub from: String,
    pub to: String,
    pub exe: PathBuf,
    pub previous: PathBuf,
    /// When the swap was made, and by when the new version must have
    /// reached the puppeteer (wall clock, ms since the epoch).
    pub swapped_ms: u64,
    pub deadline_ms: u64,
    /// Starts of the new version so far.
    #[serde(default)]
    pub starts: u32,
    /// Set when the previous binary was put back: why.
    #[serde(default)]
    pub rolled_back: Option<String>,
}

/// What a process finding an upgrade under way at its start does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is the new version, in time: check in within `remaining`.
    Prove { remaining: Duration },
    /// It is the new version, out of time or of starts: put the old one back.
    RollBack(String),
    /// It is not the new version: the run failed, with this cause.
    Failed(String),
}

/// The decision of a process of version `own` at `now_ms`.
pub fn decide(pending: &Pending, own: &str, now_ms: u64) -> Decision {
    let window = Duration::from_millis(pending.deadline_ms.saturating_sub(pending.swapped_ms));
    if own == pending.to {
        if let Some(why) = &pending.rolled_back {
            // The old binary was put back but this one kept running (the
            // restart failed): try again.
            return Decision::RollBack(why.clone());
        }
        if pending.starts > MAX_STARTS {
            return Decision::RollBack(format!(
                "the new puppet {} was started {} times without reaching the puppeteer",
                pending.to, pending.starts
            ));
        }
        if now_ms >= pending.deadline_ms {
            return Decision::RollBack(format!(
                "the new puppet {} did not reach the puppeteer within {} of the swap",
                pending.to,
                humantime::format_duration(window)
            ));
        }
        return Decision::Prove {
            remaining: Duration::from_millis(pending.deadline_ms - now_ms),
        };
    }
    if own == pending.from {
        return Decision::Failed(match &pending.rolled_back {
            Some(why) => format!("{why}; put back puppet {}", pending.from),
            None => format!(
                "the puppet restarted as {} before {} took over; nothing was changed",
                pending.from, pending.to
            ),
        });
    }
    Decision::Failed(format!(
        "the puppet started as {own}, neither {} nor {}: something else replaced it",
        pending.from, pending.to
    ))
}

fn pending_path(state_dir: &Path) -> PathBuf {
    state_dir.join(PENDING_FILE)
}

pub fn load_pending(state_dir: &Path) -> std::io::Result<Option<Pending>> {
    match std::fs::read(pending_path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn save_pending(state_dir: &Path, pending: &Pending) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(pending).map_err(std::io::Error::other)?;
    records::write_atomically(&pending_path(state_dir), &json, 0o600)
}

fn remove_pending(state_dir: &Path) {
    if let Err(e) = std::fs::remove_file(pending_path(state_dir))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, "cannot remove {PENDING_FILE}");
    }
}

fn sync_dir_of(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

/// Copies the fetched binary beside the executable, executable and synced.
pub fn stage(fetched: &Path, staged: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(staged);
    let mut source = std::fs::File::open(fetched)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(staged)?;
    std::io::copy(&mut source, &mut file)?;
    file.sync_all()?;
    Ok(())
}

/// Keeps the executable as `previous` and renames `staged` over it: at
/// every instant the executable's path holds a whole binary.
pub fn swap(exe: &Path, staged: &Path, previous: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(previous) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if std::fs::hard_link(exe, previous).is_err() {
        // A file system without hard links: a synced copy.
        std::fs::copy(exe, previous)?;
        std::fs::File::open(previous)?.sync_all()?;
    }
    if let Err(e) = std::fs::rename(staged, exe) {
        let _ = std::fs::remove_file(previous);
        return Err(e);
    }
    sync_dir_of(exe)
}

/// Renames `previous` back over the executable.
pub fn put_back(exe: &Path, previous: &Path) -> std::io::Result<()> {
    std::fs::rename(previous, exe)?;
    sync_dir_of(exe)
}

/// Asks the puppeteer whether it serves this puppet as this version;
/// retries what may pass, until `stop` fires.
pub async fn check_in(
    client: &Client,
    version: &str,
    stop: &CancellationToken,
) -> Result<CheckResponse, CallError> {
    let message = CheckRequest {
        agent_version: version.to_string(),
    };
    rpc::retry("Check", stop, || {
        let mut client = client.clone();
        let message = message.clone();
        async move {
            rpc::with_deadline(
                CALL_TIMEOUT,
                client.check(rpc::request(message, CALL_TIMEOUT)),
            )
            .await
        }
    })
    .await
}

/// The check mode (`--upgrade-check`): checks in once with this binary's
/// configuration and credential, prints `puppet VERSION` on success.
pub async fn check_mode(client: &Client, shutdown: &CancellationToken) -> anyhow::Result<()> {
    match check_in(client, crate::VERSION, shutdown).await {
        Ok(answer) => {
            println!(
                "{CHECKED} {} accepted by puppeteer {}",
                crate::VERSION,
                answer.server_version
            );
            Ok(())
        }
        Err(CallError::Stopped) => anyhow::bail!("stopped before the puppeteer answered"),
        Err(CallError::Refused(status)) => {
            anyhow::bail!("the puppeteer refused this puppet: {}", status.message())
        }
    }
}

/// Starts the staged binary in its check mode, with this process's
/// arguments, and waits for it within `deadline`. `Ok` when it reached the
/// puppeteer and said it is `expected`; the cause otherwise.
pub async fn check_binary(
    staged: &Path,
    relaunch: &Relaunch,
    expected: &str,
    deadline: Duration,
) -> Result<(), String> {
    let mut command = tokio::process::Command::new(staged);
    command
        .args(&relaunch.args)
        .arg(CHECK_FLAG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    // A file just written may be busy for a moment: a fork elsewhere in
    // this process can still hold it open for writing until its exec.
    let mut tries = 0;
    let child = loop {
        match command.spawn() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            spawned => break spawned.map_err(|e| format!("it cannot be executed: {e}"))?,
        }
    };
    let output = match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(format!("waiting for it failed: {e}")),
        Err(_) => {
            return Err(format!(
                "it did not reach the puppeteer within {}",
                humantime::format_duration(deadline)
            ));
        }
    };
    let said = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim();
        // The end says why; bounded, since it goes into the run's log and cause.
        let start = text.len().saturating_sub(600);
        let start = (start..=text.len())
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(text.len());
        text[start..].to_string()
    };
    if !output.status.success() {
        let stderr = said(&output.stderr);
        return Err(format!(
            "it {}{}",
            describe_status(output.status),
            if stderr.is_empty() {
                String::new()
            } else {
                format!(": {stderr}")
            }
        ));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout
        .lines()
        .find_map(|line| line.strip_prefix(CHECKED))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    if version != expected {
        return Err(format!(
            "it says it is puppet {}, not {expected}",
            crate::shown(version)
        ));
    }
    Ok(())
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended".to_string(),
    }
}

/// What the agent does after looking for an upgrade under way at its start.
#[derive(Debug, PartialEq, Eq)]
pub enum AtStart {
    /// Go on starting (any upgrade was settled and its run's record written).
    Continue,
    /// Execute the binary at this path in place of this process.
    Restart,
}

/// Settles an upgrade found under way at start (see the module's docs):
/// proves this new version, rolls it back, or records the run's failure in
/// its run record for the recovery to report.
pub async fn at_start(
    state_dir: &Path,
    store: &RunStore,
    client: &Client,
    shutdown: &CancellationToken,
) -> AtStart {
    let mut pending = match load_pending(state_dir) {
        Ok(Some(pending)) => pending,
        Ok(None) => return AtStart::Continue,
        Err(e) => {
            tracing::error!(error = %e, "cannot read {PENDING_FILE}; setting it aside");
            let _ = std::fs::rename(
                pending_path(state_dir),
                state_dir.join(format!("{PENDING_FILE}.unreadable")),
            );
            return AtStart::Continue;
        }
    };
    let now = records::now_ms();
    match decide(&pending, crate::VERSION, now) {
        Decision::Prove { remaining } => {
            pending.starts += 1;
            if let Err(e) = save_pending(state_dir, &pending) {
                tracing::warn!(error = %e, "cannot count this start in {PENDING_FILE}");
            }
            tracing::info!(from = %pending.from, to = %pending.to, "started as the new version of an upgrade; checking in with the puppeteer");
            let stop = shutdown.child_token();
            let timer = {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(remaining).await;
                    stop.cancel();
                })
            };
            let checked = check_in(client, crate::VERSION, &stop).await;
            timer.abort();
            match checked {
                Ok(_) => {
                    let took =
                        Duration::from_millis(records::now_ms().saturating_sub(pending.swapped_ms));
                    let message = format!(
                        "upgraded from puppet {} to {}: the new version reached the puppeteer {} after the swap",
                        pending.from,
                        pending.to,
                        humantime::format_duration(Duration::from_secs(took.as_secs()))
                    );
                    tracing::info!("{message}");
                    // In this order: a crash in between leaves the outcome
                    // recorded and the upgrade still to prove (the previous
                    // binary still there), or only a stray previous copy.
                    finish_record(store, &pending, Outcome::Exited, 0, &message);
                    remove_pending(state_dir);
                    let _ = std::fs::remove_file(&pending.previous);
                    AtStart::Continue
                }
                Err(CallError::Stopped) if shutdown.is_cancelled() => AtStart::Continue,
                Err(CallError::Stopped) => {
                    let why = format!(
                        "the new puppet {} did not reach the puppeteer within its deadline",
                        pending.to
                    );
                    roll_back(state_dir, &mut pending, why)
                }
                Err(CallError::Refused(status)) => {
                    let why = format!(
                        "the puppeteer refused the new puppet {}: {}",
                        pending.to,
                        status.message()
                    );
                    roll_back(state_dir, &mut pending, why)
                }
            }
        }
        Decision::RollBack(why) => roll_back(state_dir, &mut pending, why),
        Decision::Failed(why) => {
            tracing::error!("upgrade failed: {why}");
            let _ = std::fs::remove_file(sibling(&pending.exe, "new"));
            if pending.rolled_back.is_none() {
                // Cut short before the swap: the kept copy is not needed.
                let _ = std::fs::remove_file(&pending.previous);
            }
            finish_record(store, &pending, Outcome::Exited, 1, &why);
            remove_pending(state_dir);
            AtStart::Continue
        }
    }
}

/// Puts the previous binary back and asks for a restart as it; if that
/// cannot be done, the run fails and this version stays.
fn roll_back(state_dir: &Path, pending: &mut Pending, why: String) -> AtStart {
    tracing::error!("{why}; putting back puppet {}", pending.from);
    let previous_there = pending.previous.exists();
    if previous_there && let Err(e) = put_back(&pending.exe, &pending.previous) {
        let message = format!(
            "{why}; and puppet {} cannot be put back ({e}): {} stays",
            pending.from, pending.to
        );
        tracing::error!("{message}");
        pending.rolled_back = None;
        return settle_failed_here(state_dir, pending, &message);
    }
    if !previous_there && pending.rolled_back.is_none() {
        let message = format!(
            "{why}; and the previous binary {} is gone: {} stays",
            pending.previous.display(),
            pending.to
        );
        return settle_failed_here(state_dir, pending, &message);
    }
    pending.rolled_back = Some(why);
    if let Err(e) = save_pending(state_dir, pending) {
        tracing::error!(error = %e, "cannot note the rollback in {PENDING_FILE}");
    }
    AtStart::Restart
}

fn settle_failed_here(state_dir: &Path, pending: &Pending, message: &str) -> AtStart {
    if let Ok(store) = RunStore::open(state_dir) {
        finish_record(&store, pending, Outcome::Exited, 1, message);
    }
    remove_pending(state_dir);
    AtStart::Continue
}

/// Writes the upgrade run's outcome into its record (and its spool), for
/// the recovery at start to report as any finished run.
fn finish_record(store: &RunStore, pending: &Pending, outcome: Outcome, code: i32, message: &str) {
    let mut record = match store.load(&pending.run_id) {
        Ok(Some(record)) if record.attempt == pending.attempt => record,
        Ok(_) => {
            tracing::warn!(run_id = %pending.run_id, "the upgrade's run record is gone; nothing to report");
            return;
        }
        Err(e) => {
            tracing::error!(run_id = %pending.run_id, error = %e, "cannot read the upgrade's run record");
            return;
        }
    };
    append_line(store, &pending.run_id, message);
    let took = Duration::from_millis(records::now_ms().saturating_sub(pending.swapped_ms));
    record.phase = Phase::Finished;
    record.finish = Some(FinishReport {
        outcome,
        exit_code: code,
        signal: 0,
        duration: took,
        log_length: store.spool_len(&pending.run_id),
        message: message.to_string(),
    });
    if let Err(e) = store.save(&record) {
        tracing::error!(run_id = %pending.run_id, error = %e, "cannot record the upgrade's outcome");
    }
}

/// Appends a line to a run's spool (its log), synced.
pub fn append_line(store: &RunStore, run_id: &str, line: &str) {
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(store.spool_path(run_id))
        .and_then(|mut f| {
            f.write_all(format!("[puppet] {line}\n").as_bytes())?;
            f.sync_data()
        });
    if let Err(e) = written {
        tracing::warn!(%run_id, error = %e, "cannot write to the run's log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending() -> Pending {
        Pending {
            run_id: "run-1".into(),
            attempt: 1,
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            exe: "/x/puppet".into(),
            previous: "/x/.puppet.previous".into(),
            swapped_ms: 1_000,
            deadline_ms: 121_000,
            starts: 0,
            rolled_back: None,
        }
    }

    #[test]
    fn the_new_version_proves_itself_in_time_or_is_rolled_back() {
        let p = pending();
        assert_eq!(
            decide(&p, "0.2.0", 21_000),
            Decision::Prove {
                remaining: Duration::from_secs(100)
            }
        );
        // Past the deadline, at the deadline, or after too many starts.
        assert!(
            matches!(decide(&p, "0.2.0", 121_000), Decision::RollBack(why) if why.contains("within 2m"))
        );
        let crashed = Pending {
            starts: MAX_STARTS + 1,
            ..pending()
        };
        assert!(
            matches!(decide(&crashed, "0.2.0", 2_000), Decision::RollBack(why) if why.contains("started 4 times"))
        );
        // Rolled back but still running as the new one: roll back again.
        let half = Pending {
            rolled_back: Some("refused".into()),
            ..pending()
        };
        assert_eq!(
            decide(&half, "0.2.0", 2_000),
            Decision::RollBack("refused".into())
        );
    }

    #[test]
    fn the_old_version_reports_the_failure() {
        let rolled = Pending {
            rolled_back: Some("the new puppet 0.2.0 did not reach the puppeteer".into()),
            ..pending()
        };
        assert!(
            matches!(decide(&rolled, "0.1.0", 2_000), Decision::Failed(why) if why.ends_with("put back puppet 0.1.0"))
        );
        // A crash between writing the record and the swap: nothing changed.
        assert!(
            matches!(decide(&pending(), "0.1.0", 2_000), Decision::Failed(why) if why.contains("nothing was changed"))
        );
        // A clock that went back changes nothing for the old one.
        assert!(matches!(
            decide(&pending(), "0.1.0", 0),
            Decision::Failed(_)
        ));
        assert!(
            matches!(decide(&pending(), "0.3.0", 2_000), Decision::Failed(why) if why.contains("neither"))
        );
    }

    #[test]
    fn the_swap_keeps_a_whole_binary_and_can_be_undone() {
        let dir = tempfile::tempdir().unwrap();
        let relaunch = Relaunch {
            exe: dir.path().join("puppet"),
            args: vec![],
        };
        std::fs::write(&relaunch.exe, b"old").unwrap();
        let fetched = dir.path().join("fetched");
        std::fs::write(&fetched, b"new").unwrap();
        stage(&fetched, &relaunch.staged()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(relaunch.staged())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        swap(&relaunch.exe, &relaunch.staged(), &relaunch.previous()).unwrap();
        assert_eq!(std::fs::read(&relaunch.exe).unwrap(), b"new");
        assert_eq!(std::fs::read(relaunch.previous()).unwrap(), b"old");
        assert!(!relaunch.staged().exists());
        put_back(&relaunch.exe, &relaunch.previous()).unwrap();
        assert_eq!(std::fs::read(&relaunch.exe).unwrap(), b"old");
        assert!(!relaunch.previous().exists());
        assert_eq!(relaunch.previous().file_name().unwrap(), ".puppet.previous");
    }

    #[test]
    fn a_pending_upgrade_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_pending(dir.path()).unwrap(), None);
        save_pending(dir.path(), &pending()).unwrap();
        assert_eq!(load_pending(dir.path()).unwrap(), Some(pending()));
        remove_pending(dir.path());
        assert_eq!(load_pending(dir.path()).unwrap(), None);
    }
}
