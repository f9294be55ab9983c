//! A throwaway PostgreSQL server for tests: [`server`] starts the test
//! process's one server on first use, and [`Server::fresh_database`] gives
//! each test its own empty database on it.
//!
//! # Finding PostgreSQL
//!
//! `initdb` and `postgres` are taken from the first `PATH` directory holding
//! both, else from the newest `/usr/lib/postgresql/<N>/bin` (where Debian's
//! `postgresql` package puts them, off `PATH`); `psql` from beside the real
//! `postgres` (symbolic links resolved), else beside the one found, else from
//! `PATH`. When one is missing, [`server`] prints one line starting with
//! `SKIPPED` on stderr (once per process) and returns `None`; with
//! `GEPPETTO_REQUIRE_POSTGRES` set (CI, which installs PostgreSQL) it panics
//! instead.
//!
//! # The server
//!
//! A fresh directory under the temporary directory holds the data directory
//! (`initdb -U geppetto --auth=trust -E UTF8 --locale=C`), the Unix socket
//! and the server's log (`postgres.log`). The server listens on 127.0.0.1
//! only, on a port picked free by the system (never a fixed one: the machine
//! is shared; a start that loses the port to another process is retried on
//! another), with durability against a crash of the machine turned off for
//! speed (`fsync` and `full_page_writes` off). `synchronous_commit` stays on:
//! with `fsync` off a commit costs one `write` to the OS's cache, and a
//! committed transaction then survives [`Server::restart`], which kills
//! every server process (off, the last commits, still in the server's
//! memory, would be lost, unlike in a real database's crash). Clients
//! connect as `geppetto`, no password, over TCP.
//!
//! `initdb` refuses to run as root, so when the test process is root (CI),
//! `initdb`, the server and its watchdog run as `nobody` (with its primary
//! group, `nogroup` on Debian, and no supplementary groups: set by the
//! standard library's `CommandExt::uid`/`gid` in the child before `exec`,
//! with no `setpriv` or `runuser` needed), and the directory is theirs.
//!
//! # Dying with the test process
//!
//! Rust never drops statics, and a test process may be killed with SIGKILL,
//! so nothing in it can be relied on to stop the server. The server runs
//! under a watchdog instead: a small `sh` script, in a process group of its
//! own (a terminal's Ctrl-C reaches the test process only), whose standard
//! input is a pipe. The write end of that pipe is held by this process alone
//! (the standard library opens pipes close-on-exec, so no other child
//! inherits it), in the static, forever. However the process ends, the
//! kernel closes it; the watchdog's `read` then sees end-of-file, and the
//! watchdog stops the server (SIGQUIT, PostgreSQL's immediate shutdown,
//! which takes its backends down with it; SIGKILL if it has not exited
//! within 10 s), waits for it, and removes the whole directory.
//!
//! The pipe also carries the watchdog's commands: a line `start PORT` starts
//! the server (reaping a previous one first), and the watchdog answers with
//! the postmaster's pid on its standard output. [`Server::restart`] kills
//! the server itself (below), then sends `start` again.
//!
//! Linux only: the processes are looked up in `/proc`.

use std::ffi::OsStr;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// The role clients connect as (trust authentication: no password).
pub const USER: &str = "geppetto";

/// Set (non-empty), a missing PostgreSQL fails the tests instead of
/// skipping them.
const REQUIRE_VAR: &str = "GEPPETTO_REQUIRE_POSTGRES";

/// How long the server may take to accept connections after a start or a
/// restart (crash recovery included), on a loaded machine.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a killed server's processes may take to be gone.
const KILL_DEADLINE: Duration = Duration::from_secs(10);

/// Starts tried, each on a new port, when the port is taken meanwhile.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the server's log shown when it fails.
const LOG_TAIL_LINES: usize = 40;

