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
    /// Puppets holding or receiving its content (`show` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyView>,
}

/// A puppet's copy of an artifact (the site peer cache).
#[derive(Debug, Serialize)]
pub struct CopyView {
    pub puppet: String,
    pub site: String,
    /// Complete and checked; false: being received.
    pub held: bool,
    /// The peer it came from; empty: the puppeteer.
    pub source: String,
    pub since: Option<String>,
    pub bytes: u64,
    pub took_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last_failure: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspect_until: Option<String>,
}

impl From<&pb::ArtifactCopy> for CopyView {
    fn from(c: &pb::ArtifactCopy) -> Self {
        CopyView {
            puppet: c.puppet.clone(),
            site: c.site.clone(),
            held: c.held,
            source: c.source.clone(),
            since: rfc3339(c.since.as_ref()),
            bytes: c.bytes,
            took_ms: c.took.as_ref().map_or(0, |d| {
                (d.seconds.max(0) as u64).saturating_mul(1000)
                    + d.nanos.clamp(0, 999_999_999) as u64 / 1_000_000
            }),
            last_failure: c.last_failure.clone(),
            suspect_until: rfc3339(c.suspect_until.as_ref()),
        }
    }
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
            copies: a.copies.iter().map(CopyView::from).collect(),
        }
    }
}
