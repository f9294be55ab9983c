//! `FetchArtifact`: streams artifact content to a puppet, from an offset (to
//! resume after a drop), within the bandwidth budgets of the resources the
//! run holds.
//!
//! Only a run offered to or running on the calling puppet, in the attempt
//! the puppet names, whose task version pins that content, may fetch it: a
//! puppet reads nothing it was not sent to use.

use std::pin::Pin;

use futures_util::stream::{self, Stream};
use geppetto_proto::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::Status;

use super::Shared;
use super::convert::id_of_kind;
use super::error::{ApiError, ApiResult};
use crate::app::fetches::Completed;
use crate::artifact;
use crate::bandwidth;
use crate::domain::{Run, RunState};

pub type ArtifactStream = Pin<Box<dyn Stream<Item = Result<pb::ArtifactChunk, Status>> + Send>>;

impl super::AppState {
    /// A run for the API, with its fetch under way if any.
    pub fn run_view(&self, run: &Run) -> pb::Run {
        let mut view = pb::Run::from(run);
        view.fetch = self.fetches.of(&run.id).map(|f| pb::RunFetch::from(&f));
        view
    }

    /// A job for the API, with the fetches under way of its runs.
    pub fn job_view(&self, job: &crate::domain::Job, runs: &[Run]) -> pb::Job {
        let mut view = super::convert::job_to(job, runs);
        for run in &mut view.runs {
            run.fetch = self.fetches.of(&run.run_id).map(|f| pb::RunFetch::from(&f));
        }
        view
    }
}

/// What a permitted download sends.
struct Download {
    state: Shared,
    run_id: String,
    sha256: String,
    file: tokio::fs::File,
    offset: u64,
    size: u64,
    /// The resources the run holds (their budgets are read at each chunk,
    /// so a budget changed mid-download applies at once).
    holds: Vec<String>,
    /// The puppet's site, whose bytes from the puppeteer are counted.
    site: Option<String>,
    /// Whether a chunk went out (an empty one tells the size when there is
    /// nothing left to send).
    sent: bool,
    /// An error was sent: the stream ends.
    failed: bool,
}

/// Checks that `puppet` may fetch the content for this run and attempt;
/// returns the run, the artifact's name and the content's size.
pub(super) fn permit(
    state: &Shared,
    puppet: &str,
    req: &pb::FetchArtifactRequest,
) -> ApiResult<(Run, String, u64)> {
    permit_in(state, puppet, req, false)
}

/// [`permit`]; with `ended`, also for a run of that attempt that ended
/// since (a report of its fetch may come after it).
pub(super) fn permit_in(
    state: &Shared,
    puppet: &str,
    req: &pb::FetchArtifactRequest,
    ended: bool,
) -> ApiResult<(Run, String, u64)> {
    artifact::check_sha256(&req.sha256)?;
    id_of_kind("run", &req.run_id)?;
    let run = state.store.get_run(&req.run_id)?;
    if run.puppet != puppet {
        return Err(ApiError::PermissionDenied(format!(
            "run {} belongs to another puppet",
            req.run_id
        )));
    }
    let live = matches!(run.state, RunState::Offered | RunState::Running);
    if run.attempt != req.attempt || !(live || ended && run.state.is_terminal()) {
        return Err(ApiError::Conflict(format!(
            "run {} attempt {} is not offered to or running on this puppet (it is {} in attempt {})",
            req.run_id,
            req.attempt,
            run.state.name(),
            run.attempt
        )));
    }
    let task = state
        .store
        .get_task(&run.task_name, Some(run.task_version))?;
    let Some(pinned) = task.spec.artifacts.iter().find(|a| a.sha256 == req.sha256) else {
        return Err(ApiError::PermissionDenied(format!(
            "run {} does not use the artifact with sha256 {}",
            req.run_id, req.sha256
        )));
    };
    Ok((run, pinned.name.clone(), pinned.size))
}

