//! JSON views of a puppet (with its facts) and of its queue.

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::{non_empty, presence, puppet_state, run_state, sorted};
use crate::output::{rfc3339, seconds};

#[derive(Debug, Serialize)]
pub struct PuppetView {
    pub name: String,
    pub state: String,
    pub presence: String,
    /// A poll is held right now: the puppet gets new runs at once.
    pub polling: bool,
    pub last_seen: Option<String>,
    pub enrolled_at: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub declared_labels: BTreeMap<String, String>,
    pub assigned_labels: BTreeMap<String, String>,
    pub facts: Option<FactsView>,
    pub active_runs: u32,
    pub enroll_token_id: Option<String>,
    /// A rotated credential waits for the puppet to pick it up.
    pub rotation_pending: bool,
    /// The credential was revoked: the puppet is cut off.
    pub revoked: bool,
    /// The poll hold the puppet uses (it adapts it to the path); unknown
    /// until it polls after a restart of the puppeteer.
    pub poll_hold_seconds: Option<f64>,
    /// Its polls cut short by something on the path since it started.
    pub polls_cut: u32,
}

impl From<&pb::Puppet> for PuppetView {
    fn from(p: &pb::Puppet) -> Self {
        PuppetView {
            name: p.name.clone(),
            state: puppet_state(p.state),
            presence: presence(p.presence),
            polling: p.polling,
            last_seen: rfc3339(p.last_seen.as_ref()),
            enrolled_at: rfc3339(p.enrolled_at.as_ref()),
            labels: sorted(&p.labels),
            declared_labels: sorted(&p.declared_labels),
            assigned_labels: sorted(&p.assigned_labels),
            facts: p.facts.as_ref().map(FactsView::from),
            active_runs: p.active_runs,
            enroll_token_id: non_empty(&p.enroll_token_id),
            rotation_pending: p.rotation_pending,
            revoked: p.revoked,
            poll_hold_seconds: p
                .poll_hold
                .as_ref()
                .map(|d| d.seconds as f64 + f64::from(d.nanos) / 1e9),
            polls_cut: p.polls_cut,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct FactsView {
    pub hostname: String,
    pub os: String,
    pub os_id: String,
    pub kernel: String,
    pub arch: String,
    pub agent_version: String,
    pub uptime_seconds: Option<f64>,
    pub load: Vec<f64>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub disk_total_bytes: u64,
    pub disk_available_bytes: u64,
    pub boot_id: String,
    pub collected_at: Option<String>,
}

impl From<&pb::Facts> for FactsView {
    fn from(f: &pb::Facts) -> Self {
        FactsView {
            hostname: f.hostname.clone(),
            os: f.os.clone(),
            os_id: f.os_id.clone(),
            kernel: f.kernel.clone(),
            arch: f.arch.clone(),
            agent_version: f.agent_version.clone(),
            uptime_seconds: seconds(f.uptime.as_ref()),
            load: f.load.clone(),
            memory_total_bytes: f.memory_total_bytes,
            memory_available_bytes: f.memory_available_bytes,
            disk_total_bytes: f.disk_total_bytes,
            disk_available_bytes: f.disk_available_bytes,
            boot_id: f.boot_id.clone(),
            collected_at: rfc3339(f.collected_at.as_ref()),
        }
    }
}

/// `puppets queue -o json`.
#[derive(Debug, Serialize)]
pub struct PuppetQueueView {
    pub puppet: String,
    /// Unfinished runs, in the order the puppet takes them.
    pub entries: Vec<QueueEntryView>,
}

#[derive(Debug, Serialize)]
pub struct QueueEntryView {
    pub run_id: String,
    pub job_id: String,
    pub task_name: String,
    pub state: String,
    /// Why it waits (or what it does), in words.
    pub cause: String,
}

impl From<&pb::PuppetQueue> for PuppetQueueView {
    fn from(q: &pb::PuppetQueue) -> Self {
        PuppetQueueView {
            puppet: q.puppet.clone(),
            entries: q
                .entries
                .iter()
                .map(|e| QueueEntryView {
                    run_id: e.run_id.clone(),
                    job_id: e.job_id.clone(),
                    task_name: e.task_name.clone(),
                    state: run_state(e.state),
                    cause: e.cause.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queue_json() {
        let queue = pb::PuppetQueue {
            puppet: "web-1".into(),
            entries: vec![pb::QueueEntry {
                run_id: "run-a".into(),
                job_id: "job-1".into(),
                task_name: "patch".into(),
                state: pb::RunState::Waiting as i32,
                cause: "waiting for job job-0".into(),
            }],
        };
        assert_eq!(
            serde_json::to_value(PuppetQueueView::from(&queue)).unwrap(),
            json!({
                "puppet": "web-1",
                "entries": [{
                    "run_id": "run-a",
                    "job_id": "job-1",
                    "task_name": "patch",
                    "state": "waiting",
                    "cause": "waiting for job job-0",
                }],
            })
        );
    }

    #[test]
    fn puppet_json_shows_credential_state() {
        let puppet = pb::Puppet {
            name: "web-1".into(),
            state: pb::PuppetState::Pending as i32,
            rotation_pending: true,
            ..Default::default()
        };
        let value = serde_json::to_value(PuppetView::from(&puppet)).unwrap();
        assert_eq!(value["state"], "pending");
        assert_eq!(value["rotation_pending"], true);
        assert_eq!(value["revoked"], false);
        assert_eq!(value["enroll_token_id"], serde_json::Value::Null);
    }
}
