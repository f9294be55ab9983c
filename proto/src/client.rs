//! The client transport shared by the puppet and the `geppetto` CLI.
//!
//! A [`Channel`] is a cloneable tower service that tonic's generated clients
//! run on. It carries requests over HTTPS with rustls (ring provider) and a
//! root store holding only the CA the operator gave (the puppeteer's local CA
//! by default), in one of two ways:
//!
//! - [`Transport::GrpcWeb`]: gRPC-web over HTTP/1.1. TLS offers only
//!   `http/1.1` in ALPN (set here: hyper-rustls offers none for HTTP/1).
//!   This crosses HTTP proxies and middleboxes that break
//!   HTTP/2, and trailers travel inside the body. It is the puppet's default.
//! - [`Transport::Grpc`]: native gRPC over HTTP/2 (ALPN `h2`), multiplexed on
//!   one connection. It is the CLI's default.
//!
//! Either way it may go through an HTTP CONNECT proxy ([`crate::proxy`]):
//! `HTTPS_PROXY`/`NO_PROXY` by default, or as [`Channel::with_proxy`] is told.
//!
//! The URL may name several puppeteers of one cluster, comma-separated
//! (`https://a:7443,https://b:7443`): a call goes to the one the last call
//! reached, and a call that cannot connect to it is sent to the next in
//! turn, at once (its message is buffered for that; every request of the
//! API is one message). Once a puppeteer answered, calls stay with it.
//!
//! Connections are kept alive and reused. The puppeteer closes an idle
//! HTTP/1 connection after 30 s, so the pool drops idle connections sooner
//! ([`POOL_IDLE_TIMEOUT`]) rather than reuse one the server is closing.
//! Over HTTP/1.1 a request waits for the connection its previous call is
//! giving back rather than open another ([`crate::http1`]): an idle puppet
//! keeps one connection.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{AUTHORIZATION, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tonic::body::Body;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::http1::Http1Client;
use crate::proxy::{ProxyConfig, ProxyConnector, ProxyUrl};

/// Idle connections are dropped after this long, below the server's 30 s.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long establishing TCP may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How requests travel to the puppeteer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// gRPC-web over HTTP/1.1.
    #[default]
    GrpcWeb,
    /// Native gRPC over HTTP/2.
    Grpc,
}

impl std::str::FromStr for Transport {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc-web" => Ok(Transport::GrpcWeb),
            "grpc" => Ok(Transport::Grpc),
            other => Err(format!(
                "unknown transport {other:?}: expected grpc-web or grpc"
            )),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::GrpcWeb => "grpc-web",
            Transport::Grpc => "grpc",
        })
    }
}

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot read CA file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} holds no usable PEM certificate{detail}")]
    CaContent { path: String, detail: String },
    #[error("TLS setup failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the token is not a valid HTTP header value")]
    BadToken,
    /// A malformed proxy URL (in `HTTPS_PROXY` or given explicitly).
    #[error("{0}")]
    BadProxy(String),
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://host:port` (or `http://` when the puppeteer was started with
    /// its insecure plaintext flag); several, comma-separated, for the nodes
    /// of a cluster, tried in turn.
    pub url: String,
    /// PEM file of the CA that signed the puppeteer's certificate. `None`
    /// means the CA bundle is not needed (plain `http://`).
    pub ca_file: Option<std::path::PathBuf>,
    pub transport: Transport,
}

/// A bearer token sent with every request, replaceable at run time (a puppet
/// gets its credential after enrolling). The header value is marked
/// sensitive, so `Debug` shows it as `Sensitive`, never the token.
#[derive(Clone, Debug, Default)]
pub struct TokenSlot(Arc<RwLock<Option<HeaderValue>>>);

impl TokenSlot {
    /// Sets the token; `None` sends no authorization header.
    pub fn set(&self, token: Option<&str>) -> Result<(), ClientError> {
        let value = match token {
            Some(token) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| ClientError::BadToken)?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        // A std lock: it is held only to clone or swap a header value, never
        // across an await.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
        Ok(())
    }

    fn get(&self) -> Option<HeaderValue> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

type Inner = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// One puppeteer a channel may call: its URL's parts and its own pool.
#[derive(Clone)]
struct Target {
    inner: Inner,
    scheme: Scheme,
    authority: http::uri::Authority,
    proxy: Option<ProxyUrl>,
}

/// A connection to the puppeteer for tonic's generated clients.
#[derive(Clone)]
pub struct Channel {
    targets: Vec<Target>,
    /// The target calls go to: the last one that could be reached. Shared
    /// by the channel's clones.
    current: Arc<AtomicUsize>,
    token: TokenSlot,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Channel");
        for target in &self.targets {
            f.field("scheme", &target.scheme)
                .field("authority", &target.authority)
                .field("proxy", &target.proxy);
        }
        f.finish_non_exhaustive()
    }
}

