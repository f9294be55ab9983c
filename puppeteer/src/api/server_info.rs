//! Admin service over the puppeteer itself. Not implemented yet: the call
//! is authorized, then answered `Unimplemented`.

use geppetto_proto::v1 as pb;
use geppetto_proto::v1::server_server::Server;
use tonic::{Request, Response, Status};

use super::Shared;

#[derive(Debug, Clone)]
pub struct ServerApi {
    state: Shared,
}

impl ServerApi {
    pub fn new(state: Shared) -> Self {
        ServerApi { state }
    }
}

#[tonic::async_trait]
impl Server for ServerApi {
    async fn get_server_info(
        &self,
        request: Request<pb::GetServerInfoRequest>,
    ) -> Result<Response<pb::ServerInfo>, Status> {
        self.state.authorize(&request, "Server/GetServerInfo")?;
        Err(Status::unimplemented("server info is not implemented yet"))
    }
}
