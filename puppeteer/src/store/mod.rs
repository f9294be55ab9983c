//! The store: every byte of state the puppeteer keeps, in sled.
//!
//! This is the only module that touches sled. Callers see typed methods over
//! domain types, and a [`StoreError::NotFound`] they can branch on.
//!
//! Trees and keys (names never contain a NUL byte, so `name 0x00 ...` keys
//! scan unambiguously by prefix):
//!
//! | tree           | key                          | value                  |
//! |----------------|------------------------------|------------------------|
//! | `meta`         | `schema_version`             | u32 big-endian         |
//! | `credentials`  | sha256(token), hex           | [`Principal`] (JSON)   |
//! | `puppets`      | name                         | [`Puppet`]             |
//! | `seen`         | puppet name                  | its last poll, ms since the epoch (i64 BE) |
//! | `enroll_tokens`| id                           | [`EnrollToken`]        |
//! | `enroll_secrets`| sha256(secret), hex         | id                     |
//! | `tasks`        | name 0 version(u32 BE)       | [`Task`]               |
//! | `jobs`         | id                           | [`Job`]                |
//! | `job_order`    | seq(u64 BE)                  | job id                 |
//! | `runs`         | id                           | [`Run`]                |
//! | `queue`        | puppet 0 seq(u64 BE)         | run id (unfinished runs only) |
//! | `puppet_runs`  | puppet 0 seq(u64 BE)         | run id (all runs)      |
//! | `logs`         | run id 0 offset(u64 BE)      | output bytes           |
//! | `users`        | name                         | [`User`]               |
//! | `api_tokens`   | id                           | [`ApiToken`]           |
//! | `audit`        | seq(u64 BE)                  | [`AuditEntry`]         |
//! | `resources`    | name                         | [`Resource`]           |
//! | `groups`       | name                         | [`Group`]              |
//! | `events`       | id(u64 BE)                   | [`Event`]              |
//! | `rules`        | id                           | [`NotificationRule`]   |
//! | `deliveries`   | id                           | [`Delivery`] (owed)    |
//! | `resource_usage`| name                        | capacity held, u32 BE  |
//! | `meta`         | `prune_logs` 0 run id        | (log chunks owed for deletion) |
//! | `meta`         | `last_prune`                 | [`PruneReport`]        |
//! | `artifacts`    | name                         | [`Artifact`] (see `artifacts.rs`) |
//! | `uploads`      | upload id                    | [`Upload`]             |
//! | `upload_chunks`| upload id 0 offset(u64 BE)   | bytes (shared store only, see `contents.rs`) |
//! | `contents`     | sha256 0 offset(u64 BE)      | bytes (shared store only) |
//! | `content_sizes`| sha256                       | size, u64 BE (shared store only) |
//! | `job_runs`     | job id 0 position(u64 BE)    | run id: a job's runs, in order |
//! | `job_open`     | job id                       | its unfinished runs, u64 BE |
//!
//! Durability policy:
//! - Every state change is one sled transaction over all the trees it
//!   touches, so a crash never leaves half of it.
//! - Sled writes reach the file on its own background flush (every 500 ms);
//!   that is not enough for an acknowledgement. The api layer calls
//!   [`Store::flush`] after its writes and before it answers anything that
//!   changed state: a puppet's StartRun, AppendLog and FinishRun, a poll
//!   that offers runs, every admin mutation (and its audit entry). What a
//!   caller was told therefore survives `kill -9` of the puppeteer (the data
//!   is in the OS page cache; sled 0.34 does not promise more on power loss).
//! - Group commit: concurrent callers of [`Store::flush`] share one flush
//!   (see `flush.rs`): a caller whose writes are covered by a flush that
//!   started after them returns with it, so N acknowledgements arriving
//!   together cost one or two flushes, not N. BENCHMARKS.md ("Durability")
//!   has the figures.
//! - Reads, held polls that answer nothing, and background bookkeeping
//!   (presence, retention) do not flush: losing them costs nothing a caller
//!   relied on, and the next flush takes them along.

mod artifacts;
pub mod backup;
mod cluster;
mod contents;
mod copies;
mod events;
mod flush;
mod groups;
mod jobs;
mod keys;
pub(crate) mod kv;
mod logs;
mod migrate;
mod notifications;
mod pages;
mod prune;
mod puppets;
mod resources;
mod tasks;
mod users;

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use kv::{Db, Tree};
pub(crate) use kv::{Transactional, TxError, TxResult, TxTree, abort};

pub use cluster::{NodeInfo, NodeLease, SharedTls};
pub use contents::CONTENT_CHUNK;
pub use keys::prefix_of;
pub use kv::pg::Heard;
pub use migrate::TreeCheck;

