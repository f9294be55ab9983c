//! Admin service over artifacts: resumable uploads, names, removal.
//!
//! An upload is a session: `BeginUpload` (resumed when the same name, hash
//! and size are given again), `UploadChunk`s appended at the committed
//! offset (a chunk already held is acknowledged again, so resends are
//! harmless), and `CommitUpload`, which checks the hash and publishes the
//! content under its name. The bytes go to a partial file synced before the
//! committed offset moves (see [`crate::blobs`]); nothing is published unless
//! the whole content hashes to what was announced.
//!
//! An upload is its beginner's: another user can neither add to it nor
//! commit it (`PermissionDenied`), and a user has at most
//! [`MAX_OPEN_UPLOADS`] unfinished uploads (abandoned ones are discarded
//! after the retention's `upload_max_age`).

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::artifacts_server::Artifacts;
use tonic::{Request, Response, Status};

use super::Shared;
use super::convert::{id_of_kind, ts};
use super::error::{ApiError, ApiResult, invalid};
use crate::artifact::{self, Artifact, Upload};
use crate::domain::Millis;
use crate::ids::new_id;
use crate::releases;

/// Unfinished uploads one user may have at once.
pub const MAX_OPEN_UPLOADS: usize = 16;

/// Refuses a call on `upload` by anyone but the user who began it.
fn owned_by(upload: &Upload, user: &str) -> ApiResult<()> {
    if upload.started_by != user {
        return Err(ApiError::PermissionDenied(format!(
            "upload {} was begun by another user: only they can add to it or commit it",
            upload.id
        )));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ArtifactsApi {
    state: Shared,
    /// Serialises chunk writes, so that two resends of a chunk never write
    /// at the same time. An async mutex: the section awaits the disk and the
    /// store flush. It is held for a write, never for a transfer.
    writing: std::sync::Arc<tokio::sync::Mutex<()>>,
}

fn status(upload: &Upload) -> pb::UploadStatus {
    pb::UploadStatus {
        upload_id: upload.id.clone(),
        committed: upload.committed,
        size: upload.size,
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(crate::store::StoreError::Files(e))) => {
            tracing::error!(error = %e, "artifact storage: {what}");
            Err(ApiError::Internal(format!("cannot {what}: {e}")))
        }
        Ok(Err(e)) => Err(ApiError::from(e)),
        Err(e) => Err(ApiError::Internal(format!("cannot {what}: {e}"))),
    }
}

/// Who the served build's release artifact is uploaded by.
const SERVED_BY: &str = "puppeteer";

impl ArtifactsApi {
    /// Adds the puppet build this puppeteer serves as the release artifact
    /// `puppet-VERSION-OS-ARCH`, unless that artifact already holds it (an
    /// artifact of that name with other content is replaced: the served
    /// build is what this puppeteer installs). Returns the build; `None`
    /// when there is none, or when its version cannot name a release.
    pub async fn import_served(&self) -> ApiResult<Option<crate::app::served::PuppetBuild>> {
        let Some(build) = self.state.served.build().await.cloned() else {
            return Ok(None);
        };
        if let Err(e) = releases::check_version(&build.version) {
            tracing::warn!(version = %build.version, "the served puppet build cannot be a release: {e}");
            return Ok(None);
        }
        let name = releases::artifact_name(&build.version, &build.os, &build.arch);
        let _importing = self.state.served.importing.lock().await;
        match self.state.store.get_artifact(&name) {
            Ok(a) if a.sha256 == build.sha256 => return Ok(Some(build)),
            Ok(a) => {
                tracing::warn!(artifact = %name, was = %a.sha256, now = %build.sha256, "the release artifact of the served puppet build holds other content: replacing it with the build served")
            }
            Err(crate::store::StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        let begun = self
            .begin(
                pb::BeginUploadRequest {
                    name: name.clone(),
                    sha256: build.sha256.clone(),
                    size: build.size,
                },
                SERVED_BY,
            )
            .await?;
        let mut file = tokio::fs::File::open(&build.path).await.map_err(|e| {
            ApiError::Internal(format!("cannot read {}: {e}", build.path.display()))
        })?;
        let mut at = begun.committed;
        {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            file.seek(std::io::SeekFrom::Start(at))
                .await
                .map_err(|e| ApiError::Internal(format!("cannot read the puppet build: {e}")))?;
            let mut buf = vec![0u8; artifact::MAX_CHUNK];
            while at < build.size {
                let n = file.read(&mut buf).await.map_err(|e| {
                    ApiError::Internal(format!("cannot read the puppet build: {e}"))
                })?;
                if n == 0 {
                    return Err(ApiError::Internal(format!(
                        "{} shrank while it was added as a release",
                        build.path.display()
                    )));
                }
                self.append(
                    pb::UploadChunkRequest {
                        upload_id: begun.upload_id.clone(),
                        offset: at,
                        data: buf[..n].to_vec(),
                    },
                    SERVED_BY,
                )
                .await?;
                at += n as u64;
            }
        }
        self.commit(
            pb::CommitUploadRequest {
                upload_id: begun.upload_id,
            },
            SERVED_BY,
        )
        .await?;
        tracing::info!(artifact = %name, "the served puppet build is now a release");
        Ok(Some(build))
    }

    pub fn new(state: Shared) -> Self {
        ArtifactsApi {
            state,
            writing: Default::default(),
        }
    }

    fn view(&self, a: &Artifact) -> ApiResult<pb::Artifact> {
        let used_by = self
            .state
            .store
            .list_tasks()?
            .into_iter()
            .filter(|t| t.spec.artifacts.iter().any(|r| r.name == a.name))
            .map(|t| t.name)
            .collect();
        Ok(pb::Artifact {
            name: a.name.clone(),
            sha256: a.sha256.clone(),
            size: a.size,
            created_at: Some(ts(a.created_at)),
            uploaded_by: a.uploaded_by.clone(),
            used_by,
            copies: Vec::new(),
        })
    }

    fn announce(&self, kind: &str, actor: &str, summary: String) {
        let event = super::events::event(kind, actor, summary);
        self.state.announce(vec![event]);
    }

    /// Deletes content once nothing pins it any more.
    async fn collect(&self, sha256: &str) -> ApiResult<()> {
        if !self.state.store.content_pinned(sha256)? {
            let state = self.state.clone();
            let sha = sha256.to_string();
            blocking("remove unused artifact content", move || {
                state.remove_content(&sha)
            })
            .await?;
        }
        Ok(())
    }

    async fn begin(&self, req: pb::BeginUploadRequest, user: &str) -> ApiResult<pb::UploadStatus> {
        artifact::check_name(&req.name)?;
        artifact::check_sha256(&req.sha256)?;
        artifact::check_size(req.size)?;
        let (found, open) = self
            .state
            .store
            .find_upload(&req.name, &req.sha256, req.size, user)?;
        if let Some(upload) = found {
            return Ok(status(&upload));
        }
        if open >= MAX_OPEN_UPLOADS {
            return Err(ApiError::Conflict(format!(
                "{user} has {open} unfinished uploads, the most allowed: finish them, or \
                 wait until the abandoned ones are discarded"
            )));
        }
        // Content already held (under another name, or a previous upload
        // of this one) need not travel again.
        let (state, sha, size) = (self.state.clone(), req.sha256.clone(), req.size);
        let held = blocking("look for the content", move || {
            state.content_held(&sha, size)
        })
        .await?;
        let upload = Upload {
            id: new_id("upl"),
            name: req.name,
            sha256: req.sha256,
            size: req.size,
            committed: if held { req.size } else { 0 },
            started_at: Millis::now(),
            started_by: user.to_string(),
        };
        self.state.store.put_upload(&upload)?;
        self.state.store.flush().await?;
        Ok(status(&upload))
    }

    async fn append(&self, req: pb::UploadChunkRequest, user: &str) -> ApiResult<pb::UploadStatus> {
        id_of_kind("upl", &req.upload_id)?;
        if req.data.len() > artifact::MAX_CHUNK {
            return Err(invalid(format!(
                "a chunk of {} bytes is larger than the {} allowed",
                req.data.len(),
                artifact::MAX_CHUNK
            )));
        }
        let _writing = self.writing.lock().await;
        let upload = self.state.store.get_upload(&req.upload_id)?;
        owned_by(&upload, user)?;
        let end = req.offset.saturating_add(req.data.len() as u64);
        if end > upload.size {
            return Err(invalid(format!(
                "the chunk ends at byte {end}, past the announced size {}",
                upload.size
            )));
        }
        if req.offset > upload.committed {
            return Err(ApiError::Conflict(format!(
                "upload {} holds {} bytes: send from byte {}, not {}",
                upload.id, upload.committed, upload.committed, req.offset
            )));
        }
        if end <= upload.committed {
            // A resend of bytes already held.
            return Ok(status(&upload));
        }
        let skip = (upload.committed - req.offset) as usize;
        let data = req.data[skip..].to_vec();
        let (state, id, at) = (self.state.clone(), upload.id.clone(), upload.committed);
        blocking("write the upload", move || {
            state.write_upload_chunk(&id, at, &data)
        })
        .await?;
        let upload = self
            .state
            .store
            .advance_upload(&upload.id, upload.committed, end)?;
        self.state.store.flush().await?;
        Ok(status(&upload))
    }

    async fn commit(&self, req: pb::CommitUploadRequest, user: &str) -> ApiResult<pb::Artifact> {
        id_of_kind("upl", &req.upload_id)?;
        let _writing = self.writing.lock().await;
        let upload = self.state.store.get_upload(&req.upload_id)?;
        owned_by(&upload, user)?;
        if upload.committed != upload.size {
            return Err(ApiError::Conflict(format!(
                "upload {} holds {} of {} bytes: send the rest before committing",
                upload.id, upload.committed, upload.size
            )));
        }
        let (state, id, sha, size) = (
            self.state.clone(),
            upload.id.clone(),
            upload.sha256.clone(),
            upload.size,
        );
        let matches = blocking("check the upload", move || {
            state.publish_upload(&id, &sha, size)
        })
        .await?;
        if !matches {
            self.state.store.remove_upload(&upload.id)?;
            self.state.store.flush().await?;
            return Err(invalid(format!(
                "the uploaded bytes do not hash to {}: nothing was published and the upload \
                 was discarded; upload the file again",
                upload.sha256
            )));
        }
        let artifact = Artifact {
            name: upload.name.clone(),
            sha256: upload.sha256.clone(),
            size: upload.size,
            created_at: Millis::now(),
            uploaded_by: user.to_string(),
        };
        let previous = self.state.store.publish_artifact(&upload.id, &artifact)?;
        self.state.store.flush().await?;
        if let Some(previous) = previous
            && previous.sha256 != artifact.sha256
        {
            self.collect(&previous.sha256).await?;
        }
        self.announce(
            "artifact.uploaded",
            user,
            format!(
                "artifact {}: {} bytes, sha256 {}",
                artifact.name, artifact.size, artifact.sha256
            ),
        );
        self.view(&artifact)
    }

    async fn remove(&self, req: pb::RemoveArtifactRequest, user: &str) -> ApiResult<()> {
        artifact::check_name(&req.name)?;
        let artifact = self.state.store.get_artifact(&req.name)?;
        let users = self.view(&artifact)?.used_by;
        if !users.is_empty() && !req.force {
            return Err(ApiError::Conflict(format!(
                "artifact {} is used by the latest version of tasks {}: update them first, \
                 or remove it with force (their versions keep the content they pinned)",
                req.name,
                users.join(", ")
            )));
        }
        let removed = self.state.store.remove_artifact(&req.name)?;
        self.state.store.flush().await?;
        self.collect(&removed.sha256).await?;
        self.announce(
            "artifact.removed",
            user,
            format!("artifact {}: removed", req.name),
        );
        Ok(())
    }
}

#[tonic::async_trait]
impl Artifacts for ArtifactsApi {
    async fn begin_upload(
        &self,
        request: Request<pb::BeginUploadRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        self.state
            .mutation(request, "Artifacts/BeginUpload", |req| req.name.clone())
            .run(|caller, req| async move { self.begin(req, &caller.user).await })
            .await
            .map(Response::new)
    }

    async fn upload_chunk(
        &self,
        request: Request<pb::UploadChunkRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        // Chunks are not audited one by one: the upload's begin and commit are.
        let caller = self.state.authorize(&request, "Artifacts/UploadChunk")?;
        Ok(Response::new(
            self.append(request.into_inner(), &caller.user).await?,
        ))
    }

    async fn commit_upload(
        &self,
        request: Request<pb::CommitUploadRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        self.state
            .mutation(request, "Artifacts/CommitUpload", |req| {
                req.upload_id.clone()
            })
            .run(|caller, req| async move { self.commit(req, &caller.user).await })
            .await
            .map(Response::new)
    }

    async fn list_puppet_releases(
        &self,
        request: Request<pb::ListPuppetReleasesRequest>,
    ) -> Result<Response<pb::ListPuppetReleasesResponse>, Status> {
        self.state
            .authorize(&request, "Artifacts/ListPuppetReleases")?;
        let served = self.import_served().await?;
        let state = self.state.clone();
        let found = tokio::task::spawn_blocking(move || state.releases())
            .await
            .map_err(|e| ApiError::Internal(format!("cannot list the releases: {e}")))?
            .map_err(ApiError::from)?;
        let releases = found
            .iter()
            .map(|(r, a)| {
                Ok(pb::PuppetRelease {
                    version: r.version.clone(),
                    os: r.os.clone(),
                    arch: r.arch.clone(),
                    artifact: Some(self.view(a)?),
                    served: served
                        .as_ref()
                        .is_some_and(|b| b.release() == *r && b.sha256 == a.sha256),
                })
            })
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListPuppetReleasesResponse {
            releases,
            served_version: served.map(|b| b.version).unwrap_or_default(),
        }))
    }

    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        self.state.authorize(&request, "Artifacts/ListArtifacts")?;
        let artifacts = self
            .state
            .store
            .list_artifacts()
            .map_err(ApiError::from)?
            .iter()
            .map(|a| self.view(a))
            .collect::<ApiResult<_>>()?;
        Ok(Response::new(pb::ListArtifactsResponse { artifacts }))
    }

    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        self.state.authorize(&request, "Artifacts/GetArtifact")?;
        let name = &request.get_ref().name;
        artifact::check_name(name).map_err(ApiError::from)?;
        let a = self
            .state
            .store
            .get_artifact(name)
            .map_err(ApiError::from)?;
        let mut view = self.view(&a)?;
        view.copies = self
            .state
            .store
            .copies_of(&a.sha256)
            .map_err(ApiError::from)?
            .into_iter()
            .map(|c| pb::ArtifactCopy {
                puppet: c.puppet,
                site: c.site,
                held: c.held,
                source: c.source,
                since: Some(ts(c.since)),
                bytes: c.bytes,
                took: Some(super::convert::dur(std::time::Duration::from_millis(
                    c.took_ms,
                ))),
                last_failure: c.last_failure.unwrap_or_default(),
                suspect_until: (c.suspect_until.0 > 0).then(|| ts(c.suspect_until)),
            })
            .collect();
        Ok(Response::new(view))
    }

    async fn remove_artifact(
        &self,
        request: Request<pb::RemoveArtifactRequest>,
    ) -> Result<Response<pb::RemoveArtifactResponse>, Status> {
        self.state
            .mutation(request, "Artifacts/RemoveArtifact", |req| req.name.clone())
            .run(|caller, req| async move { self.remove(req, &caller.user).await })
            .await
            .map(|()| Response::new(pb::RemoveArtifactResponse {}))
    }
}
