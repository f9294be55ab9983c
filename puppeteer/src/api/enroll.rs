//! Admin service over enrollment tokens.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::enroll_tokens_server::EnrollTokens;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert;
use super::error::{ApiError, invalid};
use crate::domain::{EnrollToken, Millis};
use crate::ids::{hash_secret, new_id, new_secret};

const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct EnrollTokensApi {
    state: Shared,
}

impl EnrollTokensApi {
    pub fn new(state: Shared) -> Self {
        EnrollTokensApi { state }
    }
}

#[tonic::async_trait]
impl EnrollTokens for EnrollTokensApi {
    async fn create_enroll_token(
        &self,
        request: Request<pb::CreateEnrollTokenRequest>,
    ) -> Result<Response<pb::CreateEnrollTokenResponse>, Status> {
        self.state
            .mutation(request, "EnrollTokens/CreateEnrollToken", |_| {
                "new enrollment token".into()
            })
            .run_noting(
                |_, req| async move {
                    let labels = convert::labels_from(req.labels)?;
                    if req.description.len() > 1024 {
                        return Err(invalid("the description is longer than 1024 bytes"));
                    }
                    let now = Millis::now();
                    let expires_at = match &req.ttl {
                        Some(ttl) => {
                            let ttl = convert::from_dur("ttl", ttl)?;
                            if ttl.is_zero() || ttl > MAX_TTL {
                                return Err(invalid("ttl must be between 1s and 366 days"));
                            }
                            Some(now.plus(ttl))
                        }
                        None => None,
                    };
                    let secret = new_secret("gpe");
                    let token = EnrollToken {
                        id: new_id("enr"),
                        description: req.description,
                        labels,
                        uses_left: (req.uses > 0).then_some(req.uses),
                        used: 0,
                        created_at: now,
                        expires_at,
                        revoked: false,
                        secret_hash: hash_secret(&secret),
                        auto_approve: req.auto_approve,
                    };
                    self.state
                        .store
                        .create_enroll_token(&token)
                        .map_err(ApiError::from)?;
                    self.state.store.flush().await.map_err(ApiError::from)?;
                    Ok(pb::CreateEnrollTokenResponse {
                        token: Some(pb::EnrollToken::from(&token)),
                        secret,
                    })
                },
                |created, audit| {
                    if let Some(token) = &created.token {
                        audit.target(token.id.clone());
                    }
                },
            )
            .await
            .map(Response::new)
    }

    async fn list_enroll_tokens(
        &self,
        request: Request<pb::ListEnrollTokensRequest>,
    ) -> Result<Response<pb::ListEnrollTokensResponse>, Status> {
        self.state
            .authorize(&request, "EnrollTokens/ListEnrollTokens")?;
        let tokens = self
            .state
            .store
            .list_enroll_tokens()
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListEnrollTokensResponse {
            tokens: tokens.iter().map(pb::EnrollToken::from).collect(),
        }))
    }

    async fn revoke_enroll_token(
        &self,
        request: Request<pb::RevokeEnrollTokenRequest>,
    ) -> Result<Response<pb::EnrollToken>, Status> {
        self.state
            .mutation(request, "EnrollTokens/RevokeEnrollToken", |req| {
                req.id.clone()
            })
            .run(|_, req| async move {
                let id = &req.id;
                convert::id_of_kind("enr", id)?;
                let token = self
                    .state
                    .store
                    .revoke_enroll_token(id)
                    .map_err(ApiError::from)?;
                self.state.store.flush().await.map_err(ApiError::from)?;
                Ok(Response::new(pb::EnrollToken::from(&token)))
            })
            .await
    }
}