/// The advisory lock key of [`Store::dispatch_lock`] ("dispatch").
const DISPATCH_LOCK: i64 = 0x6469_7370_6174_6368;

/// The PostgreSQL channel of cross-node wake-ups.
const WAKE_CHANNEL: &str = "geppetto_wake";
pub use logs::{Appended, LogLimit, LogRead};
pub use pages::{Cursor, Page, PageRequest, RunsOf};
pub use prune::{PruneReport, PrunedJob, stored_log_bytes};
pub use puppets::NewPuppet;
pub use resources::ResourceUse;

/// Every tree of the store, by name (what `migrate` copies).
pub(crate) const TREES: [&str; 30] = [
    "meta",
    "credentials",
    "puppets",
    "seen",
    "enroll_tokens",
    "enroll_secrets",
    "tasks",
    "jobs",
    "job_order",
    "runs",
    "queue",
    "puppet_runs",
    "logs",
    "users",
    "api_tokens",
    "audit",
    "resources",
    "resource_usage",
    "groups",
    "events",
    "rules",
    "deliveries",
    "artifacts",
    "uploads",
    "upload_chunks",
    "contents",
    "content_sizes",
    "job_runs",
    "job_open",
    "copies",
];

/// The on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 3;

/// sled's page cache. Its default (1 GiB) would let the cache alone grow the
/// puppeteer far past its memory budget (300 MiB for 10,000 puppets); the
/// hot set (puppets, unfinished runs, their queue) fits in much less, and
/// the kernel's page cache still serves the rest of the file.
const CACHE_CAPACITY: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // A refused id is quoted by its first characters only (`shown`).
    #[error("no {kind} {}", crate::domain::shown(.id))]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {} already exists", crate::domain::shown(.id))]
    AlreadyExists { kind: &'static str, id: String },
    /// The operation does not fit the current state; the message says why.
    #[error("{0}")]
    Conflict(String),
    /// The record changed since the caller read it (a concurrent update):
    /// reading it again and retrying may work.
    #[error("{0}")]
    Stale(String),
    /// A secret presented to the store (an enrollment token's) is unknown
    /// or cannot be used now (revoked, expired, used up): the caller's
    /// credential is refused, whatever the state of the rest.
    #[error("{0}")]
    BadCredential(String),
    #[error(
        "the data dir was written with schema version {found}; this puppeteer reads version {SCHEMA_VERSION}"
    )]
    SchemaMismatch { found: u32 },
    #[error("stored record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("database error: {0}")]
    Sled(#[from] sled::Error),
    #[error("database error: {0}")]
    Postgres(String),
    /// The database cannot be reached now (restarting, network cut): the
    /// call may succeed later.
    #[error("the database is unreachable: {0}")]
    Unreachable(String),
    /// A file beside the database (artifact content, uploads under way)
    /// could not be read or written.
    #[error("file error: {0}")]
    Files(std::io::Error),
    /// Another process holds the database.
    #[error("the database {0} is in use by another process (another puppeteer on this data dir?)")]
    Locked(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("domain records always serialize")
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    })
}

