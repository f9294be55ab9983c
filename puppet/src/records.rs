//! Run records and spool files under `state_dir/runs/`.
//!
//! A record (`<run_id>.json`) is written before anything irreversible happens
//! to a run, so that after a crash or a redelivery the puppet knows what it
//! already did: `accepted` before `StartRun` is sent, `started` before the
//! child is spawned, `finished` (with the outcome) as soon as the child is
//! gone. The spool (`<run_id>.log`) holds the run's output until the
//! puppeteer has acknowledged it. Both are removed once `FinishRun` is
//! acknowledged.
//!
//! The files are tiny and written only at phase changes, so they are written
//! with blocking calls; each write goes to a temporary file that is synced
//! and renamed over the old one, so a crash leaves either record whole.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How far a run got on this puppet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Received; `StartRun` may have been sent, the child was not spawned.
    Accepted,
    /// The child was (about to be) spawned.
    Started,
    /// The child is gone and the outcome is known; `FinishRun` may not be acknowledged yet.
    Finished,
}

/// How a run ended, as the puppet saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Exited,
    Signaled,
    TimedOut,
    Cancelled,
    StartFailed,
    Interrupted,
    /// The run expected the machine to reboot, and the puppet came back
    /// after one (a new boot id) within the run's window.
    Rebooted,
}

/// Everything `FinishRun` reports, kept on disk until it is acknowledged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishReport {
    pub outcome: Outcome,
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub signal: i32,
    #[serde(default, with = "duration_ms")]
    pub duration: Duration,
    /// Bytes of output in the spool when the run ended.
    #[serde(default)]
    pub log_length: u64,
    #[serde(default)]
    pub message: String,
}

impl FinishReport {
    /// The report of a run that a restart of the puppet cut short.
    pub fn interrupted(log_length: u64, message: impl Into<String>) -> Self {
        FinishReport {
            outcome: Outcome::Interrupted,
            exit_code: 0,
            signal: 0,
            duration: Duration::ZERO,
            log_length,
            message: message.into(),
        }
    }
}

/// The on-disk record of one run attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub attempt: u32,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<FinishReport>,
    /// Set, before the child starts, when the run's task ends by rebooting
    /// the machine (`--expect-reboot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootExpectation>,
    /// The server's log limit, from the assignment: a run recovered after a
    /// restart uploads under it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_limit: Option<crate::upload::LogLimit>,
}

/// What a run that expects a reboot must remember to be judged after one.
///
/// A reboot is told by the machine's boot id (`/proc/sys/kernel/random/boot_id`),
/// which Linux draws anew at every boot; the window is measured on the wall
/// clock, the only clock that survives a reboot (a clock stepped during the
/// reboot moves the judgement by as much).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootExpectation {
    /// The boot id when the run started (empty: unknown).
    pub boot_id: String,
    /// How long after its start the puppet may come back.
    pub window_ms: u64,
    /// When the run started, in milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

impl RunRecord {
    /// The finish to report for a record left by an earlier puppet process,
    /// on a machine whose boot id is now `boot_id`, at `now_ms` (wall clock,
    /// milliseconds since the Unix epoch).
    ///
    /// A finished run reports its stored outcome again. A run that was
    /// accepted or started but never finished was cut short by the restart:
    /// it is reported as interrupted and never executed again, because the
    /// puppet cannot know how far its child got. The exception is a started
    /// run that expected a reboot, when the machine did reboot within the
    /// run's window: that is how such a run succeeds ([`Outcome::Rebooted`]).
    pub fn recovery_report(&self, spool_len: u64, boot_id: &str, now_ms: u64) -> FinishReport {
        match (&self.phase, &self.finish, &self.reboot) {
            (Phase::Finished, Some(report), _) => report.clone(),
            (Phase::Accepted, _, _) => FinishReport::interrupted(
                spool_len,
                "the puppet restarted before the run started; it was not executed",
            ),
            (_, _, Some(expected)) => expected.judge(spool_len, boot_id, now_ms),
            (_, _, None) => FinishReport::interrupted(
                spool_len,
                "the puppet restarted while the run was executing",
            ),
        }
    }
}

