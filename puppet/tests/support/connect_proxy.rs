//! A small HTTP CONNECT proxy for tests, like the ones sites put between
//! their machines and the internet: it opens tunnels on `CONNECT host:port`,
//! optionally only with the right Basic credentials, and counts what it did.
//!
//! Shared by the puppet's and the CLI's proxy tests (`#[path]` include).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

#[derive(Default)]
struct Seen {
    /// `host:port` of every tunnel opened.
    tunnels: Vec<String>,
    /// CONNECT requests answered 407.
    refused: u32,
}

/// Bytes forwarded through the tunnels, counted as they pass.
#[derive(Default)]
struct Bytes {
    /// From the clients to the servers.
    up: AtomicU64,
    /// From the servers to the clients.
    down: AtomicU64,
}

/// A running proxy; it stops when dropped.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    // A std mutex: held only to record or read, never across an await.
    seen: Arc<Mutex<Seen>>,
    bytes: Arc<Bytes>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        // The accept task owns the connection tasks (a JoinSet): aborting it
        // closes every tunnel.
        self.accept.abort();
    }
}

impl ConnectProxy {
    /// Starts a proxy on a free loopback port; with `credentials`, a CONNECT
    /// without exactly these Basic credentials is answered 407.
    pub async fn start(credentials: Option<(&str, &str)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let expected = credentials.map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        });
        let seen = Arc::new(Mutex::new(Seen::default()));
        let bytes = Arc::new(Bytes::default());
        let accept = tokio::spawn(accept_loop(listener, expected, seen.clone(), bytes.clone()));
        ConnectProxy {
            addr,
            seen,
            bytes,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://USER:PASSWORD@127.0.0.1:PORT`.
    pub fn url_with(&self, user: &str, password: &str) -> String {
        format!("http://{user}:{password}@{}", self.addr)
    }

    /// The destinations of the tunnels opened so far.
    pub fn tunnels(&self) -> Vec<String> {
        self.seen.lock().unwrap().tunnels.clone()
    }

    /// Bytes forwarded so far from clients to servers (TLS records,
    /// headers included: what would cross the site's uplink).
    pub fn bytes_up(&self) -> u64 {
        self.bytes.up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded so far from servers to clients.
    pub fn bytes_down(&self) -> u64 {
        self.bytes.down.load(Ordering::Relaxed)
    }

    /// How many CONNECTs were refused for their credentials.
    pub fn refused(&self) -> u32 {
        self.seen.lock().unwrap().refused
    }
}

async fn accept_loop(
    listener: TcpListener,
    expected: Option<String>,
    seen: Arc<Mutex<Seen>>,
    bytes: Arc<Bytes>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(serve(stream, expected.clone(), seen.clone(), bytes.clone()));
            }
            // Reap finished connections so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve(
    mut client: TcpStream,
    expected: Option<String>,
    seen: Arc<Mutex<Seen>>,
    bytes: Arc<Bytes>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        match client.read_u8().await {
            Ok(byte) if head.len() < 16 * 1024 => head.push(byte),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
        let _ = client
            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    let authorization = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_string())
    });
    if let Some(expected) = &expected
        && authorization.as_deref() != Some(expected.as_str())
    {
        seen.lock().unwrap().refused += 1;
        let _ = client
            .write_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n\
                  Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
        return;
    }
    let Ok(upstream) = TcpStream::connect(target).await else {
        let _ = client
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            .await;
        return;
    };
    seen.lock().unwrap().tunnels.push(target.to_string());
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    tokio::join!(
        pump(client_read, upstream_write, &bytes.up),
        pump(upstream_read, client_write, &bytes.down),
    );
}

/// Copies one direction until its end, counting as it goes, then closes the
/// other side's writing half.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown().await;
}

/// Standard base64 with padding, enough for a Basic credential.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_matches_the_rfc_examples() {
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(
        base64(b"Aladdin:open sesame"),
        "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
}
