//! The HTTP/1.1 connections of a gRPC-web [`crate::client::Channel`].
//!
//! Why not hyper-util's legacy pool, which the channel used before: when a
//! request finds no idle connection there, the pool starts a new connection
//! at once and races it against waiting for a busy one to come back
//! (`one_connection_for` in hyper-util's `client/legacy/client.rs`). A
//! long-poll's answer reaches the caller a moment before its connection is
//! back in that pool (it goes back only once hyper's connection task has
//! finished the exchange and a task spawned by the pool has seen it ready),
//! and a puppet sends its next poll at once. The busy connection came back
//! first and carried the poll, while the new one finished its TCP and TLS
//! handshakes for nothing and sat idle until the pool's timeout: a new
//! connection per answered poll, a sixth of an idle puppeteer's CPU at ten
//! thousand puppets.
//!
//! Here a connection goes back to the idle list the moment its response
//! body ends or is dropped, before it is ready for the next request; a
//! request takes the last connection that went back and waits for it to be
//! ready (the connection task finishing the previous exchange: a few
//! microseconds). A new connection is opened only when none is idle, so an
//! idle puppet keeps one connection for as long as the path keeps it, and
//! each concurrent call (a held poll beside a run's reports) has its own, as
//! HTTP/1.1 requires.
//!
//! A connection that cannot be reused shows it: hyper closes it if a body
//! was dropped with more of it still to come, if a call was dropped before
//! its answer, or when the puppeteer closes it. Waiting for it then fails,
//! and the request takes the next idle connection or a new one.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::Connection;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// At most this many idle connections are kept per channel; more come only
/// from bursts of concurrent calls, and the puppeteer would close them anyway.
const MAX_IDLE: usize = 8;

/// How long a request waits for an idle connection to be ready before it
/// opens another. Readiness normally takes microseconds (the connection task
/// finishing the previous exchange); only a previous request body still
/// being written could take longer.
const READY_GRACE: Duration = Duration::from_secs(5);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// No connection could be made (TCP, proxy tunnel or TLS). The text is
    /// the one hyper-util's client used, which callers look for.
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    /// The connection failed while the request was sent or answered.
    #[error("client error (SendRequest)")]
    SendRequest(#[source] hyper::Error),
    /// The request's URI has no authority to send it to.
    #[error("the request URI has no host")]
    NoHost,
}

/// HTTP/1.1 requests over connections made by `C`, reused one at a time.
pub struct Http1Client<C, B> {
    shared: Arc<Shared<C, B>>,
}

impl<C, B> Clone for Http1Client<C, B> {
    fn clone(&self) -> Self {
        Http1Client {
            shared: self.shared.clone(),
        }
    }
}

impl<C, B> fmt::Debug for Http1Client<C, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http1Client").finish_non_exhaustive()
    }
}

struct Shared<C, B> {
    connector: C,
    /// A connection idle longer than this is not reused (the puppeteer
    /// closes idle connections after 30 s: reusing one it is closing would
    /// fail the request).
    idle_timeout: Duration,
    // A std mutex: held only to push or pop a connection, never across an
    // await.
    /// Connections whose last response ended, the most recent last.
    idle: Mutex<Vec<Idle<B>>>,
}

struct Idle<B> {
    sender: SendRequest<B>,
    since: Instant,
}

impl<C, B> Http1Client<C, B> {
    pub fn new(connector: C, idle_timeout: Duration) -> Self {
        Http1Client {
            shared: Arc::new(Shared {
                connector,
                idle_timeout,
                idle: Mutex::new(Vec::new()),
            }),
        }
    }

    /// How many connections are idle now (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared.lock().len()
    }
}

impl<C, B> Shared<C, B> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle<B>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection that went back last, unless it is closed or too old;
    /// older ones that are are dropped on the way.
    fn pop_idle(&self) -> Option<SendRequest<B>> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Takes back a connection whose response ended (or was dropped).
    fn give_back(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let timeout = self.idle_timeout;
        idle.retain(|entry| !entry.sender.is_closed() && entry.since.elapsed() < timeout);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}

impl<C, B> Service<Request<B>> for Http1Client<C, B>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<ReturningBody<B>>;
    type Error = Http1Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<ReturningBody<B>>, Http1Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(send(self.shared.clone(), request))
    }
}