/// The typed handle on the database. Cloning it is cheap.
#[derive(Clone)]
pub struct Store {
    db: Db,
    meta: Tree,
    credentials: Tree,
    puppets: Tree,
    seen: Tree,
    enroll_tokens: Tree,
    enroll_secrets: Tree,
    tasks: Tree,
    jobs: Tree,
    job_order: Tree,
    runs: Tree,
    queue: Tree,
    puppet_runs: Tree,
    logs: Tree,
    users: Tree,
    api_tokens: Tree,
    audit: Tree,
    resources: Tree,
    resource_usage: Tree,
    groups: Tree,
    events: Tree,
    rules: Tree,
    deliveries: Tree,
    log_trim: logs::TrimLock,
    group_commit: std::sync::Arc<flush::GroupCommit>,
    job_cache: std::sync::Arc<jobs::JobCache>,
    puppet_names: std::sync::Arc<puppets::PuppetNames>,
    log_bytes: prune::LogBytes,
    artifacts: Tree,
    uploads: Tree,
    upload_chunks: Tree,
    contents: Tree,
    content_sizes: Tree,
    job_runs: Tree,
    job_open: Tree,
    copies: Tree,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// sled 0.34 guards every database of the process with one global
/// reader-writer lock: transactions take it for writing, reads for reading,
/// and opening a database (and its trees) takes it for reading more than
/// once. A transaction that starts waiting between two of those reads
/// deadlocks both (seen with several puppeteers in one test process, and
/// possible with `backup` or `restore` beside a running store). This gate
/// keeps transactions out while a database is opened: opens take it for
/// writing, transactions for reading (uncontended, it costs nothing).
static OPEN_GATE: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// How long [`Store::open`] waits for a database held by a store still
/// being dropped.
pub(crate) const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Holds the gate while a database and its trees are opened.
pub(crate) fn opening() -> std::sync::RwLockWriteGuard<'static, ()> {
    OPEN_GATE
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Store {
    /// Opens (or creates) the database in `path` and checks its schema version.
    ///
    /// A database still held by a store of this process that is being
    /// dropped (a server stopping while the next one starts, in tests or an
    /// in-process restart) is waited for a few seconds; held by another
    /// process (another puppeteer on the same data dir), it is refused.
    pub fn open(path: &Path) -> Result<Self> {
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            // The gate is let go between attempts: the store being dropped
            // may need a transaction to finish first.
            match Self::open_once(path) {
                Err(e) if backup::is_locked(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) if backup::is_locked(&e) => {
                    return Err(StoreError::Locked(path.display().to_string()));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self> {
        let _opening = opening();
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::LowSpace)
            .cache_capacity(CACHE_CAPACITY)
            .open()?;
        Self::on(Db::Sled(db))
    }

    /// Connects to the PostgreSQL database at `url` (creating the tables a
    /// new database lacks) and checks its schema version. Several
    /// puppeteers may share it: see `kv/mod.rs` for how each rule holds
    /// across them.
    pub fn open_postgres(url: &str) -> Result<Self> {
        Self::open_postgres_with(url, None, None)
    }

    /// [`Store::open_postgres`] with a password kept out of the URL, and
    /// the CA that signed the database's certificate (TLS: `sslmode` in
    /// the URL; without a CA file, the public web roots are trusted).
    pub fn open_postgres_with(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self> {
        Self::on(Db::Pg(kv::pg::Pg::connect(url, password, ca_file)?))
    }

    /// The store on an opened engine.
    fn on(db: Db) -> Result<Self> {
        let tree = |name: &'static str| db.open_tree(name);
        let store = Store {
            meta: tree("meta")?,
            credentials: tree("credentials")?,
            puppets: tree("puppets")?,
            seen: tree("seen")?,
            enroll_tokens: tree("enroll_tokens")?,
            enroll_secrets: tree("enroll_secrets")?,
            tasks: tree("tasks")?,
            jobs: tree("jobs")?,
            job_order: tree("job_order")?,
            runs: tree("runs")?,
            queue: tree("queue")?,
            puppet_runs: tree("puppet_runs")?,
            logs: tree("logs")?,
            users: tree("users")?,
            api_tokens: tree("api_tokens")?,
            audit: tree("audit")?,
            resources: tree("resources")?,
            resource_usage: tree("resource_usage")?,
            groups: tree("groups")?,
            events: tree("events")?,
            rules: tree("rules")?,
            deliveries: tree("deliveries")?,
            log_trim: Default::default(),
            group_commit: Default::default(),
            job_cache: Default::default(),
            puppet_names: Default::default(),
            log_bytes: Default::default(),
            artifacts: tree("artifacts")?,
            uploads: tree("uploads")?,
            upload_chunks: tree("upload_chunks")?,
            contents: tree("contents")?,
            content_sizes: tree("content_sizes")?,
            job_runs: tree("job_runs")?,
            job_open: tree("job_open")?,
            copies: tree("copies")?,
            db,
        };
        store.check_schema()?;
        let counted = prune::count_log_bytes(&store.runs)?;
        store.add_log_bytes(counted as i64);
        Ok(store)
    }

    /// Sends wake-ups to every process on this store (a shared store; a
    /// no-op on sled, where this process is the only one).
    pub fn broadcast(&self, messages: &[String]) -> Result<()> {
        match &self.db {
            Db::Sled(_) => Ok(()),
            Db::Pg(pg) => pg.notify(WAKE_CHANNEL, messages),
        }
    }

    /// What [`Store::broadcast`] sends, as every process hears it (`None`
    /// on sled).
    pub fn listen(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Heard>> {
        match &self.db {
            Db::Sled(_) => None,
            Db::Pg(pg) => Some(pg.listen(WAKE_CHANNEL)),
        }
    }

    /// Holds the dispatch lock of every process on this store (a shared
    /// store; nothing on sled, where the process's own mutex is enough):
    /// a poll's planning and the storing of its offers happen with no other
    /// node planning, so job limits (max-in-flight, rolling order) see
    /// every offer of every node.
    pub(crate) fn dispatch_lock(&self) -> Result<Option<kv::pg::AdvisoryLock<'_>>> {
        match &self.db {
            Db::Sled(_) => Ok(None),
            Db::Pg(pg) => pg.advisory_lock(DISPATCH_LOCK).map(Some),
        }
    }

    /// Milliseconds since the epoch, on one clock for every process on
    /// the store (the database's, when shared).
    pub fn now_ms(&self) -> Result<i64> {
        self.db.now_ms()
    }

    /// What holds the state, for operators: "sled", or "PostgreSQL
    /// HOST:PORT/DB" (never a password).
    pub fn describe(&self) -> String {
        match &self.db {
            Db::Sled(_) => "sled".into(),
            Db::Pg(pg) => format!("PostgreSQL {}", pg.describe()),
        }
    }

    /// Whether other processes may change this store at the same time (a
    /// cluster's shared database): what a process keeps in memory about
    /// the stored records is then only a hint.
    pub fn is_shared(&self) -> bool {
        self.db.is_shared()
    }

    fn check_schema(&self) -> Result<()> {
        match self.meta.get("schema_version")? {
            None => {
                // Another node may be creating the same new database.
                let wrote = self.meta.compare_and_swap(
                    b"schema_version",
                    None,
                    Some(SCHEMA_VERSION.to_be_bytes().as_slice().into()),
                )?;
                self.db.flush_blocking()?;
                if wrote { Ok(()) } else { self.check_schema() }
            }
            Some(v) => {
                let found =
                    u32::from_be_bytes(v.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                        key: "meta/schema_version".into(),
                        reason: "not 4 bytes".into(),
                    })?);
                match found {
                    SCHEMA_VERSION => Ok(()),
                    2 => {
                        jobs::index_runs_of_version_2(self)?;
                        self.meta
                            .insert("schema_version", &SCHEMA_VERSION.to_be_bytes())?;
                        self.db.flush_blocking()?;
                        Ok(())
                    }
                    _ => Err(StoreError::SchemaMismatch { found }),
                }
            }
        }
    }

    /// Makes every write so far durable (up to the OS page cache).
    /// Concurrent callers share flushes (group commit, see the module doc).
    /// The group commit also keeps at most one `flush_async` of this store
    /// in flight, which keeps clear of sled 0.34's deadlock between
    /// concurrent `flush_async` calls (see [`Store::flush_alone`]).
    pub async fn flush(&self) -> Result<()> {
        self.group_commit.flush(|| self.db.flush()).await?;
        Ok(())
    }

    /// One flush of its own, not shared with concurrent callers: only for
    /// measuring what group commit saves. A blocking flush on a blocking
    /// thread rather than `flush_async`: concurrent `flush_async` calls
    /// deadlock in sled 0.34.7 (sled issue 1308; each waits, on a thread of
    /// sled's own pool, for a log write queued behind it on that pool),
    /// which is what stalled the durability benchmark with eight writers.
    pub async fn flush_alone(&self) -> Result<()> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush_blocking())
            .await
            .map_err(|e| sled::Error::ReportableBug(format!("the flush thread failed: {e}")))?
    }

