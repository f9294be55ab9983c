//! Clients that do not play by the rules, against a real puppeteer on a
//! loopback port: what they may cost is bounded (issue 16, in part).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use geppetto_test_support::wait_until_async;

/// A TLS connection to the server offering only `alpn`.
async fn tls_to(
    server: &TestServer,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    tls_from(server, "127.0.0.1", alpn)
        .await
        .expect("a TLS connection")
}

/// A TLS connection to the server from the loopback address `source`
/// (all of 127/8 is loopback on Linux), offering only `alpn`.
async fn tls_from(
    server: &TestServer,
    source: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in geppetto_proto::client::load_pem_certs(&server.ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tcp_from(server, source).await?;
    tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
}

/// A TCP connection to the server from the loopback address `source`.
async fn tcp_from(server: &TestServer, source: &str) -> std::io::Result<tokio::net::TcpStream> {
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
}

/// One HTTP/2 connection may open at most 128 streams at once: the server
/// says so in its SETTINGS (h2 refuses streams past it), and with that many
/// left open an operator is still answered. (One unauthenticated
/// connection opening 200,000 streams used to grow the puppeteer by 1.5 GB.)
#[tokio::test]
async fn an_http2_connection_has_its_concurrent_streams_bounded() {
    let server = TestServer::start().await;
    let tls = tls_to(&server, b"h2").await;
    let (mut client, mut connection) = h2::client::handshake(tls).await.unwrap();
    // Drive the connection until the server's SETTINGS came.
    wait_until_async(
        "the server's SETTINGS came",
        Duration::from_secs(10),
        async || {
            let _ = tokio::time::timeout(Duration::from_millis(50), &mut connection).await;
            connection.max_concurrent_send_streams() != usize::MAX
        },
    )
    .await;
    assert_eq!(
        connection.max_concurrent_send_streams(),
        puppeteer::server::HTTP2_MAX_STREAMS as usize
    );
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    // Streams left open (headers, no end of body) up to the bound: the
    // client's own flow holds the rest; the server keeps answering others.
    let mut open = Vec::new();
    for _ in 0..puppeteer::server::HTTP2_MAX_STREAMS {
        client = client.ready().await.unwrap();
        let request = http::Request::post("https://localhost/geppetto.v1.Tasks/ListTasks")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let (response, stream) = client.send_request(request, false).unwrap();
        open.push((response, stream));
    }
    let mut admin = server.admin();
    let tasks = tokio::time::timeout(
        Duration::from_secs(10),
        admin
            .tasks
            .list_tasks(geppetto_proto::v1::ListTasksRequest {}),
    )
    .await
    .expect("an operator is still answered");
    assert!(tasks.is_ok(), "{tasks:?}");
    drop(open);
    driver.abort();
    server.stop().await;
}

/// A client that negotiates HTTP/2 and then says nothing (not even the
/// preface) is closed once the idle time is over (it used to stay forever,
/// holding a connection slot); a puppet on HTTP/2, whose held polls last
/// longer than that idle time, is not disturbed.
#[tokio::test]
async fn a_silent_http2_connection_is_closed_but_a_held_poll_is_not() {
    use tokio::io::AsyncReadExt;
    const IDLE: Duration = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.connection_idle_timeout = IDLE).await;
    let mut silent = tls_to(&server, b"h2").await;
    let began = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match silent.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                // The server's SETTINGS, a GOAWAY: not yet the end.
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the silent connection is still open");
    assert!(began.elapsed() >= IDLE, "closed before its idle time");

    // A puppet on native gRPC (HTTP/2), holding 5 s polls.
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = common::RealPuppet::start_with(
        tempfile::tempdir().unwrap(),
        &server.url,
        Some(&server.ca),
        &secret,
        "p1",
        |c| {
            c.transport = geppetto_proto::client::Transport::Grpc;
            c.poll_hold = Some(Duration::from_secs(5));
            c.poll_hold_floor = Some(Duration::from_secs(5));
        },
    );
    admin.wait_polling("p1").await;
    admin
        .script_task("hello", "echo hi", Duration::from_secs(30))
        .await;
    // Well into a hold longer than the idle time: the poll held now began
    // more than twice that ago.
    wait_until_async(
        "p1 has held a poll for twice the idle time",
        Duration::from_secs(60),
        async || {
            let p1 = admin
                .puppets
                .get_puppet(geppetto_proto::v1::GetPuppetRequest { name: "p1".into() })
                .await
                .unwrap()
                .into_inner();
            let held_for = p1.last_seen.and_then(|seen| {
                let seen = std::time::UNIX_EPOCH
                    + Duration::new(seen.seconds.max(0) as u64, seen.nanos.max(0) as u32);
                std::time::SystemTime::now().duration_since(seen).ok()
            });
            p1.polling && held_for.is_some_and(|held| held > IDLE * 2)
        },
    )
    .await;
    let job = admin.run_on("hello", &["p1"]).await;
    let job = admin.wait_job(&job.id, Duration::from_secs(60)).await;
    assert_eq!(
        job.runs[0].state,
        geppetto_proto::v1::RunState::Succeeded as i32,
        "{job:?}"
    );
    puppet.stop().await;
    server.stop().await;
}

