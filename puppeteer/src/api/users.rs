//! Admin services over users, API tokens and the audit trail.

use std::time::Duration;

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::audit_server::Audit;
use geppetto_proto::v1::tokens_server::Tokens;
use geppetto_proto::v1::users_server::Users;
use tonic::{Request, Response, Status};

use super::convert::{self, ts};
use super::error::{ApiError, ApiResult, invalid};
use super::{Shared, pages};
use crate::domain::{self, ApiToken, Millis, Role, User};
use crate::ids::{hash_secret, new_id, new_secret};

const MAX_TOKEN_TTL: Duration = Duration::from_secs(2 * 366 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct UsersApi {
    state: Shared,
}

impl UsersApi {
    pub fn new(state: Shared) -> Self {
        UsersApi { state }
    }

    fn view(&self, user: &User) -> ApiResult<pb::User> {
        let now = Millis::now();
        let active = self
            .state
            .store
            .list_api_tokens()?
            .iter()
            .filter(|t| t.user == user.name && !t.revoked && t.expires_at.is_none_or(|e| e > now))
            .count() as u32;
        Ok(pb::User {
            name: user.name.clone(),
            role: pb::Role::from(user.role) as i32,
            created_at: Some(ts(user.created_at)),
            active_tokens: active,
        })
    }
}

#[tonic::async_trait]
impl Users for UsersApi {
    async fn add_user(
        &self,
        request: Request<pb::AddUserRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.state
            .mutation(request, "Users/AddUser", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_user_name(&req.name)?;
                let user = User {
                    name: req.name.clone(),
                    role: convert::role_from(req.role)?,
                    created_at: Millis::now(),
                };
                self.state.store.add_user(&user)?;
                self.view(&user)
            })
            .await
            .map(Response::new)
    }

    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        self.state.authorize(&request, "Users/ListUsers")?;
        let users = self
            .state
            .store
            .list_users()
            .map_err(ApiError::from)?
            .iter()
            .map(|u| self.view(u))
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListUsersResponse { users }))
    }

    async fn set_user_role(
        &self,
        request: Request<pb::SetUserRoleRequest>,
    ) -> Result<Response<pb::User>, Status> {
        self.state
            .mutation(request, "Users/SetUserRole", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_user_name(&req.name)?;
                let role = convert::role_from(req.role)?;
                let user = self.state.store.set_user_role(&req.name, role)?;
                self.view(&user)
            })
            .await
            .map(Response::new)
    }

    async fn remove_user(
        &self,
        request: Request<pb::RemoveUserRequest>,
    ) -> Result<Response<pb::RemoveUserResponse>, Status> {
        self.state
            .mutation(request, "Users/RemoveUser", |req| req.name.clone())
            .run(|_, req| async move {
                let name = req.name;
                domain::check_user_name(&name)?;
                let revoked_tokens = self.state.store.remove_user(&name)?;
                Ok(pb::RemoveUserResponse { revoked_tokens })
            })
            .await
            .map(Response::new)
    }

    async fn who_am_i(
        &self,
        request: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let caller = self.state.authorize(&request, "Users/WhoAmI")?;
        Ok(Response::new(pb::WhoAmIResponse {
            user: caller.user,
            role: pb::Role::from(caller.role) as i32,
            token_id: caller.token_id,
        }))
    }
}

#[derive(Debug, Clone)]
pub struct TokensApi {
    state: Shared,
}

impl TokensApi {
    pub fn new(state: Shared) -> Self {
        TokensApi { state }
    }
}

