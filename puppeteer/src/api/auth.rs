//! Authentication: every call carries `authorization: Bearer SECRET`.
//!
//! Secrets are stored only as SHA-256 hashes; a secret is found by the hash
//! of what the caller sent, so the lookup never compares secrets byte by byte.
//! Admin services accept users' API tokens only, each call checked against
//! the role it needs ([`super::authz`]); the puppet service accepts puppet
//! credentials only, and a puppet can touch only its own runs.
//!
//! Puppet credential rotation: after `RotatePuppetCredential` both the old and
//! the new credential work. The first call with the new one makes it current.
//! The old one stops working at the rotation's expiry, whether or not the
//! puppet picked up the new one (a rotation is often a response to a leak).
//!
//! A call refused for its credential is counted
//! (`geppetto_unauthenticated_calls_total`) and logged at most once every
//! [`crate::app::auth::REFUSAL_LOG_EVERY`] with the number since the last line; it is never
//! stored, so a client without a credential cannot grow the audit trail or
//! the event stream, nor flood the log.

use tonic::Request;

use super::error::{ApiError, ApiResult};
pub use crate::app::auth::Auth;
use crate::app::authz::required_role;
use crate::domain::{Millis, Principal, Puppet, Role};
use crate::ids::hash_secret;
use crate::store::{Store, StoreError};

/// An authenticated user.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: String,
    pub role: Role,
    pub token_id: String,
}

fn bearer<T>(request: &Request<T>) -> ApiResult<&str> {
    bearer_in(request.metadata().get("authorization").map(|v| v.to_str()))
}

