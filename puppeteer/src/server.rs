//! The network edge: one port for native gRPC (HTTP/2) and gRPC-web
//! (HTTP/1.1), with TLS negotiating both (ALPN `h2` and `http/1.1`).
//!
//! tonic's own TLS offers only `h2`, which turns away clients and proxies
//! that speak HTTP/1.1 only, so TLS is terminated here with tokio-rustls.
//! The connections are then served with hyper directly rather than by
//! tonic's server, which does not expose hyper's HTTP/1 buffer settings:
//! each idle puppet holds a connection, and its buffers are most of the
//! puppeteer's memory with thousands of puppets (see [`conn`]). Calls are
//! routed to tonic's generated services by [`Routes`], lighter than
//! tonic's own for a held call.
//!
//! Each TLS handshake and each connection is a task owned by the accept
//! loop; handshakes are bounded in time, so a slow or silent client holds
//! nothing but its own task. Connections are capped below the
//! open-file limit ([`connection_cap`]); at the cap, new ones wait in the
//! kernel's backlog. At shutdown the listener closes at once and each
//! connection finishes the requests it is answering.

mod conn;
mod gate;
pub mod install;
pub mod limits;
pub use conn::{BODY_IDLE, DEFAULT_IDLE, HTTP2_MAX_HEADER_LIST, HTTP2_MAX_STREAMS};
pub use limits::{DEFAULT_UNPROVEN_PER_ADDRESS, default_per_address};
mod poll_route;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use geppetto_proto::v1::enroll_tokens_server::EnrollTokensServer;
use geppetto_proto::v1::jobs_server::JobsServer;
use geppetto_proto::v1::puppet_service_server::PuppetServiceServer;
use geppetto_proto::v1::puppets_server::PuppetsServer;
use geppetto_proto::v1::runs_server::RunsServer;
use geppetto_proto::v1::tasks_server::TasksServer;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::Connected as _;
use tonic_web::{GrpcWebLayer, GrpcWebService};

use self::conn::{ConnService, Http, Protocol};
use self::poll_route::PollRoute;
use self::routes::Routes;
use crate::api::{ArtifactsApi, EventsApi, GroupsApi, NotificationsApi, ResourcesApi, ServerApi};
use crate::api::{
    AuditApi, EnrollTokensApi, JobsApi, MAX_MESSAGE_BYTES, PuppetServiceApi, PuppetsApi, RunsApi,
    Shared, TasksApi, TokensApi, UsersApi,
};
use crate::app::metrics::{CountBytes, CountBytesLayer};
use geppetto_proto::v1::artifacts_server::ArtifactsServer;
use geppetto_proto::v1::audit_server::AuditServer;
use geppetto_proto::v1::events_server::EventsServer;
use geppetto_proto::v1::groups_server::GroupsServer;
use geppetto_proto::v1::notifications_server::NotificationsServer;
use geppetto_proto::v1::resources_server::ResourcesServer;
use geppetto_proto::v1::server_server::ServerServer as ServerInfoServer;
use geppetto_proto::v1::tokens_server::TokensServer;
use geppetto_proto::v1::users_server::UsersServer;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown is asked, connections get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Every service of the API behind one tower service: the byte counting
/// outermost (it counts bodies as they travel, gRPC-web included), then
/// the gRPC-web translation, then tonic's routes.
type Api = CountBytes<GrpcWebService<gate::Gate<Routes>>>;

