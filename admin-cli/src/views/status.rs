//! `geppetto status -o json`: the fleet, running jobs, resources in use, and
//! what needs attention.

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::jobs::run_counts;
use super::runs::FetchView;
use super::{job_finished, job_state};
use crate::output::rfc3339;

/// `geppetto status -o json`.
#[derive(Debug, Serialize)]
pub struct StatusView {
    pub fleet: FleetView,
    /// Jobs running or awaiting approval, newest first.
    pub jobs: Vec<JobBriefView>,
    /// Resources held or waited for.
    pub resources: Vec<ResourceUseView>,
    /// Runs fetching their artifacts now.
    pub fetching: Vec<FetchingRunView>,
    pub attention: AttentionView,
    /// The puppeteer itself (absent if it could not say).
    pub server: Option<ServerView>,
}

/// The puppeteer's own state: version, disk, retention.
#[derive(Debug, Serialize)]
pub struct ServerView {
    pub version: String,
    pub data_dir_bytes: u64,
    pub artifact_bytes: u64,
    pub log_bytes: u64,
    pub retention: String,
    pub last_prune_at: Option<String>,
    pub pruned_jobs: u64,
    pub pruned_runs: u64,
    /// "sled", or "PostgreSQL HOST:PORT/DB".
    pub store: String,
    /// A cluster's nodes; empty on one node.
    pub nodes: Vec<NodeView>,
    /// Nodes the answering one counts alive (budgets are split among them).
    pub nodes_alive: u32,
    /// The puppets' versions and how many run each, most common first.
    pub puppet_versions: Vec<(String, u32)>,
    /// Puppets older than the puppeteer.
    pub puppets_older: u32,
}

/// One puppeteer of a cluster.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: String,
    pub listen: String,
    pub started_at: Option<String>,
    pub last_seen: Option<String>,
    pub polls_held: u32,
    pub leader: bool,
    /// The node that answered.
    pub answering: bool,
}

impl From<&pb::ClusterNode> for NodeView {
    fn from(n: &pb::ClusterNode) -> Self {
        NodeView {
            id: n.id.clone(),
            listen: n.listen.clone(),
            started_at: rfc3339(n.started_at.as_ref()),
            last_seen: rfc3339(n.last_seen.as_ref()),
            polls_held: n.polls_held,
            leader: n.leader,
            answering: n.answering,
        }
    }
}

impl From<&pb::ServerInfo> for ServerView {
    fn from(i: &pb::ServerInfo) -> Self {
        ServerView {
            version: i.version.clone(),
            data_dir_bytes: i.data_dir_bytes,
            artifact_bytes: i.artifact_bytes,
            log_bytes: i.log_bytes,
            retention: i.retention.clone(),
            last_prune_at: rfc3339(i.last_prune_at.as_ref()),
            pruned_jobs: i.pruned_jobs,
            pruned_runs: i.pruned_runs,
            store: i.store.clone(),
            nodes: i.nodes.iter().map(NodeView::from).collect(),
            nodes_alive: i.nodes_alive,
            puppet_versions: i
                .puppet_versions
                .iter()
                .map(|v| (v.version.clone(), v.puppets))
                .collect(),
            puppets_older: i.puppets_older,
        }
    }
}

/// Puppets counted by presence (every puppet), and by state.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct FleetView {
    pub total: u32,
    pub online: u32,
    pub late: u32,
    /// Offline, or never seen.
    pub offline: u32,
    /// Enrolled, waiting for `puppets approve`.
    pub pending: u32,
    pub disabled: u32,
}

/// A job in one line: what it runs and how its runs stand.
#[derive(Debug, Serialize)]
pub struct JobBriefView {
    pub id: String,
    pub task_name: String,
    pub task_version: u32,
    pub state: String,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
    pub counts: BTreeMap<String, u32>,
}

