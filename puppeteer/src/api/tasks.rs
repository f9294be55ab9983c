//! Admin service over tasks. A task is versioned: an update stores a new
//! version, and jobs keep the version they were launched with.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::tasks_server::Tasks;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert;
use super::error::{ApiError, invalid};
use crate::artifact::{self, PinError};
use crate::domain::{self, ArtifactRef, Millis, Task};
use crate::store::StoreError;

#[derive(Debug, Clone)]
pub struct TasksApi {
    state: Shared,
}

impl TasksApi {
    pub fn new(state: Shared) -> Self {
        TasksApi { state }
    }

    fn check_resources_exist(&self, needs: &[domain::ResourceNeed]) -> Result<(), ApiError> {
        for need in needs {
            let resource = match self.state.store.get_resource(&need.name) {
                Ok(r) => r,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ApiError::NotFound(format!(
                        "no resource {:?}: create it first (geppetto resources create {} --capacity N)",
                        need.name, need.name
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            if need.count > resource.resource.capacity {
                return Err(ApiError::Invalid(format!(
                    "resource {} has capacity {}: a run can never take {}",
                    need.name, resource.resource.capacity, need.count
                )));
            }
        }
        Ok(())
    }
}

impl TasksApi {
    /// Resolves an upgrade's version (empty: the served build's) and pins
    /// its release's binaries, one per platform, as the spec's artifacts.
    async fn pin_release(&self, spec: &mut domain::RunSpec) -> Result<(), ApiError> {
        let domain::Program::Upgrade { version, .. } = &mut spec.program else {
            return Ok(());
        };
        let served = super::artifacts::ArtifactsApi::new(self.state.clone())
            .import_served()
            .await?;
        if version.is_empty() {
            match &served {
                Some(build) => *version = build.version.clone(),
                None => {
                    return Err(ApiError::Conflict(
                        "this puppeteer serves no puppet build to upgrade to: name the version \
                         (--to VERSION) of a release added with geppetto puppet-releases add"
                            .into(),
                    ));
                }
            }
        }
        crate::releases::check_version(version).map_err(ApiError::from)?;
        let state = self.state.clone();
        let all = tokio::task::spawn_blocking(move || state.releases())
            .await
            .map_err(|e| ApiError::Internal(format!("cannot list the releases: {e}")))?
            .map_err(ApiError::from)?;
        let names: Vec<String> = all
            .iter()
            .filter(|(r, _)| r.version == *version)
            .map(|(_, a)| a.name.clone())
            .collect();
        if names.is_empty() {
            let mut known: Vec<&str> = all.iter().map(|(r, _)| r.version.as_str()).collect();
            known.dedup();
            return Err(ApiError::Conflict(format!(
                "no release of puppet {version}: add its binaries with geppetto puppet-releases \
                 add FILE --os OS --arch ARCH --version {version} (releases known: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        spec.artifacts = self.pin_artifacts(&names)?;
        Ok(())
    }

    /// Pins artifact names to their current content.
    fn pin_artifacts(&self, names: &[String]) -> Result<Vec<ArtifactRef>, ApiError> {
        let most = crate::domain::SpecLimits::ARTIFACTS;
        if names.len() > most {
            return Err(invalid(format!(
                "a task names at most {most} artifacts, this one {}",
                names.len()
            )));
        }
        artifact::pin(names, |name| self.state.store.get_artifact(name)).map_err(|e| match e {
            PinError::Invalid(e) => e.into(),
            PinError::Lookup(StoreError::NotFound { id, .. }) => ApiError::NotFound(format!(
                "no artifact {}: upload it first (geppetto artifacts upload FILE --name NAME)",
                crate::domain::shown(&id)
            )),
            PinError::Lookup(e) => e.into(),
        })
    }
}

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.len() > 4096 {
        return Err(invalid("the description is longer than 4096 bytes"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Tasks for TasksApi {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.state
            .mutation(request, "Tasks/CreateTask", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_task_name(&req.name).map_err(ApiError::from)?;
                check_description(&req.description)?;
                let spec = req
                    .spec
                    .ok_or_else(|| invalid("the task has no spec: give at least a program"))?;
                let mut spec = domain::RunSpec::try_from(spec)?;
                let names: Vec<String> = spec.artifacts.iter().map(|a| a.name.clone()).collect();
                if matches!(spec.program, domain::Program::Upgrade { .. }) {
                    if !names.is_empty() {
                        return Err(invalid(
                            "an upgrade task names no artifacts: its release's binaries are its artifacts",
                        ));
                    }
                    self.pin_release(&mut spec).await?;
                } else {
                    spec.artifacts = self.pin_artifacts(&names)?;
                }
                let resources = convert::needs_from(req.resources)?;
                self.check_resources_exist(&resources)?;
                let retries = convert::retries_from(req.retries)?;
                let requires = convert::requires_from(&req.requires)?;
                let now = Millis::now();
                let task = Task {
                    name: req.name,
                    version: 1,
                    description: req.description,
                    spec,
                    created_at: now,
                    updated_at: now,
                    resources,
                    retries,
                    requires,
                };
                self.state
                    .store
                    .create_task(&task)
                    .map_err(ApiError::from)?;
                self.state.store.flush().await.map_err(ApiError::from)?;
                Ok(Response::new(pb::Task::from(&task)))
            })
            .await
    }

    async fn update_task(
        &self,
        request: Request<pb::UpdateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.state
            .mutation(request, "Tasks/UpdateTask", |req| req.name.clone())
            .run(|_, req| async move {
                domain::check_task_name(&req.name).map_err(ApiError::from)?;
                let current = self
                    .state
                    .store
                    .get_task(&req.name, None)
                    .map_err(ApiError::from)?;
                if req.expected_version != 0 && req.expected_version != current.version {
                    return Err(ApiError::Stale(format!(
                        "task {} is at version {}, not {}: read it again",
                        req.name, current.version, req.expected_version
                    )));
                }
                let mut task = current.clone();
                task.version += 1;
                task.updated_at = Millis::now();
                if let Some(description) = req.description {
                    check_description(&description)?;
                    task.description = description;
                }
                let upgrade = |p: &domain::Program| matches!(p, domain::Program::Upgrade { .. });
                let was_upgrade = upgrade(&task.spec.program);
                if let Some(program) = req.program {
                    task.spec.program = program.try_into()?;
                }
                if upgrade(&task.spec.program)
                    && (req.replace_artifacts || !req.artifacts.is_empty())
                {
                    return Err(invalid(
                        "an upgrade task names no artifacts: its release's binaries are its artifacts",
                    ));
                }
                if was_upgrade && !upgrade(&task.spec.program) {
                    task.spec.artifacts.clear();
                }
                if let Some(timeout) = &req.timeout {
                    task.spec.timeout_ms = convert::timeout_from(Some(timeout))?;
                }
                if req.replace_env {
                    task.spec.env = req.env.into_iter().collect();
                } else {
                    task.spec.env.extend(req.env);
                }
                if let Some(workdir) = req.workdir {
                    task.spec.workdir = workdir;
                }
                if req.replace_resources || !req.resources.is_empty() {
                    let needs = convert::needs_from(req.resources)?;
                    if req.replace_resources {
                        task.resources = needs;
                    } else {
                        for need in needs {
                            task.resources.retain(|n| n.name != need.name);
                            task.resources.push(need);
                        }
                    }
                    self.check_resources_exist(&task.resources)?;
                }
                if req.replace_artifacts || !req.artifacts.is_empty() {
                    let pinned = self.pin_artifacts(&req.artifacts)?;
                    if req.replace_artifacts {
                        task.spec.artifacts = pinned;
                    } else {
                        task.spec
                            .artifacts
                            .retain(|a| !req.artifacts.contains(&a.name));
                        task.spec.artifacts.extend(pinned);
                        artifact::check_refs(&task.spec.artifacts).map_err(ApiError::from)?;
                    }
                }
                if let Some(retries) = req.retries {
                    task.retries = convert::retries_from(retries)?;
                }
                if let Some(requires) = &req.requires {
                    task.requires = convert::requires_from(requires)?;
                }
                if let Some(expect) = req.expect_reboot {
                    task.spec.expect_reboot = expect;
                    if !expect {
                        task.spec.reboot_window_ms = None;
                    }
                }
                if let Some(window) = &req.reboot_window {
                    let window = convert::from_dur("reboot window", window)?;
                    task.spec.reboot_window_ms = Some(window.as_millis() as u64);
                }
                if upgrade(&task.spec.program) {
                    self.pin_release(&mut task.spec).await?;
                }
                task.spec.validate().map_err(ApiError::from)?;
                self.state
                    .store
                    .add_task_version(&task)
                    .map_err(ApiError::from)?;
                self.state.store.flush().await.map_err(ApiError::from)?;
                Ok(Response::new(pb::Task::from(&task)))
            })
            .await
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        self.state.authorize(&request, "Tasks/GetTask")?;
        let req = request.get_ref();
        domain::check_task_name(&req.name).map_err(ApiError::from)?;
        let version = (req.version != 0).then_some(req.version);
        let task = self
            .state
            .store
            .get_task(&req.name, version)
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::Task::from(&task)))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.state.authorize(&request, "Tasks/ListTasks")?;
        let tasks = self.state.store.list_tasks().map_err(ApiError::from)?;
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.iter().map(pb::Task::from).collect(),
        }))
    }

    async fn remove_task(
        &self,
        request: Request<pb::RemoveTaskRequest>,
    ) -> Result<Response<pb::RemoveTaskResponse>, Status> {
        self.state
            .mutation(request, "Tasks/RemoveTask", |req| req.name.clone())
            .run(|_, req| async move {
                let name = &req.name;
                domain::check_task_name(name).map_err(ApiError::from)?;
                let contents = self
                    .state
                    .store
                    .task_contents(name)
                    .map_err(ApiError::from)?;
                self.state.store.remove_task(name).map_err(ApiError::from)?;
                self.state.store.flush().await.map_err(ApiError::from)?;
                // Content only this task's versions pinned (its name was
                // removed or re-uploaded since) is not needed any more.
                for sha256 in contents {
                    if !self
                        .state
                        .store
                        .content_pinned(&sha256)
                        .map_err(ApiError::from)?
                    {
                        let state = self.state.clone();
                        let removed =
                            tokio::task::spawn_blocking(move || state.remove_content(&sha256))
                                .await;
                        if let Err(e) = removed
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                        {
                            tracing::warn!(error = %e, "cannot remove unused artifact content");
                        }
                    }
                }
                Ok(Response::new(pb::RemoveTaskResponse {}))
            })
            .await
    }
}
