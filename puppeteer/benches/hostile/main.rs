//! `cargo bench -p puppeteer --bench hostile` (about 3 minutes; writes
//! `target/bench/hostile.json`)
//!
//! What clients that do not play by the rules cost a real puppeteer (the
//! release binary, started as users start it, with its open-file limit at
//! 1024 as on a default Linux box), attack by attack, from the loopback
//! addresses 127.0.0.2 and up, while an operator on 127.0.0.1 times a call.
//! BENCHMARKS.md, "Hostile clients", holds the figures.
//!
//! 1. Disk: 20 refused `CreateTask` without a token and 20 `Enroll` with a
//!    bogus token, each with a 4 MB name: the data dir's growth.
//! 2. Streams: from one address, as many HTTP/2 connections as it may
//!    hold, each with as many requests open as allowed (headers sent, body
//!    never finished), without a credential and with one: the puppeteer's
//!    RSS, and how the requests end.
//! 3. Silent connections: 1,000 TLS connections from one address, then
//!    from four, that never send a byte of HTTP: how many it holds, and
//!    how long the operator's call takes meanwhile.
//! 4. Selectors: the slowest 4 KiB selector found, three callers in a
//!    loop: its parse cost, and the operator's call meanwhile.

#[path = "../fleet/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use geppetto_proto::v1 as pb;
use harness::{Options, Server, memory_kib};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The puppeteer built with this bench (same profile), as the fleet bench.
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_puppeteer"))
        .parent()
        .expect("a directory")
        .to_path_buf();
    let out_dir = bin_dir.parent().expect("target dir").join("bench");
    std::fs::create_dir_all(&out_dir)?;
    let mut options = Options::quick(bin_dir, out_dir.clone());
    options.nofile = 1024;
    options.per_address_bound = true;
    let results = json!({
        "disk": disk(&options).await?,
        "streams_without_credential": streams(&options, false).await?,
        "streams_with_credential": streams(&options, true).await?,
        "silent_connections": silent(&options).await?,
        "selectors": selectors(&options).await?,
    });
    println!("{}", serde_json::to_string_pretty(&results)?);
    std::fs::write(
        out_dir.join("hostile.json"),
        serde_json::to_vec_pretty(&results)?,
    )?;
    Ok(())
}

async fn start(options: &Options) -> anyhow::Result<(tempfile::TempDir, Server)> {
    let dir = tempfile::tempdir()?;
    let server = Server::start(options, dir.path(), &[]).await?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid))?;
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        nofile.split_whitespace().nth(3) == Some(&options.nofile.to_string()),
        "the puppeteer runs with {nofile:?}, not {}",
        options.nofile
    );
    Ok((dir, server))
}

/// How many of `held` the server still keeps open: a connection it closed
/// reads to its end (after whatever it sent first, its SETTINGS or GOAWAY).
async fn still_open(held: &mut [tokio_rustls::client::TlsStream<tokio::net::TcpStream>]) -> usize {
    use tokio::io::AsyncReadExt;
    let mut open = 0;
    let mut buf = vec![0u8; 4096];
    for tls in held.iter_mut() {
        loop {
            match tokio::time::timeout(Duration::from_millis(20), tls.read(&mut buf)).await {
                Err(_) => {
                    open += 1;
                    break;
                }
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => continue,
            }
        }
    }
    open
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    puppeteer::api::dir_bytes(dir)
}

/// How long the operator's `ListTasks` takes now (`None`: no answer in 60 s).
async fn operator_call(server: &Server) -> Option<f64> {
    let mut admin = server.admin().ok()?;
    let started = Instant::now();
    match tokio::time::timeout(
        Duration::from_secs(60),
        admin.tasks.list_tasks(pb::ListTasksRequest {}),
    )
    .await
    {
        Ok(Ok(_)) => Some(started.elapsed().as_secs_f64()),
        _ => None,
    }
}

