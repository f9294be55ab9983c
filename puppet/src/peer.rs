//! The site peer cache, on the puppet: serving this puppet's artifact cache
//! to its site's peers (`--peer-listen`), and fetching from a peer.
//!
//! **Trust.** At each start the server makes a new key, a self-signed
//! certificate and a 32-byte ticket key, and tells the puppeteer (over the
//! puppet's authenticated poll) its address, the certificate's SHA-256 and
//! the ticket key. A fetcher learns them from the puppeteer (`FindSource`)
//! and accepts that certificate and no other; the peer serves only a
//! request carrying a ticket the puppeteer signed with its ticket key for
//! this content and this peer, unexpired (`geppetto_proto::ticket`). No
//! ticket, no bytes: the server is no open file server on the LAN.
//!
//! **Serving.** `GET /v1/content/SHA256?offset=N` with `authorization:
//! Ticket T` answers the content from byte N, with its size in
//! `x-geppetto-size`. Content still being received is served as it
//! arrives (the response waits for more bytes, up to [`SERVE_IDLE`]
//! without any), so the site does not wait for two whole transfers. At most
//! [`MAX_CONNECTIONS`] connections at once; a handshake or a request's
//! headers must come within [`HANDSHAKE`]. Idle, it costs one listening
//! socket.
//!
//! **Fetching.** A fetch from a peer appends to the `.part` file from the
//! byte already held and fails with a reason (cannot connect, refused,
//! no data for [`PEER_IDLE`], too many bytes) for the caller to report;
//! the bytes' hash is checked by the cache before any run uses them.

use std::net::SocketAddr;
#[cfg(test)]
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use geppetto_proto::ticket::Ticket;
use geppetto_proto::v1::PeerOffer;
use http_body_util::BodyExt;
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::artifacts::ArtifactCache;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// A TLS handshake, or a request's headers, must come within this.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// Content being received: a response waiting this long without a new
/// byte ends (the fetcher goes elsewhere).
pub const SERVE_IDLE: Duration = Duration::from_secs(120);
/// A fetch from a peer that brings no byte for this long is given up.
pub const PEER_IDLE: Duration = Duration::from_secs(60);
/// Connecting to a peer (TCP, then TLS) must take less than this.
pub const PEER_CONNECT: Duration = Duration::from_secs(5);

