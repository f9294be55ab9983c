//! The PostgreSQL engine: each tree a table, each transaction a
//! `SERIALIZABLE` transaction retried on conflict (see the parent module).
//!
//! Layout: `kv_<tree>(key bytea primary key, value bytea not null)`, one
//! table per tree of the store, and the sequence `geppetto_ids` behind
//! [`Pg::next_id`]. Tables are created when first opened, under a
//! transaction-scoped advisory lock so that nodes starting together do not
//! race on the catalog.
//!
//! Calls: the store's interface is synchronous (sled's is), so the client
//! futures of `tokio-postgres` are driven to completion on the calling
//! thread (`futures_executor::block_on`), while each connection's socket is
//! served by a small runtime of the engine's own, on its own thread. A
//! store call therefore blocks its thread for its round trips, as a sled
//! call blocks it for the disk; the rules of `app/blocking.rs` say which
//! calls may do that on the async runtime.
//!
//! Connections: a pool of at most [`POOL_SIZE`], opened on demand. A
//! connection that broke (the database restarted, the network cut) is
//! dropped when it is handed back and a new one is opened on the next
//! call; meanwhile calls fail with [`StoreError::Unreachable`], which
//! callers see as `Unavailable` and retry. Every connection has TCP
//! keepalives, a connect timeout and a statement timeout, so a dead
//! database is noticed within a minute, never waited on forever.
//!
//! Retries: a transaction that fails with a serialization failure
//! (SQLSTATE 40001) or a deadlock (40P01), at any statement or at its
//! commit, is rolled back and run again from the start, after a short
//! random pause that grows with each attempt; after [`MAX_ATTEMPTS`] it
//! gives up with [`StoreError::Stale`]. Its closure therefore must not
//! have effects outside the transaction (the same rule as sled's).

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Bytes, TxError, TxResult};
use crate::store::{Result, StoreError};

/// Connections one process keeps open at most.
pub(crate) const POOL_SIZE: usize = 16;

/// Attempts of one transaction before it gives up under contention.
const MAX_ATTEMPTS: u32 = 100;

/// How long a call waits for a free connection of the pool.
const POOL_PATIENCE: Duration = Duration::from_secs(30);

/// Rows read per round trip of a scan, at first and at most: a scan that
/// stops after a few records fetches few; a long one fetches in bulk.
const SCAN_FIRST: i64 = 16;
const SCAN_MOST: i64 = 1024;

/// The lock key under which tables are created (any constant: "geppetto").
const DDL_LOCK: i64 = 0x6765_7070_6574_746f;

/// The engine: a pool of connections to one database.
pub(crate) struct Pg {
    config: tokio_postgres::Config,
    /// TLS to the database, when its `sslmode` asks for it (`prefer`, the
    /// default, uses it if the server offers it; `require` refuses plain
    /// TCP). Certificates are checked against the store's CA file if given,
    /// else the public web roots.
    tls: MakeRustlsConnect,
    /// Serves the connections' sockets; stops when the engine is dropped.
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    /// Open connections, idle or lent.
    open: usize,
}

struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl std::fmt::Debug for Pg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pg").finish_non_exhaustive()
    }
}

fn error(e: tokio_postgres::Error) -> StoreError {
    // The causes too: "error performing TLS handshake" alone does not say
    // that the certificate was refused.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    if e.is_closed() || e.as_db_error().is_none() && e.code().is_none() {
        StoreError::Unreachable(text)
    } else {
        StoreError::Postgres(text)
    }
}