    /// How many flushes [`Store::flush`] has run so far.
    pub fn flushes(&self) -> u64 {
        self.group_commit.flushes()
    }

    /// A fresh number, increasing across restarts.
    pub fn next_seq(&self) -> Result<u64> {
        self.db.generate_id()
    }

    pub fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk()
    }
}

/// Bytes of the regular files under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A job and a run to build test cases from (fields overridden as needed).
    pub(crate) use super::logs::tests::{job, run};

    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        (dir, store)
    }

    /// What keeps a test's store alive, and names its engine.
    #[derive(Debug)]
    pub enum Engine {
        /// Held for the store's files to outlive the test body.
        Sled(#[allow(dead_code)] tempfile::TempDir),
        Postgres,
    }

    /// A fresh store on each engine, for one test body run on both: sled
    /// always; PostgreSQL when the test process can start one (see
    /// `geppetto_test_support::postgres`: skipped loudly without it,
    /// required in CI). Each is announced on stdout, so a failure's
    /// captured output says which engine failed.
    pub fn stores() -> impl Iterator<Item = (Engine, Store)> {
        let (dir, sled) = temp_store();
        let mut stores = vec![(Engine::Sled(dir), sled)];
        if let Some(server) = geppetto_test_support::postgres::server() {
            let url = server.fresh_database();
            stores.push((Engine::Postgres, Store::open_postgres(&url).unwrap()));
        }
        stores
            .into_iter()
            .inspect(|(engine, _)| println!("engine: {engine:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_version_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store
                .meta
                .insert("schema_version", &99u32.to_be_bytes())
                .unwrap();
            store.db.flush_blocking().unwrap();
        }
        match Store::open(&path) {
            Err(StoreError::SchemaMismatch { found: 99 }) => {}
            other => panic!("expected a schema mismatch, got {other:?}"),
        }
    }
}