/// Sends `request` on a reused connection, or on a new one if none is idle.
async fn send<C, B>(
    shared: Arc<Shared<C, B>>,
    mut request: Request<B>,
) -> Result<Response<ReturningBody<B>>, Http1Error>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let authority = request
        .uri()
        .authority()
        .cloned()
        .ok_or(Http1Error::NoHost)?;
    let destination = Uri::builder()
        .scheme(
            request
                .uri()
                .scheme()
                .cloned()
                .unwrap_or(http::uri::Scheme::HTTPS),
        )
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|_| Http1Error::NoHost)?;
    to_origin_form(&mut request, &authority);
    loop {
        let (mut sender, reused) = match ready_idle(&shared).await {
            Some(sender) => (sender, true),
            None => (
                connect(&shared.connector, destination.clone()).await?,
                false,
            ),
        };
        match sender.try_send_request(request).await {
            Ok(response) => {
                let pool: Weak<Shared<C, B>> = Arc::downgrade(&shared);
                let pool: Weak<dyn GiveBack<B>> = pool;
                return Ok(response.map(|body| ReturningBody {
                    body,
                    sender: Some(sender),
                    pool,
                }));
            }
            // A reused connection closed before the request went out (the
            // puppeteer closed it meanwhile): nothing was sent, try another.
            Err(mut e) if reused && e.message().is_some() => {
                request = e.take_message().expect("checked");
            }
            Err(e) => return Err(Http1Error::SendRequest(e.into_error())),
        }
    }
}

/// The most recently returned idle connection that becomes ready, if any.
async fn ready_idle<C, B>(shared: &Shared<C, B>) -> Option<SendRequest<B>> {
    while let Some(mut sender) = shared.pop_idle() {
        if let Ok(Ok(())) = tokio::time::timeout(READY_GRACE, sender.ready()).await {
            return Some(sender);
        }
    }
    None
}

/// Opens a connection and starts its task.
async fn connect<C, B>(connector: &C, destination: Uri) -> Result<SendRequest<B>, Http1Error>
where
    C: Service<Uri> + Clone + Send + 'static,
    C::Response: hyper::rt::Read + hyper::rt::Write + Connection + Unpin + Send + 'static,
    C::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let io = connector
        .clone()
        .oneshot(destination)
        .await
        .map_err(|e| Http1Error::Connect(e.into()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Http1Error::Connect(e.into()))?;
    // The connection's task ends by itself when the connection closes, or
    // when its sender is dropped while it is idle; its errors reach the
    // caller through the sender. Nothing else would own it (hyper-util's
    // client spawns it the same way).
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// HTTP/1 requests name only the path; the host goes in `Host`.
fn to_origin_form<B>(request: &mut Request<B>, authority: &Authority) {
    if !request.headers().contains_key(HOST)
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(HOST, host);
    }
    let path = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *request.uri_mut() = Uri::from(path);
}

/// A response body that gives its connection back to the pool when it ends
/// or is dropped, whichever comes first.
pub struct ReturningBody<B> {
    body: Incoming,
    sender: Option<SendRequest<B>>,
    pool: Weak<dyn GiveBack<B>>,
}

/// The pool as a body sees it (without its connector type).
trait GiveBack<B>: Send + Sync {
    fn give_back(&self, sender: SendRequest<B>);
}

impl<C: Send + Sync, B: Send> GiveBack<B> for Shared<C, B> {
    fn give_back(&self, sender: SendRequest<B>) {
        Shared::give_back(self, sender)
    }
}

impl<B> ReturningBody<B> {
    fn give_back(&mut self) {
        if let Some(sender) = self.sender.take()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.give_back(sender);
        }
    }
}

