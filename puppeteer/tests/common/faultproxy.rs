//! A fault-injecting TCP relay for the bad-network tests.
//!
//! It sits between the puppet and the puppeteer and forwards bytes. TLS
//! passes through it opaque, so it cannot see gRPC messages: its triggers are
//! byte counts in each direction and changes of direction ("the first bytes
//! the server sends after the client sent N bytes" is, on one connection of
//! unary calls, the answer to the call that carried them). The faults:
//!
//! - a bandwidth limit shared by all connections, per direction, and an added
//!   one-way delay (pipelined, so a delay does not cap the throughput);
//! - cuts of every live connection: `cut_all` closes both sides,
//!   `blackhole_all` keeps both sides open and drops everything (a dead but
//!   ESTABLISHED connection: NAT expiry, a dead radio link);
//! - refusal of new connections (accepted and closed at once);
//! - a maximum connection age (a middlebox that closes connections after a
//!   fixed time, whatever they carry);
//! - one armed [`Trigger`] at a time, whose action runs on the exact chunk
//!   that meets its condition and which tells the test it fired.
//!
//! Everything is controlled from the test through `&FaultProxy`; counters of
//! connections and bytes are read with [`FaultProxy::stats`].
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Largest read from a socket.
const READ_CHUNK: usize = 16 * 1024;
/// Largest write when a rate is set, so that pacing is smooth.
const PACED_CHUNK: usize = 2 * 1024;
/// Chunks read but not yet written, per direction of a connection.
const QUEUE_CHUNKS: usize = 64;

/// Which way bytes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From the client (the puppet) to the upstream server (the puppeteer).
    Up,
    /// From the server back to the client.
    Down,
}

/// When an armed trigger fires. Counts start when it is armed.
#[derive(Clone, Copy, Debug)]
pub enum When {
    /// On the chunk that brings the bytes sent up, over all connections, to N.
    UpBytes(u64),
    /// On the chunk that brings the bytes sent down, over all connections, to N.
    DownBytes(u64),
    /// On the first bytes the server sends on a connection that has carried
    /// at least N bytes up since the trigger was armed: the answer to (the
    /// last of) the calls that carried them.
    ResponseAfterUp(u64),
    /// On the Nth response burst (bytes down after bytes up on the same
    /// connection), counting all connections, 1-based.
    NthResponse(u64),
}

/// What an armed trigger does to the connection whose chunk met its condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Drop the chunk and close both sides (the answer is lost).
    CutBefore,
    /// Forward the chunk, then close both sides.
    CutAfter,
    /// Drop the chunk and everything after it on this connection, keeping
    /// both sides open.
    BlackholeBefore,
    /// Forward the chunk and only tell the test (which then kills something).
    Notify,
}

/// An armed trigger's report to the test.
pub struct Fired(oneshot::Receiver<FiredInfo>);

/// Where a trigger fired.
#[derive(Clone, Copy, Debug)]
pub struct FiredInfo {
    pub conn: u64,
    pub dir: Dir,
    /// Bytes up and down over all connections since arming, the chunk included.
    pub up: u64,
    pub down: u64,
}

impl Fired {
    /// Waits until the trigger fired; panics after `deadline`.
    pub async fn wait(self, deadline: Duration) -> FiredInfo {
        tokio::time::timeout(deadline, self.0)
            .await
            .expect("the proxy trigger fired in time")
            .expect("the proxy is still running")
    }
}

/// Counters since the proxy started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted and relayed.
    pub connections: u64,
    /// Connections accepted while refusing, closed at once.
    pub refused: u64,
    /// Connections relayed now.
    pub active: u64,
    /// Bytes written to the server and to the client.
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Bytes read but dropped (blackholes, cuts before forwarding).
    pub dropped: u64,
    /// Connections closed by a cut, a trigger or the age limit.
    pub cut: u64,
}

/// The relay; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    upstream: Mutex<SocketAddr>,
    // A std mutex: held only for short bookkeeping, never across an await.
    state: Mutex<State>,
    up_pacer: Mutex<Instant>,
    down_pacer: Mutex<Instant>,
    connections: AtomicU64,
    refused: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    dropped: AtomicU64,
    cut: AtomicU64,
}

#[derive(Default)]
struct State {
    /// Bytes per second in each direction, shared by all connections.
    rate: Option<u64>,
    delay: Duration,
    refuse: bool,
    max_age: Option<Duration>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    trigger: Option<Armed>,
}

struct Conn {
    cut: CancellationToken,
    blackhole: Arc<AtomicBool>,
    /// Bytes up on this connection since the trigger was armed.
    up_since_arm: u64,
    last_dir: Option<Dir>,
}