/// Refused calls carrying a huge name, from a client without a valid
/// credential: the answer does not echo the name, and the refusals are
/// counted (metrics), never stored (20 such calls of 4 MB grew the data dir
/// by 1.1 GB, and broke `audit` and `events`).
#[tokio::test]
async fn a_refused_call_with_a_huge_name_is_neither_echoed_nor_stored() {
    use geppetto_proto::v1 as pb;
    let server = TestServer::start_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = server.running.as_ref().unwrap().metrics_addr.unwrap();
    let refused_before = unauthenticated_calls(metrics).await;
    let name = "n".repeat(1 << 20);
    // No credential at all.
    let anonymous = server.channel(geppetto_proto::client::Transport::Grpc, None);
    let tasks = pb::tasks_client::TasksClient::new(anonymous.clone());
    let mut enroll = pb::puppet_service_client::PuppetServiceClient::new(anonymous)
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let mut tasks = tasks
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    for _ in 0..5 {
        let refused = tasks
            .create_task(pb::CreateTaskRequest {
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().len() <= 1024,
            "{}",
            refused.message().len()
        );
        let refused = enroll
            .enroll(pb::EnrollRequest {
                enroll_token: "bogus".into(),
                name: name.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            refused.message().len() <= 1024,
            "{}",
            refused.message().len()
        );
    }
    let admin = server.admin();
    let audit = pb::audit_client::AuditClient::new(admin.channel.clone())
        .list_audit(pb::ListAuditRequest::default())
        .await
        .expect("the audit trail still reads")
        .into_inner();
    let anonymous: Vec<_> = audit.entries.iter().filter(|e| e.actor == "-").collect();
    assert!(anonymous.is_empty(), "stored: {anonymous:?}");
    assert_eq!(unauthenticated_calls(metrics).await - refused_before, 10);
    for entry in &audit.entries {
        assert!(
            entry.target.len() <= 256 && entry.message.len() <= 1024,
            "target {} bytes, message {} bytes",
            entry.target.len(),
            entry.message.len()
        );
    }
    let events = pb::events_client::EventsClient::new(admin.channel.clone())
        .list_events(pb::WatchEventsRequest::default())
        .await
        .expect("the events still read")
        .into_inner();
    for event in &events.events {
        assert!(event.summary.len() <= 2048, "{} bytes", event.summary.len());
    }
    server.stop().await;
}

/// `geppetto_unauthenticated_calls_total`, scraped.
async fn unauthenticated_calls(metrics: std::net::SocketAddr) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(metrics).await.unwrap();
    tcp.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_string(&mut text))
        .await
        .expect("metrics answer in time")
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("geppetto_unauthenticated_calls_total "))
        .expect("the counter is exported")
        .trim()
        .parse()
        .unwrap()
}

