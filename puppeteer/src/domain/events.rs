//! The event stream and the audit trail.

use serde::{Deserialize, Serialize};

use super::{Millis, Run, Transition};

/// A state change an operator cares about. `id` is gap-free and increasing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    pub id: u64,
    pub at: Millis,
    pub kind: String,
    pub job_id: String,
    pub run_id: String,
    pub puppet: String,
    pub resource: String,
    pub actor: String,
    pub summary: String,
}

impl Event {
    /// The event of a run's transition.
    pub fn of_run(run: &Run, transition: &Transition) -> Event {
        Event {
            at: transition.at,
            kind: format!("run.{}", transition.state.name()),
            job_id: run.job_id.clone(),
            run_id: run.id.clone(),
            puppet: run.puppet.clone(),
            actor: "puppeteer".into(),
            summary: format!(
                "{} on {} (attempt {}): {}",
                run.task_name, run.puppet, transition.attempt, transition.cause
            ),
            ..Event::default()
        }
    }
}

/// One admin mutation (or refused attempt), as recorded in the audit trail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub remote_addr: String,
    pub outcome: String,
    pub message: String,
}
