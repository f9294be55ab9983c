//! The puppet-facing service: enroll, long-poll, start, log, finish.
//!
//! Every report is idempotent: a puppet on a bad link resends until it gets
//! an answer, and a resend changes nothing (it is counted on the run). What
//! is answered is flushed to disk first.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppet_service_server::PuppetService;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{self, dur, ts};
use super::error::{ApiError, ApiResult, invalid};
use super::fetch::ArtifactStream;
use crate::domain::{self, Millis, Puppet, PuppetState, Run, RunState};
use crate::hub::HubKey;
use crate::ids::{hash_secret, new_secret};
use crate::scheduler::{self, PollReport};
use crate::store::{NewPuppet, StoreError};

/// Answer a held poll this long before the caller's own deadline, so that it
/// gets an empty answer instead of a cancelled call.
const DEADLINE_MARGIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct PuppetServiceApi {
    state: Shared,
}

/// What a held poll keeps while it waits. Every idle puppet holds a poll,
/// so this is kept small: the puppet's record is not part of it.
struct Waiting {
    name: String,
    hold: Duration,
    held_since: tokio::time::Instant,
    deadline: tokio::time::Instant,
    free_slots: u32,
    known: HashSet<String>,
    finishing: HashSet<String>,
    /// Runs executing when the poll was sent: their end frees a slot.
    executing_at_start: Vec<String>,
    notify: std::sync::Arc<tokio::sync::Notify>,
    /// Marks the puppet as holding a poll until the answer.
    _held: crate::presence::HeldPoll,
}

impl PuppetServiceApi {
    pub fn new(state: Shared) -> Self {
        PuppetServiceApi { state }
    }

    /// The run, if it belongs to `puppet`.
    fn own_run(&self, puppet: &str, run_id: &str) -> ApiResult<Run> {
        convert::id_of_kind("run", run_id)?;
        let run = self.state.store.get_run(run_id)?;
        if run.puppet != puppet {
            return Err(ApiError::PermissionDenied(format!(
                "run {run_id} belongs to another puppet"
            )));
        }
        Ok(run)
    }