impl<B> Drop for ReturningBody<B> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<B> Body for ReturningBody<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            // A broken connection is not reused.
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for ReturningBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReturningBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// A chunked body (no length known up front), like a gRPC-web answer:
    /// a message, then its trailers frame.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn answer() -> Chunks {
        Chunks(VecDeque::from([
            Bytes::from_static(b"message"),
            Bytes::from_static(b"trailers"),
        ]))
    }

    /// An HTTP/1.1 server on port 0 that counts the connections it
    /// accepted. `/close` answers with `connection: close`; `/hang` tells
    /// `hung` it got the request and never answers.
    struct Server {
        url: String,
        accepted: Arc<AtomicUsize>,
        hung: mpsc::UnboundedReceiver<()>,
    }

    async fn server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let (hung_tx, hung) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let hung_tx = hung_tx.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let hung_tx = hung_tx.clone();
                        async move {
                            let mut response = Response::new(answer());
                            match request.uri().path() {
                                "/close" => {
                                    response
                                        .headers_mut()
                                        .insert("connection", HeaderValue::from_static("close"));
                                }
                                "/hang" => {
                                    let _ = hung_tx.send(());
                                    std::future::pending::<()>().await;
                                }
                                _ => {}
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Server {
            url,
            accepted,
            hung,
        }
    }

    type Client = Http1Client<HttpConnector, String>;

    fn client(idle_timeout: Duration) -> Client {
        Http1Client::new(HttpConnector::new(), idle_timeout)
    }

    fn request(server: &Server, path: &str) -> Request<String> {
        Request::post(format!("{}{path}", server.url))
            .body(String::from("poll"))
            .unwrap()
    }

    /// Sends a request and reads its answer to the end.
    async fn call(client: &mut Client, request: Request<String>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec()
    }

    #[tokio::test]
    async fn calls_one_after_another_keep_one_connection() {
        let server = server().await;
        let mut client = client(Duration::from_secs(20));
        for _ in 0..50 {
            // Each call follows the previous answer at once, as polls do.
            assert_eq!(
                call(&mut client, request(&server, "/")).await,
                b"messagetrailers"
            );
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(client.idle_count(), 1);
    }

    #[tokio::test]
    async fn an_answer_dropped_after_its_last_frame_still_works() {
        // gRPC-web's decoder stops at the trailers frame, before the end of
        // the body: the connection still goes back, and the next call works
        // (on it, or on a new one if hyper could not finish reading it).
        let server = server().await;
        let mut client = client(Duration::from_secs(20));
        for _ in 0..20 {
            let response = client
                .ready()
                .await
                .unwrap()
                .call(request(&server, "/"))
                .await
                .unwrap();
            let mut body = response.into_body();
            let mut seen = Vec::new();
            while seen != b"messagetrailers" {
                let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx))
                    .await
                    .unwrap()
                    .unwrap();
                seen.extend_from_slice(&frame.into_data().unwrap());
            }
            drop(body);
        }
        assert!(server.accepted.load(Ordering::SeqCst) <= 20);
    }

    #[tokio::test]
    async fn concurrent_calls_have_a_connection_each() {
        let server = server().await;
        let client = client(Duration::from_secs(20));
        let (mut a, mut b) = (client.clone(), client.clone());
        let (ra, rb) = tokio::join!(
            call(&mut a, request(&server, "/")),
            call(&mut b, request(&server, "/"))
        );
        assert_eq!((ra.len(), rb.len()), (15, 15));
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
        // Both went back; the next calls reuse them.
        let mut c = client.clone();
        call(&mut c, request(&server, "/")).await;
        call(&mut c, request(&server, "/")).await;
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_replaced() {
        let server = server().await;
        let mut client = client(Duration::from_secs(20));
        call(&mut client, request(&server, "/close")).await;
        assert_eq!(
            call(&mut client, request(&server, "/")).await,
            b"messagetrailers"
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_leaves_its_connection_behind() {
        let mut server = server().await;
        let mut client = client(Duration::from_secs(20));
        let hanging = {
            let mut client = client.clone();
            let request = request(&server, "/hang");
            tokio::spawn(async move { client.call(request).await.map(|_| ()) })
        };
        server.hung.recv().await.unwrap();
        hanging.abort();
        assert!(hanging.await.unwrap_err().is_cancelled());
        assert_eq!(
            call(&mut client, request(&server, "/")).await,
            b"messagetrailers"
        );
        assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_idle_connection_past_the_timeout_is_not_reused() {
        let server = server().await;
        let mut client = client(Duration::ZERO);
        for _ in 0..3 {
            call(&mut client, request(&server, "/")).await;
        }
        assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn no_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let mut client = client(Duration::from_secs(20));
        let error = client
            .call(Request::post(url).body(String::new()).unwrap())
            .await
            .unwrap_err();
        assert!(matches!(error, Http1Error::Connect(_)), "{error:?}");
        assert_eq!(error.to_string(), "client error (Connect)");
    }
}
