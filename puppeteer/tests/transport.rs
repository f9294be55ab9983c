//! One port, every client: native gRPC with reflection over HTTP/2, and
//! gRPC-web over HTTP/1.1 from a client that offers only `http/1.1` in TLS.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use geppetto_proto::client::Transport;
use geppetto_proto::v1 as pb;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use prost::Message;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn a_generic_client_discovers_the_services_by_reflection_over_http2() {
    let server = TestServer::start().await;
    let channel = server.channel(Transport::Grpc, None);
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for wanted in [
        "geppetto.v1.PuppetService",
        "geppetto.v1.Puppets",
        "geppetto.v1.EnrollTokens",
        "geppetto.v1.Tasks",
        "geppetto.v1.Jobs",
        "geppetto.v1.Runs",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} missing from {names:?}"
        );
    }
    // The descriptors are there too, so a client can build calls from them.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "geppetto.v1.Jobs".into(),
        )),
    };
    let mut responses = ServerReflectionClient::new(server.channel(Transport::Grpc, None))
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
        panic!("unexpected answer {response:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

/// Frames one gRPC message: flag, big-endian length, bytes.
fn frame(message: &impl Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn grpc_web_over_http1_from_a_client_offering_only_http1() {
    let server = TestServer::start().await;
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
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let port = server.url.rsplit(':').next().unwrap();
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake offering only http/1.1");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let driver = tokio::spawn(conn);
    let body = frame(&geppetto_proto::v1::ListTasksRequest {});
    let request = hyper::Request::post("/geppetto.v1.Tasks/ListTasks")
        .header("host", "localhost")
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {}", server.admin_token))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), hyper::Version::HTTP_11);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/grpc-web"),
        "{:?}",
        response.headers()
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    // A data frame, then the trailers frame (flag 0x80) inside the body.
    assert_eq!(bytes[0], 0);
    let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
    let tasks = geppetto_proto::v1::ListTasksResponse::decode(&bytes[5..5 + len]).unwrap();
    assert!(tasks.tasks.is_empty());
    let trailers = &bytes[5 + len..];
    assert_eq!(trailers[0], 0x80);
    let text = String::from_utf8_lossy(&trailers[5..]).to_lowercase();
    assert!(text.contains("grpc-status:0"), "{text}");
    drop(sender);
    let _ = driver.await;
    server.stop().await;
}

/// The protocol each client transport offers in TLS's ALPN, as a server
/// offering both sees it: gRPC-web says `http/1.1` (so the server need not
/// guess the protocol from the first bytes), native gRPC says `h2`.
#[tokio::test]
async fn each_transport_names_its_protocol_in_alpn() {
    use geppetto_proto::client::{Channel, Endpoint, TokenSlot};
    use geppetto_proto::v1::tasks_client::TasksClient;

    let dir = tempfile::tempdir().unwrap();
    let (files, _) = puppeteer::pki::ensure_local_tls(dir.path(), &["localhost".into()]).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(puppeteer::pki::server_tls_config(&files).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for (transport, expected) in [
        (Transport::GrpcWeb, &b"http/1.1"[..]),
        (Transport::Grpc, &b"h2"[..]),
    ] {
        let endpoint = Endpoint {
            url: format!("https://localhost:{port}"),
            ca_file: files.ca.clone(),
            transport,
        };
        let mut client = TasksClient::new(Channel::new(&endpoint, TokenSlot::default()).unwrap());
        // The call fails when the connection is dropped; only the handshake
        // matters here.
        let call = tokio::spawn(async move {
            let _ = client
                .list_tasks(geppetto_proto::v1::ListTasksRequest {})
                .await;
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.expect("TLS handshake");
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(expected),
            "{transport:?}"
        );
        drop(tls);
        call.await.unwrap();
    }
}

/// Past the routing of calls to services: a call to no service is answered
/// `Unimplemented` over both transports (`Unauthenticated` without a
/// credential: the gate answers before the routing), and a held poll ends
/// early enough to be answered within the deadline its client set
/// (`grpc-timeout`).
#[tokio::test]
async fn unknown_calls_and_client_deadlines_get_their_answers() {
    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(30)).await;
    for transport in [Transport::Grpc, Transport::GrpcWeb] {
        for (token, expected) in [
            (
                Some(server.admin_token.as_str()),
                tonic::Code::Unimplemented,
            ),
            (None, tonic::Code::Unauthenticated),
        ] {
            let mut grpc = tonic::client::Grpc::new(server.channel(transport, token));
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static("/geppetto.v1.Nothing/Call");
            let codec = tonic_prost::ProstCodec::<(), ()>::default();
            let status = grpc
                .unary(tonic::Request::new(()), path, codec)
                .await
                .unwrap_err();
            assert_eq!(status.code(), expected, "{transport:?}: {status:?}");
        }
    }

    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let mut puppet = common::FakePuppet::enroll(&server, &secret, "p1").await;
    let mut poll = tonic::Request::new(pb::PollRequest {
        free_slots: 1,
        ..Default::default()
    });
    poll.set_timeout(Duration::from_millis(2_500));
    let answer = puppet.client.poll(poll).await.unwrap().into_inner();
    let hold = answer.hold.expect("a held poll says its hold");
    assert!(
        hold.seconds == 0 && hold.nanos <= 500_000_000,
        "the hold leaves the margin before the deadline: {hold:?}"
    );
    server.stop().await;
}

/// `Poll` is served apart from the rest of `PuppetService`
/// (`server/poll_route.rs`): over both transports it takes a compressed
/// request, answers compressed to a client that accepts it, and refuses an
/// encoding it does not know, naming the one it accepts.
#[tokio::test]
async fn polls_are_compressed_both_ways_and_unknown_encodings_refused() {
    use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
    use tonic::codec::CompressionEncoding;

    let server = TestServer::start_with(|c| c.poll_timeout = Duration::from_secs(30)).await;
    let mut admin = server.admin();
    let secret = admin.enroll_secret().await;
    let puppet = common::FakePuppet::enroll(&server, &secret, "p1").await;
    let poll = || pb::PollRequest {
        free_slots: 1,
        hold: Some(prost_types::Duration {
            seconds: 0,
            nanos: 100_000_000,
        }),
        ..Default::default()
    };
    for transport in [Transport::Grpc, Transport::GrpcWeb] {
        let channel = server.channel(transport, Some(&puppet.credential));
        let mut client = PuppetServiceClient::new(channel.clone())
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        let answer = client.poll(poll()).await.unwrap();
        assert_eq!(
            answer
                .metadata()
                .get("grpc-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("gzip"),
            "{transport:?}"
        );
        assert!(answer.get_ref().server_time.is_some(), "{transport:?}");

        let mut plain = PuppetServiceClient::new(channel);
        let answer = plain.poll(poll()).await.unwrap();
        assert!(
            answer.metadata().get("grpc-encoding").is_none(),
            "{transport:?}"
        );

        let mut request = tonic::Request::new(poll());
        request
            .metadata_mut()
            .insert("grpc-encoding", "br".parse().unwrap());
        let status = plain.poll(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unimplemented,
            "{transport:?}: {status:?}"
        );
        assert_eq!(
            status
                .metadata()
                .get("grpc-accept-encoding")
                .map(|v| v.to_str().unwrap()),
            Some("gzip,identity"),
            "{transport:?}"
        );
    }
    server.stop().await;
}