/// The watchdog: `$1` is the directory, the other arguments the server's
/// command line but its port. See the module's documentation.
const WATCHDOG: &str = r#"
base=$1
shift
exec 2>>"$base/postgres.log"
# The test process may be gone when the watchdog answers: end-of-file on
# stdin ends it then, not SIGPIPE.
trap '' PIPE
pid=
stop() {
    if [ -n "$pid" ]; then
        # Immediate shutdown: the postmaster SIGQUITs its backends and exits
        # once they are gone; SIGKILL if it has not within 10 s (or was left
        # stopped by a restart cut short).
        kill -QUIT "$pid" 2>/dev/null
        kill -CONT "$pid" 2>/dev/null
        (
            trap 'kill "$nap" 2>/dev/null; exit 0' TERM
            sleep 10 & nap=$!
            wait "$nap" && kill -KILL "$pid" 2>/dev/null
        ) </dev/null >/dev/null 2>&1 &
        timer=$!
        wait "$pid"
        kill "$timer" 2>/dev/null
        pid=
    fi
}
finish() {
    stop
    rm -rf "$base"
    exit 0
}
trap finish HUP INT TERM
while IFS= read -r line; do
    case $line in
    "start "*)
        if [ -n "$pid" ]; then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid"
        fi
        "$@" -p "${line#start }" </dev/null >>"$base/postgres.log" 2>&1 &
        pid=$!
        echo "$pid"
        ;;
    esac
done
finish
"#;

/// The test process's one PostgreSQL server, started on first use.
///
/// `None` when PostgreSQL's programs are not found: then one line starting
/// with `SKIPPED`, naming what is missing, goes to stderr (past the test
/// harness's capture), once per process.
///
/// # Panics
///
/// When PostgreSQL is missing and `GEPPETTO_REQUIRE_POSTGRES` is set
/// (non-empty), and when the server cannot be started (with its log's last
/// lines): on every call, the first one's message.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Result<Option<Server>, String>> = OnceLock::new();
    match SERVER.get_or_init(start_once) {
        Ok(server) => server.as_ref(),
        Err(why) => panic!("{why}"),
    }
}

fn start_once() -> Result<Option<Server>, String> {
    let programs = match Programs::find() {
        Ok(programs) => programs,
        Err(missing) => {
            if std::env::var_os(REQUIRE_VAR).is_some_and(|value| !value.is_empty()) {
                return Err(format!(
                    "PostgreSQL tests: {missing}, but {REQUIRE_VAR} is set"
                ));
            }
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: PostgreSQL tests: {missing}"
            );
            return Ok(None);
        }
    };
    Server::start(programs).map(Some)
}

/// A PostgreSQL server of the test process's own, on 127.0.0.1; see the
/// module's documentation.
#[derive(Debug)]
pub struct Server {
    port: u16,
    psql: PathBuf,
    directory: PathBuf,
    watchdog: Mutex<Watchdog>,
}

