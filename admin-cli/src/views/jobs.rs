//! JSON views of a job: its target, strategy and runs in brief.

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::runs::FetchView;
use super::{job_state, non_empty, run_state};
use crate::output::{rfc3339, seconds};

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetView {
    Selector { selector: String },
    Puppets { puppets: Vec<String> },
    None,
}

impl From<Option<&pb::Target>> for TargetView {
    fn from(t: Option<&pb::Target>) -> Self {
        match t.and_then(|t| t.kind.as_ref()) {
            Some(pb::target::Kind::Selector(s)) => TargetView::Selector {
                selector: s.clone(),
            },
            Some(pb::target::Kind::Puppets(p)) => TargetView::Puppets {
                puppets: p.names.clone(),
            },
            None => TargetView::None,
        }
    }
}

impl std::fmt::Display for TargetView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetView::Selector { selector } if selector.is_empty() => f.write_str("all"),
            TargetView::Selector { selector } => f.write_str(selector),
            TargetView::Puppets { puppets } => write!(f, "puppets {}", puppets.join(",")),
            TargetView::None => f.write_str("-"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub id: String,
    pub task_name: String,
    pub task_version: u32,
    pub target: TargetView,
    pub state: String,
    pub created_at: Option<String>,
    pub finished_at: Option<String>,
    /// Number of runs in each state, counted from `runs`.
    pub counts: BTreeMap<String, u32>,
    pub runs: Vec<RunSummaryView>,
    /// How the runs are rolled out (every field at its default when the job
    /// was launched without rollout options).
    pub strategy: StrategyView,
    /// Who approved (or, with `rejected`, rejected) the job; `null` if nobody.
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub rejected: bool,
    /// Puppets the target named that got no run, and why.
    pub not_targeted: Vec<PuppetSkippedView>,
    /// Who acknowledged the finished job (`jobs ack`); `null` if nobody.
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<String>,
}

/// A limit of a strategy: `{"count": 3}` or `{"percent": 25}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitView {
    Count(u32),
    Percent(u32),
}

impl LimitView {
    fn from_pb(limit: Option<&pb::Limit>) -> Option<Self> {
        match limit.and_then(|l| l.kind) {
            Some(pb::limit::Kind::Count(n)) => Some(LimitView::Count(n)),
            Some(pb::limit::Kind::Percent(p)) => Some(LimitView::Percent(p)),
            None => None,
        }
    }
}

