//! Admin service over jobs: launch a task on a target, follow, cancel.

use std::pin::Pin;

use futures_util::Stream;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::jobs_server::Jobs;
use tonic::{Request, Response, Status};

use super::convert;
use super::error::{ApiError, ApiResult};
use super::{Caller, Shared, pages};
use crate::domain::{self, Job, Millis, PuppetState, Run, RunState, Target};
use crate::hub::HubKey;
use crate::ids::new_id;
use crate::selector::Selector;

#[derive(Debug, Clone)]
pub struct JobsApi {
    state: Shared,
}

impl JobsApi {
    pub fn new(state: Shared) -> Self {
        JobsApi { state }
    }

    fn load(&self, id: &str) -> ApiResult<(Job, Vec<Run>)> {
        convert::id_of_kind("job", id)?;
        let job = self.state.store.get_job(id)?;
        let runs = self.state.store.job_runs(&job.id)?;
        Ok((job, runs))
    }

    /// The puppets a target names, checked.
    fn resolve(&self, target: &Target) -> ApiResult<Vec<String>> {
        let store = &self.state.store;
        match target {
            Target::Selector(s) if s.trim_start().starts_with("group:") => {
                let name = s.trim_start()["group:".len()..].trim();
                crate::domain::check_group_name(name)?;
                let group = store.get_group(name)?;
                match &group.selector {
                    Some(selector) => self.resolve(&Target::Selector(selector.clone())),
                    None => self.resolve(&Target::Puppets(group.puppets.clone())),
                }
            }
            Target::Selector(s) => {
                let selector = Selector::parse(s)?;
                let names = self.state.enabled_matching(&selector)?;
                if names.is_empty() {
                    return Err(ApiError::Conflict(format!(
                        "selector {s:?} matches no enabled puppet"
                    )));
                }
                Ok(names)
            }
            Target::Puppets(names) => {
                let mut seen = std::collections::BTreeSet::new();
                for name in names {
                    if !seen.insert(name) {
                        return Err(ApiError::Invalid(format!("puppet {name} is listed twice")));
                    }
                    let puppet = store.get_puppet(name)?;
                    // A pending puppet's run waits for its approval.
                    if puppet.state == PuppetState::Disabled {
                        return Err(ApiError::Conflict(format!(
                            "puppet {name} is disabled: enable it first (geppetto puppets enable {name})"
                        )));
                    }
                }
                Ok(names.clone())
            }
        }
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::Job, Status>> + Send>>;

impl JobsApi {
    /// Approves or rejects a job awaiting approval.
    /// Skips the job's runs that have not started on the named puppets,
    /// all or none.
    fn skip(&self, req: &pb::SkipRunsRequest, user: &str) -> ApiResult<pb::Job> {
        const MAX_PUPPETS: usize = 1000;
        if req.puppets.is_empty() {
            return Err(ApiError::Invalid(
                "name at least one puppet whose run to skip".into(),
            ));
        }
        if req.puppets.len() > MAX_PUPPETS {
            return Err(ApiError::Invalid(format!(
                "at most {MAX_PUPPETS} puppets at once, not {}",
                req.puppets.len()
            )));
        }
        for name in &req.puppets {
            domain::check_puppet_name(name)?;
        }
        let (job, runs) = self.load(&req.job_id)?;
        let mut ids = Vec::new();
        for name in &req.puppets {
            let run = runs.iter().find(|r| &r.puppet == name).ok_or_else(|| {
                ApiError::NotFound(format!("job {} has no run on puppet {name}", job.id))
            })?;
            if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                return Err(ApiError::Conflict(format!(
                    "the run of job {} on {name} ({}) is {}: only runs that have not started can be skipped{}",
                    job.id,
                    run.id,
                    run.state,
                    if run.state.is_terminal() {
                        ""
                    } else {
                        " (cancel it: geppetto runs cancel RUN)"
                    }
                )));
            }
            ids.push(run.id.clone());
        }
        let now = Millis::now();
        let cause = format!("skipped: skipped by {user}");
        let skipped = self.state.store.update_runs(&ids, |run| {
            if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                return Ok(false);
            }
            run.transition(RunState::Skipped, now, cause.clone());
            Ok(true)
        })?;
        self.state.ended(&skipped);
        for run in &skipped {
            self.state.hub.wake(HubKey::puppet(&run.puppet));
        }
        self.state.hub.wake(HubKey::job(&job.id));
        let (job, runs) = self.load(&job.id)?;
        Ok(self.state.job_view(&job, &runs))
    }

