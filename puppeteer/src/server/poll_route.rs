//! `PuppetService/Poll` served with a smaller future than tonic's generated
//! one: every idle puppet keeps one poll held, for minutes.
//!
//! tonic's generated service keeps a call in one future sized for its
//! largest step, the decoding of the request (the request's head, the body,
//! its decoder and buffers): 2,096 bytes, kept for the whole call. 10,000
//! held polls kept 20 MB of it. Here the request is decoded in a future of
//! its own, freed once it is done; what waits through the hold is the
//! service's future (its own box), the service and the answer's encoding:
//! 40 bytes (736 while the request was captured by that future rather
//! than by the decoding's).
//!
//! Decoding and encoding are tonic's (`Streaming`, `EncodeBody`, the codec
//! of the generated code, gzip accepted and sent as for the rest of
//! `PuppetService`, the same size limit); only the two compression headers
//! are read here, as tonic keeps its readers private: an unsupported
//! `grpc-encoding` is answered `Unimplemented` with the encodings accepted,
//! and the answer is compressed with the first encoding of the client's
//! `grpc-accept-encoding` the puppeteer supports. Every other method of the
//! service goes through tonic's generated code; the compression and the
//! size limit here must stay those of `PuppetServiceServer` in
//! `server.rs` (gzip both ways, `MAX_MESSAGE_BYTES`).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use geppetto_proto::codec::Codec as ApiCodec;
use geppetto_proto::v1::puppet_service_server::PuppetService;
use geppetto_proto::v1::{PollRequest, PollResponse};
use http::{HeaderMap, HeaderValue, Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{
    Codec, CompressionEncoding, EncodeBody, SingleMessageCompressionOverride, Streaming,
};
use tonic::codegen::BoxFuture;
use tonic::metadata::GRPC_CONTENT_TYPE;

/// The method served here.
pub const PATH: &str = "/geppetto.v1.PuppetService/Poll";

const ENCODING: &str = "grpc-encoding";
const ACCEPT_ENCODING: &str = "grpc-accept-encoding";
/// Headers of the protocol that an answer's metadata cannot set.
const RESERVED: [&str; 5] = [
    "te",
    "content-type",
    "grpc-message",
    "grpc-message-type",
    "grpc-status",
];

/// `Poll` of `service`, requests of at most `max_request_bytes`.
pub struct PollRoute<S> {
    service: Arc<S>,
    max_request_bytes: usize,
}

impl<S> PollRoute<S> {
    pub fn new(service: S, max_request_bytes: usize) -> Self {
        PollRoute {
            service: Arc::new(service),
            max_request_bytes,
        }
    }
}

impl<S> Clone for PollRoute<S> {
    fn clone(&self) -> Self {
        PollRoute {
            service: self.service.clone(),
            max_request_bytes: self.max_request_bytes,
        }
    }
}

impl<S: PuppetService> tower::Service<Request<Body>> for PollRoute<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let service = self.service.clone();
        let answer_encoding = answer_encoding(request.headers());
        // Made here, not in the future below: what that future captures it
        // keeps for its whole life. The decoding's box is freed once done.
        let decoding = Box::pin(decode(request, self.max_request_bytes));
        let held = async move {
            let request = match decoding.await {
                Ok(request) => request,
                Err(status) => return Ok(status.into_http()),
            };
            let answer = service.poll(request).await;
            Ok(encode(answer, answer_encoding))
        };
        Box::pin(held)
    }
}

/// The API's codec, as tonic's generated server uses it (one request
/// message, decode errors are the caller's).
fn codec() -> ApiCodec<PollResponse, PollRequest> {
    ApiCodec::default()
}

/// The request's message, with its metadata (trailers merged, as tonic
/// does) and extensions.
async fn decode(request: Request<Body>, max: usize) -> Result<tonic::Request<PollRequest>, Status> {
    let encoding = request_encoding(request.headers())?;
    let (mut parts, body) = request.into_parts();
    let mut stream = Streaming::new_request(codec().decoder(), body, encoding, Some(max));
    let message = stream
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the call carries no request message"))?;
    if let Some(trailers) = stream.trailers().await? {
        parts.headers.extend(trailers.into_headers());
    }
    Ok(tonic::Request::from_http(Request::from_parts(
        parts, message,
    )))
}