/// One gRPC-web call over HTTP/1.1 with `body` as its frames; the answer's
/// status code and message (from the headers of a trailers-only answer, or
/// from the trailers frame).
async fn grpc_web_call(server: &TestServer, path: &str, body: Vec<u8>) -> (String, String) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let tls = tls_to(server, b"http/1.1").await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let request = hyper::Request::post(path)
        .header("host", "localhost")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", server.admin_token))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .expect("an answer in time")
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let found =
        header("grpc-status").map(|code| (code, header("grpc-message").unwrap_or_default()));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    drop(sender);
    let _ = driver.await;
    if let Some(found) = found {
        return found;
    }
    // Skip data frames to the trailers frame (flag 0x80).
    let mut at = 0;
    while bytes[at] & 0x80 == 0 {
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 5 + len;
    }
    let text = String::from_utf8_lossy(&bytes[at + 5..]).into_owned();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    (field("grpc-status:"), field("grpc-message:"))
}

/// A gRPC frame holding `bytes`.
fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// A body that is not a valid message is the caller's error
/// (`InvalidArgument`, not `Internal`), and a unary call carrying a second
/// message is refused, not half-read (tonic dropped the extra frames
/// silently), on an ordinary route and on the puppets' poll route alike.
#[tokio::test]
async fn malformed_and_extra_request_messages_are_invalid_arguments() {
    use prost::Message;
    let server = TestServer::start().await;
    // Field 1, wire type 2, a length running past the end.
    let malformed = framed(&[0x0a, 0x7f, 0x01]);
    let list = geppetto_proto::v1::ListTasksRequest {}.encode_to_vec();
    let poll = geppetto_proto::v1::PollRequest::default().encode_to_vec();
    let twice = |message: &[u8]| [framed(message), framed(message)].concat();
    for (path, body, expected) in [
        (
            "/geppetto.v1.Tasks/ListTasks",
            malformed.clone(),
            "not a valid message",
        ),
        (
            "/geppetto.v1.Tasks/ListTasks",
            twice(&list),
            "one request message",
        ),
        (
            "/geppetto.v1.PuppetService/Poll",
            malformed.clone(),
            "not a valid message",
        ),
        (
            "/geppetto.v1.PuppetService/Poll",
            twice(&poll),
            "one request message",
        ),
    ] {
        let (code, message) = grpc_web_call(&server, path, body).await;
        let message = percent_decoded(&message);
        assert_eq!(code, "3", "{path}: {message}");
        assert!(message.contains(expected), "{path}: {message}");
    }
    // One message is still fine.
    let (code, message) =
        grpc_web_call(&server, "/geppetto.v1.Tasks/ListTasks", framed(&list)).await;
    assert_eq!(code, "0", "{message}");
    server.stop().await;
}

/// `grpc-message` is percent-encoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request whose body stops coming (half a body sent, then nothing) is
/// failed after the body timeout and its connection closed, instead of
/// holding both for as long as the client likes, even from a client with a
/// credential.
#[tokio::test]
async fn a_stalled_request_body_is_cut_after_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start_with(|c| c.request_body_timeout = Duration::from_secs(2)).await;
    // With a credential (a call without one is refused before its body is
    // read: see below).
    let mut tls = tls_to(&server, b"http/1.1").await;
    let head = format!(
        "POST /geppetto.v1.Tasks/ListTasks HTTP/1.1\r\nhost: localhost\r\n\
         authorization: Bearer {}\r\n\
         content-type: application/grpc-web+proto\r\ncontent-length: 1000\r\n\r\n",
        server.admin_token
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(b"\x00\x00\x00\x03\xe3").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer))
        .await
        .expect("the connection ends after the body timeout")
        .ok();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "ended before the timeout: {:?}",
        String::from_utf8_lossy(&answer)
    );
    server.stop().await;
}

