//! A Linux network namespace joined to this one by a veth pair, for tests
//! and benchmarks across a real (emulated) bad link: `tc` tbf limits the
//! rate on both ends, nftables drops a share of packets at random, and the
//! link can be taken down and up. The kernel of the build machines has no
//! netem, so delay comes from the userspace relay (`faultproxy`).
//!
//! Needs root and iproute2 (nftables for loss). [`NetNs::create`] says why
//! when it is not possible, so that callers can skip loudly. Names and
//! addresses are unique per process and per namespace; everything is removed
//! on drop (also when a test panics), and namespaces left by test processes
//! that died are removed at the next creation.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of the namespaces this module creates: `geppetto-PID-N`.
const PREFIX: &str = "geppetto-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A namespace and its veth pair.
pub struct NetNs {
    pub name: String,
    /// The veth end in this namespace, and its address.
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    /// The veth end inside the namespace, and its address.
    pub ns_if: String,
    pub ns_ip: Ipv4Addr,
    /// The nftables tables made in this namespace (loss, counters).
    host_tables: Vec<String>,
}

/// Runs a command; returns its stdout or an error naming it.
fn run(args: &[&str]) -> Result<String, String> {
    let (program, rest) = args.split_first().unwrap();
    let output = Command::new(program)
        .args(rest)
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if !output.status.success() {
        return Err(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl NetNs {
    /// Why namespaces cannot be used here, if they cannot.
    pub fn unavailable() -> Option<String> {
        // The effective user id, from the process's status.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(2).map(str::to_string))
            });
        if uid.as_deref() != Some("0") {
            return Some("not running as root".into());
        }
        if run(&["ip", "-V"]).is_err() {
            return Some("iproute2 (`ip`) is not installed".into());
        }
        if run(&["tc", "-V"]).is_err() {
            return Some("`tc` (iproute2) is not installed".into());
        }
        None
    }

    /// Whether nftables (for random loss) is installed.
    pub fn has_nft() -> bool {
        run(&["nft", "--version"]).is_ok()
    }

    /// Creates a namespace joined by a veth pair, both ends up and addressed.
    pub fn create() -> Result<Self, String> {
        if let Some(why) = Self::unavailable() {
            return Err(why);
        }
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        // A /30 per pair in 10.64.0.0/10, picked from the pid and the counter.
        let index = (pid.wrapping_mul(64).wrapping_add(n)) % (1 << 20);
        let base = u32::from(Ipv4Addr::new(10, 64, 0, 0)) + index * 4;
        let mut ns = NetNs {
            name: format!("{PREFIX}{pid}-{n}"),
            host_if: format!("gv{pid}x{n}h"),
            host_ip: Ipv4Addr::from(base + 1),
            ns_if: format!("gv{pid}x{n}n"),
            ns_ip: Ipv4Addr::from(base + 2),
            host_tables: Vec::new(),
        };
        if ns.host_if.len() > 15 {
            // Interface names are limited to 15 bytes.
            ns.host_if = format!("gv{}x{n}h", pid % 100_000);
            ns.ns_if = format!("gv{}x{n}n", pid % 100_000);
        }
        ns.set_up()?;
        Ok(ns)
    }

    fn set_up(&self) -> Result<(), String> {
        let host = format!("{}/30", self.host_ip);
        let inside = format!("{}/30", self.ns_ip);
        run(&["ip", "netns", "add", &self.name])?;
        run(&[
            "ip",
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
            "netns",
            &self.name,
        ])?;
        run(&["ip", "addr", "add", &host, "dev", &self.host_if])?;
        // No IPv6 on the pair: its router and multicast chatter would blur
        // the byte counts of the benchmarks.
        let host_v6 = format!("net.ipv6.conf.{}.disable_ipv6=1", self.host_if);
        let _ = run(&["sysctl", "-qw", &host_v6]);
        let _ = self.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
        run(&["ip", "link", "set", &self.host_if, "up"])?;
        self.exec(&["ip", "addr", "add", &inside, "dev", &self.ns_if])?;
        self.exec(&["ip", "link", "set", &self.ns_if, "up"])?;
        self.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// The prefix that runs a program inside the namespace.
    pub fn wrapper(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Limits both directions to `kbit` kbit/s with tbf (a 4 KB bucket, 400 ms of queue).
    pub fn limit_rate(&self, kbit: u32) -> Result<(), String> {
        let rate = format!("{kbit}kbit");
        let tbf = ["tbf", "rate", &rate, "burst", "4kb", "latency", "400ms"];
        let mut host = vec!["tc", "qdisc", "replace", "dev", &self.host_if, "root"];
        host.extend_from_slice(&tbf);
        run(&host)?;
        let mut inside = vec!["tc", "qdisc", "replace", "dev", &self.ns_if, "root"];
        inside.extend_from_slice(&tbf);
        self.exec(&inside)?;
        Ok(())
    }

    /// Drops `percent` % of the packets leaving each end, at random (nftables).
    pub fn drop_percent(&mut self, percent: u32) -> Result<(), String> {
        if !Self::has_nft() {
            return Err("nftables (`nft`) is not installed: apt-get install -y nftables".into());
        }
        let table = self.name.replace('-', "_");
        let rules = |interface: &str| {
            format!(
                "table inet {table} {{\n chain out {{\n  type filter hook output priority 0; policy accept;\n  oifname \"{interface}\" numgen random mod 100 < {percent} drop\n }}\n}}\n"
            )
        };
        nft_load(&rules(&self.host_if), None)?;
        self.host_tables.push(table.clone());
        nft_load(&rules(&self.ns_if), Some(&self.name))?;
        Ok(())
    }

    /// Counts the IP packets (TCP/IP headers included) to and from TCP
    /// `port` of the host end's address; read the total with [`NetNs::counted_bytes`].
    pub fn count_port(&mut self, port: u16) -> Result<(), String> {
        if !Self::has_nft() {
            return Err("nftables (`nft`) is not installed: apt-get install -y nftables".into());
        }
        let table = format!("{}_count", self.name.replace('-', "_"));
        let ip = self.host_ip;
        let ruleset = format!(
            "table inet {table} {{\n chain in {{\n  type filter hook input priority 0; policy accept;\n  ip daddr {ip} tcp dport {port} counter\n }}\n chain out {{\n  type filter hook output priority 0; policy accept;\n  ip saddr {ip} tcp sport {port} counter\n }}\n}}\n"
        );
        nft_load(&ruleset, None)?;
        self.host_tables.push(table);
        Ok(())
    }

    /// Bytes counted by the [`NetNs::count_port`] rules, both ways.
    pub fn counted_bytes(&self) -> u64 {
        let Some(table) = self.host_tables.iter().find(|t| t.ends_with("_count")) else {
            return 0;
        };
        let listing = run(&["nft", "list", "table", "inet", table]).unwrap_or_default();
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "bytes")
            .filter_map(|w| w[1].parse::<u64>().ok())
            .sum()
    }

    /// Takes the link down (both ends) or brings it back up.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        run(&["ip", "link", "set", &self.host_if, state])?;
        self.exec(&["ip", "link", "set", &self.ns_if, state])?;
        Ok(())
    }

    /// Bytes sent and received by the host end (IP packets, headers included).
    pub fn host_bytes(&self) -> (u64, u64) {
        let read = |what: &str| {
            std::fs::read_to_string(format!(
                "/sys/class/net/{}/statistics/{what}_bytes",
                self.host_if
            ))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
        };
        (read("tx"), read("rx"))
    }
}

/// Loads an nftables ruleset from stdin, in a namespace if given.
fn nft_load(ruleset: &str, netns: Option<&str>) -> Result<(), String> {
    use std::io::Write;
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft", "-f", "-"]);
            c
        }
        None => {
            let mut c = Command::new("nft");
            c.args(["-f", "-"]);
            c
        }
    };
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .map_err(|e| format!("cannot feed nft: {e}"))?;
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