impl Server {
    /// A new, empty database on this server, and a URL to reach it:
    /// `postgres://geppetto@127.0.0.1:PORT/t_PID_N` (no password). Its name
    /// is unique in this process and across processes.
    ///
    /// # Panics
    ///
    /// When `CREATE DATABASE` fails, with what `psql` said.
    pub fn fresh_database(&self) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        // Not in the middle of a restart.
        let _watchdog = self.watchdog();
        if let Err(why) = self.psql("postgres", &format!("CREATE DATABASE {name}")) {
            panic!("creating database {name}: {why}");
        }
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// The port the server listens on, at 127.0.0.1 (the same after a
    /// restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the data directory, the Unix socket and the
    /// server's log (`postgres.log`); removed by the watchdog when the test
    /// process ends.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// Runs `sql` with `psql` in `database`, as `geppetto`; returns its
    /// output, unaligned and without headers (`-A -t`: one row a line,
    /// columns separated by `|`), or what went wrong with `psql`'s stderr.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        psql(&self.psql, self.port, database, sql)
    }

    /// Stops the server hard and starts it again on the same port and data
    /// directory (crash recovery included); returns once it accepts
    /// connections again. Clients' connections are cut, as in a crash of
    /// the database's machine.
    ///
    /// The postmaster is stopped (SIGSTOP: it forks no new backend), its
    /// children (backends and auxiliary processes, which outlive it for a
    /// while otherwise, and would keep the new server from starting) are
    /// sent SIGKILL, then the postmaster itself.
    ///
    /// # Panics
    ///
    /// When the server's processes do not die, or the new server does not
    /// accept connections within a minute (with its log's last lines).
    pub fn restart(&self) {
        let mut watchdog = self.watchdog();
        let postmaster = watchdog.postmaster;
        // Never 0 (`kill` would signal our own process group): set by a
        // start.
        assert!(postmaster > 1, "no postmaster to restart");
        // Stopped, the postmaster neither forks nor reaps: no pid listed
        // or signalled here can be reused by another process meanwhile.
        signal("STOP", &[postmaster]);
        let mut doomed = children_of(postmaster);
        doomed.push(postmaster);
        signal("KILL", &doomed);
        let until = Instant::now() + KILL_DEADLINE;
        let mut pauses = crate::Pauses::default();
        while let Some(&survivor) = doomed.iter().find(|&&pid| alive(pid)) {
            if Instant::now() >= until {
                panic!(
                    "restarting PostgreSQL: process {survivor} still alive {KILL_DEADLINE:?} \
                     after SIGKILL"
                );
            }
            std::thread::sleep(pauses.next());
        }

        // The old server's remains (its shared memory, still attached by a
        // dying backend) may stop the first start: tried again until the
        // deadline.
        let until = Instant::now() + READY_DEADLINE;
        loop {
            let outcome = watchdog
                .start(self.port)
                .map(|pid| wait_ready(&self.psql, &self.directory, self.port, pid, until));
            match outcome {
                Ok(Ready::Yes) => return,
                Ok(Ready::Exited) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Ready::Exited) => panic!(
                    "{}",
                    failure(
                        &format!(
                            "PostgreSQL did not come back after a restart on port {} \
                             within {READY_DEADLINE:?}: it exited",
                            self.port
                        ),
                        &self.directory
                    )
                ),
                Ok(Ready::TimedOut(last)) => panic!(
                    "{}",
                    failure(
                        &format!(
                            "PostgreSQL did not accept connections after a restart on port {} \
                             within {READY_DEADLINE:?}; last seen: {last}",
                            self.port
                        ),
                        &self.directory
                    )
                ),
                Err(why) => panic!("restarting PostgreSQL: {why}"),
            }
        }
    }

    fn watchdog(&self) -> MutexGuard<'_, Watchdog> {
        self.watchdog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the directory, runs `initdb`, starts the watchdog and the
    /// server on a free port.
    fn start(programs: Programs) -> Result<Self, String> {
        let owner = unprivileged_owner()?;
        let directory = make_directory(owner)?;
        let data = directory.join("data");
        let initdb = as_owner(&mut Command::new(&programs.initdb), owner, &directory)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
                "--no-sync",
            ])
            .stdin(Stdio::null())
            .output();
        let failed = match initdb {
            Ok(output) if output.status.success() => None,
            Ok(output) => Some(format!(
                "{} failed ({}):\n{}{}",
                programs.initdb.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )),
            Err(e) => Some(format!("{} cannot run: {e}", programs.initdb.display())),
        };
        if let Some(why) = failed {
            let _ = fs::remove_dir_all(&directory);
            return Err(format!("PostgreSQL tests: {why}"));
        }

        let spawned = as_owner(&mut Command::new("sh"), owner, &directory)
            .arg("-c")
            .arg(WATCHDOG)
            .arg("geppetto-postgres-watchdog")
            .arg(&directory)
            .arg(&programs.postgres)
            .arg("-D")
            .arg(&data)
            .args(["-c", "listen_addresses=127.0.0.1", "-k"])
            .arg(&directory)
            .args([
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=32MB",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // A terminal's signals are for the test process: the watchdog
            // goes when its stdin closes.
            .process_group(0)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir_all(&directory);
                return Err(format!("PostgreSQL tests: sh cannot run: {e}"));
            }
        };
        let mut watchdog = Watchdog {
            commands: child.stdin.take().expect("stdin is piped"),
            replies: BufReader::new(child.stdout.take().expect("stdout is piped")),
            child,
            postmaster: 0,
        };

        let until = Instant::now() + READY_DEADLINE;
        let mut why = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = match free_port() {
                Ok(port) => port,
                Err(e) => {
                    why = e;
                    break;
                }
            };
            let log_before = log_len(&directory);
            let pid = match watchdog.start(port) {
                Ok(pid) => pid,
                Err(e) => {
                    why = e;
                    break;
                }
            };
            match wait_ready(&programs.psql, &directory, port, pid, until) {
                Ready::Yes => {
                    return Ok(Server {
                        port,
                        psql: programs.psql,
                        directory,
                        watchdog: Mutex::new(watchdog),
                    });
                }
                Ready::Exited => {
                    why = format!("the server exited at start on port {port}");
                    if !log_since(&directory, log_before).contains("Address already in use") {
                        break;
                    }
                    // The port was taken meanwhile: another one.
                }
                Ready::TimedOut(last) => {
                    why = format!(
                        "the server did not accept connections on port {port} within \
                         {READY_DEADLINE:?}; last seen: {last}"
                    );
                    break;
                }
            }
        }
        let message = failure(&format!("PostgreSQL tests: {why}"), &directory);
        // End of file on its stdin: the watchdog stops the server and
        // removes the directory.
        let Watchdog {
            commands,
            mut child,
            ..
        } = watchdog;
        drop(commands);
        let _ = child.wait();
        Err(message)
    }
}