fn retryable(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn tx_error(e: tokio_postgres::Error) -> TxError {
    if retryable(&e) {
        TxError::Conflict
    } else {
        TxError::Storage(error(e))
    }
}

impl Pg {
    /// Connects to the database at `url` (a libpq-style URL or key=value
    /// string), checking that it answers.
    pub(crate) fn connect(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Arc<Pg>> {
        let tls = tls(ca_file)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Postgres(format!("the store URL is not valid: {e}")))?;
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("geppetto-puppeteer");
        let (ready, handle) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("postgres-io".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let _ = ready.send(Ok(runtime.handle().clone()));
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(StoreError::Files)?;
        let runtime = handle
            .recv()
            .map_err(|_| StoreError::Postgres("the database thread did not start".into()))?
            .map_err(StoreError::Files)?;
        let pg = Arc::new(Pg {
            config,
            tls,
            runtime,
            _stop: stop,
            pool: Mutex::new(Pool::default()),
            freed: Condvar::new(),
        });
        let mut conn = pg.lease()?;
        conn.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({DDL_LOCK}); \
             CREATE SEQUENCE IF NOT EXISTS geppetto_ids; COMMIT"
        ))?;
        drop(conn);
        Ok(pg)
    }

    /// Opens one connection, on the engine's runtime.
    fn open(&self) -> Result<Conn> {
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let (done, result) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let connected = match config.connect(tls).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::warn!("database connection closed: {e}");
                        }
                    });
                    Ok(client)
                }
                Err(e) => Err(e),
            };
            let _ = done.send(connected);
        });
        let client = result
            .recv()
            .map_err(|_| StoreError::Unreachable("the database thread stopped".into()))?
            .map_err(error)?;
        // A statement that hangs (a lock never granted, a database gone
        // quiet) ends in an error rather than holding its caller forever.
        futures_executor::block_on(client.batch_execute(
            "SET statement_timeout = '60s'; SET idle_in_transaction_session_timeout = '60s'; \
             SET lock_timeout = '30s'",
        ))
        .map_err(error)?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// A connection of the pool, for as long as the lease is held.
    fn lease(&self) -> Result<Lease<'_>> {
        let deadline = std::time::Instant::now() + POOL_PATIENCE;
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(conn) = pool.idle.pop() {
                if conn.client.is_closed() {
                    // Broke while idle (the database restarted): replaced.
                    pool.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    pg: self,
                    conn: Some(conn),
                });
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                drop(pool);
                return match self.open() {
                    Ok(conn) => Ok(Lease {
                        pg: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.forget_one();
                        Err(e)
                    }
                };
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Unreachable(format!(
                    "all {POOL_SIZE} database connections stayed busy for {}s",
                    POOL_PATIENCE.as_secs()
                )));
            }
            pool = self
                .freed
                .wait_timeout(pool, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn forget_one(&self) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.open -= 1;
        self.freed.notify_one();
    }

    /// The table of a tree, created if it does not exist yet.
    pub(crate) fn table(self: &Arc<Self>, tree: &'static str) -> Result<Table> {
        assert!(
            tree.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "tree names are plain identifiers"
        );
        let name = format!("kv_{tree}");
        let mut conn = self.lease()?;
        conn.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({DDL_LOCK}); \
             CREATE TABLE IF NOT EXISTS {name} (key bytea PRIMARY KEY, value bytea NOT NULL); \
             COMMIT"
        ))?;
        Ok(Table {
            pg: self.clone(),
            sql: Arc::new(Sql::new(&name)),
        })
    }

    /// Sends `messages` to every listener of `channel` (this process's
    /// included), in one statement.
    pub(crate) fn notify(&self, channel: &str, messages: &[String]) -> Result<()> {
        let mut conn = self.lease()?;
        conn.query(
            "SELECT pg_notify($1, m) FROM unnest($2::text[]) AS m",
            &[&channel, &messages],
        )?;
        Ok(())
    }

    /// Listens on `channel` on a connection of its own (pooled connections
    /// never see notifications), reconnecting after a failure with a
    /// pause; [`Heard::Missed`] after each reconnection, since whatever
    /// was sent meanwhile is lost. Stops when the receiver is dropped.
    pub(crate) fn listen(&self, channel: &str) -> tokio::sync::mpsc::UnboundedReceiver<Heard> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let channel = channel.to_string();
        self.runtime.spawn(async move {
            let mut first = true;
            while !tx.is_closed() {
                match listen_once(&config, tls.clone(), &channel, &tx, first).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = %e, "database notifications interrupted; reconnecting"),
                }
                first = false;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }

    /// Milliseconds since the epoch on the database's clock: one clock for
    /// every node of a cluster.
    pub(crate) fn now_ms(&self) -> Result<i64> {
        let mut conn = self.lease()?;
        let row = conn.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        Ok(row.get(0))
    }

    /// `HOST:PORT/DB` of the database (no user, no password).
    pub(crate) fn describe(&self) -> String {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let db = self.config.get_dbname().unwrap_or("");
        format!("{host}:{port}/{db}")
    }

    pub(crate) fn advance_ids_past(&self, id: u64) -> Result<()> {
        let mut conn = self.lease()?;
        conn.query(
            "SELECT setval('geppetto_ids', GREATEST($1, (SELECT last_value FROM geppetto_ids)))",
            &[&(id as i64)],
        )?;
        Ok(())
    }

    pub(crate) fn next_id(&self) -> Result<u64> {
        let mut conn = self.lease()?;
        let row = conn.query_one("SELECT nextval('geppetto_ids')", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    pub(crate) fn size(&self) -> Result<u64> {
        let mut conn = self.lease()?;
        let row = conn.query_one("SELECT pg_database_size(current_database())", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

/// The TLS client for database connections: trusting `ca_file`'s
/// certificates if given, else the public web roots.
fn tls(ca_file: Option<&std::path::Path>) -> Result<MakeRustlsConnect> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    StoreError::Postgres(format!(
                        "cannot read the database's CA file {}: {e}",
                        path.display()
                    ))
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Postgres(format!(
                    "no certificate in the database's CA file {}",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Postgres(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// What a listener hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    Message(String),
    /// The listening connection broke and was opened again: messages sent
    /// in between are lost.
    Missed,
}

/// How often the listening connection proves it is alive (a half-open TCP
/// connection would otherwise stay silent for as long as the keepalives
/// take).
const LISTEN_PING: Duration = Duration::from_secs(5);

/// One listening connection, until it fails (`Ok`: the receiver is gone).
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustlsConnect,
    channel: &str,
    tx: &tokio::sync::mpsc::UnboundedSender<Heard>,
    first: bool,
) -> std::result::Result<(), String> {
    use futures_util::StreamExt;
    let (client, mut connection) = config.connect(tls).await.map_err(|e| e.to_string())?;
    let (messages_tx, mut messages) = tokio::sync::mpsc::unbounded_channel();
    let pump = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if messages_tx.send(Ok(n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = messages_tx.send(Err(e));
                    return;
                }
            }
        }
    });
    let _stop_pump = AbortOnDrop(pump);
    let quoted = channel.replace('"', "");
    client
        .batch_execute(&format!("LISTEN \"{quoted}\""))
        .await
        .map_err(|e| e.to_string())?;
    if !first {
        // Listening again: what was sent while we were not is lost.
        let _ = tx.send(Heard::Missed);
    }
    let mut ping = tokio::time::interval(LISTEN_PING);
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Some(Ok(payload)) => {
                    if tx.send(Heard::Message(payload)).is_err() {
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("the listening connection closed".into()),
            },
            _ = ping.tick() => {
                if tx.is_closed() {
                    return Ok(());
                }
                match tokio::time::timeout(LISTEN_PING, client.batch_execute("SELECT 1")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer to a ping in {}s", LISTEN_PING.as_secs())),
                }
            }
        }
    }
}

/// A session advisory lock, held until dropped (or until its connection
/// dies, when PostgreSQL lets it go).
pub(crate) struct AdvisoryLock<'p> {
    lease: Lease<'p>,
    key: i64,
}

