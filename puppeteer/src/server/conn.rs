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
//! as tonic's builder had them, but for bounds on streams and headers.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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

use super::limits::Ticket;
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
/// Streams one HTTP/2 connection may have open at once (nginx's default is
/// 128). A client asks, a CLI or a puppet, needs a few; without a bound, one
/// unauthenticated connection opening streams and never finishing them
/// grew the puppeteer by 7 KB per stream, without end.
pub const HTTP2_MAX_STREAMS: u32 = 128;
/// The largest header list a request may carry (h2's default is 16 MiB):
/// ours, a bearer token included, are well under 1 KiB.
pub const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;

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
    /// How long an HTTP/2 (or undetected) connection may stay without a
    /// request in progress before it is closed.
    idle: Duration,
    /// How long a request's body may send nothing while it is read.
    body_idle: Duration,
}

/// The default of [`Http`]'s idle time: a connection that has had no
/// request in progress for this long is closed (an HTTP/1 one after 30 s,
/// by hyper's header-read timeout). A held poll is a request in progress.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

impl Http {
    pub fn new(idle: Duration, body_idle: Duration) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        // With a timer hyper enforces its default header-read timeout (30 s),
        // which also closes an HTTP/1 connection left idle that long.
        http1.timer(TokioTimer::new()).max_buf_size(HTTP1_MAX_BUF);

        // Bounded streams and headers; hyper's own defences against rapid
        // resets (CVE-2023-44487: pending accept resets, local error resets)
        // left at their defaults, not turned off as tonic's builder did.
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST)
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
            .max_concurrent_streams(HTTP2_MAX_STREAMS)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST)
            .adaptive_window(false);
        Http {
            http1,
            http2,
            detect,
            idle,
            body_idle,
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
        let service = ConnService {
            body_idle: self.body_idle,
            ..service
        };
        let ends = Ends {
            shutdown,
            evicted: service.ticket.as_ref().map(|t| t.close.clone()),
            idle: None,
        };
        match protocol {
            Protocol::Http1 => {
                let connection = Box::pin(self.http1.serve_connection(io, service));
                connections.spawn(drive(connection, permit, ends));
            }
            Protocol::Http2 => {
                let (service, idle) = self.watched(service);
                let connection = Box::pin(self.http2.serve_connection(io, service));
                let ends = Ends {
                    idle: Some(idle),
                    ..ends
                };
                connections.spawn(drive(connection, permit, ends));
            }
            Protocol::Detect => {
                let (service, idle) = self.watched(service);
                let connection = self.detect.serve_connection(io, service).into_owned();
                let ends = Ends {
                    idle: Some(idle),
                    ..ends
                };
                connections.spawn(drive(Box::pin(connection), permit, ends));
            }
        }
    }

    /// The service with its requests counted, and the idle timer that
    /// reads the count.
    fn watched<S>(&self, mut service: ConnService<S>) -> (ConnService<S>, IdleTimer) {
        let activity = service
            .activity
            .get_or_insert_with(|| Arc::new(Activity::new()))
            .clone();
        (
            service,
            IdleTimer {
                activity,
                limit: self.idle,
            },
        )
    }
}

/// What ends a connection besides its peer.
struct Ends {
    shutdown: CancellationToken,
    /// Cancelled when the connection is evicted (see [`super::limits`]).
    evicted: Option<CancellationToken>,
    idle: Option<IdleTimer>,
}

