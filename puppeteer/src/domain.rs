//! Domain types: what the scheduler and the store talk about.
//!
//! These are plain, validated Rust types. Protobuf types never reach past the
//! api layer: it converts them into these with `TryFrom`, once, and a value
//! of one of these types is valid by construction (names checked, timeouts in
//! range).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// A point in time: milliseconds since the Unix epoch. The scheduler gets
/// "now" as one of these; it never reads a clock.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Millis(since.as_millis() as i64)
    }

    pub fn plus(self, d: Duration) -> Self {
        Millis(self.0.saturating_add(d.as_millis() as i64))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0).max(0) as u64)
    }
}

/// A validation failure of outside input, with a message that says what is
/// wrong and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// `s` as an error may quote it: whole if short, else its first characters
/// and its size (a refused value is never echoed whole).
pub fn shown(s: &str) -> String {
    const QUOTED: usize = 64;
    if s.len() <= QUOTED {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(QUOTED / 2).collect();
    format!("{head:?}... ({} bytes)", s.len())
}

fn check_name(kind: &str, s: &str, extra: &[char]) -> Result<(), Invalid> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c);
    let extra_list: String = extra.iter().map(|c| format!(" '{c}'")).collect();
    if s.is_empty() {
        return Err(Invalid(format!("{kind} name is empty")));
    }
    if s.len() > 63 {
        return Err(Invalid(format!(
            "{kind} name {} is {} characters long; at most 63 are allowed",
            shown(s),
            s.len()
        )));
    }
    if let Some((i, c)) = s.char_indices().find(|&(_, c)| !allowed(c)) {
        return Err(Invalid(format!(
            "{kind} name {s:?} has {c:?} at character {}: use lowercase letters, digits and{extra_list}",
            i + 1
        )));
    }
    let first = s.chars().next().expect("not empty");
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(Invalid(format!(
            "{kind} name {s:?} must start with a lowercase letter or a digit"
        )));
    }
    Ok(())
}

/// Checks a puppet name: 1-63 of `[a-z0-9.-]`, starting with a letter or digit.
pub fn check_puppet_name(s: &str) -> Result<(), Invalid> {
    check_name("puppet", s, &['-', '.'])
}

/// Checks a task name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_task_name(s: &str) -> Result<(), Invalid> {
    check_name("task", s, &['-', '.', '_'])
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Checks a label key: 1-63 of `[A-Za-z0-9._/-]`.
pub fn check_label_key(k: &str) -> Result<(), Invalid> {
    if k.is_empty() || k.len() > 63 {
        return Err(Invalid(format!(
            "label key {} must be 1 to 63 characters long",
            shown(k)
        )));
    }
    if let Some(c) = k.chars().find(|&c| !label_char(c)) {
        return Err(Invalid(format!(
            "label key {k:?} has {c:?}: use letters, digits, '.', '_', '-' and '/'"
        )));
    }
    Ok(())
}

/// Checks a label value: 0-63 of `[A-Za-z0-9._/-]`.
pub fn check_label_value(k: &str, v: &str) -> Result<(), Invalid> {
    if v.len() > 63 {
        return Err(Invalid(format!(
            "label {}: value is longer than 63 characters",
            shown(k)
        )));
    }
    if let Some(c) = v.chars().find(|&c| !label_char(c)) {
        return Err(Invalid(format!(
            "label {k}: value {v:?} has {c:?}: use letters, digits, '.', '_', '-' and '/'"
        )));
    }
    Ok(())
}

