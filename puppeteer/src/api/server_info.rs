//! Admin service over the puppeteer itself: version, data dir size, stored
//! logs, the retention policy and its last pass.

use std::path::Path;

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::server_server::Server;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::ts;
use super::error::ApiError;

#[derive(Debug, Clone)]
pub struct ServerApi {
    state: Shared,
}

impl ServerApi {
    pub fn new(state: Shared) -> Self {
        ServerApi { state }
    }
}

/// Sizes of the data dir: the database as sled counts it, and the artifact
/// files (`<data>/artifacts`, if there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSize {
    pub database: u64,
    pub artifacts: u64,
}

impl DataSize {
    pub fn total(&self) -> u64 {
        self.database + self.artifacts
    }

    /// Measures (blocking: it walks the artifacts dir).
    pub fn measure(store: &crate::store::Store, data_dir: &Path) -> crate::store::Result<Self> {
        Ok(DataSize {
            database: store.size_on_disk()?,
            artifacts: dir_bytes(&data_dir.join("artifacts")),
        })
    }
}

pub use crate::store::dir_bytes;

#[tonic::async_trait]
impl Server for ServerApi {
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        self.state.authorize(&request, "Server/GetServerInfo")?;
        let state = self.state.clone();
        let (size, last) = tokio::task::spawn_blocking(move || {
            let size = DataSize::measure(&state.store, &state.config.data_dir)?;
            Ok::<_, crate::store::StoreError>((size, state.store.last_prune()?))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("server info failed: {e}")))?
        .map_err(ApiError::from)?;
        let last = last.unwrap_or_default();
        Ok(Response::new(pb::ServerInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir_bytes: size.total(),
            artifact_bytes: size.artifacts,
            log_bytes: self.state.store.log_bytes(),
            retention: self.state.config.retention.describe(),
            last_prune_at: (last.at.0 > 0).then(|| ts(last.at)),
            pruned_jobs: last.jobs,
            pruned_runs: last.runs,
        }))
    }
}