/// One source address may hold at most `max_connections_per_address`
/// connections: past it, a new one is closed at once, while others (here
/// the operator on another address) are served as usual.
#[tokio::test]
async fn one_address_cannot_take_more_than_its_share_of_connections() {
    use geppetto_proto::v1 as pb;
    let server = TestServer::start_with(|c| c.max_connections_per_address = Some(8)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(
            tls_from(&server, "127.0.0.2", b"h2")
                .await
                .expect("within the bound"),
        );
    }
    let refused = tls_from(&server, "127.0.0.2", b"h2").await;
    assert!(
        refused.is_err(),
        "a ninth connection from the same address was served"
    );
    let mut admin = server.admin();
    admin
        .tasks
        .list_tasks(pb::ListTasksRequest {})
        .await
        .expect("another address is served");
    drop(held);
    // Its connections closed, the address may connect again.
    wait_until_async(
        "127.0.0.2 may connect again",
        Duration::from_secs(10),
        async || tls_from(&server, "127.0.0.2", b"h2").await.is_ok(),
    )
    .await;
    server.stop().await;
}

/// At the connection cap, silent connections that never carried a
/// credential are evicted, oldest first, to make room: an operator arriving
/// during the flood is answered within seconds, not after the flood's
/// connections time out (a minute for idle HTTP/2 ones).
#[tokio::test]
async fn at_the_connection_cap_silent_unauthenticated_connections_make_room() {
    use geppetto_proto::v1 as pb;
    let server = TestServer::start_with(|c| {
        c.max_connections = Some(32);
        c.max_connections_per_address = Some(0);
        c.max_unauthenticated_per_address = 0;
    })
    .await;
    let mut flood = Vec::new();
    for _ in 0..32 {
        flood.push(
            tls_from(&server, "127.0.0.2", b"h2")
                .await
                .expect("below the cap"),
        );
    }
    // The cap is reached: the next connection waits for a slot.
    let started = tokio::time::Instant::now();
    let mut admin = server.admin();
    tokio::time::timeout(
        Duration::from_secs(20),
        admin.tasks.list_tasks(pb::ListTasksRequest {}),
    )
    .await
    .expect("the operator is answered during the flood")
    .expect("and served");
    assert!(started.elapsed() < Duration::from_secs(20));
    drop(flood);
    server.stop().await;
}

/// On a connection no valid credential has proven yet, a call without one
/// is refused from its headers, before its body is read: a client without
/// a credential cannot hold streams open by never finishing their bodies
/// (over HTTP/2 and over gRPC-web alike), while enrollment, which needs no
/// bearer token, still reads its body.
#[tokio::test]
async fn a_call_without_a_credential_is_refused_before_its_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start().await;

    // HTTP/2: headers and the start of a body, never finished.
    let tls = tls_to(&server, b"h2").await;
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("/geppetto.v1.Tasks/ListTasks")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(vec![0u8, 0, 0, 0, 9].into(), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("refused at once, not after the body timeout")
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "16", "{response:?}");

    // gRPC-web over HTTP/1.1, the same.
    let mut tls = tls_to(&server, b"http/1.1").await;
    tls.write_all(
        b"POST /geppetto.v1.Tasks/ListTasks HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/grpc-web+proto\r\ncontent-length: 1000\r\n\r\n\
          \x00\x00\x00\x03\xe3",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
        .await
        .expect("refused at once over gRPC-web too")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]).to_lowercase();
    assert!(text.contains("grpc-status: 16"), "{text}");
    assert!(
        text.contains("content-type: application/grpc-web"),
        "{text}"
    );

    // Enrollment needs no bearer token: its body is read and judged.
    let mut enroll = geppetto_proto::v1::puppet_service_client::PuppetServiceClient::new(
        server.channel(geppetto_proto::client::Transport::GrpcWeb, None),
    );
    let refused = enroll
        .enroll(geppetto_proto::v1::EnrollRequest {
            enroll_token: "bogus".into(),
            name: "p1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert!(
        refused.message().contains("enrollment token"),
        "{refused:?}"
    );
    server.stop().await;
}