pub fn check_labels(labels: &Labels) -> Result<(), Invalid> {
    if labels.len() > 64 {
        return Err(Invalid("at most 64 labels are allowed".into()));
    }
    for (k, v) in labels {
        check_label_key(k)?;
        check_label_value(k, v)?;
    }
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PuppetState {
    Pending,
    Enabled,
    Disabled,
}

/// What a puppet reported about its machine.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Facts {
    pub hostname: String,
    pub os: String,
    pub os_id: String,
    pub kernel: String,
    pub arch: String,
    pub memory_total_bytes: u64,
    pub disk_total_bytes: u64,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub load: Vec<f64>,
    pub memory_available_bytes: u64,
    pub disk_available_bytes: u64,
    pub boot_id: String,
    pub collected_at: Option<Millis>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Puppet {
    pub name: String,
    pub state: PuppetState,
    pub enrolled_at: Millis,
    pub last_seen: Option<Millis>,
    /// Labels the puppet declared for itself.
    pub declared_labels: Labels,
    /// Labels from its enrollment token and from operators; they win.
    pub assigned_labels: Labels,
    pub facts: Facts,
    pub enroll_token_id: String,
    /// Hash of its credential, to revoke it on removal.
    pub credential_hash: String,
    /// A rotated credential not yet picked up by the puppet.
    #[serde(default)]
    pub rotation: Option<Rotation>,
    /// The previous credential, valid until the time given.
    #[serde(default)]
    pub old_credential: Option<(String, Millis)>,
    /// Its credential was revoked: it is cut off.
    #[serde(default)]
    pub revoked: bool,
    /// The presence last announced in the event stream ("online", "offline").
    #[serde(default)]
    pub reported_presence: Option<String>,
}

impl Puppet {
    /// Declared labels overridden by assigned ones.
    pub fn labels(&self) -> Labels {
        let mut labels = self.declared_labels.clone();
        labels.extend(self.assigned_labels.clone());
        labels
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    Script {
        body: String,
        interpreter: Vec<String>,
    },
    Argv {
        args: Vec<String>,
    },
}

pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
pub const MIN_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// Bounds on a run spec's parts besides its script (which is at most
/// [`MAX_SCRIPT_BYTES`], as argv is in all): far above what tasks use, and
/// what a stored task (and each of its versions) may cost.
pub struct SpecLimits;

impl SpecLimits {
    pub const ARGS: usize = 4096;
    pub const INTERPRETER_ARGS: usize = 16;
    pub const INTERPRETER_BYTES: usize = 4096;
    pub const ENV_VARS: usize = 256;
    pub const ENV_NAME_BYTES: usize = 256;
    pub const ENV_VALUE_BYTES: usize = 32 * 1024;
    pub const ENV_BYTES: usize = 256 * 1024;
    pub const WORKDIR_BYTES: usize = 4096;
    pub const ARTIFACTS: usize = 64;
}
/// How long after its start a run that expects a reboot may take to come
/// back, unless its task says otherwise (the puppet applies the same default).
pub const DEFAULT_REBOOT_WINDOW: Duration = Duration::from_secs(30 * 60);
pub const MAX_REBOOT_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    pub program: Program,
    pub timeout_ms: u64,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    /// Artifacts fetched before the run, pinned by content.
    #[serde(default)]
    pub artifacts: Vec<ArtifactRef>,
    /// The task ends by rebooting the machine (see `Outcome::Rebooted`).
    #[serde(default)]
    pub expect_reboot: bool,
    /// How long after the start the puppet may come back from the reboot.
    #[serde(default)]
    pub reboot_window_ms: Option<u64>,
}

/// An artifact as a task version uses it: pinned by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub name: String,
    /// Lowercase hex SHA-256.
    pub sha256: String,
    pub size: u64,
    /// The environment variable holding the cached file's path.
    pub env: String,
}

