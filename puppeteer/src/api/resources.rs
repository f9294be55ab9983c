//! Admin service over resources (named counting semaphores).

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::resources_server::Resources;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::ts;
use super::error::{ApiError, ApiResult, invalid};
use crate::domain::{self, Millis, Resource, RunState};
use crate::store::ResourceUse;

/// The largest capacity a resource may have.
const MAX_CAPACITY: u32 = 1_000_000;
/// The largest bandwidth budget (10 GiB/s): anything above is a mistake.
const MAX_BANDWIDTH: u64 = 10 << 30;

#[derive(Debug, Clone)]
pub struct ResourcesApi {
    state: Shared,
}

/// A site is a value of the `site` label (empty: none).
fn check_site(site: &str) -> ApiResult<()> {
    if site.is_empty() {
        return Ok(());
    }
    domain::check_label_value("site", site).map_err(ApiError::from)
}

impl ResourcesApi {
    pub fn new(state: Shared) -> Self {
        ResourcesApi { state }
    }

    fn view(&self, r: &ResourceUse) -> ApiResult<pb::Resource> {
        let mut runs = self.state.store.all_active_runs()?;
        runs.sort_by_key(|run| run.queue_seq);
        let mut holders = Vec::new();
        let mut waiters = Vec::new();
        for run in &runs {
            let entry = |count: u32| pb::ResourceHolder {
                run_id: run.id.clone(),
                puppet: run.puppet.clone(),
                job_id: run.job_id.clone(),
                count,
            };
            if let Some(hold) = run.holds.iter().find(|h| h.name == r.resource.name) {
                holders.push(entry(hold.count));
            } else if let Some(need) = run.needs.iter().find(|n| n.name == r.resource.name)
                && matches!(run.state, RunState::Queued | RunState::Waiting)
            {
                waiters.push(entry(need.count));
            }
        }
        Ok(pb::Resource {
            name: r.resource.name.clone(),
            capacity: r.resource.capacity,
            used: r.used,
            holders,
            waiters,
            created_at: Some(ts(r.resource.created_at)),
            bandwidth: r.resource.bandwidth,
            site: r.resource.site.clone(),
        })
    }
}

impl ResourcesApi {
    fn resource_event(&self, kind: &str, name: &str, what: String) {
        let mut event = super::events::event(kind, "puppeteer", format!("resource {name}: {what}"));
        event.resource = name.to_string();
        self.state.announce(vec![event]);
    }
}

fn check_capacity(capacity: u32) -> ApiResult<()> {
    if capacity == 0 || capacity > MAX_CAPACITY {
        return Err(invalid(format!(
            "capacity must be between 1 and {MAX_CAPACITY}"
        )));
    }
    Ok(())
}

fn check_bandwidth(bandwidth: u64) -> ApiResult<()> {
    if bandwidth > MAX_BANDWIDTH {
        return Err(invalid(format!(
            "a bandwidth budget of {bandwidth} bytes/s is above the {MAX_BANDWIDTH} allowed \
             (0 means no budget)"
        )));
    }
    Ok(())
}

/// A budget in words, for events.
fn budget_words(bandwidth: u64) -> String {
    if bandwidth == 0 {
        "no bandwidth budget".into()
    } else {
        format!("bandwidth {bandwidth} B/s")
    }
}

#[tonic::async_trait]
impl Resources for ResourcesApi {
    async fn create_resource(
        &self,
        request: Request<pb::CreateResourceRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        self.state
            .mutation(request, "Resources/CreateResource", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_resource_name(&req.name)?;
                check_capacity(req.capacity)?;
                check_bandwidth(req.bandwidth)?;
                check_site(&req.site)?;
                let resource = Resource {
                    name: req.name.clone(),
                    capacity: req.capacity,
                    created_at: Millis::now(),
                    bandwidth: req.bandwidth,
                    site: req.site.clone(),
                };
                self.state.store.create_resource(&resource)?;
                self.resource_event(
                    "resource.created",
                    &req.name,
                    format!("capacity {}, {}", req.capacity, budget_words(req.bandwidth)),
                );
                self.view(&ResourceUse { resource, used: 0 })
            })
            .await
            .map(Response::new)
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Result<Response<pb::ListResourcesResponse>, Status> {
        self.state.authorize(&request, "Resources/ListResources")?;
        let resources = self
            .state
            .store
            .list_resources()
            .map_err(ApiError::from)?
            .iter()
            .map(|r| self.view(r))
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListResourcesResponse { resources }))
    }

    async fn get_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        self.state.authorize(&request, "Resources/GetResource")?;
        let name = &request.get_ref().name;
        domain::check_resource_name(name).map_err(ApiError::from)?;
        let r = self
            .state
            .store
            .get_resource(name)
            .map_err(ApiError::from)?;
        Ok(Response::new(self.view(&r)?))
    }

    async fn update_resource(
        &self,
        request: Request<pb::UpdateResourceRequest>,
    ) -> Result<Response<pb::Resource>, Status> {
        self.state
            .mutation(request, "Resources/UpdateResource", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_resource_name(&req.name)?;
                let capacity = (req.capacity != 0).then_some(req.capacity);
                if let Some(capacity) = capacity {
                    check_capacity(capacity)?;
                }
                if let Some(bandwidth) = req.bandwidth {
                    check_bandwidth(bandwidth)?;
                }
                if let Some(site) = &req.site {
                    check_site(site)?;
                }
                if capacity.is_none() && req.bandwidth.is_none() && req.site.is_none() {
                    return Err(invalid(
                        "nothing to change: give a new capacity, bandwidth budget or site",
                    ));
                }
                let r = self.state.store.update_resource(
                    &req.name,
                    capacity,
                    req.bandwidth,
                    req.site.as_deref(),
                )?;
                if let Some(bandwidth) = req.bandwidth {
                    self.resource_event("resource.updated", &req.name, budget_words(bandwidth));
                }
                // More room may let waiting runs start.
                self.state.hub.resource_released(&req.name);
                self.view(&r)
            })
            .await
            .map(Response::new)
    }

    async fn remove_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Result<Response<pb::RemoveResourceResponse>, Status> {
        self.state
            .mutation(request, "Resources/RemoveResource", |req| req.name.clone())
            .run(|_, req| async move {
                let name = req.name;
                domain::check_resource_name(&name)?;
                let users: Vec<String> = self
                    .state
                    .store
                    .list_tasks()?
                    .into_iter()
                    .filter(|t| t.resources.iter().any(|n| n.name == name))
                    .map(|t| t.name)
                    .collect();
                if !users.is_empty() {
                    return Err(ApiError::Conflict(format!(
                        "resource {name} is needed by tasks {}: update them first",
                        users.join(", ")
                    )));
                }
                self.state.store.remove_resource(&name)?;
                self.resource_event("resource.removed", &name, "removed".into());
                Ok(pb::RemoveResourceResponse {})
            })
            .await
            .map(Response::new)
    }
}
