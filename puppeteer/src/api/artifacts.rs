//! Admin service over artifacts. Not implemented yet: every call is
//! authorized, then answered `Unimplemented`.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::artifacts_server::Artifacts;
use tonic::{Request, Response, Status};

use super::Shared;

#[derive(Debug, Clone)]
pub struct ArtifactsApi {
    state: Shared,
}

impl ArtifactsApi {
    pub fn new(state: Shared) -> Self {
        ArtifactsApi { state }
    }

    fn refuse<T>(&self, request: &Request<T>, rpc: &'static str) -> Status {
        match self.state.authorize(request, rpc) {
            Ok(_) => Status::unimplemented("artifacts are not implemented yet"),
            Err(e) => e.into(),
        }
    }
}

#[tonic::async_trait]
impl Artifacts for ArtifactsApi {
    async fn begin_upload(
        &self,
        request: Request<pb::BeginUploadRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        Err(self.refuse(&request, "Artifacts/BeginUpload"))
    }
    async fn upload_chunk(
        &self,
        request: Request<pb::UploadChunkRequest>,
    ) -> Result<Response<pb::UploadStatus>, Status> {
        Err(self.refuse(&request, "Artifacts/UploadChunk"))
    }
    async fn commit_upload(
        &self,
        request: Request<pb::CommitUploadRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        Err(self.refuse(&request, "Artifacts/CommitUpload"))
    }
    async fn list_artifacts(
        &self,
        request: Request<pb::ListArtifactsRequest>,
    ) -> Result<Response<pb::ListArtifactsResponse>, Status> {
        Err(self.refuse(&request, "Artifacts/ListArtifacts"))
    }
    async fn get_artifact(
        &self,
        request: Request<pb::GetArtifactRequest>,
    ) -> Result<Response<pb::Artifact>, Status> {
        Err(self.refuse(&request, "Artifacts/GetArtifact"))
    }
    async fn remove_artifact(
        &self,
        request: Request<pb::RemoveArtifactRequest>,
    ) -> Result<Response<pb::RemoveArtifactResponse>, Status> {
        Err(self.refuse(&request, "Artifacts/RemoveArtifact"))
    }
}
