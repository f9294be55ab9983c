//! JSON views of a run: its history and the artifacts it is fetching.

use geppetto_proto::v1 as pb;
use serde::Serialize;

use super::{outcome, run_state};
use crate::output::{rfc3339, seconds};

/// Artifacts being fetched for a run.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FetchView {
    pub artifacts: Vec<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub bytes_per_second: u64,
    pub started_at: Option<String>,
    /// Seconds it should still take, when a rate is known.
    pub eta_seconds: Option<u64>,
}

impl From<&pb::RunFetch> for FetchView {
    fn from(f: &pb::RunFetch) -> Self {
        FetchView {
            artifacts: f.artifacts.clone(),
            bytes_done: f.bytes_done,
            bytes_total: f.bytes_total,
            bytes_per_second: f.bytes_per_second,
            started_at: rfc3339(f.started_at.as_ref()),
            eta_seconds: f.eta.map(|d| d.seconds.max(0) as u64),
        }
    }
}

impl FetchView {
    /// `fetching patch.tar: 2.1 MiB of 5.0 MiB at 61.6 KiB/s, about 47s left`
    pub fn words(&self) -> String {
        let mut text = format!(
            "fetching {}: {} of {}",
            self.artifacts.join(", "),
            crate::output::bytes(self.bytes_done),
            crate::output::bytes(self.bytes_total)
        );
        if self.bytes_per_second > 0 {
            text.push_str(&format!(
                " at {}/s",
                crate::output::bytes(self.bytes_per_second)
            ));
        }
        if let Some(eta) = self.eta_seconds {
            text.push_str(&format!(
                ", about {} left",
                crate::output::short_duration(std::time::Duration::from_secs(eta))
            ));
        }
        text
    }
}

#[derive(Debug, Serialize)]
pub struct RunView {
    pub id: String,
    pub job_id: String,
    pub puppet: String,
    pub task_name: String,
    pub task_version: u32,
    pub state: String,
    pub attempt: u32,
    pub cause: String,
    /// `null` until the run ended on its puppet.
    pub outcome: Option<String>,
    /// Set when the outcome is `exited`.
    pub exit_code: Option<i32>,
    /// Set when the outcome is `signaled`.
    pub signal: Option<i32>,
    pub created_at: Option<String>,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_seconds: Option<f64>,
    pub log_length: u64,
    /// The server dropped the middle of the output (its per-run log limit).
    pub log_truncated: bool,
    /// How many bytes it dropped.
    pub log_dropped: u64,
    /// Puppet reports that changed nothing (resends after a lost answer).
    pub duplicate_reports: u64,
    pub history: Vec<TransitionView>,
    /// Set while its artifacts are being fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchView>,
}

impl From<&pb::Run> for RunView {
    fn from(r: &pb::Run) -> Self {
        let exited = r.outcome == pb::Outcome::Exited as i32;
        let signaled = r.outcome == pb::Outcome::Signaled as i32;
        RunView {
            id: r.id.clone(),
            job_id: r.job_id.clone(),
            puppet: r.puppet.clone(),
            task_name: r.task_name.clone(),
            task_version: r.task_version,
            state: run_state(r.state),
            attempt: r.attempt,
            cause: r.cause.clone(),
            outcome: (r.outcome != pb::Outcome::Unspecified as i32).then(|| outcome(r.outcome)),
            exit_code: exited.then_some(r.exit_code),
            signal: signaled.then_some(r.signal),
            created_at: rfc3339(r.created_at.as_ref()),
            started_at: rfc3339(r.started_at.as_ref()),
            finished_at: rfc3339(r.finished_at.as_ref()),
            duration_seconds: seconds(r.duration.as_ref()),
            log_length: r.log_length,
            log_truncated: r.log_truncated,
            log_dropped: r.log_dropped,
            duplicate_reports: r.duplicate_reports,
            history: r.history.iter().map(TransitionView::from).collect(),
            fetch: r.fetch.as_ref().map(FetchView::from),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TransitionView {
    pub state: String,
    pub at: Option<String>,
    pub cause: String,
    pub attempt: u32,
}

impl From<&pb::RunTransition> for TransitionView {
    fn from(t: &pb::RunTransition) -> Self {
        TransitionView {
            state: run_state(t.state),
            at: rfc3339(t.at.as_ref()),
            cause: t.cause.clone(),
            attempt: t.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::tests::ts;
    use prost_types::{Duration, Timestamp};
    use serde_json::json;

    #[test]
    fn run_json() {
        let run = pb::Run {
            id: "run-a".into(),
            job_id: "job-1".into(),
            puppet: "web-1".into(),
            task_name: "disk".into(),
            task_version: 2,
            state: pb::RunState::Failed as i32,
            attempt: 1,
            cause: "exit code 3".into(),
            outcome: pb::Outcome::Exited as i32,
            exit_code: 3,
            signal: 0,
            created_at: ts(1_700_000_000),
            started_at: Some(Timestamp {
                seconds: 1_700_000_001,
                nanos: 500_000_000,
            }),
            finished_at: ts(1_700_000_011),
            duration: Some(Duration {
                seconds: 9,
                nanos: 500_000_000,
            }),
            log_length: 42,
            log_truncated: false,
            log_dropped: 0,
            duplicate_reports: 0,
            fetch: None,
            history: vec![pb::RunTransition {
                state: pb::RunState::Queued as i32,
                at: ts(1_700_000_000),
                cause: "created".into(),
                attempt: 1,
            }],
        };
        let value = serde_json::to_value(RunView::from(&run)).unwrap();
        assert_eq!(value["state"], "failed");
        assert_eq!(value["outcome"], "exited");
        assert_eq!(value["exit_code"], 3);
        assert_eq!(value["signal"], serde_json::Value::Null);
        assert_eq!(value["started_at"], "2023-11-14T22:13:21.500000000Z");
        assert_eq!(value["duration_seconds"], 9.5);
        assert_eq!(
            value["history"],
            json!([{"state": "queued", "at": "2023-11-14T22:13:20Z", "cause": "created", "attempt": 1}])
        );
    }

    #[test]
    fn run_json_shows_waiting_and_attempts() {
        let run = pb::Run {
            id: "run-a".into(),
            state: pb::RunState::Waiting as i32,
            attempt: 2,
            cause: "waiting for resource uplink-lyon".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(RunView::from(&run)).unwrap();
        assert_eq!(value["state"], "waiting");
        assert_eq!(value["attempt"], 2);
        assert_eq!(value["cause"], "waiting for resource uplink-lyon");
        assert_eq!(value["outcome"], serde_json::Value::Null);
    }
}