/// The TLS settings of a channel (root store from the CA file), built once
/// and shared by many channels: the swarm simulator gives each simulated
/// puppet its own channel and connection without reading the CA file and
/// building a root store ten thousand times.
#[derive(Clone)]
pub struct ClientTls(rustls::ClientConfig);

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientTls")
    }
}

impl ClientTls {
    /// Reads the endpoint's CA file and builds the settings.
    pub fn new(endpoint: &Endpoint) -> Result<Self, ClientError> {
        client_tls_config(endpoint).map(ClientTls)
    }
}

impl Channel {
    /// Builds a channel; no connection is made until the first request.
    /// The proxy comes from the environment (`HTTPS_PROXY`, `NO_PROXY`),
    /// read now.
    pub fn new(endpoint: &Endpoint, token: TokenSlot) -> Result<Self, ClientError> {
        Self::with_proxy(endpoint, token, &ProxyConfig::FromEnv)
    }

    /// [`Channel::new`] with the proxy chosen by `proxy`.
    pub fn with_proxy(
        endpoint: &Endpoint,
        token: TokenSlot,
        proxy: &ProxyConfig,
    ) -> Result<Self, ClientError> {
        Self::with_tls(endpoint, token, proxy, &ClientTls::new(endpoint)?)
    }

    /// [`Channel::with_proxy`] with TLS settings made beforehand (see
    /// [`ClientTls`]). The channel still has its own connection pool:
    /// channels never share connections.
    pub fn with_tls(
        endpoint: &Endpoint,
        token: TokenSlot,
        proxy: &ProxyConfig,
        tls: &ClientTls,
    ) -> Result<Self, ClientError> {
        let targets = endpoint
            .url
            .split(',')
            .map(|url| Target::new(url.trim(), endpoint.transport, proxy, tls))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Channel {
            targets,
            current: Arc::new(AtomicUsize::new(0)),
            token,
        })
    }

    /// The proxy this channel connects through, shown without credentials
    /// (`http://host:port (from HTTPS_PROXY)`); `None`: direct.
    pub fn proxy(&self) -> Option<String> {
        self.targets[0].proxy.as_ref().map(ToString::to_string)
    }

    /// The token slot of this channel.
    pub fn token(&self) -> &TokenSlot {
        &self.token
    }
}

impl Target {
    fn new(
        url: &str,
        transport: Transport,
        proxy: &ProxyConfig,
        tls: &ClientTls,
    ) -> Result<Self, ClientError> {
        let uri: Uri = url.parse().map_err(|e| ClientError::BadUrl {
            url: url.to_string(),
            reason: format!("{e}"),
        })?;
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| bad("no scheme: write https://host:port"))?;
        if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
            return Err(bad(
                "the scheme must be https (or http for an insecure plaintext puppeteer)",
            ));
        }
        let authority = uri.authority().cloned().ok_or_else(|| bad("no host"))?;
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(bad("a path is not supported: write https://host:port"));
        }

        let proxy = proxy
            .resolve(&uri, |name| std::env::var(name).ok())
            .map_err(ClientError::BadProxy)?;
        let tls = tls.0.clone();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = ProxyConnector::new(http, proxy.clone());

        let inner = match transport {
            Transport::GrpcWeb => {
                // hyper-rustls offers no ALPN for an HTTP/1-only connector;
                // offering `http/1.1` spares the server guessing the
                // protocol from the first bytes (and its cost per connection).
                let mut tls = tls;
                tls.alpn_protocols = vec![b"http/1.1".to_vec()];
                let connector = hyper_rustls::HttpsConnector::from((connector, tls));
                let client = Http1Client::new(connector, POOL_IDLE_TIMEOUT);
                let service = tower::ServiceBuilder::new()
                    .layer(tonic_web::GrpcWebClientLayer::new())
                    .service(client)
                    .map_response(|response: Response<_>| response.map(Body::new))
                    .map_err(transport_error);
                BoxCloneSyncService::new(service)
            }
            Transport::Grpc => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http2()
                    .wrap_connector(connector);
                let client = Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .timer(TokioTimer::new())
                    .http2_keep_alive_interval(Duration::from_secs(30))
                    .http2_keep_alive_timeout(Duration::from_secs(20))
                    .pool_idle_timeout(POOL_IDLE_TIMEOUT)
                    .pool_timer(TokioTimer::new())
                    .build(connector);
                let service = client
                    .map_response(|response: Response<hyper::body::Incoming>| {
                        response.map(Body::new)
                    })
                    .map_err(transport_error);
                BoxCloneSyncService::new(service)
            }
        };
        Ok(Target {
            inner,
            scheme,
            authority,
            proxy,
        })
    }

    /// `request` addressed to this target: tonic hands over a path-only
    /// URI, the HTTP client needs it absolute.
    fn address(&self, request: &mut Request<Body>) {
        let path = request
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .expect("scheme, authority and path were valid on their own");
    }
}

type CallFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl Service<Request<Body>> for Channel {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = CallFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.targets.as_mut_slice() {
            // One puppeteer (every puppet but a cluster's): straight through,
            // nothing added to the poll's path.
            [target] => target.inner.poll_ready(cx),
            // Several: each call readies the one it goes to, in its future.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if let Some(token) = self.token.get() {
            request.headers_mut().insert(AUTHORIZATION, token);
        }
        let first = self.current.load(Ordering::Relaxed) % self.targets.len();
        if let [target] = self.targets.as_mut_slice() {
            target.address(&mut request);
            return target.inner.call(request);
        }
        let (targets, current) = (self.targets.clone(), self.current.clone());
        Box::pin(async move {
            // Every request of the API is one message: kept, it can be sent
            // again to the next puppeteer when one cannot be reached.
            let (parts, body) = request.into_parts();
            let message = http_body_util::BodyExt::collect(body).await?.to_bytes();
            let mut last_error = None;
            for turn in 0..targets.len() {
                let i = (first + turn) % targets.len();
                let mut target = targets[i].clone();
                let mut request = Request::builder()
                    .method(parts.method.clone())
                    .uri(parts.uri.clone())
                    .version(parts.version)
                    .body(Body::new(http_body_util::Full::new(message.clone())))?;
                *request.headers_mut() = parts.headers.clone();
                target.address(&mut request);
                match target.inner.ready().await?.call(request).await {
                    Err(error) if connect_failed(error.as_ref()) => last_error = Some(error),
                    answered => {
                        current.store(i, Ordering::Relaxed);
                        return answered;
                    }
                }
            }
            Err(last_error.expect("at least one target was tried"))
        })
    }
}

/// Whether a call's error, or any error it was caused by, is a failure to
/// connect.
fn connect_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut link = Some(error);
    while let Some(e) = link {
        if is_connect_error(e) {
            return true;
        }
        link = e.source();
    }
    false
}

/// A failure to reach the puppeteer through the proxy becomes `Unavailable`
/// with the proxy's story as its message (a puppet logs the message) and as
/// its source (the CLI reads the source); other errors go through unchanged.
fn transport_error<E: std::error::Error + Send + Sync + 'static>(error: E) -> BoxError {
    match crate::proxy::find_proxy_error(&error) {
        Some(proxy) => {
            let mut status = tonic::Status::unavailable(proxy.to_string());
            status.set_source(Arc::new(proxy.clone()));
            Box::new(status)
        }
        None => Box::new(error),
    }
}

fn client_tls_config(endpoint: &Endpoint) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &endpoint.ca_file {
        for cert in load_pem_certs(path)? {
            roots.add(cert).map_err(|e| ClientError::CaContent {
                path: path.display().to_string(),
                detail: format!(": {e}"),
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Whether `error` (one link of a call's error chain) is a failure to
/// establish the connection (refused, unreachable, TLS), from either
/// transport: the gRPC-web pool's or hyper-util's for native gRPC. Decided
/// by type, not by the message's text.
pub fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = error.downcast_ref::<crate::http1::Http1Error>() {
        return matches!(e, crate::http1::Http1Error::Connect(_));
    }
    if let Some(e) = error.downcast_ref::<hyper_util::client::legacy::Error>() {
        return e.is_connect();
    }
    false
}

/// Reads every certificate of a PEM file; an empty result is an error.
pub fn load_pem_certs(
    path: &Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::CaContent {
            path: path.display().to_string(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(ClientError::CaContent {
            path: path.display().to_string(),
            detail: String::new(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::TokenSlot;

    #[test]
    fn debug_never_shows_the_token() {
        let slot = TokenSlot::default();
        slot.set(Some("gpc_s3cret")).unwrap();
        let shown = format!("{slot:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("Sensitive"),
            "{shown}"
        );
    }
}