impl RebootExpectation {
    /// The report of a run that expected a reboot, found unfinished when
    /// the puppet started on boot `boot_id` at `now_ms`.
    pub fn judge(&self, spool_len: u64, boot_id: &str, now_ms: u64) -> FinishReport {
        let back_after = Duration::from_millis(now_ms.saturating_sub(self.started_at_ms));
        let window = Duration::from_millis(self.window_ms);
        let show = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
        if self.boot_id.is_empty() || boot_id.is_empty() {
            return FinishReport::interrupted(
                spool_len,
                "the run expected a reboot, but this machine has no boot id to tell one",
            );
        }
        if self.boot_id == boot_id {
            return FinishReport::interrupted(
                spool_len,
                "the run expected a reboot, but the puppet restarted without one (same boot id)",
            );
        }
        if back_after > window {
            return FinishReport::interrupted(
                spool_len,
                format!(
                    "the machine rebooted, but the puppet came back {} after the run started, past its reboot window of {}",
                    show(back_after),
                    show(window)
                ),
            );
        }
        FinishReport {
            outcome: Outcome::Rebooted,
            exit_code: 0,
            signal: 0,
            duration: back_after,
            log_length: spool_len,
            message: format!(
                "the puppet came back on a new boot {} after the run started",
                show(back_after)
            ),
        }
    }
}

/// The wall clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A run's process group as the executor spawned it: its id, and the start
/// time of its leader (so that a recycled pid is never mistaken for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMark {
    pub pgid: u32,
    pub start_time: u64,
}

impl ProcessMark {
    /// The mark of a live process, read from `/proc`.
    pub fn of(pid: u32) -> Option<Self> {
        Some(ProcessMark {
            pgid: pid,
            start_time: process_start_time(pid)?,
        })
    }

    pub fn save(&self, path: &Path) -> io::Result<()> {
        // No fsync: after a reboot the process is gone anyway.
        fs::write(path, format!("{} {}\n", self.pgid, self.start_time))
    }

    pub fn load(path: &Path) -> Option<Self> {
        let text = fs::read_to_string(path).ok()?;
        let mut parts = text.split_whitespace();
        Some(ProcessMark {
            pgid: parts.next()?.parse().ok()?,
            start_time: parts.next()?.parse().ok()?,
        })
    }

    /// Whether the group's leader still runs (and is the same process).
    pub fn is_alive(&self) -> bool {
        process_start_time(self.pgid) == Some(self.start_time) && !process_is_zombie(self.pgid)
    }
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn process_is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(true)
}