/// Drives a connection; at shutdown, lets it finish what it is answering
/// and close. With an idle timer, a connection without a request in
/// progress for its limit is closed the same way (an HTTP/2 client that
/// never sends its preface, or keeps a connection open and silent, holds
/// one of the puppeteer's connection slots for nothing); so is an evicted
/// one.
async fn drive<C>(mut connection: Pin<Box<C>>, _permit: OwnedSemaphorePermit, ends: Ends)
where
    C: GracefulConnection,
    C::Error: Display,
{
    let Ends {
        shutdown,
        evicted,
        idle,
    } = ends;
    let idle_out = async {
        match &idle {
            Some(timer) => timer.expired().await,
            None => std::future::pending().await,
        }
    };
    let evicted = async {
        match &evicted {
            Some(token) => token.cancelled().await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = evicted => {
            tracing::debug!("closing an unauthenticated idle connection to make room");
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
        () = idle_out => {
            tracing::debug!("closing an idle connection");
            connection.as_mut().graceful_shutdown();
            // A peer that does not even read its GOAWAY is dropped.
            match tokio::time::timeout(CLOSE_GRACE, connection.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// How long a connection closed for idleness may take to say goodbye.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What a connection is doing, for its idle timer: its requests in
/// progress, from their call until their answer's body is sent or dropped.
#[derive(Debug)]
pub struct Activity {
    origin: tokio::time::Instant,
    open: AtomicUsize,
    /// Milliseconds from `origin` to the last time `open` fell to zero.
    idle_since: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            origin: tokio::time::Instant::now(),
            open: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        }
    }

    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// Whether the connection has no request in progress.
    pub(super) fn is_idle(&self) -> bool {
        self.open.load(Ordering::SeqCst) == 0
    }

    /// How long the connection has had no request in progress (zero while
    /// it has one).
    fn idle_for(&self) -> Duration {
        if self.open.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_millis(self.idle_since.load(Ordering::SeqCst));
        self.origin.elapsed().saturating_sub(since)
    }
}

/// One request in progress on a watched connection, until dropped.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.origin.elapsed().as_millis() as u64;
        self.0.idle_since.store(now, Ordering::SeqCst);
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Fires when its connection has been without a request for `limit`.
struct IdleTimer {
    activity: Arc<Activity>,
    limit: Duration,
}

impl IdleTimer {
    async fn expired(&self) {
        loop {
            let idle = self.activity.idle_for();
            if idle >= self.limit {
                return;
            }
            // Sleep at most until the limit could be reached, at least a
            // little while a request is in progress.
            let wait = (self.limit - idle).max(Duration::from_secs(1));
            tokio::time::sleep(wait).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request counted as in progress
    /// until it is sent or dropped (a stream of events may last hours).
    pub struct BusyBody {
        #[pin]
        body: Body,
        busy: Busy,
    }
}

impl hyper::body::Body for BusyBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How long by default a request's body may go without a byte while it is
/// read (as nginx's `client_body_timeout`): a client trickling a body, or sending
/// half of one and stopping, does not hold a connection and a task.
pub const BODY_IDLE: Duration = Duration::from_secs(30);

pin_project_lite::pin_project! {
    /// A request's body that fails when no frame comes for its limit
    /// while it is read. The timer exists only while the body is awaited.
    pub struct TimedBody {
        #[pin]
        body: Incoming,
        limit: Duration,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl TimedBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        TimedBody {
            body,
            limit,
            timer: None,
        }
    }
}

/// A body that stopped coming.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the request's body came for {0:?}")]
pub struct BodyStalled(Duration);

impl hyper::body::Body for TimedBody {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.body.poll_frame(cx) {
            Poll::Ready(frame) => {
                // A frame (or the end): the next one has its own limit.
                *this.timer = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = *this.limit;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.timer = None;
                        Poll::Ready(Some(Err(Box::new(BodyStalled(limit)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
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
    /// Requests counted, for the idle timer and for eviction.
    activity: Option<Arc<Activity>>,
    /// The connection's admission, handed to each request (see
    /// [`super::gate`], which proves it).
    ticket: Option<Arc<Ticket>>,
    /// See [`TimedBody`].
    body_idle: Duration,
}

impl<S> ConnService<S> {
    pub fn new(api: S, peer: TcpConnectInfo) -> Self {
        ConnService {
            api,
            peer,
            activity: None,
            ticket: None,
            body_idle: BODY_IDLE,
        }
    }

    /// The service of an admitted connection: its requests counted on the
    /// ticket, which each request carries in its extensions.
    pub fn admitted(mut self, ticket: Ticket) -> Self {
        self.activity = Some(ticket.activity.clone());
        self.ticket = Some(Arc::new(ticket));
        self
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
        let body_idle = self.body_idle;
        let mut request = request.map(|body| Body::new(TimedBody::new(body, body_idle)));
        request.extensions_mut().insert(self.peer.clone());
        if let Some(ticket) = &self.ticket {
            request.extensions_mut().insert(ticket.clone());
        }
        let deadline = grpc_timeout(request.headers());
        let mut api = self.api.clone();
        let answer = match api.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Either::Left(api.call(request)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Either::Right(Box::pin(api.oneshot(request))),
        };
        let busy = self.activity.as_ref().map(Activity::begin);
        match deadline {
            None => Answer::Plain { answer, busy },
            Some(deadline) => Answer::Deadline {
                answer: tokio::time::timeout(deadline, answer),
                busy,
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
        Plain { #[pin] answer: F, busy: Option<Busy> },
        Deadline { #[pin] answer: tokio::time::Timeout<F>, busy: Option<Busy> },
    }
}

impl<F> Future for Answer<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (answered, busy) = match self.project() {
            AnswerProjection::Plain { answer, busy } => (ready!(answer.poll(cx)), busy),
            AnswerProjection::Deadline { answer, busy } => match ready!(answer.poll(cx)) {
                Ok(answered) => (answered, busy),
                // What tonic's server answered (its `TimeoutExpired`).
                Err(_) => (
                    Ok(tonic::Status::cancelled("Timeout expired").into_http()),
                    busy,
                ),
            },
        };
        // On a watched connection the request stays in progress until its
        // answer's body is sent.
        Poll::Ready(match busy.take() {
            Some(busy) => {
                answered.map(|response| response.map(|body| Body::new(BusyBody { body, busy })))
            }
            None => answered,
        })
    }
}

/// The client's deadline, from the `grpc-timeout` header of the gRPC over
/// HTTP/2 spec: at most 8 digits and a unit. Ignored when malformed, as
/// tonic did.
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    crate::api::parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_grpc_timeout;

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

    proptest::proptest! {
        /// Any header value: no panic, and a duration only for the spec's
        /// form (at most 8 digits and a unit), at most 10^8 hours.
        #[test]
        fn any_grpc_timeout_value_is_read_without_panic(value in "[0-9]{0,12}[HMSmun]?|\\PC{0,20}") {
            if let Some(d) = parse_grpc_timeout(&value) {
                proptest::prop_assert!(value.len() <= 9);
                proptest::prop_assert!(d <= Duration::from_secs(99_999_999 * 3600));
            }
        }
    }

    #[tokio::test]
    async fn an_answer_past_the_clients_deadline_is_cancelled() {
        let never = std::future::pending::<Result<Response<Body>, Infallible>>();
        let answer = Answer::Deadline {
            answer: tokio::time::timeout(Duration::from_millis(20), never),
            busy: None,
        };
        let response = answer.await.unwrap();
        let status = tonic::Status::from_header_map(response.headers()).expect("a gRPC status");
        assert_eq!(status.code(), tonic::Code::Cancelled);

        let ready = std::future::ready(Ok(Response::new(Body::empty())));
        let answer = Answer::Deadline {
            answer: tokio::time::timeout(Duration::from_secs(60), ready),
            busy: None,
        };
        let response = answer.await.unwrap();
        assert!(tonic::Status::from_header_map(response.headers()).is_none());
    }

    /// At the default: a connection without a request is closed after a
    /// minute of nothing, counted from its last request's end; a request in
    /// progress (a held poll) keeps it, however long.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_the_default_and_a_busy_one_never() {
        let activity = Arc::new(Activity::new());
        let timer = IdleTimer {
            activity: activity.clone(),
            limit: DEFAULT_IDLE,
        };
        let mut expired = Box::pin(timer.expired());
        let mut check = || {
            matches!(
                expired
                    .as_mut()
                    .poll(&mut Context::from_waker(Waker::noop())),
                Poll::Ready(())
            )
        };
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!check());
        // A request for ten minutes (a held poll), then it ends.
        let busy = activity.begin();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(!check());
        drop(busy);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!check());
        tokio::time::advance(Duration::from_secs(2)).await;
        // The timer sleeps in steps: let it wake and look again.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(check());
    }

    #[test]
    fn the_protocol_comes_from_alpn() {
        assert_eq!(Protocol::from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(Protocol::from_alpn(Some(b"http/1.1")), Protocol::Http1);
        assert_eq!(Protocol::from_alpn(None), Protocol::Detect);
    }
}
