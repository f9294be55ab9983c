//! Authentication: every call carries `authorization: Bearer SECRET`.
//!
//! Secrets are stored only as SHA-256 hashes; a secret is found by the hash
//! of what the caller sent, so the lookup never compares secrets byte by byte.
//! Admin services accept admin principals only; the puppet service accepts
//! puppet credentials only, and a puppet can touch only its own runs.

use tonic::Request;

use super::error::{ApiError, ApiResult};
use crate::domain::Principal;
use crate::ids::hash_secret;
use crate::store::Store;

#[derive(Debug, Default)]
pub struct Auth;

fn bearer<T>(request: &Request<T>) -> ApiResult<&str> {
    let Some(value) = request.metadata().get("authorization") else {
        return Err(ApiError::Unauthenticated(
            "no credential: send \"authorization: Bearer TOKEN\"".into(),
        ));
    };
    let value = value.to_str().map_err(|_| {
        ApiError::Unauthenticated("the authorization header is not valid text".into())
    })?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthenticated("the authorization header must be \"Bearer TOKEN\"".into())
        })
}

impl Auth {
    fn principal<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<Principal> {
        let secret = bearer(request)?;
        store
            .principal(&hash_secret(secret))?
            .ok_or_else(|| ApiError::Unauthenticated("unknown or revoked credential".into()))
    }

    /// The admin user calling, or an error for anyone else.
    pub fn admin<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<String> {
        match self.principal(store, request)? {
            Principal::Admin { user } => Ok(user),
            Principal::Puppet { .. } => Err(ApiError::PermissionDenied(
                "a puppet credential cannot call admin services".into(),
            )),
        }
    }

    /// The puppet calling, or an error for anyone else.
    pub fn puppet<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<String> {
        match self.principal(store, request)? {
            Principal::Puppet { name } => Ok(name),
            Principal::Admin { .. } => Err(ApiError::PermissionDenied(
                "the puppet service takes puppet credentials only".into(),
            )),
        }
    }
}