/// The watchdog's end of things: the pipe's write end (held until the
/// process exits: see the module's documentation) and its answers.
#[derive(Debug)]
struct Watchdog {
    commands: ChildStdin,
    replies: BufReader<ChildStdout>,
    /// Never waited for while the server lives: the watchdog outlives the
    /// test process.
    child: Child,
    /// The server's postmaster, a child of the watchdog.
    postmaster: u32,
}

impl Watchdog {
    /// Has the watchdog start the server on `port`; returns its pid.
    fn start(&mut self, port: u16) -> Result<u32, String> {
        writeln!(self.commands, "start {port}")
            .map_err(|e| format!("the watchdog is gone (writing to it: {e})"))?;
        let mut line = String::new();
        match self.replies.read_line(&mut line) {
            Ok(0) => Err("the watchdog is gone (no answer)".into()),
            Ok(_) => {
                let pid = line
                    .trim()
                    .parse()
                    .map_err(|_| format!("the watchdog answered {line:?}, not a pid"))?;
                self.postmaster = pid;
                Ok(pid)
            }
            Err(e) => Err(format!("the watchdog is gone (reading from it: {e})")),
        }
    }
}

/// PostgreSQL's programs, as found.
struct Programs {
    initdb: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
}

impl Programs {
    /// Finds the programs; or says which are missing and where they were
    /// looked for.
    fn find() -> Result<Self, String> {
        let path: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        let has_server =
            |dir: &Path| executable(&dir.join("initdb")) && executable(&dir.join("postgres"));
        let Some(bin) = path
            .iter()
            .find(|dir| has_server(dir))
            .cloned()
            .or_else(|| debian_bins().into_iter().find(|dir| has_server(dir)))
        else {
            return Err(
                "no `initdb`/`postgres` found on PATH or in /usr/lib/postgresql/*/bin; \
                 install Debian's `postgresql` package"
                    .into(),
            );
        };
        let resolve = |name: &str| {
            let found = bin.join(name);
            fs::canonicalize(&found).unwrap_or(found)
        };
        let initdb = resolve("initdb");
        let postgres = resolve("postgres");
        let beside = [postgres.parent(), Some(bin.as_path())];
        let psql = beside
            .into_iter()
            .flatten()
            .chain(path.iter().map(PathBuf::as_path))
            .map(|dir| dir.join("psql"))
            .find(|psql| executable(psql))
            .ok_or_else(|| {
                format!(
                    "no `psql` found beside {} or on PATH; install Debian's \
                     `postgresql-client` package",
                    postgres.display()
                )
            })?;
        Ok(Programs {
            initdb,
            postgres,
            psql,
        })
    }
}