/// The secret in an `authorization` header's value (`None`: no header;
/// `Err`: not text).
fn bearer_in<E>(value: Option<Result<&str, E>>) -> ApiResult<&str> {
    let Some(value) = value else {
        return Err(ApiError::Unauthenticated(
            "no credential: send \"authorization: Bearer TOKEN\"".into(),
        ));
    };
    let value = value.map_err(|_| {
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

/// The user a principal is, if their token is valid now.
fn user_from(store: &Store, principal: Principal) -> ApiResult<Caller> {
    match principal {
        Principal::User { user, token_id } => {
            let token = store.get_api_token(&token_id).map_err(|_| unknown())?;
            if token.revoked || token.expires_at.is_some_and(|e| Millis::now() >= e) {
                return Err(unknown());
            }
            let user = store.get_user(&user).map_err(|_| unknown())?;
            Ok(Caller {
                user: user.name,
                role: user.role,
                token_id,
            })
        }
        Principal::Puppet { .. } => Err(ApiError::PermissionDenied(
            "a puppet credential cannot call admin services".into(),
        )),
    }
}

fn unknown() -> ApiError {
    ApiError::Unauthenticated("unknown, expired or revoked credential".into())
}

impl Auth {
    /// Counts `result`'s refusal if it is one for the credential; `action`
    /// by default is the gRPC method called.
    fn counted<T, R>(
        &self,
        request: &Request<T>,
        action: Option<&str>,
        result: ApiResult<R>,
    ) -> ApiResult<R> {
        if let Err(e @ ApiError::Unauthenticated(_)) = &result {
            let method = request
                .extensions()
                .get::<tonic::GrpcMethod>()
                .map(|m| format!("{}/{}", m.service(), m.method()));
            let action = action.or(method.as_deref()).unwrap_or("-");
            self.refusals()
                .refused(action, &super::audit::remote_addr(request), e);
        }
        result
    }

    /// Whether `headers` carry a credential valid now, a user's or a
    /// puppet's (whatever it may then be allowed), with the refusal the API
    /// would give if not: for the gate before the API (`server::gate`).
    pub fn check_credential(&self, store: &Store, headers: &http::HeaderMap) -> ApiResult<()> {
        let secret = bearer_in(headers.get("authorization").map(|v| v.to_str()))?;
        let hash = hash_secret(secret);
        let principal = store.principal(&hash)?.ok_or_else(unknown)?;
        // As the calls will judge it: expired, revoked and rotated-out
        // credentials prove nothing.
        match principal {
            Principal::User { .. } => user_from(store, principal).map(drop),
            Principal::Puppet { .. } => puppet_from(store, &hash, principal).map(drop),
        }
    }

    fn principal<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<(String, Principal)> {
        let hash = hash_secret(bearer(request)?);
        let principal = store.principal(&hash)?.ok_or_else(unknown)?;
        Ok((hash, principal))
    }

    /// The user calling, with their role, if the token is valid now.
    pub fn user<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<Caller> {
        user_from(store, self.principal(store, request)?.1)
    }

    /// Authenticates the caller and checks that their role may call
    /// `action`. Returns who the caller is for the audit trail ("-" when
    /// unknown) along with the verdict.
    pub fn authorize<T>(
        &self,
        store: &Store,
        request: &Request<T>,
        action: &str,
    ) -> (String, ApiResult<Caller>) {
        let caller = match self.counted(request, Some(action), self.user(store, request)) {
            Ok(caller) => caller,
            Err(e) => return ("-".into(), Err(e)),
        };
        let needed = required_role(action);
        if caller.role < needed {
            let message = format!(
                "{} has role {}; {action} needs {}",
                caller.user,
                caller.role.name(),
                needed.name()
            );
            return (caller.user, Err(ApiError::PermissionDenied(message)));
        }
        (caller.user.clone(), Ok(caller))
    }

    /// The puppet calling, or an error for anyone else.
    pub fn puppet<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<String> {
        self.puppet_record(store, request).map(|puppet| puppet.name)
    }

    /// [`Auth::puppet`], with the puppet's record as authentication read
    /// it (current at this instant): a poll needs it too, and decoding it
    /// once rather than twice per poll matters with ten thousand puppets.
    pub fn puppet_record<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<Puppet> {
        self.counted(request, None, self.puppet_credential(store, request))
    }

    fn puppet_credential<T>(&self, store: &Store, request: &Request<T>) -> ApiResult<Puppet> {
        let (hash, principal) = self.principal(store, request)?;
        puppet_from(store, &hash, principal)
    }
}

/// The puppet a principal is, if the credential (of hash `hash`) is valid
/// now: not revoked, not past its rotation's grace; the first call with a
/// rotated credential makes it the current one.
fn puppet_from(store: &Store, hash: &str, principal: Principal) -> ApiResult<Puppet> {
    let name = match principal {
        Principal::Puppet { name } => name,
        Principal::User { .. } => {
            return Err(ApiError::PermissionDenied(
                "the puppet service takes puppet credentials only".into(),
            ));
        }
    };
    let puppet = match store.get_puppet(&name) {
        Ok(p) => p,
        Err(StoreError::NotFound { .. }) => return Err(unknown()),
        Err(e) => return Err(e.into()),
    };
    if puppet.revoked {
        return Err(ApiError::Unauthenticated(
            "this puppet's credential was revoked".into(),
        ));
    }
    let now = Millis::now();
    if hash == puppet.credential_hash {
        if puppet
            .rotation
            .as_ref()
            .is_some_and(|r| now >= r.old_expires_at)
        {
            return Err(ApiError::Unauthenticated(
                "this credential was rotated and its grace period is over".into(),
            ));
        }
        return Ok(puppet);
    }
    if puppet.rotation.as_ref().is_some_and(|r| r.new_hash == hash) {
        let puppet = store.complete_rotation(&name)?;
        tracing::info!(puppet = %name, "puppet switched to its rotated credential");
        return Ok(puppet);
    }
    if let Some((old, expires)) = &puppet.old_credential
        && *old == hash
    {
        if now < *expires {
            return Ok(puppet);
        }
        store.expire_old_credential(&name, old)?;
        return Err(ApiError::Unauthenticated(
            "this credential was rotated and its grace period is over".into(),
        ));
    }
    Err(unknown())
}