    fn decide(&self, id: &str, user: &str, approve: bool) -> ApiResult<pb::Job> {
        let (job, _) = self.load(id)?;
        // Four eyes: whoever created a job cannot approve it (they may
        // still reject it, withdrawing it). The creator never changes.
        if approve && self.state.config.four_eyes && job.created_by.as_deref() == Some(user) {
            return Err(ApiError::PermissionDenied(format!(
                "job {id} was created by you ({user}): another operator must approve it (four-eyes rule: approval_four_eyes in the puppeteer's config)"
            )));
        }
        let now = Millis::now();
        let job = self.state.store.update_job(id, |job| {
            if job.approval != domain::Approval::Awaiting {
                return Err(crate::store::StoreError::Conflict(format!(
                    "job {id} is not awaiting approval"
                )));
            }
            job.approval = if approve {
                domain::Approval::Approved {
                    by: user.to_string(),
                    at: now,
                }
            } else {
                domain::Approval::Rejected {
                    by: user.to_string(),
                    at: now,
                }
            };
            Ok(true)
        })?;
        let mut event = super::events::event(
            if approve {
                "job.approved"
            } else {
                "job.rejected"
            },
            user,
            format!(
                "job {id} ({}) {} by {user}",
                job.task_name,
                if approve { "approved" } else { "rejected" }
            ),
        );
        event.job_id = id.to_string();
        self.state.announce(vec![event]);
        if !approve {
            let cause = format!("skipped: the job was rejected by {user}");
            let ids = self.state.store.job_run_ids(&job.id)?;
            let skipped = self.state.store.update_runs(&ids, |run| {
                if !matches!(run.state, RunState::Queued | RunState::Waiting) {
                    return Ok(false);
                }
                run.transition(RunState::Skipped, now, cause.clone());
                Ok(true)
            })?;
            self.state.ended(&skipped);
        }
        let (job, runs) = self.load(id)?;
        for run in &runs {
            self.state.hub.wake(HubKey::puppet(&run.puppet));
        }
        self.state.hub.wake(HubKey::job(id));
        Ok(self.state.job_view(&job, &runs))
    }

    /// Creates a job of a task version: one run per target puppet.
    async fn create(&self, caller: Caller, req: pb::CreateJobRequest) -> ApiResult<pb::Job> {
        domain::check_task_name(&req.task_name).map_err(ApiError::from)?;
        let target = domain::Target::try_from(req.target.unwrap_or_default())?;
        let store = &self.state.store;
        let version = (req.task_version != 0).then_some(req.task_version);
        let task = store
            .get_task(&req.task_name, version)
            .map_err(ApiError::from)?;
        let strategy = domain::Strategy::try_from(req.strategy.unwrap_or_default())?;
        if let Some(up) = &strategy.after_job {
            store.get_job(up).map_err(ApiError::from)?;
        }
        let mut puppets = self.resolve(&target)?;
        let mut not_targeted = Vec::new();
        if !task.requires.is_empty() {
            let class = Selector::parse(&task.requires).map_err(ApiError::from)?;
            let mut inside = Vec::new();
            for name in puppets {
                let puppet = store.get_puppet(&name).map_err(ApiError::from)?;
                if class.matches(&puppet.labels()) {
                    inside.push(name);
                } else {
                    not_targeted.push((name, format!("not in the task's class {}", task.requires)));
                }
            }
            if inside.is_empty() {
                return Err(ApiError::Conflict(format!(
                    "no targeted puppet is in the class of task {} ({})",
                    task.name, task.requires
                )));
            }
            puppets = inside;
        }
        let now = Millis::now();
        let job_id = new_id("job");
        let mut runs = Vec::with_capacity(puppets.len());
        for puppet in &puppets {
            let mut run = Run {
                id: new_id("run"),
                job_id: job_id.clone(),
                puppet: puppet.clone(),
                task_name: task.name.clone(),
                task_version: task.version,
                state: RunState::Queued,
                attempt: 1,
                cause: String::new(),
                outcome: None,
                exit_code: None,
                signal: None,
                created_at: now,
                started_at: None,
                finished_at: None,
                duration_ms: None,
                log_length: 0,
                history: vec![],
                cancel_requested: false,
                queue_seq: store.next_seq().map_err(ApiError::from)?,
                duplicate_reports: 0,
                needs: task.resources.clone(),
                holds: vec![],
                log_base: 0,
                max_attempts: 1 + task.retries,
                log_gap: None,
                reboot_window_ms: task.spec.reboot_window().map(|w| w.as_millis() as u64),
            };
            run.transition(RunState::Queued, now, format!("created by job {job_id}"));
            runs.push(run);
        }
        let job = Job {
            id: job_id,
            task_name: task.name.clone(),
            task_version: task.version,
            spec: task.spec.clone(),
            target,
            created_at: now,
            run_count: runs.len() as u64,
            cancelled: false,
            seq: store.next_seq().map_err(ApiError::from)?,
            approval: if strategy.approval {
                domain::Approval::Awaiting
            } else {
                domain::Approval::NotNeeded
            },
            strategy,
            not_targeted,
            reported_end: None,
            acknowledged: None,
            created_by: Some(caller.user.clone()),
            approval_requested: false,
        };
        store.create_job(&job, &runs).map_err(ApiError::from)?;
        store.flush().await.map_err(ApiError::from)?;
        for puppet in &puppets {
            self.state.hub.wake(HubKey::puppet(puppet));
        }
        tracing::info!(job = %job.id, task = %job.task_name, runs = runs.len(), "job created");
        // A job awaiting approval asks for it from the sweeper, once
        // nothing else it depends on is pending (see `AppState::apply_gates`).
        Ok(self.state.job_view(&job, &runs))
    }
}

