//! Admin service over puppets: listing, labels, states, approval, removal and
//! credentials.

use std::time::Duration;

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppets_server::Puppets;
use tonic::{Request, Response, Status};

use super::convert::{self, puppet_to};
use super::error::{ApiError, ApiResult, invalid};
use super::{Shared, pages};
use crate::domain::{self, Millis, Puppet, PuppetState, Rotation, RunState};
use crate::hub::HubKey;
use crate::ids::{hash_secret, new_secret};
use crate::selector::Selector;
use crate::store::StoreError;

const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct PuppetsApi {
    state: Shared,
}

impl PuppetsApi {
    pub fn new(state: Shared) -> Self {
        PuppetsApi { state }
    }

    fn view(&self, puppet: &Puppet) -> ApiResult<pb::Puppet> {
        let active = self.state.store.active_runs(&puppet.name)?.len() as u32;
        let presence = self.state.presences.of(puppet, self.state.config.presence);
        let mut view = puppet_to(puppet, presence, active);
        view.polling = self.state.presences.is_held(&puppet.name);
        if let Some(path) = self.state.presences.path(&puppet.name) {
            view.poll_hold = Some(convert::dur(path.hold));
            view.polls_cut = path.polls_cut;
        }
        Ok(view)
    }

    fn name_of(name: &str) -> ApiResult<&str> {
        domain::check_puppet_name(name)?;
        Ok(name)
    }

    /// Changes a puppet's state; `allowed` says from which states.
    fn set_state(
        &self,
        name: &str,
        state: PuppetState,
        allowed: &'static [PuppetState],
    ) -> ApiResult<pb::Puppet> {
        let name = Self::name_of(name)?;
        let puppet = self.state.store.update_puppet(name, |p| {
            if p.revoked {
                return Err(StoreError::Conflict(format!(
                    "puppet {name} was revoked: remove it and enroll it again"
                )));
            }
            if !allowed.contains(&p.state) {
                // Enabling is not how a pending puppet gets in: say what is.
                let hint = if p.state == PuppetState::Pending && state == PuppetState::Enabled {
                    format!(": approve it instead (geppetto puppets approve {name})")
                } else {
                    String::new()
                };
                return Err(StoreError::Conflict(format!(
                    "puppet {name} is {}{hint}",
                    state_name(p.state)
                )));
            }
            p.state = state;
            Ok(())
        })?;
        // A held poll re-reads the puppet: enabled, it gets its runs.
        self.state.hub.wake(HubKey::puppet(name));
        self.view(&puppet)
    }

    /// Removes a puppet; its unfinished runs end with `state` and `cause`.
    fn remove(
        &self,
        name: &str,
        force: bool,
        state: RunState,
        cause: &str,
    ) -> ApiResult<pb::RemovePuppetResponse> {
        let store = &self.state.store;
        store.get_puppet(name)?;
        let active: Vec<String> = store.active_runs(name)?.into_iter().map(|r| r.id).collect();
        if !active.is_empty() && !force {
            return Err(ApiError::Conflict(format!(
                "puppet {name} has {} unfinished runs; cancel them first or pass force",
                active.len()
            )));
        }
        let now = Millis::now();
        let ended = store.update_runs(&active, |run| {
            if run.state.is_terminal() {
                return Ok(false);
            }
            run.transition(state, now, cause);
            Ok(true)
        })?;
        match store.remove_puppet(name) {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.state.presences.forget(name);
        for run in &ended {
            self.state.hub.wake(HubKey::run(&run.id));
            self.state.hub.wake(HubKey::job(&run.job_id));
        }
        self.state.hub.wake(HubKey::puppet(name));
        Ok(pb::RemovePuppetResponse {
            cancelled_runs: ended.into_iter().map(|r| r.id).collect(),
        })
    }
}

/// Why a queued run of `puppet` is not running, in words.
fn queued_cause(
    puppet: &Puppet,
    run: &domain::Run,
    gate: Option<&crate::scheduler::Gate>,
    available: &std::collections::HashMap<String, u32>,
) -> String {
    use crate::scheduler::Gate;
    match puppet.state {
        PuppetState::Pending => return "waiting for the puppet's approval".into(),
        PuppetState::Disabled => return "waiting: the puppet is disabled".into(),
        PuppetState::Enabled => {}
    }
    match gate {
        Some(Gate::Wait(cause)) => return cause.clone(),
        Some(Gate::Skip(cause)) => return format!("about to be skipped: {cause}"),
        _ => {}
    }
    if let Some(need) = run
        .needs
        .iter()
        .find(|n| available.get(&n.name).is_none_or(|free| *free < n.count))
    {
        return format!("waiting for resource {}", need.name);
    }
    "waiting for a slot on the puppet".into()
}

fn state_name(state: PuppetState) -> &'static str {
    match state {
        PuppetState::Pending => "pending approval",
        PuppetState::Enabled => "enabled",
        PuppetState::Disabled => "disabled",
    }
}

