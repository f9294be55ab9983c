//! Runs: one job on one puppet, its states, their history and its attempts.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Millis, ResourceNeed};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Queued,
    Waiting,
    Offered,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Lost,
    Interrupted,
    Skipped,
}

impl RunState {
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            RunState::Queued | RunState::Waiting | RunState::Offered | RunState::Running
        )
    }

    /// The lowercase name used in job counts and by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Waiting => "waiting",
            RunState::Offered => "offered",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Cancelled => "cancelled",
            RunState::Lost => "lost",
            RunState::Interrupted => "interrupted",
            RunState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Exited,
    Signaled,
    TimedOut,
    Cancelled,
    StartFailed,
    Interrupted,
    /// The run expected a reboot and the puppet came back after one: a success.
    Rebooted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub state: RunState,
    pub at: Millis,
    pub cause: String,
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub job_id: String,
    pub puppet: String,
    pub task_name: String,
    pub task_version: u32,
    pub state: RunState,
    pub attempt: u32,
    pub cause: String,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub created_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub duration_ms: Option<u64>,
    pub log_length: u64,
    pub history: Vec<Transition>,
    /// An operator cancelled the run while it was running: the puppet is
    /// told to kill it on its next poll answer.
    pub cancel_requested: bool,
    /// Position in its puppet's queue.
    pub queue_seq: u64,
    /// Reports that changed nothing (resends after a lost answer).
    #[serde(default)]
    pub duplicate_reports: u64,
    /// Resources the run needs (from its task).
    #[serde(default)]
    pub needs: Vec<ResourceNeed>,
    /// Resources the run holds now: all of `needs` while offered or
    /// running, nothing otherwise.
    #[serde(default)]
    pub holds: Vec<ResourceNeed>,
    /// Where the current attempt's output starts in the run's log: each
    /// attempt writes from its own offset 0, after the earlier attempts'.
    #[serde(default)]
    pub log_base: u64,
    /// How many attempts the run may have in all (1 + the task's retries).
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Set once the stored output hit the per-run log limit: the bytes in
    /// the gap were received and acknowledged but not kept.
    #[serde(default)]
    pub log_gap: Option<LogGap>,
    /// Set when the run's task expects the machine to reboot: how long
    /// after the start its puppet may stay silent without the run being
    /// declared lost (the puppet is rebooting).
    #[serde(default)]
    pub reboot_window_ms: Option<u64>,
}

/// The dropped middle of a truncated log: output offsets `at..at + dropped`
/// are gone; the head before and the tail after are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogGap {
    pub at: u64,
    pub dropped: u64,
}

impl LogGap {
    /// The first offset kept after the gap.
    pub fn end(&self) -> u64 {
        self.at + self.dropped
    }
}

fn one() -> u32 {
    1
}

impl Run {
    /// Whether an attempt that ended in `state` gets a new one.
    /// An operator's cancellation always wins: a cancelled run is never
    /// given a new attempt, whatever ended the current one.
    pub fn retryable(&self, state: RunState) -> bool {
        matches!(
            state,
            RunState::Lost | RunState::Interrupted | RunState::TimedOut
        ) && self.attempt < self.max_attempts
            && !self.cancel_requested
    }

    /// Ends the current attempt in `state`; when the retry rule allows, a
    /// new attempt is queued instead (with a new fencing number). Returns
    /// true when a new attempt was made.
    pub fn end_attempt(&mut self, state: RunState, at: Millis, cause: impl Into<String>) -> bool {
        let cause = cause.into();
        if self.retryable(state) {
            self.history.push(Transition {
                state,
                at,
                cause: cause.clone(),
                attempt: self.attempt,
            });
            self.attempt += 1;
            self.log_base = self.log_length;
            self.started_at = None;
            self.outcome = None;
            self.exit_code = None;
            self.signal = None;
            self.duration_ms = None;
            self.cancel_requested = false;
            self.transition(
                RunState::Queued,
                at,
                format!(
                    "attempt {} after attempt {} was {state}: {cause}",
                    self.attempt,
                    self.attempt - 1
                ),
            );
            true
        } else {
            self.transition(state, at, cause);
            false
        }
    }
}

impl Run {
    /// Moves the run to `state`, recording when and why.
    pub fn transition(&mut self, state: RunState, at: Millis, cause: impl Into<String>) {
        let cause = cause.into();
        self.state = state;
        self.cause = cause.clone();
        if state.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(at);
        }
        self.history.push(Transition {
            state,
            at,
            cause,
            attempt: self.attempt,
        });
    }
}