impl std::fmt::Display for LimitView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimitView::Count(n) => write!(f, "{n}"),
            LimitView::Percent(p) => write!(f, "{p}%"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct StrategyView {
    /// `null`: no limit.
    pub max_in_flight: Option<LimitView>,
    /// `null`: no limit.
    pub max_failures: Option<LimitView>,
    pub rolling: bool,
    /// `null`: no deadline.
    pub deadline_seconds: Option<f64>,
    /// `null`: runs wait for their offline puppet forever.
    pub offline_wait_seconds: Option<f64>,
    /// The job this one starts after; `null` if none.
    pub after_job: Option<String>,
    pub per_puppet: bool,
    pub approval: bool,
    pub ordered: bool,
}

impl From<&pb::Strategy> for StrategyView {
    fn from(s: &pb::Strategy) -> Self {
        StrategyView {
            max_in_flight: LimitView::from_pb(s.max_in_flight.as_ref()),
            max_failures: LimitView::from_pb(s.max_failures.as_ref()),
            rolling: s.rolling,
            deadline_seconds: seconds(s.deadline.as_ref()),
            offline_wait_seconds: seconds(s.offline_wait.as_ref()),
            after_job: non_empty(&s.after_job),
            per_puppet: s.per_puppet,
            approval: s.approval,
            ordered: s.ordered,
        }
    }
}

/// A strategy in words, for tables: `rolling, max failures 1, offline wait
/// 30s, after job-x`; `-` when it has no option.
pub fn strategy_line(s: &pb::Strategy) -> String {
    let view = StrategyView::from(s);
    let duration = |d: Option<&prost_types::Duration>| crate::output::human_duration(d);
    let mut parts = Vec::new();
    if view.rolling {
        parts.push("rolling".to_string());
    }
    if let Some(limit) = view.max_in_flight {
        parts.push(format!("max in flight {limit}"));
    }
    if let Some(limit) = view.max_failures {
        parts.push(format!("max failures {limit}"));
    }
    if s.deadline.is_some() {
        parts.push(format!("deadline {}", duration(s.deadline.as_ref())));
    }
    if s.offline_wait.is_some() {
        parts.push(format!(
            "offline wait {}",
            duration(s.offline_wait.as_ref())
        ));
    }
    if let Some(up) = &view.after_job {
        if view.per_puppet {
            parts.push(format!("after {up} (per puppet)"));
        } else {
            parts.push(format!("after {up}"));
        }
    }
    if view.approval {
        parts.push("approval".into());
    }
    if view.ordered {
        parts.push("ordered".into());
    }
    if parts.is_empty() {
        return "-".into();
    }
    parts.join(", ")
}

#[derive(Debug, Serialize)]
pub struct PuppetSkippedView {
    pub puppet: String,
    pub cause: String,
}

impl From<&pb::PuppetSkipped> for PuppetSkippedView {
    fn from(p: &pb::PuppetSkipped) -> Self {
        PuppetSkippedView {
            puppet: p.puppet.clone(),
            cause: p.cause.clone(),
        }
    }
}

impl From<&pb::Job> for JobView {
    fn from(j: &pb::Job) -> Self {
        JobView {
            id: j.id.clone(),
            task_name: j.task_name.clone(),
            task_version: j.task_version,
            target: TargetView::from(j.target.as_ref()),
            state: job_state(j.state),
            created_at: rfc3339(j.created_at.as_ref()),
            finished_at: rfc3339(j.finished_at.as_ref()),
            counts: run_counts(j),
            runs: j.runs.iter().map(RunSummaryView::from).collect(),
            strategy: StrategyView::from(&j.strategy.clone().unwrap_or_default()),
            approved_by: non_empty(&j.approved_by),
            approved_at: rfc3339(j.approved_at.as_ref()),
            rejected: j.rejected,
            not_targeted: j.not_targeted.iter().map(PuppetSkippedView::from).collect(),
            acknowledged_by: (!j.acknowledged_by.is_empty()).then(|| j.acknowledged_by.clone()),
            acknowledged_at: rfc3339(j.acknowledged_at.as_ref()),
        }
    }
}

/// Runs by state word. Counted from the runs themselves rather than taken
/// from `Job.counts`, whose keys the API describes only loosely.
pub fn run_counts(job: &pb::Job) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for run in &job.runs {
        *counts.entry(run_state(run.state)).or_insert(0) += 1;
    }
    if job.runs.is_empty() {
        counts.extend(job.counts.iter().map(|(k, v)| (k.to_ascii_lowercase(), *v)));
    }
    counts
}

#[derive(Debug, Serialize)]
pub struct RunSummaryView {
    pub run_id: String,
    pub puppet: String,
    pub state: String,
    /// Set once the run's process exited (not for one that could not start,
    /// was killed by a signal, or never ran).
    pub exit_code: Option<i32>,
    pub cause: String,
    /// Set while its artifacts are being fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchView>,
}

