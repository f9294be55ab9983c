//! The gate before the API: on a connection that no request has yet proven
//! with a valid credential (see [`super::limits`]), a request without one
//! is refused from its headers alone, before its body is read or decoded,
//! unless it is one of the calls made without a credential (enrollment,
//! a health check, reflection). So a client without a credential costs one lookup
//! per request and holds no stream while it trickles a body; one with a
//! credential proves its connection with its first request and passes
//! straight through afterwards (the API checks every call anyway).
//!
//! Refusals are counted and logged sparingly with the API's own
//! (`geppetto_unauthenticated_calls_total`), and answered with the API's
//! own message; over gRPC-web too, as the gate sits inside the gRPC-web
//! translation.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use tonic::body::Body;

use super::limits::Ticket;
use crate::api::Shared;

/// Calls served without a credential: enrollment, a health check (not the
/// health watch: a stream that never ends would hold a connection that is
/// neither idle nor proven), reflection.
fn open(path: &str) -> bool {
    // The install script and the puppet binaries (which check an
    // enrollment token themselves): see `server/install.rs`.
    path.starts_with(super::install::PREFIX)
        || path == "/geppetto.v1.PuppetService/Enroll"
        || path == "/grpc.health.v1.Health/Check"
        || path.starts_with("/grpc.reflection.")
}

/// The gate around `inner` (see the module).
#[derive(Clone)]
pub struct Gate<S> {
    inner: S,
    state: Shared,
}

impl<S> Gate<S> {
    pub fn new(inner: S, state: Shared) -> Self {
        Gate { inner, state }
    }
}

impl<S> tower::Service<Request<Body>> for Gate<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response<Body>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(ticket) = request.extensions().get::<Arc<Ticket>>()
            && !ticket.is_proven()
        {
            let state = &self.state;
            match state.auth.check_credential(&state.store, request.headers()) {
                Ok(()) => ticket.prove(),
                Err(refused) if !open(request.uri().path()) => {
                    let peer = request
                        .extensions()
                        .get::<tonic::transport::server::TcpConnectInfo>()
                        .and_then(|info| info.remote_addr())
                        .map(|addr| addr.to_string())
                        .unwrap_or_else(|| "-".into());
                    state
                        .auth
                        .refusals()
                        .refused(request.uri().path(), &peer, &refused);
                    return Either::Right(ready(Ok(tonic::Status::from(refused).into_http())));
                }
                Err(_) => {}
            }
        }
        Either::Left(self.inner.call(request))
    }
}

/// [`Gate`] as a layer.
#[derive(Clone)]
pub struct GateLayer {
    state: Shared,
}

impl GateLayer {
    pub fn new(state: Shared) -> Self {
        GateLayer { state }
    }
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate::new(inner, self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::open;

    #[test]
    fn only_enrollment_health_checks_and_reflection_pass_without_a_credential() {
        assert!(open("/geppetto.v1.PuppetService/Enroll"));
        assert!(open("/grpc.health.v1.Health/Check"));
        assert!(open(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!open("/grpc.health.v1.Health/Watch"));
        assert!(!open("/geppetto.v1.PuppetService/Poll"));
        assert!(!open("/geppetto.v1.Jobs/ListJobs"));
        assert!(!open("/geppetto.v1.PuppetService/EnrollX"));
    }
}