/// Whether a run id is safe to use as a file name (the server's ids look like `run-...`).
pub fn is_safe_run_id(run_id: &str) -> bool {
    !run_id.is_empty()
        && run_id.len() <= 128
        && !run_id.starts_with('.')
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The `runs/` directory of the state directory.
#[derive(Clone, Debug)]
pub struct RunStore {
    dir: PathBuf,
}

impl RunStore {
    /// Opens (creating with mode 0700) `state_dir/runs`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        let dir = state_dir.join("runs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        Ok(RunStore { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn record_path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.json"))
    }

    pub fn spool_path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.log"))
    }

    pub fn script_path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.script"))
    }

    /// Where the executor notes the run's process group (see [`ProcessMark`]).
    pub fn pid_path(&self, run_id: &str) -> PathBuf {
        self.dir.join(format!("{run_id}.pid"))
    }

    /// Kills what is left of a run's process group after the puppet died
    /// under it (the child writes its output to the spool itself, so it may
    /// outlive the puppet), and waits a little for it to be gone, so that
    /// the spool no longer grows. Returns whether an orphan was found.
    pub fn kill_orphan(&self, run_id: &str) -> bool {
        let Some(mark) = ProcessMark::load(&self.pid_path(run_id)) else {
            return false;
        };
        if !mark.is_alive() {
            return false;
        }
        tracing::warn!(
            run_id,
            pgid = mark.pgid,
            "the run's processes outlived the puppet; killing them"
        );
        if let Err(e) = crate::sys::kill_process_group(mark.pgid, libc::SIGKILL) {
            tracing::warn!(run_id, error = %e, "cannot kill the orphaned process group");
            return true;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while mark.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Writes a record atomically and durably.
    pub fn save(&self, record: &RunRecord) -> io::Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
        write_atomically(&self.record_path(&record.run_id), &json, 0o600)
    }

    /// Reads the record of a run, if there is one.
    pub fn load(&self, run_id: &str) -> io::Result<Option<RunRecord>> {
        match fs::read(self.record_path(run_id)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads every record; unreadable ones are logged and skipped, since one
    /// damaged file must not keep the puppet from working.
    pub fn load_all(&self) -> io::Result<Vec<RunRecord>> {
        let mut records = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            match fs::read(&path).and_then(|bytes| {
                serde_json::from_slice::<RunRecord>(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
            }) {
                Ok(record) if is_safe_run_id(&record.run_id) => records.push(record),
                Ok(record) => {
                    tracing::warn!(path = %path.display(), run_id = %record.run_id, "ignoring a run record with an unsafe run id")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable run record")
                }
            }
        }
        records.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(records)
    }

    /// The current length of a run's spool (0 when there is none).
    pub fn spool_len(&self, run_id: &str) -> u64 {
        fs::metadata(self.spool_path(run_id)).map_or(0, |m| m.len())
    }

    /// Removes everything the puppet kept about a run.
    pub fn forget(&self, run_id: &str) -> io::Result<()> {
        for path in [
            self.spool_path(run_id),
            self.script_path(run_id),
            self.pid_path(run_id),
            self.record_path(run_id),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    // The mode above applies only to a new file: a temporary file left by
    // a crash keeps its own, so it is set again before anything is written.
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    // Syncing the directory makes the rename itself survive a power loss.
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase, finish: Option<FinishReport>) -> RunRecord {
        RunRecord {
            run_id: "run-1".into(),
            attempt: 2,
            phase,
            finish,
            reboot: None,
            log_limit: None,
        }
    }

    #[test]
    fn records_round_trip_and_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let finished = record(
            Phase::Finished,
            Some(FinishReport {
                outcome: Outcome::Exited,
                exit_code: 3,
                signal: 0,
                duration: Duration::from_millis(1500),
                log_length: 42,
                message: String::new(),
            }),
        );
        store.save(&finished).unwrap();
        assert_eq!(store.load("run-1").unwrap(), Some(finished.clone()));
        assert_eq!(store.load_all().unwrap(), vec![finished]);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(store.record_path("run-1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = fs::metadata(store.dir()).unwrap().permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        store.forget("run-1").unwrap();
        assert_eq!(store.load("run-1").unwrap(), None);
        assert!(store.load_all().unwrap().is_empty());
    }

    #[test]
    fn started_but_not_finished_is_interrupted_on_restart() {
        let rec = record(Phase::Started, None);
        let report = rec.recovery_report(17, "b1", 0);
        assert_eq!(report.outcome, Outcome::Interrupted);
        assert_eq!(report.log_length, 17);

        let report = record(Phase::Accepted, None).recovery_report(0, "b1", 0);
        assert_eq!(report.outcome, Outcome::Interrupted);
    }

    #[test]
    fn finished_records_resend_their_outcome() {
        let report = FinishReport {
            outcome: Outcome::Signaled,
            exit_code: 0,
            signal: 9,
            duration: Duration::from_secs(2),
            log_length: 5,
            message: "x".into(),
        };
        let got = record(Phase::Finished, Some(report.clone())).recovery_report(99, "b1", 0);
        assert_eq!(got, report);
    }

    #[test]
    fn a_run_expecting_a_reboot_succeeds_after_one_within_its_window() {
        let mut rec = record(Phase::Started, None);
        rec.reboot = Some(RebootExpectation {
            boot_id: "boot-a".into(),
            window_ms: 600_000,
            started_at_ms: 1_000_000,
        });
        let back = rec.recovery_report(12, "boot-b", 1_000_000 + 90_000);
        assert_eq!(back.outcome, Outcome::Rebooted);
        assert_eq!(back.duration, Duration::from_secs(90));
        assert_eq!(back.log_length, 12);
        // At the window's very end it still counts.
        let edge = rec.recovery_report(0, "boot-b", 1_000_000 + 600_000);
        assert_eq!(edge.outcome, Outcome::Rebooted);

        // No reboot (same boot id), too late, or no boot id: interrupted.
        let same = rec.recovery_report(0, "boot-a", 1_000_000 + 90_000);
        assert_eq!(same.outcome, Outcome::Interrupted);
        assert!(same.message.contains("same boot id"), "{}", same.message);
        let late = rec.recovery_report(0, "boot-b", 1_000_000 + 600_001);
        assert_eq!(late.outcome, Outcome::Interrupted);
        assert!(
            late.message.contains("past its reboot window"),
            "{}",
            late.message
        );
        assert_eq!(
            rec.recovery_report(0, "", 1_000_000).outcome,
            Outcome::Interrupted
        );
        // A wall clock stepped back across the reboot counts as no time.
        let stepped = rec.recovery_report(0, "boot-b", 5);
        assert_eq!(
            (stepped.outcome, stepped.duration),
            (Outcome::Rebooted, Duration::ZERO)
        );

        // Accepted but never started: not executed, whatever the boot id.
        rec.phase = Phase::Accepted;
        assert_eq!(
            rec.recovery_report(0, "boot-b", 1_000_000).outcome,
            Outcome::Interrupted
        );
        // Finished before the machine went down: its own outcome stands.
        let exited = FinishReport {
            outcome: Outcome::Exited,
            exit_code: 0,
            signal: 0,
            duration: Duration::from_secs(1),
            log_length: 3,
            message: String::new(),
        };
        rec.phase = Phase::Finished;
        rec.finish = Some(exited.clone());
        assert_eq!(rec.recovery_report(3, "boot-b", 1_000_000), exited);
    }

    #[test]
    fn the_reboot_expectation_survives_the_file_and_old_records_load() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        let mut rec = record(Phase::Started, None);
        rec.reboot = Some(RebootExpectation {
            boot_id: "boot-a".into(),
            window_ms: 1_800_000,
            started_at_ms: 42,
        });
        store.save(&rec).unwrap();
        assert_eq!(store.load("run-1").unwrap(), Some(rec));
        let old: RunRecord =
            serde_json::from_str(r#"{"run_id":"run-2","attempt":1,"phase":"started"}"#).unwrap();
        assert_eq!(old.reboot, None);
    }

    #[test]
    fn broken_and_foreign_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::open(dir.path()).unwrap();
        fs::write(store.dir().join("bad.json"), b"{not json").unwrap();
        fs::write(store.dir().join("run-2.log"), b"output").unwrap();
        store.save(&record(Phase::Accepted, None)).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(store.spool_len("run-2"), 6);
    }

    #[test]
    fn process_marks_recognise_the_same_process_only() {
        let me = ProcessMark::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.pid");
        me.save(&path).unwrap();
        assert_eq!(ProcessMark::load(&path), Some(me));
        // The same pid with another start time is another process.
        let recycled = ProcessMark {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!recycled.is_alive());
        fs::write(&path, "garbage").unwrap();
        assert_eq!(ProcessMark::load(&path), None);
    }

    #[test]
    fn run_ids_that_could_escape_the_directory_are_refused() {
        assert!(is_safe_run_id("run-01HZX.3_a"));
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(129)] {
            assert!(!is_safe_run_id(bad), "{bad:?}");
        }
    }
}
