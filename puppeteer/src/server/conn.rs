//! One accepted connection, served by hyper with our own settings.
//!
//! This is what tonic's `serve_with_incoming` did for us, less what we do
//! not use (tracing spans, load shedding, a boxed service per connection),
//! plus the HTTP/1 buffer limit tonic does not expose: puppets hold one
//! HTTP/1.1 connection each, idle most of the time, so the bytes a
//! connection keeps while it waits are what the puppeteer's memory is made
//! of at 10,000 puppets.
//!
//! Kept from tonic, so that the services see no difference: the peer's
//! address in the request extensions ([`TcpConnectInfo`], which
//! `Request::remote_addr` reads), the `grpc-timeout` deadline answered with
//! `Cancelled`, hyper's 30 s HTTP/1 header-read timeout (which closes idle
//! HTTP/1 connections: the puppet's pool counts on it), and HTTP/2 settings
//! equal to those of tonic's builder.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use futures_util::future::Either;
use http::{HeaderMap, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::transport::server::TcpConnectInfo;
use tower::ServiceExt as _;
use tower::util::Oneshot;

/// The most an HTTP/1 connection buffers, reading or writing: hyper's
/// smallest allowed value (its default is about 400 KiB). A read buffer
/// grows up to it and stays there while the connection waits, so this is
/// a floor on every idle connection's memory. Only a request's head must
/// fit (bodies are streamed through), and ours are well under 1 KiB, a
/// bearer token included.
const HTTP1_MAX_BUF: usize = 8 * 1024;

const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP protocol of a connection, from TLS's ALPN when there was one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Unknown (plain TCP, or a TLS client that offered no ALPN): read the
    /// first bytes, the HTTP/2 preface or not.
    Detect,
}

impl Protocol {
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        match alpn {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Detect,
        }
    }
}

/// hyper's connection builders, configured once and shared by all
/// connections.
pub struct Http {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    detect: auto::Builder<TokioExecutor>,
}

impl Http {
    pub fn new() -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // With a timer hyper enforces its default header-read timeout (30 s),
        // which also closes an HTTP/1 connection left idle that long.
        http1.timer(TokioTimer::new()).max_buf_size(HTTP1_MAX_BUF);

        // As tonic's builder configured them (its defaults and ours): no
        // stream limit, no local reset limit, hyper's windows and frames.
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(None)
            .max_local_error_reset_streams(None)
            .adaptive_window(false);

        let mut detect = auto::Builder::new(TokioExecutor::new());
        detect
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(HTTP1_MAX_BUF);
        detect
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(None)
            .max_local_error_reset_streams(None)
            .adaptive_window(false);
        Http {
            http1,
            http2,
            detect,
        }
    }

    /// Serves `io` in a task of its own in `connections`, until the peer
    /// closes it, or until `shutdown` and the requests in flight then have
    /// ended. The task holds `permit` until then.
    ///
    /// Each protocol's connection is boxed on its own: the task then holds
    /// only what its protocol needs (an HTTP/2 connection is several times
    /// the size of an HTTP/1 one), and no second copy of it (an async block
    /// keeps room for the values it captures besides the ones it moves them
    /// into).
    pub fn spawn<IO, S>(
        &self,
        connections: &mut JoinSet<()>,
        io: IO,
        protocol: Protocol,
        service: ConnService<S>,
        permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ApiService,
    {
        let io = TokioIo::new(io);
        match protocol {
            Protocol::Http1 => {
                let connection = Box::pin(self.http1.serve_connection(io, service));
                connections.spawn(drive(connection, permit, shutdown));
            }
            Protocol::Http2 => {
                let connection = Box::pin(self.http2.serve_connection(io, service));
                connections.spawn(drive(connection, permit, shutdown));
            }
            Protocol::Detect => {
                let connection = self.detect.serve_connection(io, service).into_owned();
                connections.spawn(drive(Box::pin(connection), permit, shutdown));
            }
        }
    }
}

/// Drives a connection; at shutdown, lets it finish what it is answering
/// and close.
async fn drive<C>(
    mut connection: Pin<Box<C>>,
    _permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) where
    C: GracefulConnection,
    C::Error: Display,
{
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// What the API's tower service must be to be served here.
pub trait ApiService:
    tower::Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> ApiService for S where
    S: tower::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// The API as one connection's hyper service: it tells each request its
/// peer and enforces the client's `grpc-timeout`.
#[derive(Clone)]
pub struct ConnService<S> {
    api: S,
    peer: TcpConnectInfo,
}

impl<S> ConnService<S> {
    pub fn new(api: S, peer: TcpConnectInfo) -> Self {
        ConnService { api, peer }
    }
}

/// What [`ConnService`] calls: the API's answer, or (for an API not ready
/// at once, which tonic's services always are) the API called once ready.
type Called<S> =
    Either<<S as tower::Service<Request<Body>>>::Future, Pin<Box<Oneshot<S, Request<Body>>>>>;

impl<S: ApiService> hyper::service::Service<Request<Incoming>> for ConnService<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer<Called<S>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(self.peer.clone());
        let deadline = grpc_timeout(request.headers());
        let mut api = self.api.clone();
        let answer = match api.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(api.call(request)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(Box::pin(api.oneshot(request))),
        };
        match deadline {
            None => Answer::Plain { answer },
            Some(deadline) => Answer::Deadline {
                answer: tokio::time::timeout(deadline, answer),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The answer to one request, within the client's deadline if it set
    /// one. Not boxed: hyper keeps it in its own box, for as long as a
    /// poll is held.
    #[project = AnswerProjection]
    pub enum Answer<F> {
        Plain { #[pin] answer: F },
        Deadline { #[pin] answer: tokio::time::Timeout<F> },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            AnswerProjection::Plain { answer } => answer.poll(cx),
            AnswerProjection::Deadline { answer } => match ready!(answer.poll(cx)) {
                Ok(answered) => Poll::Ready(answered),
                // What tonic's server answered (its `TimeoutExpired`).
                Err(_) => Poll::Ready(Ok(tonic::Status::cancelled("Timeout expired").into_http())),
            },
        }
    }
}

/// The client's deadline, from the `grpc-timeout` header of the gRPC over
/// HTTP/2 spec: at most 8 digits and a unit. Ignored when malformed, as
/// tonic did.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` header's value as a duration (see [`grpc_timeout`]).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let digits = value.get(..value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match &value[digits.len()..] {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout_of(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn the_grpc_timeout_header_is_read_as_the_spec_says() {
        assert_eq!(timeout_of("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout_of("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout_of("45S"), Some(Duration::from_secs(45)));
        assert_eq!(timeout_of("44999m"), Some(Duration::from_millis(44_999)));
        assert_eq!(timeout_of("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            timeout_of("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
        for bad in ["", "S", "100000000S", "10s", "-1S", "1.5S", "12"] {
            assert_eq!(timeout_of(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_answer_past_the_clients_deadline_is_cancelled() {
        let never = std::future::pending::<Result<Response<Body>, Infallible>>();
        let answer = Answer::Deadline {
            answer: tokio::time::timeout(Duration::from_millis(20), never),
        };
        let response = answer.await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Cancelled);

        let ready = std::future::ready(Ok(Response::new(Body::empty())));
        let answer = Answer::Deadline {
            answer: tokio::time::timeout(Duration::from_secs(60), ready),
        };
        let response = answer.await.unwrap();
        assert!(tonic::Status::from_header_map(response.headers()).is_none());
    }

    #[test]
    fn the_protocol_comes_from_alpn() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Detect);
    }
}
