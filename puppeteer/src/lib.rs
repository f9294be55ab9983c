//! The puppeteer: Geppetto's server.
//!
//! Layers, arrows pointing down (see ARCHITECTURE.md):
//!
//! ```text
//! server (TLS, one port for gRPC and gRPC-web)
//!   -> api (tonic services: auth, validation, proto <-> domain)
//!     -> scheduler (pure decisions from state and time)
//!     -> store (sled: typed trees, transactions, schema version)
//! ```
//!
//! [`start`] is the one entry point shared by `main` and the tests: it
//! prepares the data dir (first-start bootstrap included), binds, and serves
//! until stopped.

pub mod api;
pub mod app;
pub mod artifact;
pub mod backup;
pub mod bandwidth;
pub mod blobs;
pub mod config;
pub mod domain;
pub mod hub;
pub mod ids;
pub mod memory;
pub mod peers;
pub mod pki;
pub mod presence;
pub mod releases;
pub mod retention;
pub mod scheduler;
pub mod selector;
pub mod server;
pub mod store;
pub mod versions;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use server::serve;

use crate::app::{AppConfig, AppState};
use crate::store::Store;

/// A puppeteer serving in this process.
#[derive(Debug)]
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// The CA file clients should trust, when the certificate is ours.
    pub ca_file: Option<PathBuf>,
    /// The file holding the first admin's token.
    pub admin_token_file: PathBuf,
    /// The first admin's token, when this start created it.
    pub new_admin_token: Option<String>,
    /// Whether this start created the local CA and certificate.
    pub created_tls: bool,
    /// The bound address of the metrics listener, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Running {
    /// `https://host:port` (or `http://` in insecure mode) to give clients.
    pub fn url(&self, insecure: bool) -> String {
        let scheme = if insecure { "http" } else { "https" };
        let host = match self.addr.ip() {
            ip if ip.is_unspecified() || ip.is_loopback() => "localhost".to_string(),
            ip => ip.to_string(),
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    /// The first admin's token, read from its file.
    pub fn admin_token(&self) -> Result<String> {
        Ok(std::fs::read_to_string(&self.admin_token_file)?
            .trim()
            .to_string())
    }

    /// Asks the server to stop and waits until it has.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.task.await.context("the server task panicked")?
    }

    /// Waits until the server stops by itself (error) or `shutdown` is cancelled.
    pub async fn wait(self) -> Result<()> {
        self.task.await.context("the server task panicked")?
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Prepares the data dir, binds the listener and starts serving.
pub async fn start(config: Config) -> Result<Running> {
    config.validate()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))?;
    let store = match &config.store {
        config::StoreConfig::Sled => {
            Store::open(&config.data_dir.join("db")).with_context(|| {
                format!("cannot open the database in {}", config.data_dir.display())
            })?
        }
        config::StoreConfig::Postgres {
            url,
            password,
            ca_file,
        } => {
            let (url, password, ca) = (url.clone(), password.clone(), ca_file.clone());
            tokio::task::spawn_blocking(move || {
                use secrecy::ExposeSecret;
                let password = password.as_ref().map(|p| p.expose_secret());
                Store::open_postgres_with(url.expose_secret(), password, ca.as_deref())
            })
            .await
            .context("the database thread failed")?
            .context("cannot open the PostgreSQL store")?
        }
    };

    let (tls, ca_file, created_tls) = if config.insecure_plaintext {
        (None, None, false)
    } else {
        let (files, created) = match &config.tls {
            Some(files) => (files.clone(), false),
            None if store.is_shared() => {
                pki::ensure_cluster_tls(&config.data_dir.join("tls"), &config.server_names, &store)?
            }
            None => pki::ensure_local_tls(&config.data_dir.join("tls"), &config.server_names)?,
        };
        (
            Some(pki::server_tls_config(&files)?),
            files.ca.clone(),
            created,
        )
    };
    let size = api::DataSize::measure(&store, &config.data_dir)?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        data_dir_bytes = size.total(),
        artifact_bytes = size.artifacts,
        log_bytes = store.log_bytes(),
        log_limit = ?config.log_limit,
        retention = %config.retention.describe(),
        "data dir opened"
    );
    let blobs = blobs::Blobs::open(&config.data_dir).with_context(|| {
        format!(
            "cannot create the artifact directory in {}",
            config.data_dir.display()
        )
    })?;
    let new_admin_token = pki::ensure_admin_token(&config.data_dir, &store)?;
    store.flush().await?;

    let listener =
        listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(at) => Some(
            TcpListener::bind(at)
                .await
                .with_context(|| format!("cannot listen for metrics on {at}"))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let shutdown = CancellationToken::new();
    // On a shared store, this node is one of a cluster (app/cluster.rs):
    // it leads while it holds the leader's lease.
    let (node, election) = if store.is_shared() {
        let id = app::cluster::new_node_id();
        let (leading, follows) = tokio::sync::watch::channel(false);
        let election = tokio::spawn(app::cluster::elect(
            store.clone(),
            id.clone(),
            leading,
            shutdown.child_token(),
        ));
        tracing::info!(node = id, "joining the cluster on the shared database");
        let listen = addr.to_string();
        (
            app::cluster::Node::member(id, listen, follows),
            Some(election),
        )
    } else {
        (app::cluster::Node::alone(), None)
    };
    let metrics = app::metrics::Metrics::new();
    let state = Arc::new(AppState {
        store,
        node,
        hub: Default::default(),
        config: AppConfig {
            poll_timeout: config.poll_timeout,
            max_poll_hold: config.max_poll_hold,
            lease_timeout: config.lease(),
            presence: config.presence(),
            event_retention: config.event_retention,
            audit_retention: config.audit_retention,
            notify: config.notify.clone(),
            log_limit: config.log_limit.map(store::LogLimit::halves),
            retention: config.retention.clone(),
            data_dir: config.data_dir.clone(),
            four_eyes: config.approval_four_eyes,
        },
        auth: app::Auth::new(metrics.unauthenticated_calls()),
        presences: Default::default(),
        shutdown: shutdown.child_token(),
        dispatch: Default::default(),
        metrics,
        blobs,
        budgets: Default::default(),
        job_ends: Default::default(),
        fetches: Default::default(),
        served: Default::default(),
    });
    // The metrics listener stops with the server, whether asked to or not.
    let metrics_stop = shutdown.child_token();
    let metrics_task = metrics_listener
        .map(|l| app::metrics::serve_metrics(l, state.clone(), metrics_stop.clone()));
    let settings = server::Settings {
        connection_idle_timeout: config.connection_idle_timeout,
        max_connections_per_address: config.max_connections_per_address,
        max_unauthenticated_per_address: config.max_unauthenticated_per_address,
        max_connections: config.max_connections,
        request_body_timeout: config.request_body_timeout,
        puppet_binary: config.puppet_binary.clone(),
    };
    let serving = serve(listener, state, tls, settings, shutdown.clone());
    let serving = async move {
        let served = serving.await;
        // The lease is given up once nothing is served any more.
        if let Some(election) = election {
            let _ = election.await;
        }
        served
    };
    let task = tokio::spawn(async move {
        match metrics_task {
            None => serving.await,
            Some(metrics_task) => {
                let serving = async {
                    let served = serving.await;
                    metrics_stop.cancel();
                    served
                };
                let (served, metrics_served) = tokio::join!(serving, metrics_task);
                served.and(metrics_served)
            }
        }
    });
    Ok(Running {
        addr,
        ca_file,
        admin_token_file: config.data_dir.join("admin-token"),
        new_admin_token,
        created_tls,
        metrics_addr,
        shutdown,
        task,
    })
}

/// Connections the kernel may hold for the accept loop (capped by
/// `net.core.somaxconn`). A fleet-wide job makes every puppet open its
/// second connection (reports travel beside the held poll) at once:
/// tokio's default of 1,024 dropped thousands of those SYNs, and each
/// puppet then waited for a SYN retransmit or its connect timeout.
const LISTEN_BACKLOG: u32 = 16 * 1024;

/// Binds the API's listener with [`LISTEN_BACKLOG`].
fn listen(at: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if at.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(at)?;
    socket.listen(LISTEN_BACKLOG)
}
