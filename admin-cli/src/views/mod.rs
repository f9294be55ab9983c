//! What `-o json` prints: serde views of the protobuf messages.
//!
//! These field names are an interface for scripts, so they are stable and
//! snake_case; enum values are lowercase words (`timed_out`), times RFC 3339
//! strings, durations seconds as floats (fields ending in `_seconds`).
//!
//! One module per command group, named as in [`crate::commands`], and every
//! view re-exported from here; this module keeps what they share: the words
//! of enum values and small conversions.

mod artifacts;
mod audit;
mod enroll_tokens;
mod events;
mod groups;
mod jobs;
mod notifications;
mod puppets;
mod resources;
mod runs;
mod status;
mod tasks;
mod tokens;
mod users;

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;

pub use artifacts::ArtifactView;
pub use audit::AuditEntryView;
pub use enroll_tokens::{CreatedTokenView, EnrollTokenView};
pub use events::EventView;
pub use groups::{GroupShowView, GroupView};
pub use jobs::{
    JobView, LimitView, PuppetSkippedView, RunSummaryView, StrategyView, TargetView, run_counts,
    strategy_line,
};
pub use notifications::NotificationRuleView;
pub use puppets::{FactsView, PuppetQueueView, PuppetView, QueueEntryView};
pub use resources::{ResourceHolderView, ResourceView};
pub use runs::{FetchView, RunView, TransitionView};
pub use status::{
    AttentionView, FetchingRunView, FleetView, JobBriefView, NodeView, OFFLINE_WAIT,
    OfflineWaitView, PuppetBrief, ResourceUseView, ServerView, StatusView,
};
pub use tasks::{
    ArtifactRefView, ProgramView, ResourceNeedView, TaskView, artifacts_line, needs_line,
};
pub use tokens::{ApiTokenView, CreatedApiTokenView};
pub use users::{UserView, WhoAmIView};

/// The lowercase word of an enum value: `RUN_STATE_TIMED_OUT` → `timed_out`.
fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

pub fn run_state(value: i32) -> String {
    match pb::RunState::try_from(value) {
        Ok(state) => word(state.as_str_name(), "RUN_STATE_"),
        Err(_) => format!("unknown_{value}"),
    }
}

pub fn job_state(value: i32) -> String {
    match pb::JobState::try_from(value) {
        Ok(state) => word(state.as_str_name(), "JOB_STATE_"),
        Err(_) => format!("unknown_{value}"),
    }
}

pub fn puppet_state(value: i32) -> String {
    match pb::PuppetState::try_from(value) {
        Ok(state) => word(state.as_str_name(), "PUPPET_STATE_"),
        Err(_) => format!("unknown_{value}"),
    }
}

pub fn role(value: i32) -> String {
    match pb::Role::try_from(value) {
        Ok(r) => word(r.as_str_name(), "ROLE_"),
        Err(_) => format!("unknown_{value}"),
    }
}

pub fn presence(value: i32) -> String {
    match pb::Presence::try_from(value) {
        Ok(p) => word(p.as_str_name(), "PRESENCE_"),
        Err(_) => format!("unknown_{value}"),
    }
}

pub fn outcome(value: i32) -> String {
    match pb::Outcome::try_from(value) {
        Ok(o) => word(o.as_str_name(), "OUTCOME_"),
        Err(_) => format!("unknown_{value}"),
    }
}

/// Whether a run state is final.
pub fn run_finished(state: i32) -> bool {
    state >= pb::RunState::Succeeded as i32
}

/// Whether a job is finished (every run is). A job awaiting approval is not:
/// its runs have not started.
pub fn job_finished(state: i32) -> bool {
    [
        pb::JobState::Succeeded,
        pb::JobState::Failed,
        pb::JobState::Cancelled,
        pb::JobState::Rejected,
    ]
    .iter()
    .any(|s| *s as i32 == state)
}

fn sorted(map: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Whether an expiry time is past.
fn expired(expires_at: Option<&prost_types::Timestamp>) -> bool {
    expires_at
        .and_then(crate::output::to_system_time)
        .is_some_and(|at| at <= std::time::SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost_types::Timestamp;

    /// A timestamp `seconds` after the epoch, as the messages of every
    /// group's tests carry them.
    pub(super) fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn awaiting_approval_is_not_finished() {
        assert!(!job_finished(pb::JobState::AwaitingApproval as i32));
        assert!(!job_finished(pb::JobState::Running as i32));
        assert!(!job_finished(pb::JobState::Unspecified as i32));
        for done in [
            pb::JobState::Succeeded,
            pb::JobState::Failed,
            pb::JobState::Cancelled,
            pb::JobState::Rejected,
        ] {
            assert!(job_finished(done as i32), "{done:?}");
        }
        assert_eq!(
            job_state(pb::JobState::AwaitingApproval as i32),
            "awaiting_approval"
        );
    }

    #[test]
    fn enum_words() {
        assert_eq!(run_state(pb::RunState::TimedOut as i32), "timed_out");
        assert_eq!(run_state(99), "unknown_99");
        assert_eq!(run_state(pb::RunState::Waiting as i32), "waiting");
        assert_eq!(run_state(pb::RunState::Lost as i32), "lost");
        assert!(run_finished(pb::RunState::Lost as i32));
        assert!(!run_finished(pb::RunState::Waiting as i32));
        assert_eq!(presence(pb::Presence::Online as i32), "online");
        assert_eq!(puppet_state(pb::PuppetState::Pending as i32), "pending");
        assert_eq!(outcome(pb::Outcome::StartFailed as i32), "start_failed");
        assert!(run_finished(pb::RunState::Skipped as i32));
        assert!(!run_finished(pb::RunState::Running as i32));
    }
}
