//! Admin service over runs and their output.

use std::pin::Pin;

use futures_util::Stream;
use geppetto_proto::v1 as pb;
use geppetto_proto::v1::runs_server::Runs;
use tonic::{Request, Response, Status};

use std::cell::RefCell;
use std::collections::HashMap;

use super::convert;
use super::error::{ApiError, ApiResult, invalid};
use super::jobs::{cancel_runs, wake_cancelled};
use super::{Shared, pages};
use crate::domain;
use crate::hub::HubKey;
use crate::store::RunsOf;

/// Default and largest read of `ReadLog`, and the chunk size of `FollowLog`.
const MAX_READ: usize = 1024 * 1024;
const FOLLOW_CHUNK: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct RunsApi {
    state: Shared,
}

impl RunsApi {
    pub fn new(state: Shared) -> Self {
        RunsApi { state }
    }

    fn run(&self, id: &str) -> ApiResult<domain::Run> {
        convert::id_of_kind("run", id)?;
        Ok(self.state.store.get_run(id)?)
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Runs for RunsApi {
    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        self.state.authorize(&request, "Runs/GetRun")?;
        Ok(Response::new(
            self.state.run_view(&self.run(&request.get_ref().id)?),
        ))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.state.authorize(&request, "Runs/ListRuns")?;
        let req = request.into_inner();
        check_states(req.states.len())?;
        let selector = match req.selector.trim() {
            "" => None,
            text => Some(crate::selector::Selector::parse(text).map_err(ApiError::from)?),
        };
        // Each listing its own tokens, and a cursor must fit its listing.
        let listing = match &req.of {
            Some(pb::list_runs_request::Of::JobId(id)) => {
                convert::id_of_kind("job", id)?;
                pages::JOB_RUNS
            }
            Some(pb::list_runs_request::Of::Puppet(name)) => {
                domain::check_puppet_name(name).map_err(ApiError::from)?;
                pages::PUPPET_RUNS
            }
            None => pages::RUNS,
        };
        let page = listing.request(req.page_size, &req.page_token)?;
        listing.check(&page, |key| match &req.of {
            // A key of the job's index, or of the puppet's runs.
            Some(
                pb::list_runs_request::Of::JobId(name) | pb::list_runs_request::Of::Puppet(name),
            ) => {
                let prefix = crate::store::prefix_of(name);
                key.len() == prefix.len() + 8 && key.starts_with(&prefix)
            }
            None => true,
        })?;
        // Off the async threads: a page looks at up to ten thousand runs.
        let state = self.state.clone();
        let (runs, next) = crate::app::blocking(move || {
            let store = &state.store;
            let job;
            let of = match &req.of {
                Some(pb::list_runs_request::Of::JobId(id)) => {
                    job = store.get_job(id)?;
                    RunsOf::Job(&job)
                }
                Some(pb::list_runs_request::Of::Puppet(name)) => RunsOf::Puppet(name),
                None => RunsOf::Active,
            };
            // Each puppet's labels read once, for the selector.
            let matching: RefCell<HashMap<String, bool>> = Default::default();
            let keep = |run: &domain::Run| {
                if !req.states.is_empty() && !req.states.contains(&state.run_view(run).state) {
                    return false;
                }
                let Some(selector) = &selector else {
                    return true;
                };
                *matching
                    .borrow_mut()
                    .entry(run.puppet.clone())
                    .or_insert_with(|| {
                        store
                            .get_puppet(&run.puppet)
                            .is_ok_and(|p| selector.matches(&p.labels()))
                    })
            };
            let page = store.runs_page(of, &page, keep)?;
            let views: Vec<_> = page.items.iter().map(|run| state.run_view(run)).collect();
            Ok::<_, ApiError>((views, page.next))
        })
        .await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            next_page_token: listing.token(next),
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        self.state
            .mutation(request, "Runs/CancelRun", |req| req.id.clone())
            .run(|_, req| async move {
                let run = self.run(&req.id)?;
                if run.state.is_terminal() {
                    return Err(ApiError::Conflict(format!(
                        "run {} is already {}",
                        run.id, run.state
                    )));
                }
                let changed = cancel_runs(
                    &self.state,
                    std::slice::from_ref(&run.id),
                    "cancelled by an operator",
                )?;
                self.state.store.flush().await.map_err(ApiError::from)?;
                wake_cancelled(&self.state, &changed);
                Ok(Response::new(self.state.run_view(&self.run(&run.id)?)))
            })
            .await
    }

    async fn read_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<pb::ReadLogResponse>, Status> {
        self.state.authorize(&request, "Runs/ReadLog")?;
        let req = request.into_inner();
        let run = self.run(&req.run_id)?;
        let max = match req.max_bytes as usize {
            0 => MAX_READ,
            n => n.min(MAX_READ),
        };
        if req.offset > run.log_length {
            return Err(ApiError::Invalid(format!(
                "offset {} is past the end of the output ({} bytes)",
                req.offset, run.log_length
            ))
            .into());
        }
        let (run, read) = self
            .state
            .store
            .read_log(&run.id, req.offset, max)
            .map_err(ApiError::from)?;
        let end = read.offset + read.data.len() as u64;
        Ok(Response::new(pb::ReadLogResponse {
            eof: run.state.is_terminal() && end >= run.log_length,
            data: read.data.into(),
            offset: read.offset,
            log_length: run.log_length,
            truncated: run.log_gap.is_some(),
            skipped: read.skipped,
        }))
    }

    type FollowLogStream = LogStream;

    async fn follow_log(
        &self,
        request: Request<pb::ReadLogRequest>,
    ) -> Result<Response<Self::FollowLogStream>, Status> {
        self.state.authorize(&request, "Runs/FollowLog")?;
        let req = request.into_inner();
        let run = self.run(&req.run_id)?;
        if req.offset > run.log_length {
            return Err(invalid(format!(
                "offset {} is past the end of the output ({} bytes)",
                req.offset, run.log_length
            ))
            .into());
        }
        let notify = self.state.hub.subscribe(HubKey::run(&run.id));
        let state = self.state.clone();
        let run_id = run.id;
        // Each step sends the next chunk there is, waiting for one if needed;
        // the stream ends once the run is finished and everything was sent.
        let stream = futures_util::stream::unfold(Some(req.offset), move |offset| {
            let state = state.clone();
            let notify = notify.clone();
            let run_id = run_id.clone();
            async move {
                let mut offset = offset?;
                loop {
                    let notified = notify.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    let run = match state.store.get_run(&run_id) {
                        Ok(run) => run,
                        Err(e) => return Some((Err(ApiError::from(e).into()), None)),
                    };
                    if offset < run.log_length {
                        return match state.store.read_log(&run_id, offset, FOLLOW_CHUNK) {
                            Ok((_, read)) => {
                                offset = read.offset + read.data.len() as u64;
                                let chunk = pb::LogChunk {
                                    offset: read.offset,
                                    data: read.data.into(),
                                    skipped: read.skipped,
                                };
                                Some((Ok(chunk), Some(offset)))
                            }
                            Err(e) => Some((Err(ApiError::from(e).into()), None)),
                        };
                    }
                    if run.state.is_terminal() {
                        return None;
                    }
                    tokio::select! {
                        _ = &mut notified => {}
                        _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => {}
                        _ = state.shutdown.cancelled() => return None,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// A filter names each state at most once: a longer list is refused before
/// it is matched against every run.
pub fn check_states(n: usize) -> ApiResult<()> {
    const MAX_STATES: usize = 16;
    if n > MAX_STATES {
        return Err(invalid(format!(
            "at most {MAX_STATES} states in a filter, not {n}"
        )));
    }
    Ok(())
}
