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

/// The cluster's nodes seen within [`crate::app::cluster::NODE_GONE`], the
/// leader marked (the holder of a live lease); none on sled.
fn cluster_nodes(
    state: &crate::app::AppState,
) -> Result<Vec<pb::ClusterNode>, crate::store::StoreError> {
    let store = &state.store;
    if !store.is_shared() {
        return Ok(Vec::new());
    }
    let now = store.now_ms()?;
    let leader = store
        .node_lease()?
        .filter(|l| l.expires_ms > now)
        .map(|l| l.node);
    let gone = crate::app::cluster::NODE_GONE.as_millis() as i64;
    let local_now = crate::domain::Millis::now().0;
    let mut nodes: Vec<pb::ClusterNode> = store
        .nodes()?
        .into_iter()
        .filter(|n| local_now - n.seen_ms <= gone)
        .map(|n| pb::ClusterNode {
            leader: leader.as_deref() == Some(n.id.as_str()),
            answering: n.id == state.node.id,
            polls_held: n.held.len() as u32,
            started_at: Some(ts(crate::domain::Millis(n.started_ms))),
            last_seen: Some(ts(crate::domain::Millis(n.seen_ms))),
            id: n.id,
            listen: n.listen,
        })
        .collect();
    nodes.sort_by(|a, b| a.listen.cmp(&b.listen));
    Ok(nodes)
}

/// The puppets' versions with their counts, most common first.
fn puppet_versions(
    store: &crate::store::Store,
) -> Result<Vec<pb::VersionCount>, crate::store::StoreError> {
    let mut counts: std::collections::HashMap<String, u32> = Default::default();
    for puppet in store.puppets() {
        let version = puppet?.facts.agent_version;
        let version = if version.is_empty() {
            "unknown".to_string()
        } else {
            version.chars().take(64).collect()
        };
        *counts.entry(version).or_default() += 1;
    }
    let mut versions: Vec<pb::VersionCount> = counts
        .into_iter()
        .map(|(version, puppets)| pb::VersionCount { version, puppets })
        .collect();
    versions.sort_by(|a, b| b.puppets.cmp(&a.puppets).then(a.version.cmp(&b.version)));
    Ok(versions)
}

#[tonic::async_trait]
impl Server for ServerApi {
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        self.state.authorize(&request, "Server/GetServerInfo")?;
        let state = self.state.clone();
        let (size, last, nodes, versions) = tokio::task::spawn_blocking(move || {
            let size = DataSize::measure(&state.store, &state.config.data_dir)?;
            let nodes = cluster_nodes(&state)?;
            let versions = puppet_versions(&state.store)?;
            Ok::<_, crate::store::StoreError>((size, state.store.last_prune()?, nodes, versions))
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
            store: self.state.store.describe(),
            nodes,
            nodes_alive: self.state.node.live_nodes() as u32,
            puppets_older: versions
                .iter()
                .filter(|v| {
                    crate::versions::compare(&v.version, crate::versions::OWN)
                        == Some(std::cmp::Ordering::Less)
                })
                .map(|v| v.puppets)
                .sum(),
            puppet_versions: versions,
        }))
    }
}