impl Pg {
    /// Waits for the cluster-wide lock `key` (at most the statement
    /// timeout).
    pub(crate) fn advisory_lock(&self, key: i64) -> Result<AdvisoryLock<'_>> {
        let mut lease = self.lease()?;
        lease.query("SELECT pg_advisory_lock($1)", &[&key])?;
        Ok(AdvisoryLock { lease, key })
    }
}

impl Drop for AdvisoryLock<'_> {
    fn drop(&mut self) {
        if self.lease.conn.is_none() {
            // Its connection is gone, and the lock with it.
            return;
        }
        if self
            .lease
            .query("SELECT pg_advisory_unlock($1)", &[&self.key])
            .is_err()
        {
            // Unknown state: close the connection, which lets the lock go.
            self.lease.conn = None;
            self.lease.pg.forget_one();
        }
    }
}

/// Stops a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection lent by the pool; handed back when dropped (or closed, if
/// it broke).
struct Lease<'p> {
    pg: &'p Pg,
    conn: Option<Conn>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("a lease holds its connection")
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        futures_executor::block_on(self.conn().client.batch_execute(sql)).map_err(error)
    }

    fn statement(&mut self, sql: &str) -> std::result::Result<Statement, tokio_postgres::Error> {
        let conn = self.conn();
        if let Some(statement) = conn.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = futures_executor::block_on(conn.client.prepare(sql))?;
        conn.statements.insert(sql.to_string(), statement.clone());
        Ok(statement)
    }

    fn try_query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.statement(sql)?;
        futures_executor::block_on(self.conn().client.query(&statement, params))
    }

    /// A statement on its own (no transaction around it); once more on a
    /// new connection if this one turned out broken (a database restart
    /// leaves every pooled connection so, noticed only at its next use).
    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        if self.conn.is_none() {
            self.reconnect()?;
        }
        match self.try_query(sql, params) {
            Err(e) if e.is_closed() || self.conn().client.is_closed() => {
                self.reconnect()?;
                self.try_query(sql, params).map_err(error)
            }
            other => other.map_err(error),
        }
    }

    /// Replaces a broken connection with a new one (same place in the pool).
    fn reconnect(&mut self) -> Result<()> {
        self.conn = None;
        match self.pg.open() {
            Ok(conn) => {
                self.conn = Some(conn);
                Ok(())
            }
            Err(e) => {
                self.pg.forget_one();
                Err(e)
            }
        }
    }

    fn query_one(
        &mut self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row> {
        self.query(sql, params)?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Postgres(format!("no row from {sql}")))
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if conn.client.is_closed() {
            self.pg.forget_one();
            return;
        }
        let mut pool = self.pg.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.idle.push(conn);
        self.pg.freed.notify_one();
    }
}