struct Armed {
    when: When,
    then: Then,
    up: u64,
    down: u64,
    responses: u64,
    report: oneshot::Sender<FiredInfo>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and relays to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    /// Listens on `listen` and relays to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.expect("the proxy binds");
        let addr = listener.local_addr().unwrap();
        let now = Instant::now();
        let shared = Arc::new(Shared {
            upstream: Mutex::new(upstream),
            state: Mutex::new(State::default()),
            up_pacer: Mutex::new(now),
            down_pacer: Mutex::new(now),
            connections: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        FaultProxy { addr, shared, stop }
    }

    /// `https://localhost:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Where new connections are relayed to.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        *self.shared.upstream.lock().unwrap() = upstream;
    }

    /// Limits each direction to `bytes_per_second` over all connections (`None`: no limit).
    pub fn set_rate(&self, bytes_per_second: Option<u64>) {
        self.shared.state.lock().unwrap().rate = bytes_per_second;
    }

    /// Adds a one-way delay to every chunk, in both directions.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.state.lock().unwrap().delay = delay;
    }

    /// While set, new connections are accepted and closed at once.
    pub fn set_refuse(&self, refuse: bool) {
        self.shared.state.lock().unwrap().refuse = refuse;
    }

    /// Connections accepted from now on are closed when they reach this age.
    pub fn set_max_age(&self, age: Option<Duration>) {
        self.shared.state.lock().unwrap().max_age = age;
    }

    /// Closes both sides of every live connection.
    pub fn cut_all(&self) {
        let state = self.shared.state.lock().unwrap();
        for conn in state.conns.values() {
            conn.cut.cancel();
        }
    }

    /// Makes every live connection drop everything, both ways, while it
    /// stays open. New connections are relayed normally.
    pub fn blackhole_all(&self) {
        let state = self.shared.state.lock().unwrap();
        for conn in state.conns.values() {
            conn.blackhole.store(true, Ordering::SeqCst);
        }
    }

    /// Arms a trigger (replacing any armed one); byte counts start now.
    pub fn arm(&self, when: When, then: Then) -> Fired {
        let (report, fired) = oneshot::channel();
        let mut state = self.shared.state.lock().unwrap();
        for conn in state.conns.values_mut() {
            conn.up_since_arm = 0;
        }
        state.trigger = Some(Armed {
            when,
            then,
            up: 0,
            down: 0,
            responses: 0,
            report,
        });
        Fired(fired)
    }

    /// Disarms the armed trigger, if any.
    pub fn disarm(&self) {
        self.shared.state.lock().unwrap().trigger = None;
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            connections: s.connections.load(Ordering::SeqCst),
            refused: s.refused.load(Ordering::SeqCst),
            active: s.state.lock().unwrap().conns.len() as u64,
            bytes_up: s.bytes_up.load(Ordering::SeqCst),
            bytes_down: s.bytes_down.load(Ordering::SeqCst),
            dropped: s.dropped.load(Ordering::SeqCst),
            cut: s.cut.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        if shared.state.lock().unwrap().refuse {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        tokio::spawn(relay(client, shared.clone(), stop.child_token()));
    }
}

