//! Installing puppets: plain HTTPS GETs on the puppeteer's own port,
//! beside gRPC (README, "Installing puppets").
//!
//! - `GET /install.sh`: the install script (`deploy/install.sh`). Public: it
//!   holds no secret, and a machine fetches it with the puppeteer's CA
//!   pinned in the command an operator pastes.
//! - `GET /install/puppet.service`: the puppet's systemd unit
//!   (`deploy/puppet.service`). Public.
//! - `GET /install/puppet/OS/ARCH.sha256`: `SHA256 SIZE VERSION` of the
//!   puppet binary this puppeteer serves for that platform. Public.
//! - `GET /install/puppet/OS/ARCH`: the binary itself, only with
//!   `authorization: Bearer ENROLL_TOKEN`, a token usable now (nothing of it
//!   is used up): a caller without one costs a small answer, not a download.
//!
//! The binary served is this puppeteer's own puppet build for its own
//! platform (the `puppet` file beside its executable, or `--puppet-binary`),
//! or for another platform a release an operator added (`geppetto
//! puppet-releases add`), of the served build's version if there is one.
//! Its hash is taken once, at the first request for it, so a file changed
//! on disk afterwards is served with the old hash, and refused by the script. A platform without
//! a binary is a 404 that names the platforms known.

use std::convert::Infallible;
use std::path::PathBuf;
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use http::{Request, Response, StatusCode};
use hyper::body::{Bytes, Frame};
use tokio::io::AsyncReadExt;
use tonic::body::Body;
use tonic::codegen::BoxFuture;

use crate::api::Shared;
use crate::domain::Millis;
use crate::releases;

/// The paths served here start with this.
pub const PREFIX: &str = "/install";

/// The install script, as served.
pub const SCRIPT: &str = include_str!("../../../deploy/install.sh");

/// The puppet's systemd unit, as served (the script installs it).
pub const UNIT: &str = include_str!("../../../deploy/puppet.service");

pub use crate::app::served::PuppetBuild;

/// The service of the install paths.
#[derive(Clone)]
pub struct InstallRoute {
    state: Shared,
}

impl InstallRoute {
    pub fn new(state: Shared, binary: Option<PathBuf>) -> Self {
        state.served.set_binary(binary);
        InstallRoute { state }
    }

    /// The binary for `os`/`arch`: the served build if it is of that
    /// platform, else an added release (of the served build's version if
    /// there is one); with the platforms known when there is none.
    async fn binary_for(&self, os: &str, arch: &str) -> Result<PuppetBuild, Vec<String>> {
        let served = self.state.served.build().await.cloned();
        if let Some(build) = &served
            && build.os == os
            && build.arch == arch
        {
            return Ok(build.clone());
        }
        let (state, os, arch) = (self.state.clone(), os.to_string(), arch.to_string());
        let preferred = served.as_ref().map(|b| b.version.clone());
        let found = tokio::task::spawn_blocking(move || {
            let found = state.release_binary(&os, &arch, preferred.as_deref())?;
            let platforms = match found {
                Some(_) => Vec::new(),
                None => state.release_platforms()?,
            };
            Ok::<_, crate::store::StoreError>((found, platforms))
        })
        .await;
        match found {
            Ok(Ok((Some(build), _))) => Ok(build),
            Ok(Ok((None, mut known))) => {
                if let Some(build) = served {
                    known.insert(0, format!("{}/{}", build.os, build.arch));
                    known.dedup();
                }
                Err(known)
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot look up the puppet releases");
                Err(Vec::new())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot look up the puppet releases");
                Err(Vec::new())
            }
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl tower::Service<Request<Body>> for InstallRoute {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let route = self.clone();
        Box::pin(async move { Ok(route.answer(request).await) })
    }
}

impl InstallRoute {
    async fn answer(&self, request: Request<Body>) -> Response<Body> {
        if request.method() != http::Method::GET {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let path = request.uri().path();
        if path == "/install.sh" {
            let mut response = text(StatusCode::OK, SCRIPT.to_string());
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/x-shellscript; charset=utf-8"),
            );
            return response;
        }
        if path == "/install/puppet.service" {
            return text(StatusCode::OK, UNIT.to_string());
        }
        let Some(platform) = path.strip_prefix("/install/puppet/") else {
            return text(StatusCode::NOT_FOUND, "no such path\n".into());
        };
        let (platform, hash_only) = match platform.strip_suffix(".sha256") {
            Some(p) => (p, true),
            None => (platform, false),
        };
        let (os, arch) = platform.split_once('/').unwrap_or((platform, ""));
        let found = if releases::check_platform_part("os", os).is_ok()
            && releases::check_platform_part("arch", arch).is_ok()
        {
            self.binary_for(os, arch).await
        } else {
            Err(Vec::new())
        };
        let build = match found {
            Ok(build) => build,
            Err(known) => {
                let platform: String = platform.chars().take(64).collect();
                return text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "this puppeteer has no puppet binary for {platform:?}; it has: {}\n",
                        if known.is_empty() {
                            "none (start it with --puppet-binary FILE, or add releases: geppetto puppet-releases add)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        };
        if hash_only {
            return text(
                StatusCode::OK,
                format!("{} {} {}\n", build.sha256, build.size, build.version),
            );
        }
        let token = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_string);
        let Some(token) = token.filter(|t| t.len() <= 256) else {
            return text(
                StatusCode::UNAUTHORIZED,
                "an enrollment token is needed (authorization: Bearer TOKEN)\n".into(),
            );
        };
        let store = self.state.store.clone();
        let usable =
            tokio::task::spawn_blocking(move || store.enroll_token_usable(&token, Millis::now()))
                .await;
        if !matches!(usable, Ok(Ok(true))) {
            return text(
                StatusCode::UNAUTHORIZED,
                "the enrollment token is unknown, expired, used up or revoked\n".into(),
            );
        }
        let file = match tokio::fs::File::open(&build.path).await {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(path = %build.path.display(), error = %e, "cannot read the puppet binary");
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the puppet binary cannot be read on the puppeteer\n".into(),
                );
            }
        };
        let chunks = futures_util::stream::unfold(file, |mut file| async move {
            let mut buf = vec![0u8; 256 * 1024];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<_, std::io::Error>(Frame::data(Bytes::from(buf))), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        let mut response =
            Response::new(Body::new(http_body_util::StreamBody::new(chunks.boxed())));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/octet-stream"),
        );
        response.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(build.size),
        );
        response
    }
}