fn anonymous(server: &Server) -> anyhow::Result<geppetto_proto::client::Channel> {
    Ok(geppetto_proto::client::Channel::new(
        &geppetto_proto::client::Endpoint {
            url: server.url.clone(),
            ca_file: Some(server.ca.clone()),
            transport: geppetto_proto::client::Transport::Grpc,
        },
        Default::default(),
    )?)
}

async fn disk(options: &Options) -> anyhow::Result<Value> {
    let (_dir, server) = start(options).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = dir_bytes(&server.data_dir);
    let channel = anonymous(&server)?;
    // 1 MiB: a 4 MiB name is refused by the message size limit before any
    // handler (as the probe found it, a 1 MiB one was stored).
    let name = "n".repeat(1 << 20);
    let mut tasks =
        pb::tasks_client::TasksClient::new(channel.clone()).max_encoding_message_size(8 << 20);
    let mut enroll = pb::puppet_service_client::PuppetServiceClient::new(channel)
        .max_encoding_message_size(8 << 20);
    let started = Instant::now();
    for _ in 0..20 {
        let _ = tasks
            .create_task(pb::CreateTaskRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await;
        let _ = enroll
            .enroll(pb::EnrollRequest {
                enroll_token: "bogus".into(),
                name: name.clone(),
                ..Default::default()
            })
            .await;
    }
    let seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = dir_bytes(&server.data_dir);
    let refused = server.metric("geppetto_unauthenticated_calls_total").await;
    let operator = operator_call(&server).await;
    server.stop().await?;
    Ok(json!({
        "calls": 40,
        "request_bytes": 40 * (1 << 20),
        "seconds": seconds,
        "data_dir_growth_bytes": after as i64 - before as i64,
        "counted_refusals": refused,
        "operator_call_s": operator,
    }))
}

/// A TLS connection from the loopback address `source` offering `alpn`.
async fn tls_from(
    server: &Server,
    source: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in geppetto_proto::client::load_pem_certs(&server.ca).map_err(std::io::Error::other)? {
        roots.add(cert).map_err(std::io::Error::other)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().expect("an address"))?;
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        socket.connect(
            format!("127.0.0.1:{}", server.port)
                .parse()
                .expect("an address"),
        ),
    )
    .await
    .map_err(|_| std::io::Error::other("connect timed out"))??;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect("localhost".try_into().expect("a name"), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// From one address, as many HTTP/2 connections as it may hold, each with
/// 128 requests whose bodies never finish; with `token`, as a client with a
/// credential, else without.
async fn streams(options: &Options, with_token: bool) -> anyhow::Result<Value> {
    let (_dir, server) = start(options).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, _) = memory_kib(server.pid);
    let mut pending = Vec::new();
    let mut bodies = Vec::new();
    let mut connections = 0usize;
    for _ in 0..1000 {
        let Ok(tls) = tls_from(&server, "127.0.0.2", b"h2").await else {
            break;
        };
        let Ok(Ok((client, connection))) =
            tokio::time::timeout(Duration::from_secs(5), h2::client::handshake(tls)).await
        else {
            break;
        };
        tokio::spawn(async move {
            let _ = connection.await;
        });
        connections += 1;
        let mut client = client;
        for _ in 0..puppeteer::server::HTTP2_MAX_STREAMS {
            let ready = tokio::time::timeout(Duration::from_secs(2), client.clone().ready());
            let Ok(Ok(mut ready)) = ready.await else {
                break;
            };
            let mut request = http::Request::post("/geppetto.v1.Tasks/ListTasks")
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            if with_token {
                request = request.header("authorization", format!("Bearer {}", server.admin_token));
            }
            match ready.send_request(request.body(()).expect("a request"), false) {
                Ok((response, mut body)) => {
                    // The start of a message, never finished.
                    let _ = body.send_data(vec![0u8, 0, 0, 0, 9].into(), false);
                    pending.push(response);
                    bodies.push(body);
                }
                Err(_) => break,
            }
            client = ready;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_held, _) = memory_kib(server.pid);
    let operator = operator_call(&server).await;
    // Answered already (refused from their headers)?
    let mut answered = 0;
    let mut waiting = Vec::new();
    for mut response in pending {
        match futures_util::FutureExt::now_or_never(&mut response) {
            Some(_) => answered += 1,
            None => waiting.push(response),
        }
    }
    // The bodies never finish: the body timeout ends the rest.
    let started = Instant::now();
    let mut ended_by_timeout = 0;
    for response in waiting {
        if tokio::time::timeout(Duration::from_secs(60), response)
            .await
            .is_ok()
        {
            ended_by_timeout += 1;
        }
    }
    let waited = started.elapsed().as_secs_f64();
    let (rss_after, peak) = memory_kib(server.pid);
    drop(bodies);
    server.stop().await?;
    Ok(json!({
        "with_a_credential": with_token,
        "connections": connections,
        "requests": answered + ended_by_timeout,
        "refused_at_once": answered,
        "ended_by_the_body_timeout": ended_by_timeout,
        "waited_for_them_s": waited,
        "rss_before_kib": rss_before,
        "rss_while_open_kib": rss_held,
        "rss_after_kib": rss_after,
        "rss_peak_kib": peak,
        "operator_call_s": operator,
    }))
}

async fn silent(options: &Options) -> anyhow::Result<Value> {
    let (_dir, server) = start(options).await?;
    let mut results = Vec::new();
    for sources in [1usize, 4] {
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..1000 {
            let source = format!("127.0.0.{}", 2 + i % sources);
            match tls_from(&server, &source, b"h2").await {
                Ok(tls) => held.push(tls),
                Err(_) => refused += 1,
            }
        }
        let operator = operator_call(&server).await;
        let refused_metric = server.metric("geppetto_connections_refused_total").await;
        let accepted = held.len();
        let open = still_open(&mut held).await;
        results.push(json!({
            "source_addresses": sources,
            "attempted": 1000,
            "handshakes_completed": accepted,
            "still_open": open,
            "refused_or_closed": refused,
            "refused_metric": refused_metric,
            "operator_call_s": operator,
        }));
        drop(held);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    server.stop().await?;
    Ok(Value::Array(results))
}

async fn selectors(options: &Options) -> anyhow::Result<Value> {
    let (_dir, server) = start(options).await?;
    // The costliest shapes found by the parser's tests, at the cap.
    let worst = "a notin (b,c),".repeat(4096 / 14);
    let worst = worst.trim_end_matches(',').to_string();
    let mut admin = server.admin()?;
    let started = Instant::now();
    let n = 200;
    for _ in 0..n {
        let _ = admin
            .puppets
            .list_puppets(pb::ListPuppetsRequest {
                selector: worst.clone(),
                ..Default::default()
            })
            .await;
    }
    let per_call = started.elapsed().as_secs_f64() / n as f64;
    let huge = "a=b,".repeat(80_000);
    let started = Instant::now();
    let refused = admin
        .puppets
        .list_puppets(pb::ListPuppetsRequest {
            selector: huge,
            ..Default::default()
        })
        .await
        .err()
        .map(|s| format!("{:?}", s.code()));
    let huge_s = started.elapsed().as_secs_f64();
    // Three callers in a loop while the operator calls.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for _ in 0..3 {
        let (mut admin, worst, stop) = (server.admin()?, worst.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = admin
                    .puppets
                    .list_puppets(pb::ListPuppetsRequest {
                        selector: worst.clone(),
                        ..Default::default()
                    })
                    .await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let operator = operator_call(&server).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        let _ = l.await;
    }
    server.stop().await?;
    Ok(json!({
        "selector_bytes": worst.len(),
        "list_puppets_with_it_s": per_call,
        "selector_320k_answer": refused,
        "selector_320k_s": huge_s,
        "operator_call_during_3_loops_s": operator,
    }))
}
