//! Jobs: one launch of a task version on a target, with its strategy and
//! its approval.

use serde::{Deserialize, Serialize};

use super::{Millis, RunSpec};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Selector(String),
    Puppets(Vec<String>),
}

/// A count, or a percentage of a job's runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    Count(u32),
    Percent(u32),
}

impl Limit {
    /// The limit for a job of `total` runs: a percentage rounds up, and is
    /// at least 1.
    pub fn resolve(self, total: usize) -> usize {
        match self {
            Limit::Count(n) => n as usize,
            Limit::Percent(p) => ((total * p as usize).div_ceil(100)).max(1),
        }
    }
}

/// How a job's runs are rolled out. See `Strategy` in admin.proto.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Strategy {
    pub max_in_flight: Option<Limit>,
    pub max_failures: Option<Limit>,
    pub rolling: bool,
    pub deadline_ms: Option<u64>,
    pub offline_wait_ms: Option<u64>,
    pub after_job: Option<String>,
    pub per_puppet: bool,
    pub approval: bool,
    pub ordered: bool,
}

/// Where a job stands with its approval gate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    NotNeeded,
    Awaiting,
    Approved {
        by: String,
        at: Millis,
    },
    Rejected {
        by: String,
        at: Millis,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub task_name: String,
    pub task_version: u32,
    /// The task version's spec, copied: the job runs what it was launched with.
    pub spec: RunSpec,
    pub target: Target,
    pub created_at: Millis,
    /// How many runs it has (their ids are the store's `job_runs` index,
    /// not a list in this record: see `store/jobs.rs`).
    #[serde(default)]
    pub run_count: u64,
    pub cancelled: bool,
    /// Creation order, for listing newest first.
    pub seq: u64,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub approval: Approval,
    /// Puppets the target named that got no run, with why.
    #[serde(default)]
    pub not_targeted: Vec<(String, String)>,
    /// The end state already announced in the event stream, if any.
    #[serde(default)]
    pub reported_end: Option<String>,
    /// An operator saw the finished job: it no longer needs attention.
    #[serde(default)]
    pub acknowledged: Option<Acknowledged>,
    /// The user who created it (`None` for jobs older than the field).
    #[serde(default)]
    pub created_by: Option<String>,
    /// Its approval was asked for (`job.awaiting_approval` announced), once
    /// nothing else it depends on was pending.
    #[serde(default)]
    pub approval_requested: bool,
}

/// Who acknowledged a finished job, and when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Acknowledged {
    pub by: String,
    pub at: Millis,
}
