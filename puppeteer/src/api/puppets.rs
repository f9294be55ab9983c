//! Admin service over puppets.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::puppets_server::Puppets;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{self, puppet_to};
use super::error::{ApiError, ApiResult};
use crate::domain::{self, Millis, Puppet, PuppetState, RunState};
use crate::hub::{job_key, puppet_key, run_key};
use crate::selector::Selector;
use crate::store::StoreError;

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
        let presence =
            self.state
                .presences
                .of(puppet, Millis::now(), self.state.config.poll_timeout);
        let mut view = puppet_to(puppet, presence, active);
        view.polling = self.state.presences.is_held(&puppet.name);
        Ok(view)
    }

    fn name_of(name: &str) -> ApiResult<&str> {
        domain::check_puppet_name(name)?;
        Ok(name)
    }

    async fn set_state(&self, name: &str, state: PuppetState) -> ApiResult<pb::Puppet> {
        let name = Self::name_of(name)?;
        let puppet = self.state.store.update_puppet(name, |p| {
            p.state = state;
            Ok(())
        })?;
        self.state.store.flush().await?;
        // A held poll re-reads the puppet: enabled again, it gets its runs.
        self.state.hub.wake(&puppet_key(name));
        self.view(&puppet)
    }
}

#[tonic::async_trait]
impl Puppets for PuppetsApi {
    async fn list_puppets(
        &self,
        request: Request<pb::ListPuppetsRequest>,
    ) -> Result<Response<pb::ListPuppetsResponse>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        let selector = Selector::parse(&request.get_ref().selector).map_err(ApiError::from)?;
        let puppets = self
            .state
            .store
            .list_puppets()
            .map_err(ApiError::from)?
            .iter()
            .filter(|p| selector.matches(&p.labels()))
            .map(|p| self.view(p))
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListPuppetsResponse { puppets }))
    }

    async fn get_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        let name = Self::name_of(&request.get_ref().name)?;
        let puppet = self.state.store.get_puppet(name).map_err(ApiError::from)?;
        Ok(Response::new(self.view(&puppet)?))
    }

    async fn label_puppet(
        &self,
        request: Request<pb::LabelPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        let req = request.into_inner();
        let name = Self::name_of(&req.name)?;
        let set = convert::labels_from(req.set)?;
        for key in &req.remove {
            domain::check_label_key(key).map_err(ApiError::from)?;
        }
        let puppet = self
            .state
            .store
            .update_puppet(name, |p| {
                p.assigned_labels.extend(set.clone());
                for key in &req.remove {
                    p.assigned_labels.remove(key);
                    p.declared_labels.remove(key);
                }
                Ok(())
            })
            .map_err(ApiError::from)?;
        self.state.store.flush().await.map_err(ApiError::from)?;
        Ok(Response::new(self.view(&puppet)?))
    }

    async fn disable_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        Ok(Response::new(
            self.set_state(&request.get_ref().name, PuppetState::Disabled)
                .await?,
        ))
    }

    async fn enable_puppet(
        &self,
        request: Request<pb::GetPuppetRequest>,
    ) -> Result<Response<pb::Puppet>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        Ok(Response::new(
            self.set_state(&request.get_ref().name, PuppetState::Enabled)
                .await?,
        ))
    }

    async fn remove_puppet(
        &self,
        request: Request<pb::RemovePuppetRequest>,
    ) -> Result<Response<pb::RemovePuppetResponse>, Status> {
        self.state.auth.admin(&self.state.store, &request)?;
        let req = request.into_inner();
        let name = Self::name_of(&req.name)?;
        let store = &self.state.store;
        store.get_puppet(name).map_err(ApiError::from)?;
        let active: Vec<String> = store
            .active_runs(name)
            .map_err(ApiError::from)?
            .into_iter()
            .map(|r| r.id)
            .collect();
        if !active.is_empty() && !req.force {
            return Err(ApiError::FailedPrecondition(format!(
                "puppet {name} has {} unfinished runs; cancel them first or pass force",
                active.len()
            ))
            .into());
        }
        let now = Millis::now();
        let cancelled = store
            .update_runs(&active, |run| {
                if run.state.is_terminal() {
                    return Ok(false);
                }
                run.transition(RunState::Cancelled, now, "its puppet was removed");
                Ok(true)
            })
            .map_err(ApiError::from)?;
        match store.remove_puppet(name) {
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(ApiError::from(e).into()),
        }
        store.flush().await.map_err(ApiError::from)?;
        for run in &cancelled {
            self.state.hub.wake(&run_key(&run.id));
            self.state.hub.wake(&job_key(&run.job_id));
        }
        self.state.hub.wake(&puppet_key(name));
        Ok(Response::new(pb::RemovePuppetResponse {
            cancelled_runs: cancelled.into_iter().map(|r| r.id).collect(),
        }))
    }
}
