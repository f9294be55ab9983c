//! JSON view of an artifact.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use crate::output::rfc3339;

/// An artifact as `artifacts list|show -o json` prints it.
#[derive(Debug, Serialize)]
pub struct ArtifactView {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub created_at: Option<String>,
    pub uploaded_by: String,
    /// Tasks whose latest version uses it.
    pub used_by: Vec<String>,
}

impl From<&pb::Artifact> for ArtifactView {
    fn from(a: &pb::Artifact) -> Self {
        ArtifactView {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            created_at: rfc3339(a.created_at.as_ref()),
            uploaded_by: a.uploaded_by.clone(),
            used_by: a.used_by.clone(),
        }
    }
}