    /// Enrolls a puppet with an enrollment token; returns it and its credential.
    fn enroll_puppet(&self, req: pb::EnrollRequest) -> ApiResult<(Puppet, String)> {
        if req.enroll_token.is_empty() {
            return Err(ApiError::Unauthenticated(
                "an enrollment token is required".into(),
            ));
        }
        domain::check_puppet_name(&req.name).map_err(ApiError::from)?;
        let declared = convert::labels_from(req.labels)?;
        let now = Millis::now();
        let credential = new_secret("gpp");
        let puppet = Puppet {
            name: req.name.clone(),
            state: PuppetState::Pending,
            enrolled_at: now,
            last_seen: Some(now),
            declared_labels: declared,
            assigned_labels: Default::default(),
            facts: req.facts.map(domain::Facts::from).unwrap_or_default(),
            enroll_token_id: String::new(),
            credential_hash: hash_secret(&credential),
            rotation: None,
            old_credential: None,
            revoked: false,
            reported_presence: None,
            peer: None,
        };
        let new = NewPuppet {
            puppet,
            enroll_secret_hash: hash_secret(&req.enroll_token),
        };
        match self.state.store.enroll(new, now) {
            Ok(puppet) => Ok((puppet, credential)),
            Err(StoreError::AlreadyExists { .. }) => Err(ApiError::AlreadyExists(format!(
                "a puppet named {:?} is already enrolled; choose another name, or remove it first (geppetto puppets remove {})",
                req.name, req.name
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn wake_run(&self, run: &Run) {
        self.state.hub.wake(HubKey::run(&run.id));
        self.state.hub.wake(HubKey::job(&run.job_id));
        self.state.hub.wake(super::events::EVENTS_KEY);
    }

    /// The hold for a poll: what the puppet asked, capped by the server's
    /// maximum and by the caller's deadline.
    fn hold_for<T>(&self, request: &Request<T>, asked: Option<&prost_types::Duration>) -> Duration {
        let config = &self.state.config;
        let mut hold = match asked.and_then(|d| convert::from_dur("hold", d).ok()) {
            Some(d) if !d.is_zero() => d.min(config.max_poll_hold),
            _ => config.poll_timeout,
        };
        if let Some(deadline) = grpc_timeout(request) {
            hold = hold.min(deadline.saturating_sub(DEADLINE_MARGIN));
        }
        hold
    }

    fn assignment(&self, run: &Run) -> ApiResult<pb::Assignment> {
        let job = self.state.store.job(&run.job_id)?;
        let limit = self.state.config.log_limit;
        Ok(pb::Assignment {
            run_id: run.id.clone(),
            attempt: run.attempt,
            job_id: run.job_id.clone(),
            task_name: run.task_name.clone(),
            task_version: run.task_version,
            spec: Some(pb::RunSpec::from(&job.spec)),
            log_head: limit.map_or(0, |l| l.head),
            log_tail: limit.map_or(0, |l| l.tail),
        })
    }

    /// Waits as the bandwidth budgets of the resources the run holds say
    /// `bytes` of its output should (no wait without a budget). The bytes
    /// are counted in the budget's bucket whatever the wait; the wait is
    /// capped so that the answer comes well within the puppet's deadline
    /// for a call (30 s), the debt then slowing the downloads that share it.
    async fn pace_upload(&self, run: &Run, bytes: u64) -> ApiResult<()> {
        const MAX_PACE: std::time::Duration = std::time::Duration::from_secs(15);
        if run.holds.is_empty() || bytes == 0 {
            return Ok(());
        }
        let budgets = self
            .state
            .bandwidth_budgets(run.holds.iter().map(|h| h.name.as_str()))?;
        let wait = self.state.budgets.reserve(&budgets, bytes).min(MAX_PACE);
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.state.shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// The puppet calling (or an error for anyone else). Its call is a sign
    /// of life (see `presence`): a puppet busy reporting is not silent.
    fn caller<T>(&self, request: &Request<T>) -> ApiResult<String> {
        let name = self.state.auth.puppet(&self.state.store, request)?;
        self.state.presences.heard(&name);
        Ok(name)
    }

    /// What a poll does before it waits: authenticates the puppet, notes
    /// that it was seen (and its new facts), and gathers what the hold
    /// needs. Returns that with the puppet's record.
    fn begin_poll(&self, request: Request<pb::PollRequest>) -> ApiResult<(Waiting, Box<Puppet>)> {
        let authenticated = self.state.auth.puppet_record(&self.state.store, &request)?;
        let name = authenticated.name.clone();
        let hold = self.hold_for(&request, request.get_ref().hold.as_ref());
        let req = request.into_inner();
        let store = &self.state.store;
        let now = Millis::now();
        // The record is rewritten only for new facts; the time of the poll
        // alone goes to the small `seen` record (see `Store::touch_puppet`).
        store.touch_puppet(&name, now)?;
        let offer = req.peer.map(peer_offer).transpose()?;
        let facts = req.facts.map(domain::Facts::from);
        let puppet = match (facts, offer) {
            (None, None) => None,
            (facts, offer) => Some(store.update_puppet(&name, |p| {
                p.last_seen = Some(now);
                if let Some(facts) = &facts {
                    p.facts = facts.clone();
                }
                if let Some(offer) = &offer {
                    p.peer = (!offer.address.is_empty()).then(|| offer.clone());
                }
                Ok(())
            })?),
        };
        let puppet = match puppet {
            Some(puppet) => puppet,
            // The record authentication just read, as `get_puppet` would
            // give it after the touch, without decoding it again.
            None => Puppet {
                last_seen: authenticated.last_seen.max(Some(now)),
                ..authenticated
            },
        };
        if let Some(why) = crate::versions::refuse(&puppet.facts.agent_version) {
            return Err(ApiError::Conflict(why));
        }
        self.state.presences.note_path(
            &name,
            crate::presence::PollPath {
                hold,
                polls_cut: req.polls_cut,
            },
        );
        let held = self.state.presences.hold(&name, req.free_slots);
        let known: HashSet<String> = req.known_runs.into_iter().collect();
        let finishing: HashSet<String> = req.finishing_runs.into_iter().collect();
        // Runs executing when the poll was sent: their end frees a slot.
        let executing_at_start: Vec<String> = store
            .active_runs(&name)?
            .into_iter()
            .filter(|r| known.contains(&r.id) && !finishing.contains(&r.id))
            .map(|r| r.id)
            .collect();
        let held_since = tokio::time::Instant::now();
        let waiting = Waiting {
            notify: self.state.hub.subscribe(HubKey::puppet(&name)),
            name,
            hold,
            deadline: held_since + hold,
            held_since,
            free_slots: req.free_slots,
            known,
            finishing,
            executing_at_start,
            _held: held,
        };
        Ok((waiting, Box::new(puppet)))
    }

    /// Holds a poll until there is news for the puppet (then answers it) or
    /// the hold ends (then answers empty). Only `Waiting` and the wake-up's
    /// futures are kept while it waits; the puppet's record is read again
    /// after each wake-up.
    async fn hold_poll(
        &self,
        waiting: Waiting,
        puppet: Box<Puppet>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        let store = &self.state.store;
        let mut first = Some(puppet);
        loop {
            let notified = waiting.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(mut answer) = self.answer_now(&waiting, first.take())? {
                answer.hold = Some(dur(waiting.hold));
                // The answer ends the hold: the puppet's last poll, as shown
                // to operators, is now (its signs of life are counted by
                // the `HeldPoll` in `waiting`, whenever it is dropped).
                store.touch_puppet(&waiting.name, Millis::now())?;
                // Boxed: only an answered poll needs room for the flush,
                // not every held one.
                Box::pin(store.flush()).await.map_err(ApiError::from)?;
                self.state.metrics.poll_held(waiting.held_since.elapsed());
                return Ok(Response::new(answer));
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(waiting.deadline) => break,
                _ = self.state.shutdown.cancelled() => break,
            }
        }
        store.touch_puppet(&waiting.name, Millis::now())?;
        self.state.metrics.poll_held(waiting.held_since.elapsed());
        Ok(Response::new(pb::PollResponse {
            assignments: vec![],
            cancel_runs: vec![],
            server_time: Some(ts(Millis::now())),
            hold: Some(dur(waiting.hold)),
            new_credential: String::new(),
        }))
    }

    /// The answer to a held poll if there is news for the puppet now.
    /// `puppet` is its record when just read; otherwise it is read again,
    /// as its state may have changed (disabled, enabled, removed, revoked).
    fn answer_now(
        &self,
        waiting: &Waiting,
        puppet: Option<Box<Puppet>>,
    ) -> ApiResult<Option<pb::PollResponse>> {
        let store = &self.state.store;
        let puppet = match puppet {
            Some(puppet) => *puppet,
            None => match store.get_puppet(&waiting.name) {
                Ok(p) if !p.revoked => p,
                Ok(_) | Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::Unauthenticated(
                        "this puppet's credential was revoked".into(),
                    ));
                }
                Err(e) => return Err(e.into()),
            },
        };
        let freed = if waiting.executing_at_start.is_empty() {
            0
        } else {
            let runs = store.get_runs(&waiting.executing_at_start)?;
            runs.iter().filter(|r| r.state.is_terminal()).count() as u32
        };
        let no_resources = std::collections::HashMap::new();
        let no_gates = std::collections::HashMap::new();
        let no_jobs = HashSet::new();
        let report = PollReport {
            available: &no_resources,
            gates: &no_gates,
            ordered_jobs: &no_jobs,
            free_slots: waiting.free_slots,
            known: &waiting.known,
            finishing: &waiting.finishing,
            freed_during_hold: freed,
        };
        self.try_answer(&puppet, &report, Millis::now())
    }

    /// Plans the poll and stores its decisions. Returns the answer if there
    /// is news for the puppet.
    fn try_answer(
        &self,
        puppet: &Puppet,
        report: &PollReport<'_>,
        now: Millis,
    ) -> ApiResult<Option<pb::PollResponse>> {
        let store = &self.state.store;
        let _dispatch = self
            .state
            .dispatch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let _cluster_dispatch = store.dispatch_lock()?;
        let active = store.active_runs(&puppet.name)?;
        let mut available = self.state.available_resources(&active)?;
        for (resource, reserved) in self.state.fifo_reserve(&puppet.name, &active, now)? {
            if let Some(free) = available.get_mut(&resource) {
                *free = free.saturating_sub(reserved);
            }
        }
        let gates = self.state.gates_for(&active, now)?;
        let ordered_jobs = self.state.ordered_jobs(&active)?;
        let report = PollReport {
            available: &available,
            gates: &gates,
            ordered_jobs: &ordered_jobs,
            ..*report
        };
        let plan = scheduler::plan_poll(puppet.state, &active, &report);
        if !plan.interrupted.is_empty() {
            let changed = store.update_runs(&plan.interrupted, |run| {
                if run.state != RunState::Running {
                    return Ok(false);
                }
                run.end_attempt(
                    RunState::Interrupted,
                    now,
                    "the puppet no longer holds this run (it restarted while running it)",
                );
                Ok(true)
            })?;
            self.state.ended(&changed);
        }
        self.state.note_blocked(&puppet.name, &plan.blocked, now)?;
        let new_credential = puppet
            .rotation
            .as_ref()
            .map(|r| r.new_secret.clone())
            .unwrap_or_default();
        if !plan.has_news() && new_credential.is_empty() {
            return Ok(None);
        }
        let offered = store.offer_runs(&plan.offer, now)?;
        // Queued runs taken meanwhile (cancelled) are simply not offered.
        let mut assignments = Vec::new();
        for id in &plan.redeliver {
            let run = store.get_run(id)?;
            if run.state == RunState::Offered {
                assignments.push(self.assignment(&run)?);
            }
        }
        for run in &offered {
            self.state.metrics.dispatched(now.since(run.created_at));
            assignments.push(self.assignment(run)?);
            self.wake_run(run);
        }
        Ok(Some(pb::PollResponse {
            assignments,
            cancel_runs: plan.cancel,
            server_time: Some(ts(now)),
            hold: None,
            new_credential,
        }))
    }
}

/// The caller's deadline from its `grpc-timeout` header.
/// A peer offer as a poll brings it, checked: an address `host:port` (or
/// empty, to withdraw), a certificate hash, a ticket key of 16 to 64 bytes.
fn peer_offer(offer: pb::PeerOffer) -> ApiResult<domain::PeerOffer> {
    if offer.address.is_empty() {
        return Ok(domain::PeerOffer {
            address: String::new(),
            cert_sha256: String::new(),
            ticket_key: Vec::new(),
        });
    }
    let port_ok = offer
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if offer.address.len() > 255 || !port_ok {
        return Err(invalid(
            "peer.address must be HOST:PORT (at most 255 characters)",
        ));
    }
    crate::artifact::check_sha256(&offer.cert_sha256)
        .map_err(|_| invalid("peer.cert_sha256 must be 64 lowercase hex digits"))?;
    if !(16..=64).contains(&offer.ticket_key.len()) {
        return Err(invalid("peer.ticket_key must be 16 to 64 bytes"));
    }
    Ok(domain::PeerOffer {
        address: offer.address,
        cert_sha256: offer.cert_sha256,
        ticket_key: offer.ticket_key,
    })
}

/// Failures a puppet reports: at most 16, each peer a puppet name.
fn failures(failed: Vec<pb::PeerFailure>) -> ApiResult<Vec<crate::app::peers::Failure>> {
    if failed.len() > 16 {
        return Err(invalid("at most 16 failed peers per request"));
    }
    failed
        .into_iter()
        .map(|f| {
            domain::check_puppet_name(&f.peer).map_err(ApiError::from)?;
            Ok(crate::app::peers::Failure {
                peer: f.peer,
                reason: f.reason.chars().take(200).collect(),
                gone: f.gone,
            })
        })
        .collect()
}

fn grpc_timeout<T>(request: &Request<T>) -> Option<Duration> {
    super::parse_grpc_timeout(request.metadata().get("grpc-timeout")?.to_str().ok()?)
}

#[tonic::async_trait]
impl PuppetService for PuppetServiceApi {
    type FetchArtifactStream = ArtifactStream;

    async fn fetch_artifact(
        &self,
        request: Request<pb::FetchArtifactRequest>,
    ) -> Result<Response<Self::FetchArtifactStream>, Status> {
        let puppet = self.caller(&request)?;
        let stream = super::fetch::open(&self.state, &puppet, request.into_inner()).await?;
        Ok(Response::new(stream))
    }

    async fn find_source(
        &self,
        request: Request<pb::FindSourceRequest>,
    ) -> Result<Response<pb::ArtifactSource>, Status> {
        let name = self.caller(&request)?;
        let req = request.into_inner();
        let failed = failures(req.failed)?;
        let state = self.state.clone();
        let found = tokio::task::spawn_blocking(move || -> ApiResult<_> {
            let asked = pb::FetchArtifactRequest {
                run_id: req.run_id,
                attempt: req.attempt,
                sha256: req.sha256,
                offset: 0,
            };
            super::fetch::permit(&state, &name, &asked)?;
            let puppet = state.store.get_puppet(&name)?;
            Ok(state.find_source(&puppet, &asked.sha256, &failed)?)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("cannot find a source: {e}")))??;
        let (address, cert_sha256, ticket) = found.peer.unwrap_or_default();
        Ok(Response::new(pb::ArtifactSource {
            peer: found.source.peer().to_string(),
            address,
            cert_sha256,
            ticket,
            reason: found.source.reason().to_string(),
        }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        // Authenticates like any call of a puppet; changes nothing else.
        let name = self.caller(&request)?;
        let version = &request.get_ref().agent_version;
        if version.len() > crate::releases::MAX_VERSION_BYTES {
            return Err(ApiError::Invalid(format!(
                "a version has at most {} bytes",
                crate::releases::MAX_VERSION_BYTES
            ))
            .into());
        }
        if let Some(why) = crate::versions::refuse(version) {
            tracing::info!(puppet = %name, version = %crate::domain::shown(version), "a puppet's new binary was refused: too old");
            return Err(ApiError::Conflict(why).into());
        }
        Ok(Response::new(pb::CheckResponse {
            server_version: crate::versions::OWN.to_string(),
        }))
    }

    async fn report_fetch(
        &self,
        request: Request<pb::ReportFetchRequest>,
    ) -> Result<Response<pb::ReportFetchResponse>, Status> {
        let name = self.caller(&request)?;
        let req = request.into_inner();
        let failed = failures(req.failed)?;
        if !req.source.is_empty() {
            domain::check_puppet_name(&req.source).map_err(ApiError::from)?;
        }
        let took = req.took.map_or(0, |d| {
            (d.seconds.clamp(0, 30 * 86_400) as u64) * 1000
                + (d.nanos.clamp(0, 999_999_999) as u64) / 1_000_000
        });
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || -> ApiResult<()> {
            let asked = pb::FetchArtifactRequest {
                run_id: req.run_id.clone(),
                attempt: req.attempt,
                sha256: req.sha256.clone(),
                offset: 0,
            };
            let (_, artifact, size) = super::fetch::permit_in(&state, &name, &asked, true)?;
            let puppet = state.store.get_puppet(&name)?;
            state.fetch_done(&puppet, &req.sha256, &req.source, req.bytes, took, &failed)?;
            if !req.source.is_empty() || !failed.is_empty() {
                let mut cause = format!(
                    "fetched artifact {artifact}: {} from {} in {}",
                    bytesize::ByteSize(size),
                    if req.source.is_empty() {
                        "the puppeteer".to_string()
                    } else {
                        format!("peer {}", req.source)
                    },
                    humantime::format_duration(Duration::from_millis(took - took % 100))
                );
                for f in &failed {
                    cause.push_str(&format!("; peer {} dropped: {}", f.peer, f.reason));
                }
                super::fetch::note_on_run(&state, &req.run_id, cause);
            }
            Ok(())
        })
        .await
        .map_err(|e| ApiError::Internal(format!("cannot record a fetch: {e}")))??;
        Ok(Response::new(pb::ReportFetchResponse {}))
    }

    async fn enroll(
        &self,
        request: Request<pb::EnrollRequest>,
    ) -> Result<Response<pb::EnrollResponse>, Status> {
        let (puppet, credential) = self
            .state
            .unauthenticated_mutation(request, "PuppetService/Enroll", |req| req.name.clone())
            .run_noting(
                |(), req| async move { self.enroll_puppet(req) },
                |(puppet, _), audit| {
                    audit.actor(format!("puppet:{}", puppet.name));
                    audit.target(format!("{} via {}", puppet.name, puppet.enroll_token_id));
                },
            )
            .await?;
        // Enrolled: a sign of life of the new puppet (see `presence`).
        self.state.presences.heard(&puppet.name);
        let pending = puppet.state == PuppetState::Pending;
        let mut event = super::events::event(
            if pending {
                "puppet.pending"
            } else {
                "puppet.enrolled"
            },
            format!("puppet:{}", puppet.name),
            if pending {
                format!(
                    "{} enrolled with {} and waits for approval (geppetto puppets approve {})",
                    puppet.name, puppet.enroll_token_id, puppet.name
                )
            } else {
                format!("{} enrolled with {}", puppet.name, puppet.enroll_token_id)
            },
        );
        event.puppet = puppet.name.clone();
        self.state.announce(vec![event]);
        tracing::info!(
            puppet = %puppet.name,
            token = %puppet.enroll_token_id,
            pending = puppet.state == PuppetState::Pending,
            "puppet enrolled"
        );
        Ok(Response::new(pb::EnrollResponse {
            approved: puppet.state == PuppetState::Enabled,
            name: puppet.name,
            credential,
            max_poll_hold: Some(dur(self.state.config.max_poll_hold)),
        }))
    }

    // Spelled as `#[async_trait]` would expand it, but not `async`: an async
    // fn's future keeps its arguments (the request) for its whole life, and
    // every idle puppet holds a poll. The work before the hold runs here;
    // the future is only the hold (`hold_poll`, about 1 KB; 3.4 KB before).
    fn poll<'life0, 'async_trait>(
        &'life0 self,
        request: Request<pb::PollRequest>,
    ) -> Pin<
        Box<dyn Future<Output = Result<Response<pb::PollResponse>, Status>> + Send + 'async_trait>,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        match self.begin_poll(request) {
            Ok((waiting, puppet)) => Box::pin(self.hold_poll(waiting, puppet)),
            Err(e) => Box::pin(std::future::ready(Err(e.into()))),
        }
    }

    async fn start_run(
        &self,
        request: Request<pb::StartRunRequest>,
    ) -> Result<Response<pb::StartRunResponse>, Status> {
        let name = self.caller(&request)?;
        let req = request.into_inner();
        let run = self.own_run(&name, &req.run_id)?;
        let now = Millis::now();
        // The puppet's clock, when it is plausible; the puppeteer's otherwise.
        let started_at = req
            .started_at
            .as_ref()
            .and_then(|t| convert::plausible_ts(t, now))
            .unwrap_or(now);
        let attempt = req.attempt;
        // Set by the closure's last (committed) execution.
        let duplicate = std::cell::Cell::new(false);
        let run = self.state.store.update_run(&run.id, |run| {
            duplicate.set(false);
            if run.attempt != attempt {
                return Ok(false);
            }
            match run.state {
                RunState::Offered => {
                    run.started_at = Some(started_at);
                    run.transition(RunState::Running, now, "the puppet started it");
                    Ok(true)
                }
                // A resend: the attempt was started already (and may have
                // ended since).
                RunState::Running => {
                    run.duplicate_reports += 1;
                    duplicate.set(true);
                    Ok(true)
                }
                state if state.is_terminal() && run.started_at.is_some() => {
                    run.duplicate_reports += 1;
                    duplicate.set(true);
                    Ok(true)
                }
                RunState::Queued | RunState::Waiting => Err(StoreError::Conflict(format!(
                    "run {} was not offered to you yet",
                    run.id
                ))),
                _ => Ok(false),
            }
        })?;
        self.state.store.flush().await.map_err(ApiError::from)?;
        if duplicate.get() {
            self.state.metrics.duplicate_report("start_run");
        }
        self.wake_run(&run);
        let proceed =
            run.attempt == attempt && run.state == RunState::Running && !run.cancel_requested;
        Ok(Response::new(pb::StartRunResponse { proceed }))
    }

    async fn append_log(
        &self,
        request: Request<pb::AppendLogRequest>,
    ) -> Result<Response<pb::AppendLogResponse>, Status> {
        let name = self.caller(&request)?;
        let req = request.into_inner();
        if req.data.len() > super::MAX_LOG_CHUNK {
            return Err(invalid(format!(
                "log chunk of {} bytes is too large: send at most {} bytes at once",
                req.data.len(),
                super::MAX_LOG_CHUNK
            ))
            .into());
        }
        let run = self.own_run(&name, &req.run_id)?;
        let attempt = req.attempt;
        let limit = self.state.config.log_limit;
        // A run holding resources with a bandwidth budget has its uploads
        // paced by it too (the answer waits): its output crosses the same
        // link as its artifacts.
        self.pace_upload(&run, req.data.len() as u64).await?;
        let appended = self.state.store.append_log_skipping(
            &run.id,
            req.offset,
            req.skipped,
            &req.data,
            limit,
            |run| {
                if run.attempt != attempt {
                    return Err(StoreError::Conflict(format!(
                        "run {} is at attempt {}, not {attempt}",
                        run.id, run.attempt
                    )));
                }
                if matches!(run.state, RunState::Queued | RunState::Waiting) {
                    return Err(StoreError::Conflict(format!(
                        "run {} was not offered to you yet",
                        run.id
                    )));
                }
                Ok(())
            },
        )?;
        self.state.store.flush().await.map_err(ApiError::from)?;
        if appended.duplicate || appended.overlap {
            self.state.metrics.duplicate_report("append_log");
        }
        if appended.dropped > 0 {
            self.state.metrics.log_dropped(appended.dropped);
        }
        if !appended.duplicate {
            self.wake_run(&run);
        }
        Ok(Response::new(pb::AppendLogResponse {
            committed: appended.committed,
        }))
    }

    async fn finish_run(
        &self,
        request: Request<pb::FinishRunRequest>,
    ) -> Result<Response<pb::FinishRunResponse>, Status> {
        let name = self.caller(&request)?;
        let req = request.into_inner();
        let run = self.own_run(&name, &req.run_id)?;
        let outcome = convert::outcome_from(req.outcome)?;
        let duration = match &req.duration {
            Some(d) => Some(convert::from_dur("duration", d)?),
            None => None,
        };
        let now = Millis::now();
        let state = scheduler::finished_state(outcome, req.exit_code);
        let cause = finish_cause(outcome, &req);
        // Set by the closure's last (committed) execution.
        let duplicate = std::cell::Cell::new(false);
        let run = self.state.store.update_run(&run.id, |run| {
            duplicate.set(false);
            if req.attempt == 0 || req.attempt > run.attempt {
                return Err(StoreError::Conflict(format!(
                    "run {} has no attempt {}: it is at attempt {}",
                    run.id, req.attempt, run.attempt
                )));
            }
            if run.attempt != req.attempt {
                // A late report of an earlier attempt: recorded against that
                // attempt, once, never changing the current one.
                let note = format!("late report of attempt {}: {cause}", req.attempt);
                let noted = run
                    .history
                    .iter()
                    .any(|t| t.attempt == req.attempt && t.cause.starts_with("late report of"));
                if !noted {
                    run.history.push(domain::Transition {
                        state,
                        at: now,
                        cause: note,
                        attempt: req.attempt,
                    });
                }
                run.duplicate_reports += 1;
                duplicate.set(true);
                return Ok(true);
            }
            if run.state.is_terminal() {
                run.duplicate_reports += 1;
                duplicate.set(true);
                return Ok(true);
            }
            if matches!(run.state, RunState::Queued | RunState::Waiting) {
                return Err(StoreError::Conflict(format!(
                    "run {} was not offered to you yet",
                    run.id
                )));
            }
            let held = run.log_length - run.log_base;
            if req.log_length != held {
                return Err(StoreError::Conflict(format!(
                    "the server holds {held} bytes of output for run {}, you reported {}: send the missing output first",
                    run.id, req.log_length
                )));
            }
            run.outcome = Some(outcome);
            run.exit_code = (outcome == domain::Outcome::Exited).then_some(req.exit_code);
            run.signal = (req.signal != 0).then_some(req.signal);
            run.duration_ms = duration.map(|d| d.as_millis() as u64);
            run.end_attempt(state, now, cause.clone());
            Ok(true)
        })?;
        self.state.store.flush().await.map_err(ApiError::from)?;
        if duplicate.get() {
            // A resend changed nothing: no one to wake, and the run's end is
            // not counted twice. Only a job end never announced (the
            // puppeteer stopped between storing the run's end and announcing
            // the job's) is announced now. Re-checking a finished job at every
            // resend read all its runs each time: at the end of a fan-out to
            // 10,000 puppets, resends of slow answers stalled the puppeteer.
            self.state.metrics.duplicate_report("finish_run");
            self.state.announce_unreported_job_end(&run.job_id);
        } else {
            self.state.ended(std::slice::from_ref(&run));
        }
        // A poll held while this run executed can now offer the next one.
        self.state.hub.wake(HubKey::puppet(&name));
        Ok(Response::new(pb::FinishRunResponse {
            state: pb::RunState::from(run.state) as i32,
        }))
    }
}

fn finish_cause(outcome: domain::Outcome, req: &pb::FinishRunRequest) -> String {
    use domain::Outcome as O;
    let base = match outcome {
        O::Exited => format!("exited with code {}", req.exit_code),
        O::Signaled => format!("killed by signal {}", req.signal),
        O::TimedOut => "timed out; its process group was killed".to_string(),
        O::Cancelled => "cancelled; its process group was killed".to_string(),
        O::StartFailed => "could not be started".to_string(),
        O::Interrupted => "interrupted: the puppet restarted while running it".to_string(),
        O::Rebooted => "the machine rebooted as the task expected".to_string(),
    };
    // The puppeteer's own words say all there is for kills it asked for.
    if req.message.is_empty() || matches!(outcome, O::TimedOut | O::Cancelled) {
        base
    } else {
        let message: String = req.message.chars().take(500).collect();
        format!("{base}: {message}")
    }
}