#[tonic::async_trait]
impl Puppets for PuppetsApi {
    async fn list_puppets(
        &self,
        request: Request<pb::ListPuppetsRequest>,
    ) -> Result<Response<pb::ListPuppetsResponse>, Status> {
        let (_, caller) =
            self.state
                .auth
                .authorize(&self.state.store, &request, "Puppets/ListPuppets");
        caller?;
        let req = request.get_ref();
        let selector = Selector::parse(&req.selector).map_err(ApiError::from)?;
        let page = pages::PUPPETS.request(req.page_size, &req.page_token)?;
        // Off the async threads: a page reads up to ten thousand puppets
        // (and the active runs of those it lists).
        let api = self.clone();
        let (puppets, next) = crate::app::blocking(move || {
            let page = api
                .state
                .store
                .puppets_page(&page, |p| selector.matches(&p.labels()))?;
            let views = page
                .items
                .iter()
                .map(|p| api.view(p))
                .collect::<ApiResult<_>>()?;
            Ok::<_, ApiError>((views, page.next))
        })
        .await?;
        Ok(Response::new(pb::ListPuppetsResponse {
            puppets,
            next_page_token: pages::PUPPETS.token(next),
        }))
    }

    async fn get_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        let (_, caller) =
            self.state
                .auth
                .authorize(&self.state.store, &request, "Puppets/GetPuppet");
        caller?;
        let name = Self::name_of(&request.get_ref().name)?;
        let puppet = self.state.store.get_puppet(name).map_err(ApiError::from)?;
        Ok(Response::new(self.view(&puppet)?))
    }

    async fn get_puppet_queue(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::PuppetQueue>, Status> {
        self.state.authorize(&request, "Puppets/GetPuppetQueue")?;
        let name = Self::name_of(&request.get_ref().name)?;
        let store = &self.state.store;
        let puppet = store.get_puppet(name).map_err(ApiError::from)?;
        let active = store.active_runs(name).map_err(ApiError::from)?;
        let now = Millis::now();
        let gates = self.state.gates_for(&active, now)?;
        let available = self.state.available_resources(&active)?;
        let entries = active
            .iter()
            .map(|run| {
                let cause = match run.state {
                    RunState::Offered => "offered to the puppet".to_string(),
                    RunState::Running if run.cancel_requested => {
                        "running; the puppet was asked to kill it".to_string()
                    }
                    RunState::Running => "running".to_string(),
                    _ => queued_cause(&puppet, run, gates.get(&run.id), &available),
                };
                pb::QueueEntry {
                    run_id: run.id.clone(),
                    job_id: run.job_id.clone(),
                    task_name: run.task_name.clone(),
                    state: pb::RunState::from(run.state) as i32,
                    cause,
                }
            })
            .collect();
        Ok(Response::new(pb::PuppetQueue {
            puppet: name.to_string(),
            entries,
        }))
    }

    async fn label_puppet(
        &self,
        request: Request<pb::LabelPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/LabelPuppet", |req| req.name.clone())
            .run(|_, req| async move {
                let name = Self::name_of(&req.name)?;
                let set = convert::labels_from(req.set.clone())?;
                for key in &req.remove {
                    domain::check_label_key(key)?;
                }
                let puppet = self.state.store.update_puppet(name, |p| {
                    p.assigned_labels.extend(set.clone());
                    for key in &req.remove {
                        p.assigned_labels.remove(key);
                        p.declared_labels.remove(key);
                    }
                    Ok(())
                })?;
                self.view(&puppet)
            })
            .await
            .map(Response::new)
    }

    async fn disable_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/DisablePuppet", |req| req.name.clone())
            .run(|_, req| async move {
                self.set_state(
                    &req.name,
                    PuppetState::Disabled,
                    &[PuppetState::Enabled, PuppetState::Disabled],
                )
            })
            .await
            .map(Response::new)
    }

    async fn enable_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/EnablePuppet", |req| req.name.clone())
            .run(|_, req| async move {
                self.set_state(
                    &req.name,
                    PuppetState::Enabled,
                    &[PuppetState::Enabled, PuppetState::Disabled],
                )
            })
            .await
            .map(Response::new)
    }

    async fn remove_puppet(
        &self,
        request: Request<pb::RemovePuppetRequest>,
    ) -> Result<Response<pb::RemovePuppetResponse>, Status> {
        self.state
            .mutation(request, "Puppets/RemovePuppet", |req| req.name.clone())
            .run(|_, req| async move {
                let name = Self::name_of(&req.name)?;
                self.remove(
                    name,
                    req.force,
                    RunState::Cancelled,
                    "its puppet was removed",
                )
            })
            .await
            .map(Response::new)
    }

    async fn approve_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/ApprovePuppet", |req| req.name.clone())
            .run(|_, req| async move {
                self.set_state(&req.name, PuppetState::Enabled, &[PuppetState::Pending])
            })
            .await
            .map(Response::new)
    }

    async fn reject_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::RemovePuppetResponse>, Status> {
        self.state
            .mutation(request, "Puppets/RejectPuppet", |req| req.name.clone())
            .run(|_, req| async move {
                let name = Self::name_of(&req.name)?;
                let puppet = self.state.store.get_puppet(name)?;
                if puppet.state != PuppetState::Pending {
                    return Err(ApiError::Conflict(format!(
                        "puppet {name} is {}, not pending: remove it instead",
                        state_name(puppet.state)
                    )));
                }
                self.remove(
                    name,
                    true,
                    RunState::Skipped,
                    "skipped: its puppet was rejected",
                )
            })
            .await
            .map(Response::new)
    }

    async fn rotate_puppet_credential(
        &self,
        request: Request<pb::RotatePuppetCredentialRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/RotatePuppetCredential", |req| {
                req.name.clone()
            })
            .run(|_, req| async move {
                let name = Self::name_of(&req.name)?;
                let grace = match &req.grace {
                    Some(g) => convert::from_dur("grace", g)?,
                    None => DEFAULT_GRACE,
                };
                if grace > MAX_GRACE {
                    return Err(invalid("grace must be at most 30 days"));
                }
                let secret = new_secret("gpp");
                let rotation = Rotation {
                    new_hash: hash_secret(&secret),
                    new_secret: secret,
                    old_expires_at: Millis::now().plus(grace),
                };
                let puppet = self.state.store.rotate_puppet(name, &rotation)?;
                // Its held poll answers at once with the new credential.
                self.state.hub.wake(HubKey::puppet(name));
                self.view(&puppet)
            })
            .await
            .map(Response::new)
    }

    async fn revoke_puppet_credential(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state
            .mutation(request, "Puppets/RevokePuppetCredential", |req| {
                req.name.clone()
            })
            .run(|_, req| async move {
                let name = Self::name_of(&req.name)?;
                let puppet = self.state.store.revoke_puppet(name)?;
                // Its held poll ends, refused.
                self.state.hub.wake(HubKey::puppet(name));
                self.view(&puppet)
            })
            .await
            .map(Response::new)
    }
}