/// The statements of one table.
struct Sql {
    get: String,
    insert: String,
    remove: String,
    update_if: String,
    insert_if_absent: String,
    remove_if: String,
    insert_many: String,
    remove_many: String,
    count: String,
    scan: HashMap<(u8, u8, bool), String>,
}

impl Sql {
    fn new(table: &str) -> Sql {
        let mut scan = HashMap::new();
        // Bounds: 0 none, 1 included, 2 excluded.
        for lo in 0..3u8 {
            for hi in 0..3u8 {
                for rev in [false, true] {
                    let mut conditions = Vec::new();
                    match lo {
                        1 => conditions.push("key >= $1"),
                        2 => conditions.push("key > $1"),
                        _ => conditions.push("$1::bytea IS NULL OR TRUE"),
                    }
                    match hi {
                        1 => conditions.push("key <= $2"),
                        2 => conditions.push("key < $2"),
                        _ => conditions.push("$2::bytea IS NULL OR TRUE"),
                    }
                    let order = if rev { "DESC" } else { "ASC" };
                    scan.insert(
                        (lo, hi, rev),
                        format!(
                            "SELECT key, value FROM {table} WHERE ({}) AND ({}) \
                             ORDER BY key {order} LIMIT $3",
                            conditions[0], conditions[1]
                        ),
                    );
                }
            }
        }
        Sql {
            get: format!("SELECT value FROM {table} WHERE key = $1"),
            insert: format!(
                "WITH old AS (SELECT value FROM {table} WHERE key = $1) \
                 INSERT INTO {table} (key, value) VALUES ($1, $2) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value \
                 RETURNING (SELECT value FROM old)"
            ),
            remove: format!("DELETE FROM {table} WHERE key = $1 RETURNING value"),
            update_if: format!("UPDATE {table} SET value = $3 WHERE key = $1 AND value = $2"),
            insert_if_absent: format!(
                "INSERT INTO {table} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING"
            ),
            remove_if: format!("DELETE FROM {table} WHERE key = $1 AND value = $2"),
            insert_many: format!(
                "INSERT INTO {table} (key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            ),
            remove_many: format!("DELETE FROM {table} WHERE key = ANY($1::bytea[])"),
            count: format!("SELECT count(*) FROM {table}"),
            scan,
        }
    }
}

fn bytes(row: &tokio_postgres::Row, i: usize) -> Bytes {
    Bytes::from(row.get::<_, &[u8]>(i))
}

fn maybe_bytes(rows: &[tokio_postgres::Row]) -> Option<Bytes> {
    rows.first()
        .and_then(|r| r.get::<_, Option<&[u8]>>(0))
        .map(Bytes::from)
}

/// One tree's table.
#[derive(Clone)]
pub(crate) struct Table {
    pg: Arc<Pg>,
    sql: Arc<Sql>,
}

impl Table {
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let rows = self.pg.lease()?.query(&self.sql.get, &[&key])?;
        Ok(maybe_bytes(&rows))
    }

    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> Result<Option<Bytes>> {
        let rows = self.pg.lease()?.query(&self.sql.insert, &[&key, &value])?;
        Ok(maybe_bytes(&rows))
    }