impl RunSpec {
    /// Checks what the api layer could not check field by field.
    /// The bounds on a spec's parts (see [`SpecLimits`]), before anything
    /// is stored: an error names the part and the limit.
    fn check_sizes(&self) -> Result<(), Invalid> {
        let over = |what: &str, limit: usize, found: usize| {
            Err(Invalid(format!(
                "{what} is at most {limit}, this one has {found}"
            )))
        };
        let total =
            |items: &mut dyn Iterator<Item = &String>| items.map(String::len).sum::<usize>();
        match &self.program {
            Program::Script { interpreter, .. } => {
                if interpreter.len() > SpecLimits::INTERPRETER_ARGS {
                    return over(
                        "the interpreter's argument count",
                        SpecLimits::INTERPRETER_ARGS,
                        interpreter.len(),
                    );
                }
                let bytes = total(&mut interpreter.iter());
                if bytes > SpecLimits::INTERPRETER_BYTES {
                    return over(
                        "the interpreter's size in bytes",
                        SpecLimits::INTERPRETER_BYTES,
                        bytes,
                    );
                }
            }
            Program::Argv { args } => {
                if args.len() > SpecLimits::ARGS {
                    return over("argv's argument count", SpecLimits::ARGS, args.len());
                }
                let bytes = total(&mut args.iter());
                if bytes > MAX_SCRIPT_BYTES {
                    return over("argv's size in bytes", MAX_SCRIPT_BYTES, bytes);
                }
            }
        }
        if self.env.len() > SpecLimits::ENV_VARS {
            return over(
                "the environment's variable count",
                SpecLimits::ENV_VARS,
                self.env.len(),
            );
        }
        if let Some(k) = self
            .env
            .keys()
            .find(|k| k.len() > SpecLimits::ENV_NAME_BYTES)
        {
            return over(
                "an environment variable's name in bytes",
                SpecLimits::ENV_NAME_BYTES,
                k.len(),
            );
        }
        if let Some((k, v)) = self
            .env
            .iter()
            .find(|(_, v)| v.len() > SpecLimits::ENV_VALUE_BYTES)
        {
            return over(
                &format!("environment variable {}'s value in bytes", shown(k)),
                SpecLimits::ENV_VALUE_BYTES,
                v.len(),
            );
        }
        let bytes = total(&mut self.env.keys().chain(self.env.values()));
        if bytes > SpecLimits::ENV_BYTES {
            return over(
                "the environment's size in bytes",
                SpecLimits::ENV_BYTES,
                bytes,
            );
        }
        if self.workdir.len() > SpecLimits::WORKDIR_BYTES {
            return over(
                "workdir's size in bytes",
                SpecLimits::WORKDIR_BYTES,
                self.workdir.len(),
            );
        }
        if self.artifacts.len() > SpecLimits::ARTIFACTS {
            return over(
                "the count of artifacts",
                SpecLimits::ARTIFACTS,
                self.artifacts.len(),
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        match &self.program {
            Program::Script { body, interpreter } => {
                if body.trim().is_empty() {
                    return Err(Invalid("the script is empty".into()));
                }
                if body.len() > MAX_SCRIPT_BYTES {
                    return Err(Invalid(format!(
                        "the script is {} bytes; at most {MAX_SCRIPT_BYTES} are allowed",
                        body.len()
                    )));
                }
                if interpreter.iter().any(|a| a.is_empty() || a.contains('\0')) {
                    return Err(Invalid(
                        "interpreter arguments must be non-empty and without NUL".into(),
                    ));
                }
            }
            Program::Argv { args } => {
                if args.is_empty() || args[0].is_empty() {
                    return Err(Invalid("argv is empty: give at least a program".into()));
                }
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(Invalid("argv elements must not contain NUL".into()));
                }
            }
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        if !(MIN_TIMEOUT..=MAX_TIMEOUT).contains(&timeout) {
            return Err(Invalid(format!(
                "timeout {} is out of range: it must be between 1s and 7days",
                humantime::format_duration(timeout)
            )));
        }
        self.check_sizes()?;
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(Invalid(format!(
                    "environment variable {}: names must be non-empty without '=' or NUL",
                    shown(k)
                )));
            }
        }
        if self.workdir.contains('\0') {
            return Err(Invalid("workdir must not contain NUL".into()));
        }
        if let Some(window) = self.reboot_window_ms.map(Duration::from_millis) {
            if !self.expect_reboot {
                return Err(Invalid(
                    "a reboot window needs expect_reboot (--expect-reboot): this task does not expect a reboot"
                        .into(),
                ));
            }
            if !(MIN_TIMEOUT..=MAX_REBOOT_WINDOW).contains(&window) {
                return Err(Invalid(format!(
                    "reboot window {} is out of range: it must be between 1s and 1day",
                    humantime::format_duration(window)
                )));
            }
        }
        Ok(())
    }

    /// How long a run of this spec may take to come back from the reboot it
    /// expects; `None` when it expects none.
    pub fn reboot_window(&self) -> Option<Duration> {
        self.expect_reboot.then(|| {
            self.reboot_window_ms
                .map_or(DEFAULT_REBOOT_WINDOW, Duration::from_millis)
        })
    }
}

/// Some capacity of a resource that a run holds while offered or running.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceNeed {
    pub name: String,
    pub count: u32,
}

/// Checks a resource name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_resource_name(s: &str) -> Result<(), Invalid> {
    check_name("resource", s, &['-', '.', '_'])
}

/// Checks a list of needs: valid names, counts of at least 1, no name twice.
pub fn check_needs(needs: &[ResourceNeed]) -> Result<(), Invalid> {
    let mut seen = std::collections::BTreeSet::new();
    for need in needs {
        check_resource_name(&need.name)?;
        if need.count == 0 {
            return Err(Invalid(format!(
                "resource {}: the count must be at least 1",
                need.name
            )));
        }
        if !seen.insert(&need.name) {
            return Err(Invalid(format!("resource {} is listed twice", need.name)));
        }
    }
    Ok(())
}

/// A named set of puppets: a saved selector or an explicit list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub selector: Option<String>,
    pub puppets: Vec<String>,
    pub description: String,
    pub created_at: Millis,
}

/// Checks a group name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_group_name(s: &str) -> Result<(), Invalid> {
    check_name("group", s, &['-', '.', '_'])
}

/// A named counting semaphore.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub capacity: u32,
    pub created_at: Millis,
    /// Bytes per second shared by the artifact downloads of the runs
    /// holding it; 0: no budget.
    #[serde(default)]
    pub bandwidth: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub spec: RunSpec,
    pub created_at: Millis,
    pub updated_at: Millis,
    #[serde(default)]
    pub resources: Vec<ResourceNeed>,
    /// New attempts after lost, interrupted or timed out.
    #[serde(default)]
    pub retries: u32,
    /// Selector of the puppets the task is valid for; empty: any.
    #[serde(default)]
    pub requires: String,
}