impl Drop for NetNs {
    fn drop(&mut self) {
        for table in &self.host_tables {
            let _ = run(&["nft", "delete", "table", "inet", table]);
        }
        // Deleting the namespace destroys its veth end, and with it the pair.
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_if]);
    }
}

/// Removes namespaces (and their host-side nftables tables) left behind by
/// test processes that no longer exist.
fn remove_stale() {
    let Ok(list) = run(&["ip", "netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let table = name.replace('-', "_");
        let _ = run(&["nft", "delete", "table", "inet", &table]);
        let _ = run(&["nft", "delete", "table", "inet", &format!("{table}_count")]);
        let _ = run(&["ip", "netns", "del", name]);
    }
}

/// Set (to anything) where namespaces must work, e.g. in CI: then a
/// namespace that cannot be created fails the test instead of skipping it.
pub const REQUIRE_VAR: &str = "GEPPETTO_REQUIRE_NETNS";

/// A namespace for `test`, or `None` after a loud notice that the test is
/// skipped. The notice is written to the process's stderr directly, past
/// the test harness's output capture, so that it shows in a normal run.
pub fn create_or_skip(test: &str) -> Option<NetNs> {
    match NetNs::create() {
        Ok(ns) => Some(ns),
        Err(why) => skip(test, &why),
    }
}

/// [`create_or_skip`] for a test that also needs nftables (random loss,
/// byte counting): skipped the same way when `nft` is missing.
pub fn create_with_nft_or_skip(test: &str) -> Option<NetNs> {
    if !NetNs::has_nft() {
        return skip(
            test,
            "nftables (`nft`) is not installed: apt-get install -y nftables",
        );
    }
    create_or_skip(test)
}

/// Skips `test` loudly, or fails it where namespaces are required.
fn skip(test: &str, why: &str) -> Option<NetNs> {
    use std::io::Write;
    if std::env::var_os(REQUIRE_VAR).is_some() {
        panic!("{test}: network namespaces unavailable ({why}) but {REQUIRE_VAR} is set");
    }
    let line = "=".repeat(78);
    let _ = writeln!(
        std::io::stderr().lock(),
        "{line}\nSKIPPED: {test}: network namespaces unavailable: {why}\n\
         (run as root with iproute2 and nftables for the real-link scenarios)\n{line}"
    );
    None
}
