//! Routes each gRPC call to its service by the service name in its path
//! (`/geppetto.v1.Jobs/Create`), as tonic's own `Routes` does, with less
//! kept per call.
//!
//! tonic's `Routes` is an axum router: each call it forwards carries an
//! axum route future (the request's place kept, a second boxed future) and
//! a body wrapped twice each way. A held poll keeps all of that for its
//! whole hold, and 10,000 puppets each hold one; here a call is only the
//! boxed future tonic's generated service returns.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tower::{Service, ServiceExt as _};

type Answer = BoxFuture<Response<Body>, Infallible>;

/// A service of tonic's generated code, shared by all calls.
trait GrpcService: Send + Sync {
    fn answer(&self, request: Request<Body>) -> Answer;
}

impl<S> GrpcService for S
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
        + Clone
        + Send
        + Sync
        + 'static,
{
    fn answer(&self, request: Request<Body>) -> Answer {
        let mut service = self.clone();
        // tonic's generated services are always ready; the general case
        // is kept for any other.
        match service.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => service.call(request),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Box::pin(service.oneshot(request)),
        }
    }
}

/// The API's gRPC services by name, and methods served apart from their
/// service by path.
#[derive(Clone, Default)]
pub struct Routes {
    table: Arc<Table>,
}

#[derive(Default)]
struct Table {
    services: HashMap<&'static str, Box<dyn GrpcService>>,
    methods: HashMap<&'static str, Box<dyn GrpcService>>,
    /// Plain HTTP served beside gRPC, by path prefix (the install script).
    prefixes: Vec<(&'static str, Box<dyn GrpcService>)>,
}

impl Routes {
    fn table(&mut self) -> &mut Table {
        Arc::get_mut(&mut self.table).expect("routes are built before use")
    }

    /// Adds `service`, routed by its name. Panics if a service of that
    /// name was added already (a programming error).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let added = self.table().services.insert(S::NAME, Box::new(service));
        assert!(added.is_none(), "service {} added twice", S::NAME);
        self
    }

    /// Serves the method at `path` (`/package.Service/Method`) with
    /// `service` rather than with its service's. Panics if that method was
    /// added already (a programming error).
    pub fn add_method<S>(mut self, path: &'static str, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let added = self.table().methods.insert(path, Box::new(service));
        assert!(added.is_none(), "method {path} added twice");
        self
    }

    /// Serves every path starting with `prefix` with `service` (plain
    /// HTTP beside gRPC).
    pub fn add_prefix<S>(mut self, prefix: &'static str, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = Answer>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        self.table().prefixes.push((prefix, Box::new(service)));
        self
    }

    fn route(&self, path: &str) -> Option<&dyn GrpcService> {
        if let Some(method) = self.table.methods.get(path) {
            return Some(method.as_ref());
        }
        if let Some((_, service)) = self
            .table
            .prefixes
            .iter()
            .find(|(p, _)| path.starts_with(p))
        {
            return Some(service.as_ref());
        }
        let (service, method) = path.strip_prefix('/')?.split_once('/')?;
        if method.is_empty() {
            return None;
        }
        self.table.services.get(service).map(Box::as_ref)
    }
}

impl Service<Request<Body>> for Routes {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Answer {
        match self.route(request.uri().path()) {
            Some(service) => service.answer(request),
            // What tonic's routes answer.
            None => Box::pin(std::future::ready(Ok(
                tonic::Status::unimplemented("").into_http()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Named;

    impl NamedService for Named {
        const NAME: &'static str = "test.v1.Named";
    }

    impl Service<Request<Body>> for Named {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = Answer;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<Body>) -> Answer {
            let path = request.uri().path().to_owned();
            Box::pin(async move { Ok(Response::new(Body::new(path))) })
        }
    }

    async fn answer(routes: &mut Routes, path: &str) -> Response<Body> {
        let request = Request::post(path).body(Body::empty()).unwrap();
        routes.call(request).await.unwrap()
    }

    fn grpc_status(response: &Response<Body>) -> Option<&str> {
        response.headers().get("grpc-status")?.to_str().ok()
    }

    #[tokio::test]
    async fn calls_go_to_the_service_their_path_names() {
        use http_body_util::BodyExt as _;
        let mut routes = Routes::default().add_service(Named);
        let response = answer(&mut routes, "/test.v1.Named/Method").await;
        assert_eq!(grpc_status(&response), None);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"/test.v1.Named/Method");

        for unknown in [
            "/test.v1.Other/Method",
            "/test.v1.Named/",
            "/test.v1.Named",
            "/",
        ] {
            let response = answer(&mut routes, unknown).await;
            assert_eq!(grpc_status(&response), Some("12"), "{unknown}");
        }
    }

    #[tokio::test]
    async fn a_method_added_apart_is_served_apart_from_its_service() {
        use http_body_util::BodyExt as _;
        let mut routes = Routes::default().add_service(Named).add_method(
            "/test.v1.Named/Apart",
            tower::service_fn(|_: Request<Body>| -> Answer {
                Box::pin(async { Ok(Response::new(Body::new("apart".to_string()))) })
            }),
        );
        for (path, expected) in [
            ("/test.v1.Named/Apart", "apart"),
            ("/test.v1.Named/Other", "/test.v1.Named/Other"),
        ] {
            let response = answer(&mut routes, path).await;
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], expected.as_bytes(), "{path}");
        }
    }
}
