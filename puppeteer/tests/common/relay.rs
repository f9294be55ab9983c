//! A TCP relay between a puppet and the puppeteer that misbehaves like the
//! middleboxes of bad networks: it closes connections that stay idle longer
//! than a timeout (a proxy), and it can go silent on the connections open at
//! a given moment (a NAT mapping that expired: the connection still looks
//! ESTABLISHED to both ends, but nothing gets through any more). New
//! connections after that are relayed normally, as a NAT creates a new
//! mapping for them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[derive(Default)]
struct Shared {
    /// Connections accepted so far.
    accepted: AtomicU32,
    /// Connections accepted before this number go silent.
    silent_below: AtomicU64,
    /// Connections closed by the idle timeout.
    idle_closed: AtomicU32,
}

/// The relay; it stops when dropped.
pub struct Relay {
    pub port: u16,
    shared: Arc<Shared>,
    _task: JoinSet<()>,
}

impl Relay {
    /// Relays 127.0.0.1:`port` to `target`; `idle_timeout` closes quiet connections.
    pub async fn start(target: SocketAddr, idle_timeout: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let mut task = JoinSet::new();
        let accept_shared = shared.clone();
        task.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        let number = u64::from(accept_shared.accepted.fetch_add(1, Ordering::SeqCst));
                        connections.spawn(relay(client, target, number, idle_timeout, accept_shared.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Relay {
            port,
            shared,
            _task: task,
        }
    }

    /// `url` with its port replaced by the relay's.
    pub fn url(&self, url: &str) -> String {
        let (base, _) = url.rsplit_once(':').unwrap();
        format!("{base}:{}", self.port)
    }

    pub fn accepted(&self) -> u32 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn idle_closed(&self) -> u32 {
        self.shared.idle_closed.load(Ordering::SeqCst)
    }

    /// Every connection open now goes silent in both directions, for good.
    pub fn blackhole_open_connections(&self) {
        let accepted = u64::from(self.accepted());
        self.shared.silent_below.store(accepted, Ordering::SeqCst);
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    number: u64,
    idle_timeout: Option<Duration>,
    shared: Arc<Shared>,
) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let silent = || number < shared.silent_below.load(Ordering::SeqCst);
    let mut up = vec![0u8; 64 * 1024];
    let mut down = vec![0u8; 64 * 1024];
    let mut last_activity = Instant::now();
    loop {
        let idle_deadline = idle_timeout.map(|t| last_activity + t);
        tokio::select! {
            read = client.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if silent() { continue; }
                last_activity = Instant::now();
                if server.write_all(&up[..n]).await.is_err() { return; }
            }
            read = server.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if silent() { continue; }
                last_activity = Instant::now();
                if client.write_all(&down[..n]).await.is_err() { return; }
            }
            _ = sleep_until(idle_deadline) => {
                shared.idle_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