impl From<&pb::RunSummary> for RunSummaryView {
    fn from(r: &pb::RunSummary) -> Self {
        let exited = r.outcome == pb::Outcome::Exited as i32;
        RunSummaryView {
            run_id: r.run_id.clone(),
            puppet: r.puppet.clone(),
            state: run_state(r.state),
            exit_code: exited.then_some(r.exit_code),
            cause: r.cause.clone(),
            fetch: r.fetch.as_ref().map(FetchView::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use prost_types::Duration;
    use serde_json::json;

    #[test]
    fn job_json() {
        let job = pb::Job {
            id: "job-1".into(),
            task_name: "disk".into(),
            task_version: 2,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Selector("os=debian".into())),
            }),
            state: pb::JobState::Failed as i32,
            created_at: ts(1_700_000_000),
            finished_at: None,
            runs: vec![
                pb::RunSummary {
                    run_id: "run-a".into(),
                    puppet: "web-1".into(),
                    state: pb::RunState::TimedOut as i32,
                    exit_code: 0,
                    cause: "lasted more than 1m".into(),
                    ..Default::default()
                },
                pb::RunSummary {
                    run_id: "run-b".into(),
                    puppet: "web-2".into(),
                    state: pb::RunState::Succeeded as i32,
                    outcome: pb::Outcome::Exited as i32,
                    exit_code: 0,
                    cause: String::new(),
                    ..Default::default()
                },
            ],
            counts: Default::default(),
            ..Default::default()
        };
        let value = serde_json::to_value(JobView::from(&job)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": "job-1",
                "task_name": "disk",
                "task_version": 2,
                "target": {"kind": "selector", "selector": "os=debian"},
                "state": "failed",
                "created_at": "2023-11-14T22:13:20Z",
                "finished_at": null,
                "counts": {"succeeded": 1, "timed_out": 1},
                "runs": [
                    {"run_id": "run-a", "puppet": "web-1", "state": "timed_out",
                     "exit_code": null, "cause": "lasted more than 1m"},
                    {"run_id": "run-b", "puppet": "web-2", "state": "succeeded",
                     "exit_code": 0, "cause": ""},
                ],
                "strategy": {
                    "max_in_flight": null,
                    "max_failures": null,
                    "rolling": false,
                    "deadline_seconds": null,
                    "offline_wait_seconds": null,
                    "after_job": null,
                    "per_puppet": false,
                    "approval": false,
                    "ordered": false,
                },
                "approved_by": null,
                "approved_at": null,
                "rejected": false,
                "not_targeted": [],
                "acknowledged_by": null,
                "acknowledged_at": null,
            })
        );
    }

    #[test]
    fn job_json_with_strategy_and_approval() {
        let secs = |seconds| Some(Duration { seconds, nanos: 0 });
        let job = pb::Job {
            id: "job-2".into(),
            state: pb::JobState::AwaitingApproval as i32,
            strategy: Some(pb::Strategy {
                max_in_flight: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Percent(25)),
                }),
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(3)),
                }),
                rolling: true,
                deadline: secs(3600),
                offline_wait: secs(30),
                after_job: "job-1".into(),
                per_puppet: true,
                approval: true,
                ordered: false,
            }),
            approved_by: "alice".into(),
            approved_at: ts(1_700_000_000),
            not_targeted: vec![pb::PuppetSkipped {
                puppet: "win-1".into(),
                cause: "not in the task's class os=debian".into(),
            }],
            ..Default::default()
        };
        let value = serde_json::to_value(JobView::from(&job)).unwrap();
        assert_eq!(value["state"], "awaiting_approval");
        assert_eq!(
            value["strategy"],
            json!({
                "max_in_flight": {"percent": 25},
                "max_failures": {"count": 3},
                "rolling": true,
                "deadline_seconds": 3600.0,
                "offline_wait_seconds": 30.0,
                "after_job": "job-1",
                "per_puppet": true,
                "approval": true,
                "ordered": false,
            })
        );
        assert_eq!(value["approved_by"], "alice");
        assert_eq!(value["approved_at"], "2023-11-14T22:13:20Z");
        assert_eq!(value["rejected"], false);
        assert_eq!(
            value["not_targeted"],
            json!([{"puppet": "win-1", "cause": "not in the task's class os=debian"}])
        );
        assert_eq!(
            strategy_line(job.strategy.as_ref().unwrap()),
            "rolling, max in flight 25%, max failures 3, deadline 1h, offline wait 30s, \
             after job-1 (per puppet), approval"
        );
        assert_eq!(
            strategy_line(&pb::Strategy {
                rolling: true,
                max_failures: Some(pb::Limit {
                    kind: Some(pb::limit::Kind::Count(1)),
                }),
                offline_wait: secs(30),
                after_job: "job-x".into(),
                ..Default::default()
            }),
            "rolling, max failures 1, offline wait 30s, after job-x"
        );
        assert_eq!(strategy_line(&pb::Strategy::default()), "-");
    }
}