/// The name in the peer's self-signed certificate (the certificate is
/// pinned by its hash, so the name is not what is checked).
const CERT_NAME: &str = "geppetto-peer";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Starts serving `cache` on `listen`, as puppet `name`, until `shutdown`;
/// returns the offer to send the puppeteer (`advertise`: the address peers
/// use).
pub async fn serve(
    listen: SocketAddr,
    advertise: &str,
    cache: ArtifactCache,
    name: String,
    shutdown: CancellationToken,
) -> anyhow::Result<PeerOffer> {
    let certified = rcgen::generate_simple_self_signed(vec![CERT_NAME.to_string()])
        .context("cannot make the peer cache's certificate")?;
    let cert_der = certified.cert.der().clone();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .context("cannot use the peer cache's certificate")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for peers on {listen}"))?;
    let bound = listener.local_addr()?;
    let advertise = if advertise.is_empty() {
        bound.to_string()
    } else {
        advertise.to_string()
    };
    let ticket_key: [u8; 32] = rand::random();
    let offer = PeerOffer {
        address: advertise.clone(),
        cert_sha256: hex::encode(Sha256::digest(&cert_der)),
        ticket_key: ticket_key.to_vec(),
    };
    tracing::info!(listen = %bound, advertise, cert_sha256 = %offer.cert_sha256, "serving the artifact cache to the site's peers");
    let served = Arc::new(Served {
        cache,
        name,
        ticket_key: ticket_key.to_vec(),
        shutdown: shutdown.clone(),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => return,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            let (stream, from) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot accept a peer's connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (acceptor, served) = (acceptor.clone(), served.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await
                else {
                    tracing::debug!(%from, "a peer's TLS handshake failed or timed out");
                    return;
                };
                let service = hyper::service::service_fn(move |request| {
                    let served = served.clone();
                    async move { Ok::<_, std::convert::Infallible>(served.answer(request, from).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HANDSHAKE)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(offer)
}

/// What the server needs to answer.
struct Served {
    cache: ArtifactCache,
    name: String,
    ticket_key: Vec<u8>,
    shutdown: CancellationToken,
}

type Answer = http::Response<ChannelBody>;

fn refuse(status: http::StatusCode, why: &str) -> Answer {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Ok(Bytes::from(format!("{why}\n"))));
    let mut response = http::Response::new(ChannelBody(rx));
    *response.status_mut() = status;
    response
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Served {
    async fn answer(&self, request: http::Request<Incoming>, from: SocketAddr) -> Answer {
        use http::StatusCode;
        if request.method() != http::Method::GET {
            return refuse(StatusCode::METHOD_NOT_ALLOWED, "GET only");
        }
        let Some(sha256) = request.uri().path().strip_prefix("/v1/content/") else {
            return refuse(StatusCode::NOT_FOUND, "no such path");
        };
        let sha256 = sha256.to_string();
        let offset: u64 = match request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("offset="))
        {
            Some(n) => match n.parse() {
                Ok(n) => n,
                Err(_) => return refuse(StatusCode::BAD_REQUEST, "offset must be a number"),
            },
            None => 0,
        };
        let ticket = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Ticket "));
        let Some(ticket) = ticket else {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "a ticket from the puppeteer is needed",
            );
        };
        let ticket = match Ticket::verify(ticket, &self.ticket_key, now_ms()) {
            Ok(t) if t.sha256 == sha256 && t.peer == self.name => t,
            Ok(_) => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    "the ticket is for other content or another peer",
                );
            }
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
        };
        let Some(servable) = self.cache.servable(&sha256) else {
            return refuse(StatusCode::NOT_FOUND, "this peer holds no such content");
        };
        if offset > servable.size {
            return refuse(StatusCode::RANGE_NOT_SATISFIABLE, "offset past the end");
        }
        let file = match tokio::fs::File::open(&servable.path).await {
            Ok(f) => f,
            Err(_) => return refuse(StatusCode::NOT_FOUND, "this peer holds no such content"),
        };
        tracing::info!(peer = %ticket.fetcher, %from, %sha256, offset, size = servable.size, receiving = servable.receiving, "serving content to a peer");
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (cache, stop) = (self.cache.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            let result = tokio::select! {
                r = send_file(file, offset, servable.size, &sha256, &cache, &tx) => r,
                () = stop.cancelled() => Err("the puppet is stopping".to_string()),
            };
            if let Err(why) = result {
                tracing::info!(%sha256, error = %why, "a transfer to a peer ended early");
                let _ = tx.send(Err(std::io::Error::other(why))).await;
            }
        });
        let mut response = http::Response::new(ChannelBody(rx));
        response
            .headers_mut()
            .insert("x-geppetto-size", http::HeaderValue::from(servable.size));
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(servable.size - offset),
        );
        response
    }
}