async fn api(state: &Shared, puppet_binary: Option<std::path::PathBuf>) -> Result<Api> {
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(geppetto_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(geppetto_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PuppetServiceServer<PuppetServiceApi>>()
        .await;
    health_reporter.set_serving::<JobsServer<JobsApi>>().await;

    let binary = puppet_binary.or_else(install::PuppetBuild::beside_me);
    let routes = Routes::default()
        .add_prefix(
            install::PREFIX,
            install::InstallRoute::new(state.clone(), binary),
        )
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            // gzip both ways: puppets compress their log chunks; answers
            // are compressed only for a client that says it accepts them.
            PuppetServiceServer::new(PuppetServiceApi::new(state.clone()))
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        // The held poll, with less kept per held call (same compression
        // and limit).
        .add_method(
            poll_route::PATH,
            PollRoute::new(PuppetServiceApi::new(state.clone()), MAX_MESSAGE_BYTES),
        )
        .add_service(
            PuppetsServer::new(PuppetsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            EnrollTokensServer::new(EnrollTokensApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            TasksServer::new(TasksApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            JobsServer::new(JobsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            // Logs read by operators, compressed for clients that accept it.
            RunsServer::new(RunsApi::new(state.clone()))
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            UsersServer::new(UsersApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            TokensServer::new(TokensApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ResourcesServer::new(ResourcesApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            NotificationsServer::new(NotificationsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            EventsServer::new(EventsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            GroupsServer::new(GroupsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            AuditServer::new(AuditApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            ArtifactsServer::new(ArtifactsApi::new(state.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(ServerInfoServer::new(ServerApi::new(state.clone())));
    Ok(tower::ServiceBuilder::new()
        .layer(CountBytesLayer::new(&state.metrics))
        .layer(GrpcWebLayer::new())
        .layer(gate::GateLayer::new(state.clone()))
        .service(routes))
}

/// How connections are served and bounded (see `server/limits.rs` and
/// `server/conn.rs`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// An HTTP/2 connection without a request in progress this long is closed.
    pub connection_idle_timeout: Duration,
    /// Connections per source address: all (`None`: the default for the
    /// connection cap), and unproven ones; 0 is no bound.
    pub max_connections_per_address: Option<usize>,
    pub max_unauthenticated_per_address: usize,
    /// Connections open at most at once (`None`: from the open-file limit).
    pub max_connections: Option<usize>,
    /// A request body sending no byte this long fails.
    pub request_body_timeout: Duration,
    /// The puppet binary served to machines being installed (`None`: the
    /// `puppet` beside this executable, if there).
    pub puppet_binary: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            connection_idle_timeout: DEFAULT_IDLE,
            max_connections_per_address: None,
            max_unauthenticated_per_address: DEFAULT_UNPROVEN_PER_ADDRESS,
            max_connections: None,
            request_body_timeout: BODY_IDLE,
            puppet_binary: None,
        }
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled. With `tls`
/// unset the port speaks plain TCP (the insecure mode).
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<()> {
    let api = api(&state, settings.puppet_binary.clone()).await?;
    // The background work, each in its own task: a long sweep or prune
    // never delays accepting connections.
    // In a cluster, the work that must run once runs on the leader only,
    // and the nodes share wake-ups and signs of life (app/cluster.rs).
    use crate::app::cluster::while_leading;
    let background = [
        tokio::spawn(while_leading(
            state.clone(),
            shutdown.clone(),
            crate::app::run_sweeper,
        )),
        tokio::spawn(while_leading(
            state.clone(),
            shutdown.clone(),
            crate::app::notify::run_notifier,
        )),
        tokio::spawn(while_leading(
            state.clone(),
            shutdown.clone(),
            crate::app::run_pruner,
        )),
        tokio::spawn(crate::app::cluster::share_presence(
            state.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(crate::app::cluster::tidy_copies(
            state.clone(),
            shutdown.clone(),
        )),
    ];
    crate::app::cluster::relay(&state, shutdown.clone());
    let cap = settings
        .max_connections
        .unwrap_or_else(|| connection_cap(open_file_limit()));
    let bounds = limits::Bounds {
        per_address: settings
            .max_connections_per_address
            .unwrap_or_else(|| default_per_address(cap)),
        unproven_per_address: settings.max_unauthenticated_per_address,
    };
    tracing::debug!(cap, ?bounds, "connection limits");
    let admissions = limits::Admissions::new(bounds, state.metrics.refused_connections());
    let serving = serve_connections(
        Listening {
            listener,
            cap,
            admissions,
        },
        api,
        tls.map(TlsAcceptor::from),
        Http::new(
            settings.connection_idle_timeout,
            settings.request_body_timeout,
        ),
        shutdown.clone(),
    );
    let serving = async {
        serving.await;
        for task in background {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!(error = %e, "a background task panicked");
            }
        }
    };
    tokio::select! {
        () = serving => {}
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("connections still open after the shutdown grace period; closing them"),
    }
    Ok(())
}

/// The listener and what bounds the connections it accepts.
struct Listening {
    listener: TcpListener,
    /// Connections open at most at once.
    cap: usize,
    admissions: Arc<limits::Admissions>,
}

/// Accepts connections and serves each in its own task until `shutdown`;
/// then closes the listener and waits for the connections to end.
/// Dropping this future ends them all.
async fn serve_connections(
    listening: Listening,
    api: Api,
    tls: Option<TlsAcceptor>,
    http: Http,
    shutdown: CancellationToken,
) {
    let Listening {
        listener,
        cap,
        admissions,
    } = listening;
    let permits = Arc::new(Semaphore::new(cap));
    // Two kinds of tasks: TLS handshakes, which hand their stream back, and
    // connections, each sized for its protocol (see `Http::spawn`). Both
    // are reaped as they end: an ended task keeps its memory until joined.
    type Handshaken = (TlsStream<TcpStream>, OwnedSemaphorePermit, limits::Ticket);
    let mut handshakes: JoinSet<Option<Handshaken>> = JoinSet::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(ended) = connections.join_next(), if !connections.is_empty() => report(ended),
            Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                let Some((tls, permit, ticket)) = done.unwrap_or_else(|e| { report(Err(e)); None }) else {
                    continue;
                };
                let protocol = Protocol::from_alpn(tls.get_ref().1.alpn_protocol());
                let service = ConnService::new(api.clone(), tls.get_ref().0.connect_info())
                    .admitted(ticket);
                http.spawn(&mut connections, tls, protocol, service, permit, shutdown.clone());
            }
            (permit, accepted) = next_connection(&listener, &permits, &admissions) => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Over its source's bounds: closed at once (counted and
                // logged by `admit`).
                let Ok(ticket) = admissions.admit(peer.ip()) else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                match &tls {
                    None => {
                        let service = ConnService::new(api.clone(), tcp.connect_info())
                            .admitted(ticket);
                        let protocol = Protocol::Detect;
                        http.spawn(&mut connections, tcp, protocol, service, permit, shutdown.clone());
                    }
                    Some(acceptor) => {
                        let (acceptor, shutdown) = (acceptor.clone(), shutdown.clone());
                        handshakes.spawn(async move {
                            let tls = handshake(&acceptor, tcp, &shutdown, &ticket.close).await?;
                            Some((tls, permit, ticket))
                        });
                    }
                }
            }
        }
    }
    drop(listener);
    handshakes.shutdown().await;
    while let Some(ended) = connections.join_next().await {
        report(ended);
    }
}

/// The next connection and its permit of the connection cap. At the cap,
/// the oldest unproven connection is evicted to make room (see
/// `limits::Admissions::evict_one`: idle ones first, one at a time), and
/// new connections wait in the kernel's
/// backlog meanwhile: descriptors are kept for the database (sled failed
/// with "Too many open files" when 10,000 puppets' connections took them
/// all).
async fn next_connection(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    admissions: &limits::Admissions,
) -> (
    OwnedSemaphorePermit,
    std::io::Result<(TcpStream, std::net::SocketAddr)>,
) {
    let permit = loop {
        if let Ok(permit) = permits.clone().try_acquire_owned() {
            break permit;
        }
        if admissions.evict_one() {
            tracing::debug!("at the connection cap: evicted an unauthenticated idle connection");
        }
        tokio::select! {
            permit = permits.clone().acquire_owned() => break permit.expect("never closed"),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    (permit, listener.accept().await)
}

/// The TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`], by `shutdown` and
/// by the connection's eviction.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    shutdown: &CancellationToken,
    evicted: &CancellationToken,
) -> Option<TlsStream<TcpStream>> {
    let peer = tcp.peer_addr().ok();
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
    tokio::select! {
        () = shutdown.cancelled() => None,
        () = evicted.cancelled() => None,
        done = handshake => match done {
            Ok(Ok(stream)) => Some(stream),
            Ok(Err(e)) => {
                tracing::debug!(?peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                tracing::debug!(?peer, "TLS handshake timed out");
                None
            }
        },
    }
}

/// A connection's or a handshake's task ends on its own; a panic in it is
/// logged, and costs only that connection.
fn report(ended: Result<(), JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(error = %e, "a connection's task panicked");
    }
}

/// Descriptors kept free of connections, for the database, the data dir
/// and the metrics listener: at least this many, or a sixteenth of the
/// limit.
const RESERVED_DESCRIPTORS: usize = 256;

/// How many connections (TLS handshakes included) may be open at once under
/// an open-file limit of `limit` (`None`: unknown, no cap).
pub fn connection_cap(limit: Option<u64>) -> usize {
    match limit {
        Some(limit) => {
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let reserve = RESERVED_DESCRIPTORS.max(limit / 16);
            limit.saturating_sub(reserve).max(16)
        }
        None => Semaphore::MAX_PERMITS,
    }
}

/// The process's soft open-file limit, from `/proc/self/limits` (Linux).
fn open_file_limit() -> Option<u64> {
    parse_open_file_limit(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_descriptors_for_the_database() {
        assert_eq!(connection_cap(Some(20_000)), 18_750);
        assert_eq!(connection_cap(Some(1_024)), 768);
        assert_eq!(connection_cap(Some(100)), 16);
        assert_eq!(connection_cap(None), Semaphore::MAX_PERMITS);
    }

    #[test]
    fn the_soft_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             95432                95432                processes \n\
                      Max open files            20000                65536                files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(20_000));
        assert_eq!(
            parse_open_file_limit("Max open files  unlimited unlimited files"),
            None
        );
        assert_eq!(parse_open_file_limit(""), None);
    }
}