/// The answer as tonic's server sends it: metadata as headers, the message
/// framed (and compressed if the client accepts it), the status in trailers.
fn encode(
    answer: Result<tonic::Response<PollResponse>, Status>,
    encoding: Option<CompressionEncoding>,
) -> Response<Body> {
    let response = match answer {
        Ok(response) => response,
        Err(status) => return status.into_http(),
    };
    let (metadata, message, extensions) = response.into_parts();
    // A service may ask for this one message not to be compressed.
    let compression_override = extensions
        .get::<SingleMessageCompressionOverride>()
        .copied()
        .unwrap_or_default();
    let mut head = Response::new(());
    *head.version_mut() = http::Version::HTTP_2;
    *head.headers_mut() = metadata.into_headers();
    *head.extensions_mut() = extensions;
    let headers = head.headers_mut();
    // What tonic keeps out of an answer's metadata.
    for reserved in RESERVED {
        headers.remove(reserved);
    }
    headers.insert(http::header::CONTENT_TYPE, GRPC_CONTENT_TYPE);
    if let Some(encoding) = encoding {
        // An encoding's name is a valid header value (`gzip`).
        if let Ok(name) = HeaderValue::from_str(&encoding.to_string()) {
            headers.insert(ENCODING, name);
        }
    }
    let body = EncodeBody::new_server(
        codec().encoder(),
        futures_util::stream::iter([Ok(message)]),
        encoding,
        compression_override,
        None,
    );
    head.map(|()| Body::new(body))
}

/// The compression of the request's message (`grpc-encoding`): none,
/// gzip, or an error naming what is accepted.
fn request_encoding(headers: &HeaderMap) -> Result<Option<CompressionEncoding>, Status> {
    match headers.get(ENCODING).map(HeaderValue::as_bytes) {
        None | Some(b"identity") => Ok(None),
        Some(b"gzip") => Ok(Some(CompressionEncoding::Gzip)),
        Some(other) => {
            let other = match std::str::from_utf8(other) {
                Ok(name) => name.to_string(),
                Err(_) => format!("{other:?}"),
            };
            let mut status = Status::unimplemented(format!(
                "Content is compressed with `{other}` which isn't supported"
            ));
            status.metadata_mut().insert(
                ACCEPT_ENCODING,
                tonic::metadata::MetadataValue::from_static("gzip,identity"),
            );
            Err(status)
        }
    }
}

/// The compression of the answer: the first of the client's
/// `grpc-accept-encoding` that is supported (gzip), else none.
fn answer_encoding(headers: &HeaderMap) -> Option<CompressionEncoding> {
    let accepted = headers.get(ACCEPT_ENCODING)?.to_str().ok()?;
    accepted
        .split(',')
        .map(str::trim)
        .find(|e| *e == "gzip")
        .map(|_| CompressionEncoding::Gzip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn compression_headers_are_read_as_tonic_reads_them() {
        assert_eq!(request_encoding(&headers(&[])).unwrap(), None);
        assert_eq!(
            request_encoding(&headers(&[(ENCODING, "identity")])).unwrap(),
            None
        );
        assert_eq!(
            request_encoding(&headers(&[(ENCODING, "gzip")])).unwrap(),
            Some(CompressionEncoding::Gzip)
        );
        let refused = request_encoding(&headers(&[(ENCODING, "br")])).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented);
        assert_eq!(
            refused.metadata().get(ACCEPT_ENCODING).unwrap(),
            "gzip,identity"
        );

        assert_eq!(answer_encoding(&headers(&[])), None);
        assert_eq!(
            answer_encoding(&headers(&[(ACCEPT_ENCODING, "zstd")])),
            None
        );
        assert_eq!(
            answer_encoding(&headers(&[(ACCEPT_ENCODING, "zstd, gzip")])),
            Some(CompressionEncoding::Gzip)
        );
    }

    #[test]
    fn an_answer_carries_its_metadata_but_not_the_protocols_headers() {
        let mut response = tonic::Response::new(PollResponse::default());
        let metadata = response.metadata_mut();
        metadata.insert("x-kept", "1".parse().unwrap());
        metadata.insert("grpc-status", "13".parse().unwrap());
        let answer = encode(Ok(response), Some(CompressionEncoding::Gzip));
        let headers = answer.headers();
        assert_eq!(headers["x-kept"], "1");
        assert!(headers.get("grpc-status").is_none());
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers[ENCODING], "gzip");

        let refused = encode(Err(Status::permission_denied("no")), None);
        let status = Status::from_header_map(refused.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "no");
    }
}