    pub(crate) fn remove(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let rows = self.pg.lease()?.query(&self.sql.remove, &[&key])?;
        Ok(maybe_bytes(&rows))
    }

    pub(crate) fn compare_and_swap(
        &self,
        key: &[u8],
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let mut conn = self.pg.lease()?;
        let statement = |conn: &mut Lease<'_>,
                         sql: &str,
                         params: &[&(dyn tokio_postgres::types::ToSql + Sync)]|
         -> Result<u64> {
            let statement = conn.statement(sql).map_err(error)?;
            futures_executor::block_on(conn.conn().client.execute(&statement, params))
                .map_err(error)
        };
        let changed = match (old, new) {
            (Some(old), Some(new)) => {
                statement(&mut conn, &self.sql.update_if, &[&key, &old, &new])?
            }
            (None, Some(new)) => statement(&mut conn, &self.sql.insert_if_absent, &[&key, &new])?,
            (Some(old), None) => statement(&mut conn, &self.sql.remove_if, &[&key, &old])?,
            (None, None) => u64::from(conn.query(&self.sql.get, &[&key])?.is_empty()),
        };
        Ok(changed == 1)
    }

    /// The batch's writes in one transaction of two statements (the last
    /// write of a key wins, as in sled's batches).
    pub(crate) fn apply_batch(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<()> {
        let last: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            writes.into_iter().collect();
        let (mut keys, mut values, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (key, value) in last {
            match value {
                Some(v) => {
                    keys.push(key);
                    values.push(v);
                }
                None => gone.push(key),
            }
        }
        transaction(&[self], |tx| {
            if !keys.is_empty() {
                tx.query(&self.sql.insert_many, &[&keys, &values])?;
            }
            if !gone.is_empty() {
                tx.query(&self.sql.remove_many, &[&gone])?;
            }
            Ok(())
        })
    }

    pub(crate) fn len(&self) -> Result<usize> {
        let row = self.pg.lease()?.query_one(&self.sql.count, &[])?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    pub(crate) fn scan(&self, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Scan {
        Scan {
            table: self.clone(),
            lo,
            hi,
            rev: false,
            batch: SCAN_FIRST,
            buffered: VecDeque::new(),
            done: false,
        }
    }
}

/// A range of one table, read a batch at a time (each batch its own
/// statement: like a sled iterator, not one snapshot).
pub(crate) struct Scan {
    table: Table,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    rev: bool,
    batch: i64,
    buffered: VecDeque<(Bytes, Bytes)>,
    done: bool,
}

fn split(bound: &Bound<Vec<u8>>) -> (u8, Option<&[u8]>) {
    match bound {
        Bound::Unbounded => (0, None),
        Bound::Included(k) => (1, Some(k)),
        Bound::Excluded(k) => (2, Some(k)),
    }
}

impl Scan {
    pub(crate) fn reversed(mut self) -> Scan {
        self.rev = !self.rev;
        self
    }

    fn fetch(&mut self) -> Result<()> {
        let (lo_kind, lo) = split(&self.lo);
        let (hi_kind, hi) = split(&self.hi);
        let sql = &self.table.sql.scan[&(lo_kind, hi_kind, self.rev)];
        let rows = self
            .table
            .pg
            .lease()?
            .query(sql, &[&lo, &hi, &self.batch])?;
        if (rows.len() as i64) < self.batch {
            self.done = true;
        }
        self.batch = (self.batch * 4).min(SCAN_MOST);
        for row in &rows {
            self.buffered.push_back((bytes(row, 0), bytes(row, 1)));
        }
        if let Some((last, _)) = self.buffered.back() {
            let next = Bound::Excluded(last.to_vec());
            if self.rev {
                self.hi = next;
            } else {
                self.lo = next;
            }
        }
        Ok(())
    }

    /// The last record of a scan not yet read from.
    pub(crate) fn next_back(&mut self) -> Option<Result<(Bytes, Bytes)>> {
        debug_assert!(self.buffered.is_empty() && !self.done, "a fresh scan");
        self.rev = !self.rev;
        self.batch = 1;
        let last = self.next();
        self.done = true;
        self.buffered.clear();
        last
    }

    pub(crate) fn next(&mut self) -> Option<Result<(Bytes, Bytes)>> {
        if self.buffered.is_empty()
            && !self.done
            && let Err(e) = self.fetch()
        {
            self.done = true;
            return Some(Err(e));
        }
        self.buffered.pop_front().map(Ok)
    }
}

/// A transaction under way, on one connection.
pub(crate) struct Tx<'p> {
    conn: std::cell::RefCell<Lease<'p>>,
}

impl Tx<'_> {
    pub(crate) fn table<'a>(&'a self, table: &'a Table) -> TxTable<'a> {
        TxTable {
            tx: self,
            sql: &table.sql,
        }
    }

    fn finish(&self, sql: &str) -> std::result::Result<(), tokio_postgres::Error> {
        let mut conn = self.conn.borrow_mut();
        futures_executor::block_on(conn.conn().client.batch_execute(sql))
    }
}

/// Statements inside a transaction (what a [`TxTable`] needs of its [`Tx`]).
trait TxQuery {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> TxResult<Vec<tokio_postgres::Row>>;
}

impl TxQuery for Tx<'_> {
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> TxResult<Vec<tokio_postgres::Row>> {
        self.conn
            .borrow_mut()
            .try_query(sql, params)
            .map_err(tx_error)
    }
}

/// One table inside a transaction.
#[derive(Clone, Copy)]
pub(crate) struct TxTable<'a> {
    tx: &'a dyn TxQuery,
    sql: &'a Sql,
}