/// Opens the download, or says why not.
pub async fn open(
    state: &Shared,
    puppet: &str,
    req: pb::FetchArtifactRequest,
) -> Result<ArtifactStream, Status> {
    let (run, name, size) = permit(state, puppet, &req)?;
    if req.offset > size {
        return Err(ApiError::OutOfRange(format!(
            "offset {} is past the end of the artifact ({size} bytes)",
            req.offset
        ))
        .into());
    }
    let (local, sha) = (state.clone(), req.sha256.clone());
    let path = tokio::task::spawn_blocking(move || local.local_content(&sha, size))
        .await
        .map_err(|e| ApiError::Internal(format!("cannot find the content: {e}")))?
        .map_err(ApiError::from)?;
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "artifact content missing");
        ApiError::NotFound(format!(
            "the puppeteer lacks the content {} ({e}): upload the artifact again",
            req.sha256
        ))
    })?;
    file.seek(std::io::SeekFrom::Start(req.offset))
        .await
        .map_err(|e| ApiError::Internal(format!("cannot read the artifact: {e}")))?;
    tracing::info!(run_id = %run.id, puppet, sha256 = %req.sha256, offset = req.offset, size, "artifact download");
    state
        .fetches
        .begin(&run, &req.sha256, &name, req.offset, size);
    // The run's resources, and the uplink of the puppet's site: what
    // crosses it draws on its budget whatever the task holds.
    let mut holds: Vec<String> = run.holds.iter().map(|h| h.name.clone()).collect();
    let site = state.store.get_puppet(puppet).ok().and_then(|p| p.site());
    if let Some(site) = &site {
        let uplinks = state.store.list_resources().map_err(ApiError::from)?;
        for r in uplinks {
            if &r.resource.site == site && !holds.contains(&r.resource.name) {
                holds.push(r.resource.name);
            }
        }
    }
    let download = Download {
        state: state.clone(),
        run_id: run.id.clone(),
        sha256: req.sha256.clone(),
        file,
        offset: req.offset,
        size,
        holds,
        site,
        sent: false,
        failed: false,
    };
    Ok(Box::pin(stream::unfold(download, next_chunk)))
}

async fn next_chunk(mut d: Download) -> Option<(Result<pb::ArtifactChunk, Status>, Download)> {
    if d.failed {
        return None;
    }
    match read_chunk(&mut d).await {
        Ok(Some(chunk)) => Some((Ok(chunk), d)),
        Ok(None) => None,
        Err(status) => {
            d.failed = true;
            Some((Err(status), d))
        }
    }
}

async fn read_chunk(d: &mut Download) -> Result<Option<pb::ArtifactChunk>, Status> {
    if d.offset >= d.size {
        if d.sent {
            return Ok(None);
        }
        d.sent = true;
        return Ok(Some(pb::ArtifactChunk {
            offset: d.offset,
            data: Vec::new(),
            size: d.size,
        }));
    }
    let budgets = d
        .state
        .bandwidth_budgets(d.holds.iter().map(String::as_str))
        .map_err(ApiError::from)?;
    let slowest = budgets.iter().map(|(_, rate)| *rate).min();
    let n = (bandwidth::chunk_size(slowest) as u64).min(d.size - d.offset);
    let wait = d.state.budgets.reserve(&budgets, n);
    if !wait.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = d.state.shutdown.cancelled() => {
                return Err(ApiError::ShuttingDown(
                    "the puppeteer is shutting down: resume later".into(),
                )
                .into());
            }
        }
    }
    let mut data = vec![0u8; n as usize];
    d.file.read_exact(&mut data).await.map_err(|e| {
        ApiError::Corrupt(format!(
            "the artifact content is shorter than recorded: {e}"
        ))
    })?;
    let chunk = pb::ArtifactChunk {
        offset: d.offset,
        data,
        size: d.size,
    };
    d.offset += n;
    d.sent = true;
    d.state.metrics.artifact_sent(n);
    if let Some(site) = &d.site {
        d.state.metrics.site_bytes(site, "puppeteer", n);
    }
    if let Some(done) = d.state.fetches.sent(&d.run_id, &d.sha256, n, d.offset) {
        note_fetched(&d.state, &d.run_id, &done);
    }
    Ok(Some(chunk))
}

/// Leaves a line in the run's history for an artifact fetched in full:
/// the fetch's duration stays in the run's timeline.
fn note_fetched(state: &Shared, run_id: &str, done: &Completed) {
    let rate = if done.took.as_millis() > 0 {
        done.sent as u128 * 1000 / done.took.as_millis()
    } else {
        0
    };
    let cause = format!(
        "fetched artifact {}: {} from the puppeteer in {} ({}/s)",
        done.name,
        bytesize::ByteSize(done.size),
        humantime::format_duration(std::time::Duration::from_secs(done.took.as_secs())),
        bytesize::ByteSize(rate as u64)
    );
    note_on_run(state, run_id, cause);
}

/// Leaves a line in the history of a run still offered or running.
pub(super) fn note_on_run(state: &Shared, run_id: &str, cause: String) {
    let now = crate::domain::Millis::now();
    let noted = state.store.update_run(run_id, |run| {
        if !matches!(run.state, RunState::Offered | RunState::Running) {
            return Ok(false);
        }
        run.history.push(crate::domain::Transition {
            state: run.state,
            at: now,
            cause: cause.clone(),
            attempt: run.attempt,
        });
        Ok(true)
    });
    match noted {
        Ok(_) => state.hub.wake(super::events::EVENTS_KEY),
        Err(e) => tracing::warn!(run_id, error = %e, "cannot note an artifact fetched"),
    }
}