#[tonic::async_trait]
impl Tokens for TokensApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let (token, secret) = self
            .state
            .mutation(request, "Tokens/CreateToken", |req| req.user.clone())
            .run_noting(
                |caller, req| async move {
                    let user = if req.user.is_empty() {
                        caller.user.clone()
                    } else {
                        domain::check_user_name(&req.user)?;
                        req.user.clone()
                    };
                    if user != caller.user && caller.role < Role::Admin {
                        return Err(ApiError::PermissionDenied(format!(
                            "only admins create tokens for other users; {} is {}",
                            caller.user,
                            caller.role.name()
                        )));
                    }
                    if req.name.len() > 128 {
                        return Err(invalid("the token name is longer than 128 bytes"));
                    }
                    let now = Millis::now();
                    let expires_at = match &req.ttl {
                        Some(ttl) => {
                            let ttl = convert::from_dur("ttl", ttl)?;
                            if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
                                return Err(invalid(
                                    "the token's lifetime must be between 1s and 2 years",
                                ));
                            }
                            Some(now.plus(ttl))
                        }
                        None => None,
                    };
                    let secret = new_secret("gpa");
                    let token = ApiToken {
                        id: new_id("tok"),
                        user,
                        name: req.name.clone(),
                        created_at: now,
                        expires_at,
                        revoked: false,
                        secret_hash: hash_secret(&secret),
                    };
                    self.state.store.create_api_token(&token)?;
                    Ok((token, secret))
                },
                |(token, _), audit| {
                    audit.target(format!("{} (user {})", token.id, token.user));
                },
            )
            .await?;
        Ok(Response::new(pb::CreateTokenResponse {
            token: Some(pb::ApiToken::from(&token)),
            secret,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.state.authorize(&request, "Tokens/ListTokens")?;
        let wanted = &request.get_ref().user;
        let user = if caller.role == Role::Admin {
            (!wanted.is_empty()).then(|| wanted.clone())
        } else if wanted.is_empty() || *wanted == caller.user {
            Some(caller.user.clone())
        } else {
            return Err(ApiError::PermissionDenied(format!(
                "only admins list other users' tokens; {} is {}",
                caller.user,
                caller.role.name()
            ))
            .into());
        };
        let tokens = self
            .state
            .store
            .list_api_tokens()
            .map_err(ApiError::from)?
            .iter()
            .filter(|t| user.as_ref().is_none_or(|u| &t.user == u))
            .map(pb::ApiToken::from)
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::ApiToken>, Status> {
        self.state
            .mutation(request, "Tokens/RevokeToken", |req| req.id.clone())
            .run(|caller, req| async move {
                let id = req.id;
                convert::id_of_kind("tok", &id)?;
                let token = self.state.store.get_api_token(&id)?;
                if token.user != caller.user && caller.role < Role::Admin {
                    return Err(ApiError::PermissionDenied(format!(
                        "only admins revoke other users' tokens; {} is {}",
                        caller.user,
                        caller.role.name()
                    )));
                }
                Ok(pb::ApiToken::from(&self.state.store.revoke_api_token(&id)?))
            })
            .await
            .map(Response::new)
    }
}

#[derive(Debug, Clone)]
pub struct AuditApi {
    state: Shared,
}

impl AuditApi {
    pub fn new(state: Shared) -> Self {
        AuditApi { state }
    }
}

#[tonic::async_trait]
impl Audit for AuditApi {
    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.state.authorize(&request, "Audit/ListAudit")?;
        let req = request.into_inner();
        let page = pages::AUDIT.request(req.limit, &req.page_token)?;
        let since = req.since.as_ref().map(convert::from_ts);
        let store = self.state.store.clone();
        let page = crate::app::blocking(move || {
            let actor = (!req.actor.is_empty()).then_some(req.actor.as_str());
            store.audit_page(since, actor, &page)
        })
        .await
        .map_err(ApiError::from)?;
        // Pages go back in time; each one's entries oldest first.
        let entries = page
            .items
            .into_iter()
            .rev()
            .map(|e| pb::AuditEntry {
                seq: e.seq,
                at: Some(ts(e.at)),
                actor: e.actor,
                action: e.action,
                target: e.target,
                remote_addr: e.remote_addr,
                outcome: e.outcome,
                message: e.message,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse {
            entries,
            next_page_token: pages::AUDIT.token(page.next),
        }))
    }
}
