//! The network edge: one port for native gRPC (HTTP/2) and gRPC-web
//! (HTTP/1.1), with TLS negotiating both (ALPN `h2` and `http/1.1`).
//!
//! tonic's own TLS offers only `h2`, which turns away clients and proxies
//! that speak HTTP/1.1 only, so TLS is terminated here with tokio-rustls and
//! the accepted streams are handed to tonic. Handshakes run concurrently and
//! are bounded in time, so a slow or silent client cannot stall the accept
//! loop.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::api::{ArtifactsApi, EventsApi, GroupsApi, NotificationsApi, ResourcesApi, ServerApi};
use crate::api::{
    AuditApi, EnrollTokensApi, JobsApi, MAX_MESSAGE_BYTES, PuppetServiceApi, PuppetsApi, RunsApi,
    Shared, TasksApi, TokensApi, UsersApi,
};
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

type WebRouter =
    Router<Stack<tonic_web::GrpcWebLayer, Stack<crate::metrics::CountBytesLayer, Identity>>>;

async fn router(state: &Shared) -> Result<WebRouter> {
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

    Ok(Server::builder()
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        // Outermost: counts the bytes of bodies as they travel (gRPC-web
        // included) for the metrics.
        .layer(crate::metrics::CountBytesLayer::new(&state.metrics))
        .layer(tonic_web::GrpcWebLayer::new())
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
        .add_service(ServerInfoServer::new(ServerApi::new(state.clone()))))
}

/// Serves the API on `listener` until `shutdown` is cancelled. With `tls`
/// unset the port speaks plain TCP (the insecure mode).
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> Result<()> {
    let router = router(&state).await?;
    let sweeper = crate::api::run_sweeper(state.clone(), shutdown.clone());
    let notifier = crate::notify::run_notifier(state.clone(), shutdown.clone());
    let pruner = crate::api::run_pruner(state.clone(), shutdown.clone());
    let stopped = shutdown.clone();
    let graceful = async move { stopped.cancelled().await };
    let serving = async {
        match tls {
            None => {
                router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), graceful)
                    .await
            }
            Some(tls) => {
                let (tx, rx) = mpsc::channel(256);
                let accepting = accept_tls(listener, TlsAcceptor::from(tls), tx, shutdown.clone());
                let (served, ()) = tokio::join!(
                    router.serve_with_incoming_shutdown(ReceiverStream::new(rx), graceful),
                    accepting
                );
                served
            }
        }
    };
    let serving = async {
        let (served, (), (), ()) = tokio::join!(serving, sweeper, notifier, pruner);
        served
    };
    tokio::pin!(serving);
    tokio::select! {
        result = &mut serving => result?,
        () = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("connections still open after the shutdown grace period; closing them"),
    }
    Ok(())
}

/// An accepted TLS connection, which tells tonic its peer address (so that
/// `Request::remote_addr` works as on plain TCP). It holds its permit of
/// the connection cap ([`connection_cap`]) until it is closed.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().0.connect_info()
    }
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Accepts TCP connections and performs TLS handshakes concurrently, each
/// bounded by [`HANDSHAKE_TIMEOUT`], passing established streams on.
async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    established: mpsc::Sender<std::io::Result<TlsConn>>,
    shutdown: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    let cap = connection_cap(open_file_limit());
    let permits = Arc::new(Semaphore::new(cap));
    tracing::debug!(cap, "connections accepted at most at once");
    loop {
        // At the cap, connections wait in the kernel's backlog: descriptors
        // are kept for the database (sled failed with "Too many open files"
        // when 10,000 puppets' connections took them all).
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                let established = established.clone();
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = established.send(Ok(TlsConn {
                                stream,
                                _permit: permit,
                            })).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    handshakes.shutdown().await;
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