/// Sends `file` from `offset` to `size`, waiting for bytes still being
/// received (a renamed `.part` keeps its open file).
async fn send_file(
    mut file: tokio::fs::File,
    offset: u64,
    size: u64,
    sha256: &str,
    cache: &ArtifactCache,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
) -> Result<(), String> {
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| e.to_string())?;
    let mut at = offset;
    let mut idle_since = tokio::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let n = file
            .read(&mut buf[..want])
            .await
            .map_err(|e| e.to_string())?;
        if n > 0 {
            at += n as u64;
            idle_since = tokio::time::Instant::now();
            if tx
                .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                return Ok(()); // the fetcher went away
            }
            continue;
        }
        if !cache.is_receiving(sha256) && cache.servable(sha256).is_none_or(|s| s.receiving) {
            return Err(format!(
                "the content is no longer here (at byte {at} of {size})"
            ));
        }
        if idle_since.elapsed() >= SERVE_IDLE {
            return Err(format!(
                "no new byte for {} (at byte {at} of {size})",
                humantime::format_duration(SERVE_IDLE)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A response body fed by a channel.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// Accepts exactly the certificate whose SHA-256 the puppeteer named.
#[derive(Debug)]
struct Pinned {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if hex::encode(Sha256::digest(end_entity)) == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the peer's certificate is not the one the puppeteer named".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A peer to fetch from, as the puppeteer named it.
#[derive(Clone, Debug)]
pub struct PeerSource {
    pub name: String,
    pub address: String,
    pub cert_sha256: String,
    pub ticket: String,
}

/// Marks the reason of a peer that does not hold the content (any more).
pub const GONE: &str = "the peer does not hold the content";

/// Fetches `sha256` from `peer` into `file` from byte `*have` up to
/// `size`, counting what arrives in `*have`. Err: why the peer failed
/// (starting with [`GONE`] when it does not hold the content).
pub async fn fetch_into(
    peer: &PeerSource,
    sha256: &str,
    size: u64,
    file: &mut tokio::fs::File,
    have: &mut u64,
) -> Result<(), String> {
    let provider = provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            sha256: peer.cert_sha256.clone(),
            provider,
        }))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(PEER_CONNECT, async {
        let tcp = tokio::net::TcpStream::connect(&peer.address)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", peer.address))?;
        let name = ServerName::try_from(CERT_NAME).expect("a valid name");
        connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {} failed: {e}", peer.address))
    })
    .await
    .map_err(|_| {
        format!(
            "cannot connect to {} within {}",
            peer.address,
            humantime::format_duration(PEER_CONNECT)
        )
    })??;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP with {} failed: {e}", peer.address))?;
    let driver = tokio::spawn(connection);
    let result = async {
        let request = http::Request::get(format!("/v1/content/{sha256}?offset={}", *have))
            .header(http::header::HOST, CERT_NAME)
            .header(
                http::header::AUTHORIZATION,
                format!("Ticket {}", peer.ticket),
            )
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(PEER_IDLE, sender.send_request(request))
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(PEER_IDLE)))?
            .map_err(|e| format!("the request failed: {e}"))?;
        let status = response.status();
        let mut body = response.into_body();
        if status != http::StatusCode::OK {
            let text = match tokio::time::timeout(HANDSHAKE, body.collect()).await {
                Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes())
                    .trim()
                    .chars()
                    .take(200)
                    .collect(),
                _ => String::new(),
            };
            if status == http::StatusCode::NOT_FOUND {
                return Err(format!("{GONE} ({text})"));
            }
            return Err(format!("the peer refused ({status}): {text}"));
        }
        while *have < size {
            let frame = match tokio::time::timeout(PEER_IDLE, body.frame()).await {
                Err(_) => {
                    return Err(format!(
                        "no data for {} (at byte {} of {size})",
                        humantime::format_duration(PEER_IDLE),
                        *have
                    ));
                }
                Ok(None) => return Err(format!("the peer stopped at byte {} of {size}", *have)),
                Ok(Some(Err(e))) => {
                    return Err(format!("the transfer broke at byte {}: {e}", *have));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if *have + data.len() as u64 > size {
                return Err(format!(
                    "the peer sent more than the {size} bytes of the content"
                ));
            }
            file.write_all(&data)
                .await
                .map_err(|e| format!("cannot write the content here: {e}"))?;
            *have += data.len() as u64;
        }
        Ok(())
    }
    .await;
    driver.abort();
    result
}