/// The `/usr/lib/postgresql/<N>/bin` directories, newest first.
fn debian_bins() -> Vec<PathBuf> {
    let version = |name: &OsStr| -> Option<Vec<u32>> {
        name.to_str()?
            .split('.')
            .map(|part| part.parse().ok())
            .collect()
    };
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut bins: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            Some((version(&entry.file_name())?, entry.path().join("bin")))
        })
        .collect();
    bins.sort();
    bins.into_iter().rev().map(|(_, bin)| bin).collect()
}

fn executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The user and group PostgreSQL runs as: `nobody` and its primary group
/// when this process is root (`initdb` refuses root), else `None` (this
/// process's own).
fn unprivileged_owner() -> Result<Option<(u32, u32)>, String> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let output = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .map_err(|e| format!("PostgreSQL tests: `id` cannot run: {e}"))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| {
                format!(
                    "PostgreSQL tests: running as root, and `id {flag} nobody` finds no user \
                     `nobody` to run initdb and postgres as ({})",
                    String::from_utf8_lossy(&output.stderr).trim()
                )
            })
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn effective_uid() -> Result<u32, String> {
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs".
    let from_proc = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        });
    if let Some(uid) = from_proc {
        return Ok(uid);
    }
    let output = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| format!("PostgreSQL tests: `id -u` cannot run: {e}"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| "PostgreSQL tests: `id -u` does not say this process's user".into())
}

/// `command`, to run as `owner` (if any) in `directory`.
fn as_owner<'a>(
    command: &'a mut Command,
    owner: Option<(u32, u32)>,
    directory: &Path,
) -> &'a mut Command {
    if let Some((uid, gid)) = owner {
        // The standard library also drops the supplementary groups.
        command.uid(uid).gid(gid);
    }
    command.current_dir(directory)
}

/// A new directory under the temporary directory, private to `owner` (this
/// process's user if `None`).
fn make_directory(owner: Option<(u32, u32)>) -> Result<PathBuf, String> {
    let mut parent = std::env::temp_dir();
    // `nobody` must be able to reach it.
    if owner.is_some() && !searchable_by_all(&parent) {
        parent = PathBuf::from("/tmp");
    }
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    loop {
        let directory = parent.join(format!(
            "geppetto-postgres-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match fs::create_dir(&directory) {
            Ok(()) => {}
            // Left by an earlier process of the same pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(format!(
                    "PostgreSQL tests: cannot create {}: {e}",
                    directory.display()
                ));
            }
        }
        let private =
            fs::set_permissions(&directory, fs::Permissions::from_mode(0o700)).and_then(|()| {
                match owner {
                    Some((uid, gid)) => std::os::unix::fs::chown(&directory, Some(uid), Some(gid)),
                    None => Ok(()),
                }
            });
        if let Err(e) = private {
            let _ = fs::remove_dir(&directory);
            return Err(format!(
                "PostgreSQL tests: cannot give {} to PostgreSQL's user: {e}",
                directory.display()
            ));
        }
        return Ok(directory);
    }
}

/// Whether every directory from the root down to `path` may be searched
/// (`x`) by any user.
fn searchable_by_all(path: &Path) -> bool {
    path.ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

/// A port free on 127.0.0.1 right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|e| format!("no free port on 127.0.0.1: {e}"))
}

/// What came of a start.
enum Ready {
    Yes,
    /// The postmaster exited (its log says why).
    Exited,
    /// Not ready by the deadline; what `psql` said last.
    TimedOut(String),
}