impl From<&pb::Job> for JobBriefView {
    fn from(j: &pb::Job) -> Self {
        JobBriefView {
            id: j.id.clone(),
            task_name: j.task_name.clone(),
            task_version: j.task_version,
            state: job_state(j.state),
            created_at: rfc3339(j.created_at.as_ref()),
            finished_at: rfc3339(j.finished_at.as_ref()),
            counts: run_counts(j),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ResourceUseView {
    pub name: String,
    pub used: u32,
    pub capacity: u32,
    /// Runs waiting for it.
    pub waiters: u32,
}

/// A run fetching its artifacts.
#[derive(Debug, Serialize)]
pub struct FetchingRunView {
    pub job_id: String,
    pub run_id: String,
    pub puppet: String,
    pub fetch: FetchView,
}

/// What an operator should look at.
#[derive(Debug, Default, Serialize)]
pub struct AttentionView {
    /// Puppets to approve (or reject), by name.
    pub pending_puppets: Vec<String>,
    /// Jobs to approve (or reject).
    pub awaiting_approval: Vec<JobBriefView>,
    /// Failed jobs among the last 100 that nobody acknowledged, newest first.
    pub failed_jobs: Vec<JobBriefView>,
    /// Runs of unfinished jobs that wait for a puppet that is offline.
    pub offline_waits: Vec<OfflineWaitView>,
}

/// A run that waits for its offline puppet.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct OfflineWaitView {
    pub job_id: String,
    pub run_id: String,
    pub puppet: String,
    /// When the puppet last called, if ever.
    pub last_seen: Option<String>,
}

/// How the puppeteer's cause of a run waiting for its offline puppet begins.
pub const OFFLINE_WAIT: &str = "waiting for its puppet, which is offline";

/// What the status needs of a puppet: a few fields, so that a fleet of a
/// hundred thousand is not held as whole records.
#[derive(Clone, Debug)]
pub struct PuppetBrief {
    pub name: String,
    pub presence: i32,
    pub state: i32,
    pub last_seen: Option<prost_types::Timestamp>,
}

impl From<&pb::Puppet> for PuppetBrief {
    fn from(p: &pb::Puppet) -> Self {
        PuppetBrief {
            name: p.name.clone(),
            presence: p.presence,
            state: p.state,
            last_seen: p.last_seen,
        }
    }
}

impl StatusView {
    /// The status from the puppets, the last jobs (newest first) and the
    /// resources.
    pub fn new(puppets: &[PuppetBrief], jobs: &[pb::Job], resources: &[pb::Resource]) -> Self {
        let mut fleet = FleetView::default();
        let mut pending_puppets = Vec::new();
        for p in puppets {
            fleet.total += 1;
            match pb::Presence::try_from(p.presence) {
                Ok(pb::Presence::Online) => fleet.online += 1,
                Ok(pb::Presence::Late) => fleet.late += 1,
                _ => fleet.offline += 1,
            }
            match pb::PuppetState::try_from(p.state) {
                Ok(pb::PuppetState::Pending) => {
                    fleet.pending += 1;
                    pending_puppets.push(p.name.clone());
                }
                Ok(pb::PuppetState::Disabled) => fleet.disabled += 1,
                _ => {}
            }
        }
        pending_puppets.sort();
        let with_state = |states: &[pb::JobState]| -> Vec<JobBriefView> {
            jobs.iter()
                .filter(|j| states.iter().any(|s| *s as i32 == j.state))
                .map(JobBriefView::from)
                .collect()
        };
        let mut in_use: Vec<ResourceUseView> = resources
            .iter()
            .filter(|r| r.used > 0 || !r.waiters.is_empty())
            .map(|r| ResourceUseView {
                name: r.name.clone(),
                used: r.used,
                capacity: r.capacity,
                waiters: r.waiters.len() as u32,
            })
            .collect();
        in_use.sort_by(|a, b| a.name.cmp(&b.name));
        let last_seen: std::collections::HashMap<&str, Option<String>> = puppets
            .iter()
            .map(|p| (p.name.as_str(), rfc3339(p.last_seen.as_ref())))
            .collect();
        let offline_waits = jobs
            .iter()
            .filter(|j| !job_finished(j.state))
            .flat_map(|j| {
                j.runs
                    .iter()
                    .filter(|r| r.cause.starts_with(OFFLINE_WAIT))
                    .map(|r| OfflineWaitView {
                        job_id: j.id.clone(),
                        run_id: r.run_id.clone(),
                        puppet: r.puppet.clone(),
                        last_seen: last_seen.get(r.puppet.as_str()).cloned().flatten(),
                    })
            })
            .collect();
        let fetching = jobs
            .iter()
            .flat_map(|j| {
                j.runs.iter().filter_map(|r| {
                    Some(FetchingRunView {
                        job_id: j.id.clone(),
                        run_id: r.run_id.clone(),
                        puppet: r.puppet.clone(),
                        fetch: FetchView::from(r.fetch.as_ref()?),
                    })
                })
            })
            .collect();
        let failed_jobs = jobs
            .iter()
            .filter(|j| j.state == pb::JobState::Failed as i32 && j.acknowledged_by.is_empty())
            .map(JobBriefView::from)
            .collect();
        StatusView {
            fleet,
            jobs: with_state(&[pb::JobState::Running, pb::JobState::AwaitingApproval]),
            resources: in_use,
            fetching,
            attention: AttentionView {
                pending_puppets,
                awaiting_approval: with_state(&[pb::JobState::AwaitingApproval]),
                failed_jobs,
                offline_waits,
            },
            server: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_counts_and_attention() {
        let puppet = |name: &str, state: pb::PuppetState, presence: pb::Presence| pb::Puppet {
            name: name.into(),
            state: state as i32,
            presence: presence as i32,
            ..Default::default()
        };
        use pb::{Presence as P, PuppetState as S};
        let puppets = [
            puppet("web-1", S::Enabled, P::Online),
            puppet("web-2", S::Enabled, P::Late),
            puppet("web-3", S::Disabled, P::Offline),
            puppet("new-2", S::Pending, P::Online),
            puppet("new-1", S::Pending, P::Unspecified),
        ];
        let job = |id: &str, state: pb::JobState| pb::Job {
            id: id.into(),
            task_name: "patch".into(),
            task_version: 2,
            state: state as i32,
            runs: vec![pb::RunSummary {
                run_id: format!("run-{id}"),
                state: pb::RunState::Failed as i32,
                ..Default::default()
            }],
            ..Default::default()
        };
        let jobs = [
            job("job-5", pb::JobState::AwaitingApproval),
            job("job-4", pb::JobState::Running),
            job("job-3", pb::JobState::Failed),
            job("job-2", pb::JobState::Succeeded),
            job("job-1", pb::JobState::Failed),
        ];
        let resource = |name: &str, used, waiters: usize| pb::Resource {
            name: name.into(),
            capacity: 2,
            used,
            waiters: vec![pb::ResourceHolder::default(); waiters],
            ..Default::default()
        };
        let resources = [
            resource("uplink", 2, 1),
            resource("idle", 0, 0),
            resource("db", 1, 0),
        ];
        let puppets: Vec<PuppetBrief> = puppets.iter().map(PuppetBrief::from).collect();
        let status = StatusView::new(&puppets, &jobs, &resources);
        assert_eq!(
            status.fleet,
            FleetView {
                total: 5,
                online: 2,
                late: 1,
                offline: 2,
                pending: 2,
                disabled: 1
            }
        );
        let value = serde_json::to_value(&status).unwrap();
        let ids = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|j| j["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(ids(&value["jobs"]), ["job-5", "job-4"]);
        assert_eq!(value["jobs"][0]["state"], "awaiting_approval");
        assert_eq!(value["jobs"][1]["counts"], json!({"failed": 1}));
        assert_eq!(
            value["resources"],
            json!([
                {"name": "db", "used": 1, "capacity": 2, "waiters": 0},
                {"name": "uplink", "used": 2, "capacity": 2, "waiters": 1},
            ])
        );
        assert_eq!(
            value["attention"]["pending_puppets"],
            json!(["new-1", "new-2"])
        );
        assert_eq!(ids(&value["attention"]["awaiting_approval"]), ["job-5"]);
        assert_eq!(ids(&value["attention"]["failed_jobs"]), ["job-3", "job-1"]);
        assert_eq!(value["fleet"]["online"], 2);
    }
}