/// Where the peer cache's settings come from, checked: the address to
/// listen on, and the one peers use (default: the listening address,
/// which must then be a specific one).
pub fn check_advertise(listen: SocketAddr, advertise: Option<&str>) -> Result<String, String> {
    match advertise {
        Some(a)
            if a.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
        {
            Ok(a.to_string())
        }
        Some(a) => Err(format!("peer_advertise {a:?} must be HOST:PORT")),
        None if listen.ip().is_unspecified() => Err(format!(
            "peer_listen {listen} listens on every address: give peer_advertise HOST:PORT, the address the site's peers reach this puppet on"
        )),
        None if listen.port() == 0 => Ok(String::new()),
        None => Ok(listen.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache in a temp dir, serving on a free loopback port.
    async fn server(dir: &Path) -> (ArtifactCache, PeerOffer, CancellationToken) {
        let cache = ArtifactCache::new(dir, 1 << 30);
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        let stop = CancellationToken::new();
        let offer = serve(
            "127.0.0.1:0".parse().unwrap(),
            "",
            cache.clone(),
            "p1".into(),
            stop.clone(),
        )
        .await
        .unwrap();
        (cache, offer, stop)
    }

    fn source(offer: &PeerOffer, sha256: &str, fetcher: &str, expires_ms: i64) -> PeerSource {
        PeerSource {
            name: "p1".into(),
            address: offer.address.clone(),
            cert_sha256: offer.cert_sha256.clone(),
            ticket: Ticket {
                sha256: sha256.into(),
                peer: "p1".into(),
                fetcher: fetcher.into(),
                expires_ms,
            }
            .sign(&offer.ticket_key),
        }
    }

    async fn fetch(
        peer: &PeerSource,
        sha256: &str,
        size: u64,
        dir: &Path,
    ) -> (Result<(), String>, Vec<u8>) {
        let path = dir.join("out");
        let _ = std::fs::remove_file(&path);
        let mut file = tokio::fs::File::create(&path).await.unwrap();
        let mut have = 0;
        let result = fetch_into(peer, sha256, size, &mut file, &mut have).await;
        file.flush().await.unwrap();
        (result, std::fs::read(&path).unwrap())
    }

    #[tokio::test]
    async fn only_a_ticket_of_the_puppeteer_for_this_content_opens_it() {
        let dir = tempfile::tempdir().unwrap();
        let (_cache, offer, stop) = server(dir.path()).await;
        let data = b"the content".to_vec();
        let sha = hex::encode(Sha256::digest(&data));
        std::fs::write(dir.path().join("cache").join(&sha), &data).unwrap();
        let out = tempfile::tempdir().unwrap();
        let later = now_ms() + 60_000;
        let size = data.len() as u64;

        let (ok, got) = fetch(&source(&offer, &sha, "p2", later), &sha, size, out.path()).await;
        assert_eq!(ok, Ok(()));
        assert_eq!(got, data);

        // Expired, for other content, signed with another key, or none.
        let expired = source(&offer, &sha, "p2", now_ms() - 1);
        let other = source(&offer, &"ab".repeat(32), "p2", later);
        let mut forged = source(&offer, &sha, "p2", later);
        forged.ticket = Ticket {
            sha256: sha.clone(),
            peer: "p1".into(),
            fetcher: "p2".into(),
            expires_ms: later,
        }
        .sign(b"not the peer's key");
        let mut none = source(&offer, &sha, "p2", later);
        none.ticket = String::new();
        for (what, peer, status) in [
            ("expired", expired, "401"),
            ("other content", other, "403"),
            ("forged", forged, "401"),
            ("no ticket", none, "401"),
        ] {
            let (result, got) = fetch(&peer, &sha, size, out.path()).await;
            let why = result.unwrap_err();
            assert!(
                why.contains("refused") && why.contains(status),
                "{what}: {why}"
            );
            assert!(got.is_empty(), "{what}");
        }
        // A certificate other than the one the puppeteer named.
        let mut impostor = source(&offer, &sha, "p2", later);
        impostor.cert_sha256 = "00".repeat(32);
        let (result, _) = fetch(&impostor, &sha, size, out.path()).await;
        assert!(result.unwrap_err().contains("TLS"), "pinned certificate");
        stop.cancel();
    }

    #[tokio::test]
    async fn content_being_received_is_served_as_it_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, offer, stop) = server(dir.path()).await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sha = hex::encode(Sha256::digest(&data));
        let part = dir.path().join("cache").join(format!("{sha}.part"));
        std::fs::write(&part, &data[..1000]).unwrap();
        let receiving = crate::artifacts::Receiving::new(&cache, &sha, data.len() as u64);
        let writer = {
            let (part, data) = (part.clone(), data.clone());
            tokio::spawn(async move {
                use std::io::Write;
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&part)
                    .unwrap();
                for chunk in data[1000..].chunks(50_000) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    file.write_all(chunk).unwrap();
                }
                drop(receiving);
                std::fs::rename(&part, part.with_extension("")).unwrap();
            })
        };
        let out = tempfile::tempdir().unwrap();
        let peer = source(&offer, &sha, "p2", now_ms() + 60_000);
        let (result, got) = fetch(&peer, &sha, data.len() as u64, out.path()).await;
        assert_eq!(result, Ok(()));
        assert!(got == data, "the bytes differ");
        writer.await.unwrap();
        stop.cancel();
    }
}