/// The most attempts a task may ask for.
pub const MAX_RETRIES: u32 = 100;

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
    pub run_ids: Vec<String>,
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnrollToken {
    pub id: String,
    pub description: String,
    pub labels: Labels,
    /// `None`: unlimited.
    pub uses_left: Option<u32>,
    pub used: u32,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked: bool,
    pub secret_hash: String,
    /// Puppets enrolling with it are enabled at once, not pending.
    #[serde(default)]
    pub auto_approve: bool,
}

impl EnrollToken {
    /// Why the token cannot be used now, if it cannot.
    pub fn unusable(&self, now: Millis) -> Option<&'static str> {
        if self.revoked {
            Some("the enrollment token was revoked")
        } else if self.expires_at.is_some_and(|e| now >= e) {
            Some("the enrollment token has expired")
        } else if self.uses_left == Some(0) {
            Some("the enrollment token has no uses left")
        } else {
            None
        }
    }
}

/// Who holds a credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// An operator's API token.
    User {
        user: String,
        token_id: String,
    },
    Puppet {
        name: String,
    },
}

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// Checks a user name: 1-63 of `[a-z0-9._-]`, starting with a letter or digit.
pub fn check_user_name(s: &str) -> Result<(), Invalid> {
    check_name("user", s, &['-', '.', '_'])
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
}

/// An operator's API token. The secret is stored only as its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked: bool,
    pub secret_hash: String,
}

/// A puppet credential being replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The new credential, kept until the puppet authenticates with it: it
    /// is sent to the puppet in poll answers until then.
    pub new_secret: String,
    pub new_hash: String,
    /// The old credential stops working then.
    pub old_expires_at: Millis,
}

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

/// Where a notification goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email { to: String },
    Webhook { url: String, secret: Option<String> },
}

/// A rule: events of these kinds, about these puppets, go to a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRule {
    pub id: String,
    pub on: Vec<String>,
    pub channel: Channel,
    pub target: String,
    pub created_at: Millis,
    #[serde(default)]
    pub delivered: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub last_error: Option<(Millis, String)>,
}

impl NotificationRule {
    /// Whether an event's kind is one the rule is on.
    pub fn wants(&self, kind: &str) -> bool {
        self.on.iter().any(|k| {
            if k.ends_with('.') {
                kind.starts_with(k.as_str())
            } else {
                kind == k
            }
        })
    }
}

/// A notification owed: stored before it is attempted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub rule_id: String,
    pub event: Event,
    pub created_at: Millis,
    pub attempts: u32,
    pub next_at: Millis,
    pub last_error: Option<String>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_with_position() {
        assert!(check_puppet_name("web-01.lyon").is_ok());
        assert!(check_puppet_name("").unwrap_err().0.contains("empty"));
        let err = check_puppet_name("web_01").unwrap_err().0;
        assert!(err.contains("character 4"), "{err}");
        assert!(check_puppet_name("-web").is_err());
        assert!(check_puppet_name(&"a".repeat(64)).is_err());
        assert!(check_task_name("apt_upgrade").is_ok());
        assert!(check_task_name("Apt").is_err());
    }

    #[test]
    fn timeouts_are_bounded() {
        let mut spec = RunSpec {
            program: Program::Script {
                body: "true".into(),
                interpreter: vec![],
            },
            timeout_ms: 1000,
            env: Default::default(),
            workdir: String::new(),
            artifacts: Vec::new(),
            expect_reboot: false,
            reboot_window_ms: None,
        };
        assert!(spec.validate().is_ok());
        spec.timeout_ms = MAX_TIMEOUT.as_millis() as u64 + 1;
        assert!(spec.validate().unwrap_err().0.contains("out of range"));
        spec.timeout_ms = 0;
        assert!(spec.validate().is_err());
    }

    #[test]
    fn assigned_labels_win() {
        let puppet = Puppet {
            name: "p".into(),
            state: PuppetState::Enabled,
            enrolled_at: Millis(0),
            last_seen: None,
            declared_labels: [
                ("env".into(), "prod".into()),
                ("os".into(), "debian".into()),
            ]
            .into(),
            assigned_labels: [("env".into(), "test".into())].into(),
            facts: Facts::default(),
            enroll_token_id: "enr-x".into(),
            credential_hash: String::new(),
            rotation: None,
            old_credential: None,
            revoked: false,
            reported_presence: None,
        };
        let labels = puppet.labels();
        assert_eq!(labels["env"], "test");
        assert_eq!(labels["os"], "debian");
    }
}