impl TxTable<'_> {
    pub(crate) fn get(&self, key: &[u8]) -> TxResult<Option<Bytes>> {
        Ok(maybe_bytes(&self.tx.query(&self.sql.get, &[&key])?))
    }

    pub(crate) fn insert(&self, key: &[u8], value: &[u8]) -> TxResult<Option<Bytes>> {
        Ok(maybe_bytes(
            &self.tx.query(&self.sql.insert, &[&key, &value])?,
        ))
    }

    pub(crate) fn remove(&self, key: &[u8]) -> TxResult<Option<Bytes>> {
        Ok(maybe_bytes(&self.tx.query(&self.sql.remove, &[&key])?))
    }
}

/// Runs `body` in a serializable transaction, again from the start after a
/// conflict (see the module doc).
pub(crate) fn transaction<A>(
    tables: &[&Table],
    body: impl Fn(&Tx<'_>) -> TxResult<A>,
) -> Result<A> {
    let pg = &tables[0].pg;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            let most = 1u64 << attempt.min(6);
            let pause = rand::random_range(0..=most);
            std::thread::sleep(Duration::from_millis(pause));
        }
        let tx = Tx {
            conn: std::cell::RefCell::new(pg.lease()?),
        };
        match tx.finish("BEGIN ISOLATION LEVEL SERIALIZABLE") {
            Ok(()) => {}
            // A pooled connection broken while idle: try a new one.
            Err(e) if e.is_closed() || tx.conn.borrow_mut().conn().client.is_closed() => continue,
            Err(e) => return Err(error(e)),
        }
        match body(&tx) {
            Ok(value) => match tx.finish("COMMIT") {
                Ok(()) => return Ok(value),
                Err(e) if retryable(&e) => continue,
                Err(e) => return Err(error(e)),
            },
            Err(TxError::Conflict) => {
                let _ = tx.finish("ROLLBACK");
            }
            Err(TxError::Abort(e) | TxError::Storage(e)) => {
                let _ = tx.finish("ROLLBACK");
                return Err(e);
            }
        }
    }
    Err(StoreError::Stale(format!(
        "a change met concurrent changes {MAX_ATTEMPTS} times in a row; try again"
    )))
}
