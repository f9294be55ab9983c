//! What the puppet tells the puppeteer about its machine.
//!
//! Facts are read from `/proc`, `/etc/os-release` and `statvfs`. They ride on
//! polls only when needed: the static ones (hostname, OS, kernel, totals)
//! whenever they change, the changing ones (uptime, load, free memory and
//! disk) at most every [`REFRESH_INTERVAL`], so that an idle poll stays tiny
//! on a slow shared uplink.

use std::path::Path;
use std::time::{Duration, Instant};

use geppetto_proto::v1::Facts;

use crate::rpc::{timestamp_now, to_proto_duration};

/// How often the changing facts are sent, at most.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Collects the facts of this machine; what cannot be read stays empty.
pub fn collect(state_dir: &Path) -> Facts {
    let os_release = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (disk_total, disk_available) = crate::sys::disk_space(state_dir).unwrap_or((0, 0));
    Facts {
        hostname: hostname(),
        os: os_release_value(&os_release, "PRETTY_NAME").unwrap_or_default(),
        os_id: os_release_value(&os_release, "ID").unwrap_or_default(),
        kernel: read_trimmed("/proc/sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.to_string(),
        memory_total_bytes: meminfo_bytes(&meminfo, "MemTotal").unwrap_or(0),
        disk_total_bytes: disk_total,
        agent_version: crate::VERSION.to_string(),
        uptime: parse_uptime(&read_trimmed("/proc/uptime")).map(to_proto_duration),
        load: parse_loadavg(&read_trimmed("/proc/loadavg")),
        memory_available_bytes: meminfo_bytes(&meminfo, "MemAvailable").unwrap_or(0),
        disk_available_bytes: disk_available,
        boot_id: boot_id(None),
        collected_at: Some(timestamp_now()),
    }
}

/// Where Linux tells the id of the current boot, drawn anew at every boot.
pub const BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// The id of the machine's current boot (empty when unknown), read from
/// `file` instead of [`BOOT_ID_FILE`] when one is given (tests simulate a
/// reboot by changing that file).
pub fn boot_id(file: Option<&Path>) -> String {
    match file {
        Some(file) => std::fs::read_to_string(file)
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        None => read_trimmed(BOOT_ID_FILE),
    }
}

/// The machine's host name.
pub fn hostname() -> String {
    let name = read_trimmed("/proc/sys/kernel/hostname");
    if !name.is_empty() {
        return name;
    }
    std::env::var("HOSTNAME").unwrap_or_default()
}

/// The facts that change only when the machine is reconfigured.
fn static_part(facts: &Facts) -> Facts {
    Facts {
        hostname: facts.hostname.clone(),
        os: facts.os.clone(),
        os_id: facts.os_id.clone(),
        kernel: facts.kernel.clone(),
        arch: facts.arch.clone(),
        memory_total_bytes: facts.memory_total_bytes,
        disk_total_bytes: facts.disk_total_bytes,
        agent_version: facts.agent_version.clone(),
        boot_id: facts.boot_id.clone(),
        ..Facts::default()
    }
}

/// Decides which polls carry facts.
#[derive(Debug, Default)]
pub struct FactsSchedule {
    last_static: Option<Facts>,
    last_sent: Option<Instant>,
}

impl FactsSchedule {
    /// Returns the facts to put on the next poll, if it should carry any.
    pub fn due(&self, current: &Facts, now: Instant) -> bool {
        let changed = self.last_static.as_ref() != Some(&static_part(current));
        let stale = self
            .last_sent
            .is_none_or(|sent| now.duration_since(sent) >= REFRESH_INTERVAL);
        changed || stale
    }

    /// Records that these facts reached the server.
    pub fn sent(&mut self, facts: &Facts, now: Instant) {
        self.last_static = Some(static_part(facts));
        self.last_sent = Some(now);
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
    })
}

fn meminfo_bytes(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        if k != key {
            return None;
        }
        let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

fn parse_uptime(text: &str) -> Option<Duration> {
    let secs: f64 = text.split_whitespace().next()?.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

fn parse_loadavg(text: &str) -> Vec<f64> {
    text.split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_and_os_release() {
        let os = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(
            os_release_value(os, "PRETTY_NAME").unwrap(),
            "Debian GNU/Linux 12 (bookworm)"
        );
        assert_eq!(os_release_value(os, "ID").unwrap(), "debian");
        let mem = "MemTotal:       16314412 kB\nMemFree:  1 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(meminfo_bytes(mem, "MemTotal"), Some(16314412 * 1024));
        assert_eq!(meminfo_bytes(mem, "MemAvailable"), Some(8000000 * 1024));
        assert_eq!(
            parse_uptime("12345.67 999.00"),
            Some(Duration::from_secs_f64(12345.67))
        );
        assert_eq!(
            parse_loadavg("0.50 0.25 0.10 1/234 5678"),
            vec![0.5, 0.25, 0.1]
        );
    }

    #[test]
    fn collects_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let facts = collect(dir.path());
        assert!(!facts.arch.is_empty());
        assert!(facts.disk_total_bytes > 0);
        assert_eq!(facts.load.len(), 3);
    }

    #[test]
    fn facts_ride_on_polls_only_when_changed_or_stale() {
        let dir = tempfile::tempdir().unwrap();
        let facts = collect(dir.path());
        let mut schedule = FactsSchedule::default();
        let t0 = Instant::now();
        assert!(schedule.due(&facts, t0));
        schedule.sent(&facts, t0);
        let mut changing = facts.clone();
        changing.load = vec![9.0, 9.0, 9.0];
        assert!(!schedule.due(&changing, t0 + Duration::from_secs(60)));
        assert!(schedule.due(&changing, t0 + REFRESH_INTERVAL));
        let mut moved = facts.clone();
        moved.kernel = "7.0.0".into();
        assert!(schedule.due(&moved, t0 + Duration::from_secs(1)));
    }
}