/// Waits until the server (postmaster `pid`, in `directory`) is ready on
/// `port` and answers `psql` there, or exits, or `until` passes.
///
/// Ready is first read in `postmaster.pid`, as `pg_ctl` does: `psql` is not
/// tried before, so that it never waits on whatever else may hold the port
/// when the server could not take it.
fn wait_ready(psql_path: &Path, directory: &Path, port: u16, pid: u32, until: Instant) -> Ready {
    let mut pauses = crate::Pauses::default();
    loop {
        if !alive(pid) {
            return Ready::Exited;
        }
        let last = match postmaster_status(directory, pid, port) {
            Some(status) if status == "ready" => {
                match psql(psql_path, port, "postgres", "SELECT 1") {
                    Ok(_) => return Ready::Yes,
                    Err(why) => why,
                }
            }
            Some(status) => format!("the server's status is {status:?}"),
            None => "no postmaster.pid of this server and port yet".into(),
        };
        if Instant::now() >= until {
            return Ready::TimedOut(last);
        }
        std::thread::sleep(pauses.next());
    }
}

/// The status line (`starting`, `ready`...) of the data directory's
/// `postmaster.pid`, if it is postmaster `pid`'s, listening on `port`.
fn postmaster_status(directory: &Path, pid: u32, port: u16) -> Option<String> {
    // One line each: pid, data directory, start time, port, socket
    // directory, listen address, shared memory key, status.
    let file = fs::read_to_string(directory.join("data").join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = file.lines().map(str::trim).collect();
    let ours = lines.first()?.parse() == Ok(pid) && lines.get(3)?.parse() == Ok(port);
    ours.then(|| lines.get(7).unwrap_or(&"").to_string())
}

fn psql(psql: &Path, port: u16, database: &str, sql: &str) -> Result<String, String> {
    let mut command = Command::new(psql);
    // Nothing from the environment (PGHOST, PGSERVICE, PGOPTIONS...) in the
    // way.
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            command.env_remove(key);
        }
    }
    let output = command
        .env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
        ])
        .args([
            "-p",
            &port.to_string(),
            "-U",
            USER,
            "-d",
            database,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} cannot run: {e}", psql.display()))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .trim_end()
            .to_owned())
    } else {
        Err(format!(
            "psql -d {database} -c {sql:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Sends `signal` (a name: `STOP`, `KILL`) to `pids`, with the shell's
/// `kill` (there is no `kill` program in every image); a process already
/// gone is no error.
fn signal(signal: &str, pids: &[u32]) {
    let _ = Command::new("sh")
        .args([
            "-c",
            r#"sig=$1; shift; kill -s "$sig" "$@" 2>/dev/null"#,
            "sh",
            signal,
        ])
        .args(pids.iter().map(u32::to_string))
        .status();
}

/// The state and the parent of process `pid`, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold anything, ')' included.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// Whether `pid` runs (a zombie, dead but not yet waited for, does not).
fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| !matches!(state, 'Z' | 'X' | 'x'))
}

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let pid = entry.ok()?.file_name().to_str()?.parse().ok()?;
            (proc_stat(pid)?.1 == parent).then_some(pid)
        })
        .collect()
}

fn log_path(directory: &Path) -> PathBuf {
    directory.join("postgres.log")
}

fn log_len(directory: &Path) -> u64 {
    fs::metadata(log_path(directory)).map_or(0, |meta| meta.len())
}

/// The server's log from byte `offset` on.
fn log_since(directory: &Path, offset: u64) -> String {
    let log = fs::read(log_path(directory)).unwrap_or_default();
    let offset = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
    String::from_utf8_lossy(&log[offset..]).into_owned()
}

/// `what`, followed by the last lines of the server's log.
fn failure(what: &str, directory: &Path) -> String {
    let log = log_since(directory, 0);
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    format!(
        "{what}\n--- last lines of {} ---\n{tail}\n---",
        log_path(directory).display()
    )
}
