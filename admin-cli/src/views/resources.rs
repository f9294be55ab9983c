//! JSON views of a resource, the runs holding it and those waiting.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use crate::output::rfc3339;

#[derive(Debug, Serialize)]
pub struct ResourceView {
    pub name: String,
    pub capacity: u32,
    /// Capacity held now.
    pub used: u32,
    /// Runs holding some of it.
    pub holders: Vec<ResourceHolderView>,
    /// Runs waiting for it, in the order they will be served.
    pub waiters: Vec<ResourceHolderView>,
    pub created_at: Option<String>,
    /// Bandwidth budget in bytes per second shared by the artifact
    /// downloads of the runs holding it; 0: none.
    pub bandwidth: u64,
    /// The site whose uplink it models (absent: none).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub site: String,
}

impl From<&pb::Resource> for ResourceView {
    fn from(r: &pb::Resource) -> Self {
        ResourceView {
            name: r.name.clone(),
            capacity: r.capacity,
            used: r.used,
            holders: r.holders.iter().map(ResourceHolderView::from).collect(),
            waiters: r.waiters.iter().map(ResourceHolderView::from).collect(),
            created_at: rfc3339(r.created_at.as_ref()),
            bandwidth: r.bandwidth,
            site: r.site.clone(),
        }
    }
}

/// A run holding (or waiting for) some of a resource.
#[derive(Debug, Serialize)]
pub struct ResourceHolderView {
    pub run_id: String,
    pub puppet: String,
    pub job_id: String,
    /// How much of the capacity it holds (or waits for).
    pub count: u32,
}

impl From<&pb::ResourceHolder> for ResourceHolderView {
    fn from(h: &pb::ResourceHolder) -> Self {
        ResourceHolderView {
            run_id: h.run_id.clone(),
            puppet: h.puppet.clone(),
            job_id: h.job_id.clone(),
            count: h.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use serde_json::json;

    #[test]
    fn resource_json() {
        let holder = |run: &str, puppet: &str, count| pb::ResourceHolder {
            run_id: run.into(),
            puppet: puppet.into(),
            job_id: "job-1".into(),
            count,
        };
        let resource = pb::Resource {
            site: String::new(),
            name: "uplink-lyon".into(),
            capacity: 2,
            used: 2,
            holders: vec![holder("run-a", "web-1", 2)],
            waiters: vec![holder("run-b", "web-2", 1), holder("run-c", "web-3", 2)],
            created_at: ts(1_700_000_000),
            bandwidth: 48 * 1024,
        };
        assert_eq!(
            serde_json::to_value(ResourceView::from(&resource)).unwrap(),
            json!({
                "name": "uplink-lyon",
                "capacity": 2,
                "used": 2,
                "bandwidth": 49152,
                "holders": [
                    {"run_id": "run-a", "puppet": "web-1", "job_id": "job-1", "count": 2},
                ],
                "waiters": [
                    {"run_id": "run-b", "puppet": "web-2", "job_id": "job-1", "count": 1},
                    {"run_id": "run-c", "puppet": "web-3", "job_id": "job-1", "count": 2},
                ],
                "created_at": "2023-11-14T22:13:20Z",
            })
        );
    }
}
