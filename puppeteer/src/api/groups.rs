//! Admin service over groups, and their use as a job target.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::groups_server::Groups;
use tonic::{Request, Response, Status};

use super::Shared;
use super::error::{ApiError, ApiResult, invalid};
use crate::domain::{self, Group, Millis, PuppetState};
use crate::selector::Selector;

#[derive(Debug, Clone)]
pub struct GroupsApi {
    state: Shared,
}

impl super::AppState {
    /// The enabled puppets `selector` matches, by name. The records are
    /// read one at a time: ten thousand decoded at once are about 12 MB.
    pub fn enabled_matching(&self, selector: &Selector) -> ApiResult<Vec<String>> {
        let mut names = Vec::new();
        for puppet in self.store.puppets() {
            let puppet = puppet?;
            if puppet.state == PuppetState::Enabled && selector.matches(&puppet.labels()) {
                names.push(puppet.name);
            }
        }
        Ok(names)
    }

    /// The puppets a group stands for now: for a selector, the enabled
    /// puppets matching it; for a list, the listed puppets that exist.
    pub fn group_members(&self, group: &Group) -> ApiResult<Vec<String>> {
        match &group.selector {
            Some(s) => {
                let selector = Selector::parse(s)?;
                self.enabled_matching(&selector)
            }
            None => Ok(group
                .puppets
                .iter()
                .filter(|n| self.store.get_puppet(n).is_ok())
                .cloned()
                .collect()),
        }
    }
}

/// Puppets a group may list by name.
const MAX_GROUP_PUPPETS: usize = 20_000;

impl GroupsApi {
    pub fn new(state: Shared) -> Self {
        GroupsApi { state }
    }

    fn create(&self, req: pb::Group) -> ApiResult<pb::Group> {
        domain::check_group_name(&req.name)?;
        if req.description.len() > 1024 {
            return Err(invalid("the description is longer than 1024 bytes"));
        }
        let (selector, puppets) = match req.members {
            Some(pb::group::Members::Selector(s)) => {
                Selector::parse(&s)?;
                (Some(s.trim().to_string()), vec![])
            }
            Some(pb::group::Members::Puppets(p)) => {
                if p.names.is_empty() {
                    return Err(invalid("the group lists no puppet"));
                }
                if p.names.len() > MAX_GROUP_PUPPETS {
                    return Err(invalid(format!(
                        "a group lists at most {MAX_GROUP_PUPPETS} puppets by name, this one {} \
                         (a selector names any number)",
                        p.names.len()
                    )));
                }
                for name in &p.names {
                    domain::check_puppet_name(name)?;
                }
                (None, p.names)
            }
            None => return Err(invalid("give the group a selector or puppet names")),
        };
        let group = Group {
            name: req.name,
            selector,
            puppets,
            description: req.description,
            created_at: Millis::now(),
        };
        self.state.store.create_group(&group)?;
        Ok(pb::Group::from(&group))
    }
}

#[tonic::async_trait]
impl Groups for GroupsApi {
    async fn create_group(
        &self,
        request: Request<pb::Group>,
    ) -> Result<Response<pb::Group>, Status> {
        self.state
            .mutation(request, "Groups/CreateGroup", |req| req.name.clone())
            .run(|_, req| async move { self.create(req) })
            .await
            .map(Response::new)
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        self.state.authorize(&request, "Groups/ListGroups")?;
        let groups = self.state.store.list_groups().map_err(ApiError::from)?;
        Ok(Response::new(pb::ListGroupsResponse {
            groups: groups.iter().map(pb::Group::from).collect(),
        }))
    }

    async fn get_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::GroupView>, Status> {
        self.state.authorize(&request, "Groups/GetGroup")?;
        let name = &request.get_ref().name;
        domain::check_group_name(name).map_err(ApiError::from)?;
        let group = self.state.store.get_group(name).map_err(ApiError::from)?;
        Ok(Response::new(pb::GroupView {
            current_members: self.state.group_members(&group)?,
            group: Some(pb::Group::from(&group)),
        }))
    }

    async fn remove_group(
        &self,
        request: Request<pb::GetGroupRequest>,
    ) -> Result<Response<pb::RemoveGroupResponse>, Status> {
        self.state
            .mutation(request, "Groups/RemoveGroup", |req| req.name.clone())
            .run(|_, req| async move {
                let name = req.name;
                domain::check_group_name(&name)?;
                self.state.store.remove_group(&name)?;
                Ok(pb::RemoveGroupResponse {})
            })
            .await
            .map(Response::new)
    }
}