/// The most jobs a page filtered by state looks at.
const JOBS_LOOKED_AT_FILTERED: usize = 1000;

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn create_job(
        &self,
        request: Request<pb::CreateJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/CreateJob", |req| {
                format!("task {}", req.task_name)
            })
            .run_noting(
                |caller, req| self.create(caller, req),
                |job, audit| audit.target(format!("{} (task {})", job.id, job.task_name)),
            )
            .await
            .map(Response::new)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state.authorize(&request, "Jobs/GetJob")?;
        let (job, runs) = self.load(&request.get_ref().id)?;
        Ok(Response::new(self.state.job_view(&job, &runs)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.state.authorize(&request, "Jobs/ListJobs")?;
        let req = request.into_inner();
        super::runs::check_states(req.states.len())?;
        let mut page = pages::JOBS.request(req.limit, &req.page_token)?;
        // A job's state needs its runs read: a filtered page looks at a
        // thousand jobs at most, so that a rare state does not make one call
        // read the whole history.
        page.budget = if req.states.is_empty() {
            page.limit
        } else {
            page.limit.max(JOBS_LOOKED_AT_FILTERED)
        };
        let state = self.state.clone();
        let (jobs, next) = crate::app::blocking(move || {
            let store = &state.store;
            // Views are made once, while the store filters.
            let views = std::cell::RefCell::new(Vec::new());
            let failed = std::cell::RefCell::new(None);
            let page = store.jobs_page(&page, |job| match store.job_runs(&job.id) {
                Ok(runs) => {
                    let view = state.job_view(job, &runs);
                    let keep = req.states.is_empty() || req.states.contains(&view.state);
                    if keep {
                        views.borrow_mut().push(view);
                    }
                    keep
                }
                Err(e) => {
                    failed.borrow_mut().get_or_insert(e);
                    false
                }
            })?;
            if let Some(e) = failed.into_inner() {
                return Err(ApiError::from(e));
            }
            Ok((views.into_inner(), page.next))
        })
        .await?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token: pages::JOBS.token(next),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/CancelJob", |req| req.id.clone())
            .run(|_, req| async move {
                let id = &req.id;
                convert::id_of_kind("job", id)?;
                let store = &self.state.store;
                let job = store
                    .update_job(id, |job| {
                        let change = !job.cancelled;
                        job.cancelled = true;
                        Ok(change)
                    })
                    .map_err(ApiError::from)?;
                let ids = store.job_run_ids(&job.id).map_err(ApiError::from)?;
                let changed = cancel_runs(&self.state, &ids, "cancelled with its job")?;
                store.flush().await.map_err(ApiError::from)?;
                wake_cancelled(&self.state, &changed);
                let (job, runs) = self.load(&job.id)?;
                Ok(Response::new(self.state.job_view(&job, &runs)))
            })
            .await
    }

    async fn approve_job(
        &self,
        request: Request<pb::ApproveJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/ApproveJob", |req| req.id.clone())
            .run(|caller, req| async move { self.decide(&req.id, &caller.user, true) })
            .await
            .map(Response::new)
    }

    async fn reject_job(
        &self,
        request: Request<pb::ApproveJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/RejectJob", |req| req.id.clone())
            .run(|caller, req| async move { self.decide(&req.id, &caller.user, false) })
            .await
            .map(Response::new)
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/RetryJob", |req| req.id.clone())
            .run(|_, req| async move {
                let pick: fn(RunState) -> bool = match req.only.as_str() {
                    "" | "skipped" => |s| s == RunState::Skipped,
                    "failed" => |s| {
                        matches!(
                            s,
                            RunState::Failed
                                | RunState::TimedOut
                                | RunState::Lost
                                | RunState::Interrupted
                        )
                    },
                    "all" => |s| s != RunState::Succeeded,
                    other => {
                        return Err(ApiError::Invalid(format!(
                            "only must be skipped, failed or all, not {other:?}"
                        )));
                    }
                };
                convert::id_of_kind("job", &req.id)?;
                let job = self.state.store.update_job(&req.id, |job| {
                    let change = job.cancelled;
                    job.cancelled = false;
                    Ok(change)
                })?;
                let requeued = self.state.store.requeue_runs(
                    &self.state.store.job_run_ids(&job.id)?,
                    Millis::now(),
                    |r| pick(r.state),
                )?;
                self.state.job_reopened(&job.id);
                if requeued.is_empty() {
                    return Err(ApiError::Conflict(format!(
                        "job {} has no run to retry with only={:?}",
                        job.id,
                        if req.only.is_empty() {
                            "skipped"
                        } else {
                            &req.only
                        }
                    )));
                }
                for run in &requeued {
                    self.state.hub.wake(HubKey::puppet(&run.puppet));
                }
                let (job, runs) = self.load(&job.id)?;
                self.state.hub.wake(HubKey::job(&job.id));
                Ok(self.state.job_view(&job, &runs))
            })
            .await
            .map(Response::new)
    }

    async fn skip_runs(
        &self,
        request: Request<pb::SkipRunsRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/SkipRuns", |req| {
                format!("{} on {}", req.job_id, req.puppets.len())
            })
            .run(|caller, req| async move { self.skip(&req, &caller.user) })
            .await
            .map(Response::new)
    }

    async fn acknowledge_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.state
            .mutation(request, "Jobs/AcknowledgeJob", |req| req.id.clone())
            .run(|caller, req| async move {
                let id = req.id;
                let (job, runs) = self.load(&id)?;
                let state = crate::scheduler::job_state(&job, &runs);
                if matches!(
                    state,
                    crate::scheduler::JobState::Running
                        | crate::scheduler::JobState::AwaitingApproval
                ) {
                    return Err(ApiError::Conflict(format!(
                        "job {id} is not finished: only a finished job can be acknowledged"
                    )));
                }
                // Acknowledging again keeps the first acknowledgement.
                let job = self.state.store.update_job(&id, |job| {
                    if job.acknowledged.is_some() {
                        return Ok(false);
                    }
                    job.acknowledged = Some(domain::Acknowledged {
                        by: caller.user.clone(),
                        at: Millis::now(),
                    });
                    Ok(true)
                })?;
                self.state.hub.wake(HubKey::job(&id));
                Ok(self.state.job_view(&job, &runs))
            })
            .await
            .map(Response::new)
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        self.state.authorize(&request, "Jobs/WatchJob")?;
        let id = request.into_inner().id;
        self.load(&id)?;
        let api = self.clone();
        let notify = self.state.hub.subscribe(HubKey::job(&id));
        // Each step sends the job as it is now, then waits for a change; the
        // stream ends after it sent the job finished.
        // The state: `None` once the job was sent finished; otherwise
        // whether a view was sent, and whether it showed a fetch under way
        // (its progress is re-read every 2 s rather than every 20 s, since
        // bytes sent wake nobody).
        let stream = futures_util::stream::unfold(Some((false, false)), move |state| {
            let api = api.clone();
            let notify = notify.clone();
            let id = id.clone();
            async move {
                let (sent, fetching) = state?;
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if sent {
                    // A periodic re-read bounds any missed wake-up.
                    let every = std::time::Duration::from_secs(if fetching { 2 } else { 20 });
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(every) => {}
                        _ = api.state.shutdown.cancelled() => return None,
                    }
                }
                match api.load(&id) {
                    Ok((job, runs)) => {
                        let view = api.state.job_view(&job, &runs);
                        let done = view.state != pb::JobState::Running as i32
                            && view.state != pb::JobState::AwaitingApproval as i32;
                        let fetching = view.runs.iter().any(|r| r.fetch.is_some());
                        Some((Ok(view), (!done).then_some((true, fetching))))
                    }
                    Err(e) => Some((Err(e.into()), None)),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Cancels runs that are not finished. Queued and offered runs end at once;
/// running ones are flagged, and their puppet kills them and reports.
pub fn cancel_runs(state: &super::AppState, ids: &[String], cause: &str) -> ApiResult<Vec<Run>> {
    let now = Millis::now();
    Ok(state.store.update_runs(ids, |run| match run.state {
        RunState::Queued | RunState::Waiting | RunState::Offered => {
            run.transition(RunState::Cancelled, now, cause);
            Ok(true)
        }
        RunState::Running if !run.cancel_requested => {
            run.cancel_requested = true;
            run.history.push(domain::Transition {
                state: RunState::Running,
                at: now,
                cause: format!("{cause}: asked its puppet to kill it"),
                attempt: run.attempt,
            });
            Ok(true)
        }
        _ => Ok(false),
    })?)
}

pub fn wake_cancelled(state: &super::AppState, runs: &[Run]) {
    state.ended(runs);
    for run in runs {
        state.hub.wake(HubKey::puppet(&run.puppet));
    }
}
