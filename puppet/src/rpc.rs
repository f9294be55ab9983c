//! Calls to the puppeteer: timeouts, retries and conversions at the edge.
//!
//! Every call the puppet makes is unary and idempotent, so the answer to a
//! failure is to send the same request again. Which failures heal by
//! themselves (the link, the server restarting) and which never will (the
//! server refuses the request) is decided here, once.

use std::future::Future;
use std::time::Duration;

use geppetto_proto::client::Channel;
use geppetto_proto::v1;
use geppetto_proto::v1::puppet_service_client::PuppetServiceClient;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::backoff::Backoff;
use crate::executor::Program;
use crate::records::{FinishReport, Outcome};

/// The generated client over the shared channel.
pub type Client = PuppetServiceClient<Channel>;

/// The deadline of every unary call except the long-poll.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a retried call gave up.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The puppet is shutting down.
    #[error("the puppet is shutting down")]
    Stopped,
    /// The server refused the request; sending it again will not help.
    #[error("the puppeteer refused the request: {0}")]
    Refused(Status),
}

/// How a failed call should be treated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// A transient failure (the link, an overloaded or restarting server).
    Soon,
    /// The credential is not accepted: retry, but slowly, until an operator fixes it.
    Slowly,
    /// The server refused the request itself.
    Never,
}

pub fn classify(status: &Status) -> Retry {
    match status.code() {
        Code::Unauthenticated => Retry::Slowly,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented => Retry::Never,
        _ => Retry::Soon,
    }
}

/// Whether a failed call broke on the way (the connection was closed or
/// reset, the answer cut off) rather than being refused by the puppeteer or
/// never connected. Statuses the server sends carry no source error; the
/// ones made by the transport do.
pub fn broke_on_the_way(status: &Status) -> bool {
    use std::error::Error;
    if !matches!(
        status.code(),
        Code::Unknown | Code::Unavailable | Code::Internal | Code::Cancelled
    ) {
        return false;
    }
    let mut source: Option<&(dyn Error + 'static)> = status.source();
    if source.is_none() {
        return false;
    }
    while let Some(error) = source {
        if is_connect_failure(error) {
            return false;
        }
        source = error.source();
    }
    true
}

/// A failure to establish the connection (refused, unreachable, TLS), by
/// the error's type.
fn is_connect_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(io) = error.downcast_ref::<std::io::Error>()
        && matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
        )
    {
        return true;
    }
    geppetto_proto::client::is_connect_error(error)
}

/// Wraps a message with the deadline, sent to the server too.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Awaits a call with a client-side deadline as well, since a server that
/// stopped answering would otherwise hold the call forever.
pub async fn with_deadline<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer from the puppeteer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

/// Sends a call until it is answered, the server refuses it, or `stop` fires.
pub async fn retry<T, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut call: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::standard();
    loop {
        let result = tokio::select! {
            result = call() => result,
            _ = stop.cancelled() => return Err(CallError::Stopped),
        };
        let status = match result {
            Ok(answer) => return Ok(answer),
            Err(status) => status,
        };
        let delay = match classify(&status) {
            Retry::Never => return Err(CallError::Refused(status)),
            Retry::Soon => {
                tracing::warn!(call = what, code = ?status.code(), error = status.message(), "call failed; retrying");
                backoff.next_delay()
            }
            Retry::Slowly => {
                tracing::error!(
                    call = what,
                    error = status.message(),
                    "the puppeteer refused this puppet's credential (revoked, or rotated while it was offline past the grace period); retrying slowly"
                );
                backoff.slow_delay()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.cancelled() => return Err(CallError::Stopped),
        }
    }
}

pub fn timestamp_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

pub fn to_proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

/// A proto duration as a std one; negative or absent means `None`.
pub fn from_proto_duration(d: Option<&prost_types::Duration>) -> Option<Duration> {
    let d = d?;
    let secs = u64::try_from(d.seconds).ok()?;
    let nanos = u32::try_from(d.nanos).ok()?;
    Some(Duration::new(secs, nanos))
}

pub fn to_proto_outcome(outcome: Outcome) -> v1::Outcome {
    match outcome {
        Outcome::Exited => v1::Outcome::Exited,
        Outcome::Signaled => v1::Outcome::Signaled,
        Outcome::TimedOut => v1::Outcome::TimedOut,
        Outcome::Cancelled => v1::Outcome::Cancelled,
        Outcome::StartFailed => v1::Outcome::StartFailed,
        Outcome::Interrupted => v1::Outcome::Interrupted,
        Outcome::Rebooted => v1::Outcome::Rebooted,
    }
}

pub fn finish_request(run_id: &str, attempt: u32, report: &FinishReport) -> v1::FinishRunRequest {
    v1::FinishRunRequest {
        run_id: run_id.to_string(),
        attempt,
        outcome: to_proto_outcome(report.outcome) as i32,
        exit_code: report.exit_code,
        signal: report.signal,
        duration: Some(to_proto_duration(report.duration)),
        log_length: report.log_length,
        message: report.message.clone(),
    }
}

/// The program of a run spec; `None` when the spec holds none.
pub fn program_of(spec: &v1::RunSpec) -> Option<Program> {
    match spec.program.as_ref()?.kind.as_ref()? {
        v1::program::Kind::Script(script) => Some(Program::Script {
            body: script.body.clone(),
            interpreter: script.interpreter.clone(),
        }),
        v1::program::Kind::Argv(argv) => Some(Program::Argv(argv.args.clone())),
        // Not a process: see `upgrade`.
        v1::program::Kind::Upgrade(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use geppetto_proto::client::{Channel, Endpoint, TokenSlot, Transport};
    use geppetto_proto::v1 as pb;

    use super::*;

    /// A call whose connection never came up (the TLS handshake was cut)
    /// did not break on the way, over either transport; one whose
    /// connection was reset after it was sent did. Told apart by the
    /// errors' types, not their text.
    #[tokio::test]
    async fn a_connection_that_never_came_up_did_not_break_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) =
            puppeteer::pki::ensure_local_tls(dir.path(), &["localhost".into()]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and closes at once: every TLS handshake fails.
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                drop(tcp);
            }
        });
        for transport in [Transport::Grpc, Transport::GrpcWeb] {
            let endpoint = Endpoint {
                url: format!("https://localhost:{port}"),
                ca_file: files.ca.clone(),
                transport,
            };
            let channel = Channel::new(&endpoint, TokenSlot::default()).unwrap();
            let status = pb::puppet_service_client::PuppetServiceClient::new(channel)
                .poll(pb::PollRequest::default())
                .await
                .unwrap_err();
            assert!(!broke_on_the_way(&status), "{transport:?}: {status:?}");
        }
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(broke_on_the_way(&Status::from_error(Box::new(reset))));
    }
}
