//! What `-o json` prints: serde views of the protobuf messages.
//!
//! These field names are an interface for scripts, so they are stable and
//! snake_case; enum values are lowercase words (`timed_out`), times RFC 3339
//! strings, durations seconds as floats (fields ending in `_seconds`).

use std::collections::BTreeMap;

use geppetto_proto::v1 as pb;
use serde::Serialize;

use crate::output::{rfc3339, seconds};

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

#[derive(Debug, Serialize)]
pub struct EnrollTokenView {
    pub id: String,
    pub description: String,
    pub labels: BTreeMap<String, String>,
    /// `null` when the token has no use limit.
    pub uses_left: Option<u32>,
    pub unlimited: bool,
    pub used: u32,
    pub created_at: Option<String>,
    /// `null` when it never expires.
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// Puppets enrolling with it are enabled at once (otherwise: pending).
    pub auto_approve: bool,
    /// `active`, `revoked`, `expired` or `used_up`.
    pub status: String,
}

impl From<&pb::EnrollToken> for EnrollTokenView {
    fn from(t: &pb::EnrollToken) -> Self {
        EnrollTokenView {
            id: t.id.clone(),
            description: t.description.clone(),
            labels: sorted(&t.labels),
            uses_left: (!t.unlimited).then_some(t.uses_left),
            unlimited: t.unlimited,
            used: t.used,
            created_at: rfc3339(t.created_at.as_ref()),
            expires_at: rfc3339(t.expires_at.as_ref()),
            revoked: t.revoked,
            auto_approve: t.auto_approve,
            status: token_status(t).into(),
        }
    }
}

/// Whether an expiry time is past.
fn expired(expires_at: Option<&prost_types::Timestamp>) -> bool {
    expires_at
        .and_then(crate::output::to_system_time)
        .is_some_and(|at| at <= std::time::SystemTime::now())
}

fn token_status(t: &pb::EnrollToken) -> &'static str {
    let expired = expired(t.expires_at.as_ref());
    if t.revoked {
        "revoked"
    } else if expired {
        "expired"
    } else if !t.unlimited && t.uses_left == 0 {
        "used_up"
    } else {
        "active"
    }
}

/// `enroll-tokens create -o json`: the token and its secret.
#[derive(Debug, Serialize)]
pub struct CreatedTokenView {
    #[serde(flatten)]
    pub token: EnrollTokenView,
    pub secret: String,
}

#[derive(Debug, Serialize)]
pub struct UserView {
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    pub created_at: Option<String>,
    /// Tokens of the user that still work.
    pub active_tokens: u32,
}

impl From<&pb::User> for UserView {
    fn from(u: &pb::User) -> Self {
        UserView {
            name: u.name.clone(),
            role: role(u.role),
            created_at: rfc3339(u.created_at.as_ref()),
            active_tokens: u.active_tokens,
        }
    }
}

/// `geppetto whoami -o json`.
#[derive(Debug, Serialize)]
pub struct WhoAmIView {
    pub user: String,
    pub role: String,
    pub token_id: String,
}

impl From<&pb::WhoAmIResponse> for WhoAmIView {
    fn from(w: &pb::WhoAmIResponse) -> Self {
        WhoAmIView {
            user: w.user.clone(),
            role: role(w.role),
            token_id: w.token_id.clone(),
        }
    }
}

/// An operator's API token, without its secret.
#[derive(Debug, Serialize)]
pub struct ApiTokenView {
    pub id: String,
    pub user: String,
    pub name: String,
    pub created_at: Option<String>,
    /// `null` when it never expires.
    pub expires_at: Option<String>,
    pub revoked: bool,
    /// `active`, `revoked` or `expired`.
    pub status: String,
}

impl From<&pb::ApiToken> for ApiTokenView {
    fn from(t: &pb::ApiToken) -> Self {
        let status = if t.revoked {
            "revoked"
        } else if expired(t.expires_at.as_ref()) {
            "expired"
        } else {
            "active"
        };
        ApiTokenView {
            id: t.id.clone(),
            user: t.user.clone(),
            name: t.name.clone(),
            created_at: rfc3339(t.created_at.as_ref()),
            expires_at: rfc3339(t.expires_at.as_ref()),
            revoked: t.revoked,
            status: status.into(),
        }
    }
}

