//! Conversions between protobuf messages and domain types. Incoming values
//! are validated here, once; what comes out is valid by construction.
//!
//! A message becomes a domain value by `TryFrom` (refused with an
//! InvalidArgument error saying what is wrong), a domain value a message by
//! `From`. An absent message field converts as the message's default, whose
//! refusal says what to give. Free functions remain where a value is not a
//! message of its own (times, durations, ids, labels, a strategy's limits
//! named by their field) or where a view needs more than the value (a
//! puppet's presence, a job's runs).

use std::time::Duration;

use geppetto_proto::v1 as pb;

use super::error::{ApiError, ApiResult, invalid};
use crate::domain::{self, Millis};
use crate::presence::Presence;
use crate::scheduler::JobState;

pub fn ts(m: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: m.0.div_euclid(1000),
        nanos: (m.0.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn opt_ts(m: Option<Millis>) -> Option<prost_types::Timestamp> {
    m.map(ts)
}

/// A protobuf timestamp in milliseconds, saturated at the ends of the
/// range (a client may send any value: 9223372036854776 s overflowed).
pub fn from_ts(t: &prost_types::Timestamp) -> Millis {
    Millis(
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos) / 1_000_000),
    )
}

pub fn dur(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The longest duration any field takes: past it, milliseconds would not
/// even fit the record (a timeout of 18446744073709553 s was read as 1.4 s).
const MAX_DURATION_SECONDS: i64 = 100 * 365 * 24 * 3600;

/// A protobuf duration as a std one; negative, malformed (nanos of a
/// second or more) and absurdly long ones are refused.
pub fn from_dur(field: &str, d: &prost_types::Duration) -> ApiResult<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(format!("{field} must not be negative")));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(invalid(format!(
            "{field}: nanos must be below one second (999999999 at most)"
        )));
    }
    if d.seconds > MAX_DURATION_SECONDS {
        return Err(invalid(format!("{field} must be at most 100 years")));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A time a puppet reports, if it is plausible: within a week before and a
/// day after the puppeteer's `now` (a puppet's clock may be off, but not
/// by years: StartRun.started_at = -1e11 s once made the CLI panic).
pub fn plausible_ts(t: &prost_types::Timestamp, now: Millis) -> Option<Millis> {
    const WEEK: i64 = 7 * 24 * 3600 * 1000;
    const DAY: i64 = 24 * 3600 * 1000;
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    let at = from_ts(t);
    (at.0 >= now.0.saturating_sub(WEEK) && at.0 <= now.0.saturating_add(DAY)).then_some(at)
}

/// The most of each text fact kept: a puppet's report is cut, not refused
/// (it must keep polling), and stored with every change of its record.
pub const MAX_FACT_BYTES: usize = 256;

/// `text` cut to at most [`MAX_FACT_BYTES`], at a character boundary.
fn fact(mut text: String) -> String {
    if text.len() > MAX_FACT_BYTES {
        let mut end = MAX_FACT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// A puppet's facts, each bounded (see [`MAX_FACT_BYTES`]; the load is the
/// 1, 5 and 15 minute averages).
impl From<pb::Facts> for domain::Facts {
    fn from(f: pb::Facts) -> Self {
        let mut load = f.load;
        load.truncate(3);
        domain::Facts {
            hostname: fact(f.hostname),
            os: fact(f.os),
            os_id: fact(f.os_id),
            kernel: fact(f.kernel),
            arch: fact(f.arch),
            memory_total_bytes: f.memory_total_bytes,
            disk_total_bytes: f.disk_total_bytes,
            agent_version: fact(f.agent_version),
            uptime_secs: f.uptime.map(|d| d.seconds.max(0) as u64).unwrap_or(0),
            load,
            memory_available_bytes: f.memory_available_bytes,
            disk_available_bytes: f.disk_available_bytes,
            boot_id: fact(f.boot_id),
            collected_at: f
                .collected_at
                .as_ref()
                .and_then(|t| plausible_ts(t, Millis::now())),
        }
    }
}

impl From<&domain::Facts> for pb::Facts {
    fn from(f: &domain::Facts) -> Self {
        pb::Facts {
            hostname: f.hostname.clone(),
            os: f.os.clone(),
            os_id: f.os_id.clone(),
            kernel: f.kernel.clone(),
            arch: f.arch.clone(),
            memory_total_bytes: f.memory_total_bytes,
            disk_total_bytes: f.disk_total_bytes,
            agent_version: f.agent_version.clone(),
            uptime: Some(dur(Duration::from_secs(f.uptime_secs))),
            load: f.load.clone(),
            memory_available_bytes: f.memory_available_bytes,
            disk_available_bytes: f.disk_available_bytes,
            boot_id: f.boot_id.clone(),
            collected_at: opt_ts(f.collected_at),
        }
    }
}

/// A program; an empty one (or none: the default message) is refused.
impl TryFrom<pb::Program> for domain::Program {
    type Error = ApiError;

    fn try_from(p: pb::Program) -> ApiResult<Self> {
        match p.kind {
            Some(pb::program::Kind::Script(s)) => Ok(domain::Program::Script {
                body: s.body,
                interpreter: s.interpreter,
            }),
            Some(pb::program::Kind::Argv(a)) => Ok(domain::Program::Argv { args: a.args }),
            Some(pb::program::Kind::Upgrade(u)) => Ok(domain::Program::Upgrade {
                version: u.version,
                deadline_ms: u
                    .deadline
                    .as_ref()
                    .map(|d| from_dur("upgrade deadline", d).map(|d| d.as_millis() as u64))
                    .transpose()?,
            }),
            None => Err(invalid("the task has no program: give a script or an argv")),
        }
    }
}

impl From<&domain::Program> for pb::Program {
    fn from(p: &domain::Program) -> Self {
        let kind = match p {
            domain::Program::Script { body, interpreter } => {
                pb::program::Kind::Script(pb::Script {
                    body: body.clone(),
                    interpreter: interpreter.clone(),
                })
            }
            domain::Program::Argv { args } => {
                pb::program::Kind::Argv(pb::Argv { args: args.clone() })
            }
            domain::Program::Upgrade {
                version,
                deadline_ms,
            } => pb::program::Kind::Upgrade(pb::Upgrade {
                version: version.clone(),
                deadline: deadline_ms.map(|ms| dur(std::time::Duration::from_millis(ms))),
            }),
        };
        pb::Program { kind: Some(kind) }
    }
}

pub fn timeout_from(t: Option<&prost_types::Duration>) -> ApiResult<u64> {
    match t {
        None => Ok(domain::DEFAULT_TIMEOUT.as_millis() as u64),
        Some(t) => Ok(from_dur("timeout", t)?.as_millis() as u64),
    }
}

/// An artifact reference as sent; a task's are checked and pinned by
/// content by the Tasks service, not here.
impl From<pb::ArtifactRef> for domain::ArtifactRef {
    fn from(a: pb::ArtifactRef) -> Self {
        domain::ArtifactRef {
            name: a.name,
            sha256: a.sha256,
            size: a.size,
            env: a.env,
        }
    }
}

impl From<&domain::ArtifactRef> for pb::ArtifactRef {
    fn from(a: &domain::ArtifactRef) -> Self {
        pb::ArtifactRef {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            env: a.env.clone(),
        }
    }
}

/// A run spec, validated whole (`RunSpec::validate`).
impl TryFrom<pb::RunSpec> for domain::RunSpec {
    type Error = ApiError;

    fn try_from(s: pb::RunSpec) -> ApiResult<Self> {
        let spec = domain::RunSpec {
            program: s.program.unwrap_or_default().try_into()?,
            timeout_ms: timeout_from(s.timeout.as_ref())?,
            env: s.env.into_iter().collect(),
            workdir: s.workdir,
            artifacts: s.artifacts.into_iter().map(Into::into).collect(),
            expect_reboot: s.expect_reboot,
            reboot_window_ms: s
                .reboot_window
                .as_ref()
                .map(|d| from_dur("reboot window", d).map(|d| d.as_millis() as u64))
                .transpose()?,
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<&domain::RunSpec> for pb::RunSpec {
    fn from(s: &domain::RunSpec) -> Self {
        pb::RunSpec {
            program: Some((&s.program).into()),
            timeout: Some(dur(Duration::from_millis(s.timeout_ms))),
            env: s.env.clone().into_iter().collect(),
            workdir: s.workdir.clone(),
            artifacts: s.artifacts.iter().map(Into::into).collect(),
            expect_reboot: s.expect_reboot,
            reboot_window: s.reboot_window_ms.map(|ms| dur(Duration::from_millis(ms))),
        }
    }
}

pub fn labels_from(map: std::collections::HashMap<String, String>) -> ApiResult<domain::Labels> {
    let labels: domain::Labels = map.into_iter().collect();
    domain::check_labels(&labels)?;
    Ok(labels)
}

fn labels_to(l: &domain::Labels) -> std::collections::HashMap<String, String> {
    l.clone().into_iter().collect()
}

impl From<Presence> for pb::Presence {
    fn from(p: Presence) -> Self {
        match p {
            Presence::Online => pb::Presence::Online,
            Presence::Late => pb::Presence::Late,
            Presence::Offline => pb::Presence::Offline,
        }
    }
}

impl From<domain::PuppetState> for pb::PuppetState {
    fn from(s: domain::PuppetState) -> Self {
        match s {
            domain::PuppetState::Pending => pb::PuppetState::Pending,
            domain::PuppetState::Enabled => pb::PuppetState::Enabled,
            domain::PuppetState::Disabled => pb::PuppetState::Disabled,
        }
    }
}

/// A puppet as answered, with what only the puppeteer's memory knows of it
/// (its presence) and its count of unfinished runs.
pub fn puppet_to(p: &domain::Puppet, presence: Presence, active_runs: u32) -> pb::Puppet {
    pb::Puppet {
        name: p.name.clone(),
        state: pb::PuppetState::from(p.state) as i32,
        presence: pb::Presence::from(presence) as i32,
        last_seen: opt_ts(p.last_seen),
        enrolled_at: Some(ts(p.enrolled_at)),
        labels: labels_to(&p.labels()),
        declared_labels: labels_to(&p.declared_labels),
        assigned_labels: labels_to(&p.assigned_labels),
        facts: Some((&p.facts).into()),
        active_runs,
        enroll_token_id: p.enroll_token_id.clone(),
        polling: false,
        rotation_pending: p.rotation.is_some(),
        revoked: p.revoked,
        poll_hold: None,
        polls_cut: 0,
    }
}

impl From<&domain::Task> for pb::Task {
    fn from(t: &domain::Task) -> Self {
        pb::Task {
            name: t.name.clone(),
            version: t.version,
            description: t.description.clone(),
            spec: Some((&t.spec).into()),
            created_at: Some(ts(t.created_at)),
            updated_at: Some(ts(t.updated_at)),
            resources: t.resources.iter().map(Into::into).collect(),
            retries: t.retries,
            requires: t.requires.clone(),
        }
    }
}

impl From<domain::RunState> for pb::RunState {
    fn from(s: domain::RunState) -> Self {
        use domain::RunState as D;
        match s {
            D::Queued => pb::RunState::Queued,
            D::Waiting => pb::RunState::Waiting,
            D::Offered => pb::RunState::Offered,
            D::Running => pb::RunState::Running,
            D::Succeeded => pb::RunState::Succeeded,
            D::Failed => pb::RunState::Failed,
            D::TimedOut => pb::RunState::TimedOut,
            D::Cancelled => pb::RunState::Cancelled,
            D::Lost => pb::RunState::Lost,
            D::Interrupted => pb::RunState::Interrupted,
            D::Skipped => pb::RunState::Skipped,
        }
    }
}

/// An outcome a puppet reports; `Unspecified` is not one.
impl TryFrom<pb::Outcome> for domain::Outcome {
    type Error = ApiError;

    fn try_from(o: pb::Outcome) -> ApiResult<Self> {
        use domain::Outcome as D;
        match o {
            pb::Outcome::Exited => Ok(D::Exited),
            pb::Outcome::Signaled => Ok(D::Signaled),
            pb::Outcome::TimedOut => Ok(D::TimedOut),
            pb::Outcome::Cancelled => Ok(D::Cancelled),
            pb::Outcome::StartFailed => Ok(D::StartFailed),
            pb::Outcome::Interrupted => Ok(D::Interrupted),
            pb::Outcome::Rebooted => Ok(D::Rebooted),
            pb::Outcome::Unspecified => Err(invalid("the outcome is unspecified")),
        }
    }
}

/// An outcome field as sent (protobuf enums travel as numbers: any value
/// may come).
pub fn outcome_from(value: i32) -> ApiResult<domain::Outcome> {
    pb::Outcome::try_from(value)
        .ok()
        .and_then(|o| domain::Outcome::try_from(o).ok())
        .ok_or_else(|| invalid(format!("outcome {value} is not a valid Outcome")))
}

impl From<domain::Outcome> for pb::Outcome {
    fn from(o: domain::Outcome) -> Self {
        use domain::Outcome as D;
        match o {
            D::Exited => pb::Outcome::Exited,
            D::Signaled => pb::Outcome::Signaled,
            D::TimedOut => pb::Outcome::TimedOut,
            D::Cancelled => pb::Outcome::Cancelled,
            D::StartFailed => pb::Outcome::StartFailed,
            D::Interrupted => pb::Outcome::Interrupted,
            D::Rebooted => pb::Outcome::Rebooted,
        }
    }
}

/// A run's outcome as a field: `Unspecified` while it has none.
fn outcome_to(o: Option<domain::Outcome>) -> i32 {
    o.map_or(pb::Outcome::Unspecified, pb::Outcome::from) as i32
}

impl From<&domain::Transition> for pb::RunTransition {
    fn from(t: &domain::Transition) -> Self {
        pb::RunTransition {
            state: pb::RunState::from(t.state) as i32,
            at: Some(ts(t.at)),
            cause: t.cause.clone(),
            attempt: t.attempt,
        }
    }
}

impl From<&domain::Run> for pb::Run {
    fn from(r: &domain::Run) -> Self {
        pb::Run {
            id: r.id.clone(),
            job_id: r.job_id.clone(),
            puppet: r.puppet.clone(),
            task_name: r.task_name.clone(),
            task_version: r.task_version,
            state: pb::RunState::from(r.state) as i32,
            attempt: r.attempt,
            cause: r.cause.clone(),
            outcome: outcome_to(r.outcome),
            exit_code: r.exit_code.unwrap_or(0),
            signal: r.signal.unwrap_or(0),
            created_at: Some(ts(r.created_at)),
            started_at: opt_ts(r.started_at),
            finished_at: opt_ts(r.finished_at),
            duration: r.duration_ms.map(|ms| dur(Duration::from_millis(ms))),
            log_length: r.log_length,
            log_truncated: r.log_gap.is_some(),
            log_dropped: r.log_gap.map_or(0, |g| g.dropped),
            duplicate_reports: r.duplicate_reports,
            history: r.history.iter().map(Into::into).collect(),
            fetch: None,
        }
    }
}

/// A job's target; an empty one (or none: the default message) is refused.
impl TryFrom<pb::Target> for domain::Target {
    type Error = ApiError;

    fn try_from(t: pb::Target) -> ApiResult<Self> {
        match t.kind {
            Some(pb::target::Kind::Selector(s)) => Ok(domain::Target::Selector(s)),
            Some(pb::target::Kind::Puppets(p)) => {
                if p.names.is_empty() {
                    return Err(invalid("the target lists no puppet"));
                }
                for name in &p.names {
                    domain::check_puppet_name(name)?;
                }
                Ok(domain::Target::Puppets(p.names))
            }
            None => Err(invalid(
                "the job has no target: give a selector or puppet names",
            )),
        }
    }
}

impl From<&domain::Target> for pb::Target {
    fn from(t: &domain::Target) -> Self {
        let kind = match t {
            domain::Target::Selector(s) => pb::target::Kind::Selector(s.clone()),
            domain::Target::Puppets(names) => pb::target::Kind::Puppets(pb::PuppetNames {
                names: names.clone(),
            }),
        };
        pb::Target { kind: Some(kind) }
    }
}

impl From<JobState> for pb::JobState {
    fn from(s: JobState) -> Self {
        match s {
            JobState::AwaitingApproval => pb::JobState::AwaitingApproval,
            JobState::Running => pb::JobState::Running,
            JobState::Succeeded => pb::JobState::Succeeded,
            JobState::Failed => pb::JobState::Failed,
            JobState::Cancelled => pb::JobState::Cancelled,
            JobState::Rejected => pb::JobState::Rejected,
        }
    }
}

/// A job as answered, with its runs (its state and counts are theirs).
pub fn job_to(job: &domain::Job, runs: &[domain::Run]) -> pb::Job {
    let state = crate::scheduler::job_state(job, runs);
    let mut counts = std::collections::HashMap::new();
    for run in runs {
        *counts.entry(run.state.name().to_string()).or_insert(0u32) += 1;
    }
    let finished_at = if matches!(state, JobState::Running | JobState::AwaitingApproval) {
        None
    } else {
        runs.iter().filter_map(|r| r.finished_at).max()
    };
    pb::Job {
        id: job.id.clone(),
        task_name: job.task_name.clone(),
        task_version: job.task_version,
        target: Some((&job.target).into()),
        state: pb::JobState::from(state) as i32,
        created_at: Some(ts(job.created_at)),
        finished_at: opt_ts(finished_at),
        runs: runs
            .iter()
            .map(|r| pb::RunSummary {
                run_id: r.id.clone(),
                puppet: r.puppet.clone(),
                state: pb::RunState::from(r.state) as i32,
                exit_code: r.exit_code.unwrap_or(0),
                cause: r.cause.clone(),
                outcome: outcome_to(r.outcome),
                signal: r.signal.unwrap_or(0),
                fetch: None,
            })
            .collect(),
        counts,
        strategy: Some((&job.strategy).into()),
        approved_by: match &job.approval {
            domain::Approval::Approved { by, .. } | domain::Approval::Rejected { by, .. } => {
                by.clone()
            }
            _ => String::new(),
        },
        approved_at: match &job.approval {
            domain::Approval::Approved { at, .. } | domain::Approval::Rejected { at, .. } => {
                Some(ts(*at))
            }
            _ => None,
        },
        rejected: matches!(job.approval, domain::Approval::Rejected { .. }),
        not_targeted: job
            .not_targeted
            .iter()
            .map(|(puppet, cause)| pb::PuppetSkipped {
                puppet: puppet.clone(),
                cause: cause.clone(),
            })
            .collect(),
        acknowledged_by: job
            .acknowledged
            .as_ref()
            .map(|a| a.by.clone())
            .unwrap_or_default(),
        acknowledged_at: job.acknowledged.as_ref().map(|a| ts(a.at)),
    }
}

/// A limit of a strategy; `field` names it in an error.
fn limit_from(field: &str, l: Option<pb::Limit>) -> ApiResult<Option<domain::Limit>> {
    match l.and_then(|l| l.kind) {
        None => Ok(None),
        Some(pb::limit::Kind::Count(0)) => Err(invalid(format!("{field} must be at least 1"))),
        Some(pb::limit::Kind::Count(n)) => Ok(Some(domain::Limit::Count(n))),
        Some(pb::limit::Kind::Percent(p)) if p == 0 || p > 100 => Err(invalid(format!(
            "{field} as a percentage must be between 1% and 100%"
        ))),
        Some(pb::limit::Kind::Percent(p)) => Ok(Some(domain::Limit::Percent(p))),
    }
}

impl From<domain::Limit> for pb::Limit {
    fn from(l: domain::Limit) -> Self {
        pb::Limit {
            kind: Some(match l {
                domain::Limit::Count(n) => pb::limit::Kind::Count(n),
                domain::Limit::Percent(p) => pb::limit::Kind::Percent(p),
            }),
        }
    }
}

fn opt_ms(field: &str, d: Option<&prost_types::Duration>) -> ApiResult<Option<u64>> {
    match d {
        None => Ok(None),
        Some(d) => {
            let d = from_dur(field, d)?;
            if d.is_zero() || d > domain::MAX_TIMEOUT * 4 {
                return Err(invalid(format!("{field} must be between 1s and 28 days")));
            }
            Ok(Some(d.as_millis() as u64))
        }
    }
}

/// How long a rolling or max-in-flight job waits for an offline puppet
/// before skipping its run, when the job does not say.
pub const DEFAULT_STRATEGY_OFFLINE_WAIT: Duration = Duration::from_secs(600);

/// A job's strategy; the default message is the default strategy (every
/// run at once, no gate).
impl TryFrom<pb::Strategy> for domain::Strategy {
    type Error = ApiError;

    fn try_from(s: pb::Strategy) -> ApiResult<Self> {
        let after_job = if s.after_job.is_empty() {
            if s.per_puppet {
                return Err(invalid("per_puppet needs after_job"));
            }
            None
        } else {
            id_of_kind("job", &s.after_job)?;
            Some(s.after_job)
        };
        let max_in_flight = limit_from("max_in_flight", s.max_in_flight)?;
        // A strategy that serialises runs would stall on an offline puppet:
        // unless told otherwise, it is bypassed after a while.
        let offline_wait_ms = match opt_ms("offline_wait", s.offline_wait.as_ref())? {
            Some(ms) => Some(ms),
            None if s.rolling || max_in_flight.is_some() => {
                Some(DEFAULT_STRATEGY_OFFLINE_WAIT.as_millis() as u64)
            }
            None => None,
        };
        Ok(domain::Strategy {
            max_in_flight,
            max_failures: limit_from("max_failures", s.max_failures)?,
            rolling: s.rolling,
            deadline_ms: opt_ms("deadline", s.deadline.as_ref())?,
            offline_wait_ms,
            after_job,
            per_puppet: s.per_puppet,
            approval: s.approval,
            ordered: s.ordered,
        })
    }
}

impl From<&domain::Strategy> for pb::Strategy {
    fn from(s: &domain::Strategy) -> Self {
        pb::Strategy {
            max_in_flight: s.max_in_flight.map(Into::into),
            max_failures: s.max_failures.map(Into::into),
            rolling: s.rolling,
            deadline: s.deadline_ms.map(|ms| dur(Duration::from_millis(ms))),
            offline_wait: s.offline_wait_ms.map(|ms| dur(Duration::from_millis(ms))),
            after_job: s.after_job.clone().unwrap_or_default(),
            per_puppet: s.per_puppet,
            approval: s.approval,
            ordered: s.ordered,
        }
    }
}

impl From<&domain::EnrollToken> for pb::EnrollToken {
    fn from(t: &domain::EnrollToken) -> Self {
        pb::EnrollToken {
            id: t.id.clone(),
            description: t.description.clone(),
            labels: labels_to(&t.labels),
            uses_left: t.uses_left.unwrap_or(0),
            unlimited: t.uses_left.is_none(),
            created_at: Some(ts(t.created_at)),
            expires_at: opt_ts(t.expires_at),
            revoked: t.revoked,
            used: t.used,
            auto_approve: t.auto_approve,
        }
    }
}

/// A required id of a given kind.
pub fn id_of_kind(kind: &str, id: &str) -> ApiResult<()> {
    crate::ids::check_kind(kind, id).map_err(ApiError::Invalid)
}

/// A need as sent; a list of them is checked whole by [`needs_from`].
impl From<pb::ResourceNeed> for domain::ResourceNeed {
    fn from(n: pb::ResourceNeed) -> Self {
        domain::ResourceNeed {
            name: n.name,
            count: n.count,
        }
    }
}

impl From<&domain::ResourceNeed> for pb::ResourceNeed {
    fn from(n: &domain::ResourceNeed) -> Self {
        pb::ResourceNeed {
            name: n.name.clone(),
            count: n.count,
        }
    }
}

/// Resource needs from the API, checked.
pub fn needs_from(needs: Vec<pb::ResourceNeed>) -> ApiResult<Vec<domain::ResourceNeed>> {
    let needs: Vec<domain::ResourceNeed> = needs.into_iter().map(Into::into).collect();
    domain::check_needs(&needs)?;
    Ok(needs)
}

/// A task's class selector, checked.
pub fn requires_from(requires: &str) -> ApiResult<String> {
    crate::selector::Selector::parse(requires)?;
    Ok(requires.trim().to_string())
}

pub fn retries_from(retries: u32) -> ApiResult<u32> {
    if retries > domain::MAX_RETRIES {
        return Err(invalid(format!(
            "retries {retries} is too many: at most {}",
            domain::MAX_RETRIES
        )));
    }
    Ok(retries)
}

/// A role field as sent (a number: any value may come); unspecified is
/// not a role.
pub fn role_from(value: i32) -> ApiResult<domain::Role> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Viewer) => Ok(domain::Role::Viewer),
        Ok(pb::Role::Operator) => Ok(domain::Role::Operator),
        Ok(pb::Role::Admin) => Ok(domain::Role::Admin),
        _ => Err(invalid("give a role: viewer, operator or admin")),
    }
}

impl From<domain::Role> for pb::Role {
    fn from(role: domain::Role) -> Self {
        match role {
            domain::Role::Viewer => pb::Role::Viewer,
            domain::Role::Operator => pb::Role::Operator,
            domain::Role::Admin => pb::Role::Admin,
        }
    }
}

impl From<&domain::ApiToken> for pb::ApiToken {
    fn from(t: &domain::ApiToken) -> Self {
        pb::ApiToken {
            id: t.id.clone(),
            user: t.user.clone(),
            name: t.name.clone(),
            created_at: Some(ts(t.created_at)),
            expires_at: opt_ts(t.expires_at),
            revoked: t.revoked,
        }
    }
}

impl From<&domain::Group> for pb::Group {
    fn from(g: &domain::Group) -> Self {
        pb::Group {
            name: g.name.clone(),
            description: g.description.clone(),
            members: Some(match &g.selector {
                Some(s) => pb::group::Members::Selector(s.clone()),
                None => pb::group::Members::Puppets(pb::PuppetNames {
                    names: g.puppets.clone(),
                }),
            }),
        }
    }
}

impl From<&domain::Event> for pb::Event {
    fn from(e: &domain::Event) -> Self {
        pb::Event {
            id: e.id,
            at: Some(ts(e.at)),
            kind: e.kind.clone(),
            job_id: e.job_id.clone(),
            run_id: e.run_id.clone(),
            puppet: e.puppet.clone(),
            resource: e.resource.clone(),
            actor: e.actor.clone(),
            summary: e.summary.clone(),
        }
    }
}

/// A fetch under way, for the API.
impl From<&crate::app::fetches::FetchView> for pb::RunFetch {
    fn from(f: &crate::app::fetches::FetchView) -> Self {
        pb::RunFetch {
            artifacts: f.artifacts.clone(),
            bytes_done: f.bytes_done,
            bytes_total: f.bytes_total,
            bytes_per_second: f.bytes_per_second,
            started_at: Some(ts(f.started)),
            eta: f.eta.map(dur),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_refused_negative_malformed_or_absurd() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(
            from_dur("t", &d(5, 500_000_000)).unwrap(),
            Duration::from_millis(5500)
        );
        assert!(from_dur("t", &d(-1, 0)).is_err());
        assert!(from_dur("t", &d(1, 2_000_000_000)).is_err());
        let overflow = from_dur("timeout", &d(18_446_744_073_709_553, 0)).unwrap_err();
        assert!(
            overflow.to_string().contains("at most 100 years"),
            "{overflow}"
        );
    }

    proptest::proptest! {
        /// Any duration or timestamp a client can send: no panic; a
        /// duration is accepted only well-formed and under 100 years, a
        /// puppet's time only within a week before and a day after now.
        #[test]
        fn any_duration_or_time_is_judged_without_panic(
            seconds in proptest::num::i64::ANY,
            nanos in proptest::num::i32::ANY,
        ) {
            if let Ok(d) = from_dur("t", &prost_types::Duration { seconds, nanos }) {
                proptest::prop_assert!(d.as_secs() <= MAX_DURATION_SECONDS as u64);
            }
            let now = Millis(1_800_000_000_000);
            if let Some(at) = plausible_ts(&prost_types::Timestamp { seconds, nanos }, now) {
                proptest::prop_assert!(at.0 >= now.0 - 7 * 24 * 3600 * 1000);
                proptest::prop_assert!(at.0 <= now.0 + 24 * 3600 * 1000);
            }
        }
    }

    /// Facts are cut to their bound (at a character boundary), never refused.
    #[test]
    fn facts_are_bounded_not_refused() {
        let facts = domain::Facts::from(pb::Facts {
            hostname: "é".repeat(1000),
            kernel: "k".repeat(10_000),
            os: "debian".into(),
            load: vec![0.5; 1000],
            ..Default::default()
        });
        assert!(
            facts.hostname.len() <= MAX_FACT_BYTES && facts.hostname.len() >= MAX_FACT_BYTES - 1
        );
        assert!(facts.hostname.chars().all(|c| c == 'é'));
        assert_eq!(facts.kernel.len(), MAX_FACT_BYTES);
        assert_eq!(facts.os, "debian");
        assert_eq!(facts.load.len(), 3);
    }

    /// Each part of a spec has its bound, named in the error, which quotes
    /// no more than a few characters of what it refuses.
    #[test]
    fn a_spec_s_parts_are_bounded() {
        use crate::domain::SpecLimits;
        let argv = |args: Vec<String>| pb::RunSpec {
            program: Some(pb::Program {
                kind: Some(pb::program::Kind::Argv(pb::Argv { args })),
            }),
            timeout: Some(dur(Duration::from_secs(60))),
            ..Default::default()
        };
        let refused = |spec: pb::RunSpec| domain::RunSpec::try_from(spec).unwrap_err().to_string();
        assert!(domain::RunSpec::try_from(argv(vec!["true".into(); SpecLimits::ARGS])).is_ok());
        let e = refused(argv(vec!["x".into(); SpecLimits::ARGS + 1]));
        assert!(e.contains("argv's argument count is at most 4096"), "{e}");
        let e = refused(argv(vec!["x".repeat(domain::MAX_SCRIPT_BYTES + 1)]));
        assert!(e.contains("argv's size in bytes"), "{e}");
        let with_env = |env: Vec<(String, String)>| pb::RunSpec {
            env: env.into_iter().collect(),
            ..argv(vec!["true".into()])
        };
        let e = refused(with_env(
            (0..=SpecLimits::ENV_VARS)
                .map(|i| (format!("V{i}"), "x".into()))
                .collect(),
        ));
        assert!(e.contains("variable count is at most 256"), "{e}");
        let long_name = "N".repeat(100_000);
        let e = refused(with_env(vec![(long_name, "x".into())]));
        assert!(e.contains("name in bytes is at most 256"), "{e}");
        assert!(e.len() < 300, "{e}");
        let e = refused(with_env(vec![("BIG".into(), "v".repeat(40_000))]));
        assert!(
            e.contains("\"BIG\"'s value in bytes is at most 32768"),
            "{e}"
        );
        let e = refused(with_env(
            (0..10)
                .map(|i| (format!("V{i}"), "v".repeat(30_000)))
                .collect(),
        ));
        assert!(e.contains("the environment's size in bytes"), "{e}");
        let e = refused(pb::RunSpec {
            workdir: "/".repeat(5000),
            ..argv(vec!["true".into()])
        });
        assert!(e.contains("workdir's size"), "{e}");
    }

    #[test]
    fn a_puppets_time_is_taken_only_when_plausible() {
        let now = Millis(1_800_000_000_000);
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(
            plausible_ts(&ts(1_800_000_000 - 60, 0), now),
            Some(Millis(1_800_000_000_000 - 60_000))
        );
        for bad in [
            ts(-100_000_000_000, 0),
            ts(1 << 62, 0),
            ts(1_800_000_000 + 3 * 86_400, 0),
            ts(1_800_000_000 - 30 * 86_400, 0),
            ts(1_800_000_000, -1),
            ts(i64::MIN, i32::MIN),
        ] {
            assert_eq!(plausible_ts(&bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn reboot_windows_are_checked() {
        let spec = || pb::RunSpec {
            program: Some(pb::Program {
                kind: Some(pb::program::Kind::Argv(pb::Argv {
                    args: vec!["true".into()],
                })),
            }),
            ..Default::default()
        };
        let window = |secs| {
            Some(prost_types::Duration {
                seconds: secs,
                nanos: 0,
            })
        };
        let ok = domain::RunSpec::try_from(pb::RunSpec {
            expect_reboot: true,
            reboot_window: window(1200),
            ..spec()
        })
        .unwrap();
        assert_eq!(
            (ok.expect_reboot, ok.reboot_window_ms),
            (true, Some(1_200_000))
        );
        let default = domain::RunSpec::try_from(pb::RunSpec {
            expect_reboot: true,
            ..spec()
        })
        .unwrap();
        assert_eq!(default.reboot_window_ms, None);
        for (expect, secs, needle) in [
            (false, 60, "needs expect_reboot"),
            (true, 0, "out of range"),
            (true, 2 * 86_400, "out of range"),
            (true, -5, "reboot window"),
        ] {
            let err = domain::RunSpec::try_from(pb::RunSpec {
                expect_reboot: expect,
                reboot_window: window(secs),
                ..spec()
            })
            .unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
    }
}