/// Relays one connection until both directions ended or it is cut.
async fn relay(client: TcpStream, shared: Arc<Shared>, cut: CancellationToken) {
    let upstream_addr = *shared.upstream.lock().unwrap();
    let server = tokio::select! {
        server = TcpStream::connect(upstream_addr) => server,
        _ = cut.cancelled() => return,
    };
    let Ok(server) = server else {
        // Nothing listens upstream (the puppeteer is down): the client sees a close.
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    shared.connections.fetch_add(1, Ordering::SeqCst);
    let blackhole = Arc::new(AtomicBool::new(false));
    let (id, max_age) = {
        let mut state = shared.state.lock().unwrap();
        let id = state.next_id;
        state.next_id += 1;
        state.conns.insert(
            id,
            Conn {
                cut: cut.clone(),
                blackhole: blackhole.clone(),
                up_since_arm: 0,
                last_dir: None,
            },
        );
        (id, state.max_age)
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let link = Link {
        id,
        shared: shared.clone(),
        cut: cut.clone(),
        blackhole,
    };
    let up = link.pump(Dir::Up, client_read, server_write);
    let down = link.pump(Dir::Down, server_read, client_write);
    let aged = async {
        match max_age {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        _ = aged => {
            shared.cut.fetch_add(1, Ordering::SeqCst);
        }
        _ = cut.cancelled() => {
            shared.cut.fetch_add(1, Ordering::SeqCst);
        }
    }
    cut.cancel();
    shared.state.lock().unwrap().conns.remove(&id);
}

/// One relayed connection, as each direction's pump sees it.
struct Link {
    id: u64,
    shared: Arc<Shared>,
    cut: CancellationToken,
    blackhole: Arc<AtomicBool>,
}

/// What to do with a chunk, decided under the state lock.
enum Verdict {
    Forward,
    ForwardThenCut,
    Drop,
    DropAndCut,
    DropAndBlackhole,
}

impl Link {
    /// Reads one direction into a queue and writes it out after the delay,
    /// at the rate; on EOF, half-closes the other side once the queue is empty.
    async fn pump(&self, dir: Dir, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let (queue, mut queued) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUE_CHUNKS);
        let reader = async move {
            let mut buf = vec![0u8; READ_CHUNK];
            loop {
                match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if queue
                            .send((Instant::now(), buf[..n].to_vec()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        };
        let writer = async {
            while let Some((read_at, chunk)) = queued.recv().await {
                let (delay, rate) = {
                    let state = self.shared.state.lock().unwrap();
                    (state.delay, state.rate)
                };
                tokio::time::sleep_until(read_at + delay).await;
                if self.blackhole.load(Ordering::SeqCst) {
                    self.shared
                        .dropped
                        .fetch_add(chunk.len() as u64, Ordering::SeqCst);
                    continue;
                }
                match self.judge(dir, chunk.len() as u64) {
                    Verdict::Forward => {}
                    Verdict::ForwardThenCut => {
                        let _ = self.write(dir, rate, &mut to, &chunk).await;
                        self.cut.cancel();
                        return;
                    }
                    Verdict::Drop => {
                        self.dropped(chunk.len());
                        continue;
                    }
                    Verdict::DropAndCut => {
                        self.dropped(chunk.len());
                        self.cut.cancel();
                        return;
                    }
                    Verdict::DropAndBlackhole => {
                        self.dropped(chunk.len());
                        self.blackhole.store(true, Ordering::SeqCst);
                        continue;
                    }
                }
                if self.write(dir, rate, &mut to, &chunk).await.is_err() {
                    self.cut.cancel();
                    return;
                }
            }
            // The sender closed its side: pass the close on, unless the
            // connection is a blackhole (a dead path carries no FIN either).
            if !self.blackhole.load(Ordering::SeqCst) {
                let _ = to.shutdown().await;
            }
        };
        tokio::join!(reader, writer);
    }

    fn dropped(&self, n: usize) {
        self.shared.dropped.fetch_add(n as u64, Ordering::SeqCst);
    }

    async fn write(
        &self,
        dir: Dir,
        rate: Option<u64>,
        to: &mut OwnedWriteHalf,
        chunk: &[u8],
    ) -> std::io::Result<()> {
        let pieces: Vec<&[u8]> = match rate {
            Some(_) => chunk.chunks(PACED_CHUNK).collect(),
            None => vec![chunk],
        };
        for piece in pieces {
            if let Some(rate) = rate {
                let done_at = self.shared.reserve(dir, piece.len(), rate);
                tokio::time::sleep_until(done_at).await;
            }
            to.write_all(piece).await?;
            let counter = match dir {
                Dir::Up => &self.shared.bytes_up,
                Dir::Down => &self.shared.bytes_down,
            };
            counter.fetch_add(piece.len() as u64, Ordering::SeqCst);
        }
        Ok(())
    }

    /// Updates the counters of the armed trigger with a chunk about to be
    /// forwarded, and fires it when its condition is met.
    fn judge(&self, dir: Dir, len: u64) -> Verdict {
        let mut state = self.shared.state.lock().unwrap();
        let State { conns, trigger, .. } = &mut *state;
        let Some(conn) = conns.get_mut(&self.id) else {
            return Verdict::Forward;
        };
        let burst_start = dir == Dir::Down && conn.last_dir == Some(Dir::Up);
        conn.last_dir = Some(dir);
        if dir == Dir::Up {
            conn.up_since_arm += len;
        }
        let Some(armed) = trigger.as_mut() else {
            return Verdict::Forward;
        };
        match dir {
            Dir::Up => armed.up += len,
            Dir::Down => armed.down += len,
        }
        if burst_start {
            armed.responses += 1;
        }
        let met = match armed.when {
            When::UpBytes(n) => dir == Dir::Up && armed.up >= n,
            When::DownBytes(n) => dir == Dir::Down && armed.down >= n,
            When::ResponseAfterUp(n) => burst_start && conn.up_since_arm >= n,
            When::NthResponse(n) => burst_start && armed.responses == n,
        };
        if !met {
            return Verdict::Forward;
        }
        let armed = trigger.take().unwrap();
        let _ = armed.report.send(FiredInfo {
            conn: self.id,
            dir,
            up: armed.up,
            down: armed.down,
        });
        match armed.then {
            Then::CutBefore => Verdict::DropAndCut,
            Then::CutAfter => Verdict::ForwardThenCut,
            Then::BlackholeBefore => Verdict::DropAndBlackhole,
            Then::Notify => Verdict::Forward,
        }
    }
}

impl Shared {
    /// Reserves the link for `len` bytes at `rate`; returns when they are through.
    fn reserve(&self, dir: Dir, len: usize, rate: u64) -> Instant {
        let pacer = match dir {
            Dir::Up => &self.up_pacer,
            Dir::Down => &self.down_pacer,
        };
        let mut free_at = pacer.lock().unwrap();
        let start = (*free_at).max(Instant::now());
        let done = start + Duration::from_secs_f64(len as f64 / rate.max(1) as f64);
        *free_at = done;
        done
    }
}

#[cfg(test)]
mod tests {
    //! The proxy against a plain echo server.
    use super::*;

    /// An echo server on an ephemeral port.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = socket.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn echo_round(client: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
        client.write_all(data).await?;
        let mut back = vec![0u8; data.len()];
        client.read_exact(&mut back).await?;
        Ok(back)
    }

    #[tokio::test]
    async fn relays_both_ways_and_counts() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(echo_round(&mut client, &data).await.unwrap(), data);
        let stats = proxy.stats();
        assert_eq!(stats.connections, 1);
        assert_eq!(stats.bytes_up, 200_000);
        assert_eq!(stats.bytes_down, 200_000);
    }

    #[tokio::test]
    async fn a_rate_limit_and_a_delay_slow_the_transfer() {
        let proxy = FaultProxy::start(echo_server().await).await;
        proxy.set_rate(Some(100_000));
        proxy.set_delay(Duration::from_millis(100));
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        let started = std::time::Instant::now();
        let data = vec![7u8; 50_000];
        assert_eq!(echo_round(&mut client, &data).await.unwrap(), data);
        // 0.5 s each way at the rate, pipelined, plus 2 × 100 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(650), "too fast: {took:?}");
        assert!(took < Duration::from_secs(5), "too slow: {took:?}");
    }

    #[tokio::test]
    async fn a_trigger_cuts_right_after_the_first_answer_to_enough_bytes() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        echo_round(&mut client, b"small").await.unwrap();
        let fired = proxy.arm(When::ResponseAfterUp(1000), Then::CutAfter);
        echo_round(&mut client, &[1u8; 600]).await.unwrap();
        // The first answer after 1000 bytes up is forwarded, then the cut.
        client.write_all(&[2u8; 600]).await.unwrap();
        let info = fired.wait(Duration::from_secs(5)).await;
        assert_eq!(info.dir, Dir::Down);
        assert!(info.up >= 1000);
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(!rest.is_empty() && rest.len() <= 600, "got {}", rest.len());
        assert_eq!(proxy.stats().cut, 1);
    }

    #[tokio::test]
    async fn a_dropped_answer_never_arrives_and_the_connection_closes() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let fired = proxy.arm(When::NthResponse(2), Then::CutBefore);
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        echo_round(&mut client, b"one").await.unwrap();
        client.write_all(b"two").await.unwrap();
        fired.wait(Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest).await;
        assert!(rest.is_empty(), "the second answer was dropped");
        // A new connection works.
        let mut again = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo_round(&mut again, b"three").await.unwrap(), b"three");
    }

    #[tokio::test]
    async fn a_blackhole_keeps_the_connection_open_and_silent() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        echo_round(&mut client, b"before").await.unwrap();
        proxy.blackhole_all();
        client.write_all(b"after").await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(300), client.read(&mut buf)).await;
        assert!(read.is_err(), "nothing comes back, and no close either");
        assert_eq!(proxy.stats().active, 1);
        let mut fresh = TcpStream::connect(proxy.addr).await.unwrap();
        assert_eq!(echo_round(&mut fresh, b"new").await.unwrap(), b"new");
    }

    #[tokio::test]
    async fn refusal_and_age_limit() {
        let proxy = FaultProxy::start(echo_server().await).await;
        proxy.set_refuse(true);
        let mut refused = TcpStream::connect(proxy.addr).await.unwrap();
        let mut buf = [0u8; 4];
        let _ = refused.write_all(b"x").await;
        assert!(matches!(refused.read(&mut buf).await, Ok(0) | Err(_)));
        assert_eq!(proxy.stats().refused, 1);
        proxy.set_refuse(false);
        proxy.set_max_age(Some(Duration::from_millis(200)));
        let mut client = TcpStream::connect(proxy.addr).await.unwrap();
        echo_round(&mut client, b"young").await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "closed by age");
        assert_eq!(proxy.stats().cut, 1);
    }
}