/// `tokens create -o json`: the token and its secret.
#[derive(Debug, Serialize)]
pub struct CreatedApiTokenView {
    #[serde(flatten)]
    pub token: ApiTokenView,
    pub secret: String,
}

#[derive(Debug, Serialize)]
pub struct AuditEntryView {
    pub seq: u64,
    pub at: Option<String>,
    /// The user, `puppet:NAME` for a puppet, or `-` when unauthenticated.
    pub actor: String,
    /// The call, e.g. `Tasks/CreateTask`.
    pub action: String,
    pub target: String,
    pub remote_addr: String,
    /// `ok`, or the status code name of the refusal (`PermissionDenied`).
    pub outcome: String,
    /// The error message of a refusal; empty otherwise.
    pub message: String,
}

impl From<&pb::AuditEntry> for AuditEntryView {
    fn from(e: &pb::AuditEntry) -> Self {
        AuditEntryView {
            seq: e.seq,
            at: rfc3339(e.at.as_ref()),
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            remote_addr: e.remote_addr.clone(),
            outcome: e.outcome.clone(),
            message: e.message.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProgramView {
    Script {
        body: String,
        interpreter: Vec<String>,
    },
    Argv {
        args: Vec<String>,
    },
    None,
}

impl From<Option<&pb::Program>> for ProgramView {
    fn from(p: Option<&pb::Program>) -> Self {
        match p.and_then(|p| p.kind.as_ref()) {
            Some(pb::program::Kind::Script(s)) => ProgramView::Script {
                body: s.body.clone(),
                interpreter: s.interpreter.clone(),
            },
            Some(pb::program::Kind::Argv(a)) => ProgramView::Argv {
                args: a.args.clone(),
            },
            None => ProgramView::None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct TaskView {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub program: ProgramView,
    pub timeout_seconds: Option<f64>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    /// What a run holds while it runs, in the task's order.
    pub resources: Vec<ResourceNeedView>,
    /// Artifacts fetched before each run, pinned by content.
    pub artifacts: Vec<ArtifactRefView>,
    /// New attempts of a run that is lost, interrupted or timed out.
    pub retries: u32,
    /// Selector of the puppets the task is valid for; `null`: any puppet.
    pub requires: Option<String>,
    /// The task ends by rebooting the machine: a run succeeds when its
    /// puppet comes back after a reboot within the window.
    pub expect_reboot: bool,
    /// `null`: the default (30 minutes) when a reboot is expected.
    pub reboot_window_seconds: Option<f64>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ResourceNeedView {
    pub name: String,
    pub count: u32,
}

impl From<&pb::ResourceNeed> for ResourceNeedView {
    fn from(n: &pb::ResourceNeed) -> Self {
        ResourceNeedView {
            name: n.name.clone(),
            count: n.count,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ArtifactRefView {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// The environment variable holding the file's path in a run.
    pub env: String,
}

impl From<&pb::ArtifactRef> for ArtifactRefView {
    fn from(a: &pb::ArtifactRef) -> Self {
        ArtifactRefView {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            env: a.env.clone(),
        }
    }
}

/// `patch.tar.gz (sha256 1a2b3c4d…, $GEPPETTO_ARTIFACT_PATCH_TAR_GZ)`, one
/// per artifact, or `-`.
pub fn artifacts_line(artifacts: &[pb::ArtifactRef]) -> String {
    if artifacts.is_empty() {
        return "-".into();
    }
    artifacts
        .iter()
        .map(|a| {
            let short: String = a.sha256.chars().take(12).collect();
            format!("{} ({short}…, ${})", a.name, a.env)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// An artifact as `artifacts list|show -o json` prints it.
#[derive(Debug, Serialize)]
pub struct ArtifactView {
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub created_at: Option<String>,
    pub uploaded_by: String,
    /// Tasks whose latest version uses it.
    pub used_by: Vec<String>,
}

impl From<&pb::Artifact> for ArtifactView {
    fn from(a: &pb::Artifact) -> Self {
        ArtifactView {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            created_at: rfc3339(a.created_at.as_ref()),
            uploaded_by: a.uploaded_by.clone(),
            used_by: a.used_by.clone(),
        }
    }
}

/// `uplink-lyon, db:2`: needs as `--resource` takes them, or `-`.
pub fn needs_line(needs: &[pb::ResourceNeed]) -> String {
    if needs.is_empty() {
        return "-".into();
    }
    needs
        .iter()
        .map(|n| match n.count {
            1 => n.name.clone(),
            count => format!("{}:{count}", n.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<&pb::Task> for TaskView {
    fn from(t: &pb::Task) -> Self {
        let spec = t.spec.clone().unwrap_or_default();
        TaskView {
            name: t.name.clone(),
            version: t.version,
            description: t.description.clone(),
            program: ProgramView::from(spec.program.as_ref()),
            timeout_seconds: seconds(spec.timeout.as_ref()),
            env: sorted(&spec.env),
            workdir: non_empty(&spec.workdir),
            resources: t.resources.iter().map(ResourceNeedView::from).collect(),
            artifacts: spec.artifacts.iter().map(ArtifactRefView::from).collect(),
            retries: t.retries,
            requires: non_empty(&t.requires),
            expect_reboot: spec.expect_reboot,
            reboot_window_seconds: seconds(spec.reboot_window.as_ref()),
            created_at: rfc3339(t.created_at.as_ref()),
            updated_at: rfc3339(t.updated_at.as_ref()),
        }
    }
}

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

/// A named set of puppets: a saved selector, or a list of names.
#[derive(Debug, Serialize)]
pub struct GroupView {
    pub name: String,
    /// `null` for a group of named puppets.
    pub selector: Option<String>,
    /// Empty for a group by selector.
    pub puppets: Vec<String>,
    pub description: String,
}

impl From<&pb::Group> for GroupView {
    fn from(g: &pb::Group) -> Self {
        let (selector, puppets) = match &g.members {
            Some(pb::group::Members::Selector(s)) => (Some(s.clone()), Vec::new()),
            Some(pb::group::Members::Puppets(p)) => (None, p.names.clone()),
            None => (None, Vec::new()),
        };
        GroupView {
            name: g.name.clone(),
            selector,
            puppets,
            description: g.description.clone(),
        }
    }
}

impl GroupView {
    /// Its members in one cell: the selector, or the names joined.
    pub fn members_line(&self) -> String {
        match &self.selector {
            Some(s) if s.is_empty() => "all".into(),
            Some(s) => s.clone(),
            None if self.puppets.is_empty() => "-".into(),
            None => self.puppets.join(","),
        }
    }
}

/// `groups show`: the group and the puppets it stands for now.
#[derive(Debug, Serialize)]
pub struct GroupShowView {
    #[serde(flatten)]
    pub group: GroupView,
    pub current_members: Vec<String>,
}

impl From<&pb::GroupView> for GroupShowView {
    fn from(v: &pb::GroupView) -> Self {
        GroupShowView {
            group: GroupView::from(v.group.as_ref().unwrap_or(&pb::Group::default())),
            current_members: v.current_members.clone(),
        }
    }
}

/// A notification rule: on which events, sent where, and how its deliveries
/// went. Its webhook secret is never in it (the API does not return it).
#[derive(Debug, Serialize)]
pub struct NotificationRuleView {
    pub id: String,
    /// Event kinds: exact (`job.failed`) or prefixes ending in `.` (`run.`).
    pub on: Vec<String>,
    /// The mail address, `null` for a webhook.
    pub email: Option<String>,
    /// The webhook URL, `null` for an email.
    pub webhook: Option<String>,
    /// Whether webhook bodies are signed.
    pub has_secret: bool,
    /// Label selector of the puppets whose events count; `""` for all.
    pub target: String,
    pub created_at: Option<String>,
    pub delivered: u64,
    pub pending: u64,
    pub failed: u64,
    /// `null` when no delivery failed yet.
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
}

impl From<&pb::NotificationRule> for NotificationRuleView {
    fn from(r: &pb::NotificationRule) -> Self {
        let (email, webhook) = match &r.channel {
            Some(pb::notification_rule::Channel::Email(a)) => (Some(a.clone()), None),
            Some(pb::notification_rule::Channel::Webhook(u)) => (None, Some(u.clone())),
            None => (None, None),
        };
        NotificationRuleView {
            id: r.id.clone(),
            on: r.on.clone(),
            email,
            webhook,
            has_secret: r.has_secret,
            target: r.target.clone(),
            created_at: rfc3339(r.created_at.as_ref()),
            delivered: r.delivered,
            pending: r.pending,
            failed: r.failed,
            last_error: (!r.last_error.is_empty()).then(|| r.last_error.clone()),
            last_error_at: rfc3339(r.last_error_at.as_ref()),
        }
    }
}

impl NotificationRuleView {
    /// Where it sends, in one cell: the address or the URL, `(signed)` when
    /// webhook bodies are signed.
    pub fn to_line(&self) -> String {
        let to = match (&self.email, &self.webhook) {
            (Some(a), _) => a.clone(),
            (None, Some(u)) => u.clone(),
            (None, None) => "-".into(),
        };
        if self.has_secret {
            format!("{to} (signed)")
        } else {
            to
        }
    }

    pub fn on_line(&self) -> String {
        if self.on.is_empty() {
            "-".into()
        } else {
            self.on.join(",")
        }
    }

    pub fn target_line(&self) -> String {
        if self.target.is_empty() {
            "all".into()
        } else {
            self.target.clone()
        }
    }
}

/// An event of `geppetto events`.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Increasing; `--after ID` resumes after it.
    pub id: u64,
    pub at: Option<String>,
    /// `subject.change`, e.g. `run.succeeded`, `job.failed`, `puppet.offline`.
    pub kind: String,
    /// What it is about, `null` when it does not apply.
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub puppet: Option<String>,
    pub resource: Option<String>,
    /// A user, `puppet:NAME`, or `puppeteer`.
    pub actor: String,
    pub summary: String,
}

impl From<&pb::Event> for EventView {
    fn from(e: &pb::Event) -> Self {
        EventView {
            id: e.id,
            at: rfc3339(e.at.as_ref()),
            kind: e.kind.clone(),
            job_id: non_empty(&e.job_id),
            run_id: non_empty(&e.run_id),
            puppet: non_empty(&e.puppet),
            resource: non_empty(&e.resource),
            actor: e.actor.clone(),
            summary: e.summary.clone(),
        }
    }
}

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

impl StatusView {
    /// The status from the puppets, the last jobs (newest first) and the
    /// resources.
    pub fn new(puppets: &[pb::Puppet], jobs: &[pb::Job], resources: &[pb::Resource]) -> Self {
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
    use prost_types::{Duration, Timestamp};
    use serde_json::json;

    fn ts(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

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
    fn task_json_has_resources_retries_and_requires() {
        let task = pb::Task {
            name: "upgrade".into(),
            version: 3,
            resources: vec![
                pb::ResourceNeed {
                    name: "uplink-lyon".into(),
                    count: 1,
                },
                pb::ResourceNeed {
                    name: "db".into(),
                    count: 2,
                },
            ],
            retries: 2,
            requires: "os=debian".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&task)).unwrap();
        assert_eq!(
            value["resources"],
            json!([{"name": "uplink-lyon", "count": 1}, {"name": "db", "count": 2}])
        );
        assert_eq!(value["retries"], 2);
        assert_eq!(value["requires"], "os=debian");
        assert_eq!(needs_line(&task.resources), "uplink-lyon, db:2");
        assert_eq!(value["artifacts"], json!([]));
        let with_artifact = pb::Task {
            spec: Some(pb::RunSpec {
                artifacts: vec![pb::ArtifactRef {
                    name: "patch.tar.gz".into(),
                    sha256: "ab".repeat(32),
                    size: 10,
                    env: "GEPPETTO_ARTIFACT_PATCH_TAR_GZ".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&with_artifact)).unwrap();
        assert_eq!(
            value["artifacts"],
            json!([{"name": "patch.tar.gz", "sha256": "ab".repeat(32), "size": 10,
                    "env": "GEPPETTO_ARTIFACT_PATCH_TAR_GZ"}])
        );
        assert_eq!(
            artifacts_line(&with_artifact.spec.unwrap().artifacts),
            "patch.tar.gz (abababababab…, $GEPPETTO_ARTIFACT_PATCH_TAR_GZ)"
        );

        let plain = pb::Task {
            name: "t".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&plain)).unwrap();
        assert_eq!(value["resources"], json!([]));
        assert_eq!(value["retries"], 0);
        assert_eq!(value["requires"], serde_json::Value::Null);
        assert_eq!(needs_line(&plain.resources), "-");
    }

    #[test]
    fn resource_json() {
        let holder = |run: &str, puppet: &str, count| pb::ResourceHolder {
            run_id: run.into(),
            puppet: puppet.into(),
            job_id: "job-1".into(),
            count,
        };
        let resource = pb::Resource {
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

    #[test]
    fn task_and_token_json() {
        let task = pb::Task {
            name: "t".into(),
            version: 1,
            spec: Some(pb::RunSpec {
                program: Some(pb::Program {
                    kind: Some(pb::program::Kind::Argv(pb::Argv {
                        args: vec!["true".into()],
                    })),
                }),
                timeout: Some(Duration {
                    seconds: 60,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let value = serde_json::to_value(TaskView::from(&task)).unwrap();
        assert_eq!(value["program"], json!({"kind": "argv", "args": ["true"]}));
        assert_eq!(value["timeout_seconds"], 60.0);

        let token = pb::EnrollToken {
            id: "enr-1".into(),
            unlimited: true,
            ..Default::default()
        };
        let created = CreatedTokenView {
            token: EnrollTokenView::from(&token),
            secret: "s".into(),
        };
        let value = serde_json::to_value(created).unwrap();
        assert_eq!(value["id"], "enr-1");
        assert_eq!(value["secret"], "s");
        assert_eq!(value["uses_left"], serde_json::Value::Null);
        assert_eq!(value["status"], "active");
        assert_eq!(value["auto_approve"], false);
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

    #[test]
    fn users_tokens_and_audit_json() {
        let user = pb::User {
            name: "alice".into(),
            role: pb::Role::Operator as i32,
            created_at: ts(1_700_000_000),
            active_tokens: 2,
        };
        assert_eq!(
            serde_json::to_value(UserView::from(&user)).unwrap(),
            json!({
                "name": "alice",
                "role": "operator",
                "created_at": "2023-11-14T22:13:20Z",
                "active_tokens": 2,
            })
        );
        assert_eq!(role(pb::Role::Admin as i32), "admin");
        assert_eq!(role(pb::Role::Viewer as i32), "viewer");

        let who = pb::WhoAmIResponse {
            user: "admin".into(),
            role: pb::Role::Admin as i32,
            token_id: "tok-1".into(),
        };
        assert_eq!(
            serde_json::to_value(WhoAmIView::from(&who)).unwrap(),
            json!({"user": "admin", "role": "admin", "token_id": "tok-1"})
        );

        let token = pb::ApiToken {
            id: "tok-1".into(),
            user: "alice".into(),
            name: "laptop".into(),
            created_at: ts(1_700_000_000),
            expires_at: ts(1_700_000_100),
            revoked: false,
        };
        let created = CreatedApiTokenView {
            token: ApiTokenView::from(&token),
            secret: "s3cret".into(),
        };
        assert_eq!(
            serde_json::to_value(created).unwrap(),
            json!({
                "id": "tok-1",
                "user": "alice",
                "name": "laptop",
                "created_at": "2023-11-14T22:13:20Z",
                "expires_at": "2023-11-14T22:15:00Z",
                "revoked": false,
                "status": "expired",
                "secret": "s3cret",
            })
        );
        let revoked = pb::ApiToken {
            revoked: true,
            expires_at: None,
            ..token
        };
        let value = serde_json::to_value(ApiTokenView::from(&revoked)).unwrap();
        assert_eq!(value["status"], "revoked");
        assert_eq!(value["expires_at"], serde_json::Value::Null);

        let entry = pb::AuditEntry {
            seq: 7,
            at: ts(1_700_000_000),
            actor: "alice".into(),
            action: "Users/AddUser".into(),
            target: "bob".into(),
            remote_addr: "10.0.0.5:51234".into(),
            outcome: "PermissionDenied".into(),
            message: "admins only".into(),
        };
        assert_eq!(
            serde_json::to_value(AuditEntryView::from(&entry)).unwrap(),
            json!({
                "seq": 7,
                "at": "2023-11-14T22:13:20Z",
                "actor": "alice",
                "action": "Users/AddUser",
                "target": "bob",
                "remote_addr": "10.0.0.5:51234",
                "outcome": "PermissionDenied",
                "message": "admins only",
            })
        );
    }

    #[test]
    fn group_json() {
        let by_selector = pb::Group {
            name: "webs".into(),
            members: Some(pb::group::Members::Selector("role in (web,proxy)".into())),
            description: "front ends".into(),
        };
        let view = GroupView::from(&by_selector);
        assert_eq!(view.members_line(), "role in (web,proxy)");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "name": "webs",
                "selector": "role in (web,proxy)",
                "puppets": [],
                "description": "front ends",
            })
        );

        let by_name = pb::Group {
            name: "dbs".into(),
            members: Some(pb::group::Members::Puppets(pb::PuppetNames {
                names: vec!["db-1".into(), "db-2".into()],
            })),
            description: String::new(),
        };
        let shown = pb::GroupView {
            group: Some(by_name),
            current_members: vec!["db-1".into()],
        };
        let view = GroupShowView::from(&shown);
        assert_eq!(view.group.members_line(), "db-1,db-2");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "name": "dbs",
                "selector": null,
                "puppets": ["db-1", "db-2"],
                "description": "",
                "current_members": ["db-1"],
            })
        );

        let empty = GroupView::from(&pb::Group::default());
        assert_eq!(empty.members_line(), "-");
        let all = GroupView::from(&pb::Group {
            members: Some(pb::group::Members::Selector(String::new())),
            ..Default::default()
        });
        assert_eq!(all.members_line(), "all");
    }

    #[test]
    fn notification_rule_json() {
        let rule = pb::NotificationRule {
            id: "ntf-1".into(),
            on: vec!["job.failed".into(), "run.".into()],
            channel: Some(pb::notification_rule::Channel::Webhook(
                "https://hooks.example/gp".into(),
            )),
            has_secret: true,
            target: "site=lyon".into(),
            created_at: ts(1_700_000_000),
            delivered: 3,
            failed: 1,
            pending: 2,
            last_error: "HTTP 500".into(),
            last_error_at: ts(1_700_000_060),
        };
        let view = NotificationRuleView::from(&rule);
        assert_eq!(view.to_line(), "https://hooks.example/gp (signed)");
        assert_eq!(view.on_line(), "job.failed,run.");
        assert_eq!(view.target_line(), "site=lyon");
        assert_eq!(
            serde_json::to_value(view).unwrap(),
            json!({
                "id": "ntf-1",
                "on": ["job.failed", "run."],
                "email": null,
                "webhook": "https://hooks.example/gp",
                "has_secret": true,
                "target": "site=lyon",
                "created_at": "2023-11-14T22:13:20Z",
                "delivered": 3,
                "pending": 2,
                "failed": 1,
                "last_error": "HTTP 500",
                "last_error_at": "2023-11-14T22:14:20Z",
            })
        );

        let mail = NotificationRuleView::from(&pb::NotificationRule {
            id: "ntf-2".into(),
            on: vec!["puppet.offline".into()],
            channel: Some(pb::notification_rule::Channel::Email(
                "ops@example.org".into(),
            )),
            ..Default::default()
        });
        assert_eq!(mail.to_line(), "ops@example.org");
        assert_eq!(mail.target_line(), "all");
        let value = serde_json::to_value(&mail).unwrap();
        assert_eq!(value["email"], "ops@example.org");
        assert_eq!(value["webhook"], serde_json::Value::Null);
        assert_eq!(value["last_error"], serde_json::Value::Null);
        assert!(value.get("secret").is_none());
    }

    #[test]
    fn event_json() {
        let event = pb::Event {
            id: 7,
            at: ts(1_700_000_000),
            kind: "run.succeeded".into(),
            job_id: "job-1".into(),
            run_id: "run-a".into(),
            puppet: "web-1".into(),
            actor: "puppet:web-1".into(),
            summary: "run-a on web-1 succeeded".into(),
            ..Default::default()
        };
        let value = serde_json::to_value(EventView::from(&event)).unwrap();
        assert_eq!(
            value,
            json!({
                "id": 7,
                "at": "2023-11-14T22:13:20Z",
                "kind": "run.succeeded",
                "job_id": "job-1",
                "run_id": "run-a",
                "puppet": "web-1",
                "resource": null,
                "actor": "puppet:web-1",
                "summary": "run-a on web-1 succeeded",
            })
        );
    }

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
