//! Ranking node: scores retrieval candidates for one user.
//!
//! The service, its health and its place in the cluster exist now so clients and
//! deployments can be written against the final protocol. The DCN-V2 scorer lands
//! with the ranking issue; until then the node reports `NOT_SERVING` and `Rank`
//! answers `UNIMPLEMENTED` saying so, and the gateway returns retrieval order
//! (`ranked: false`).

use recsys_proto::v1::{
    RankRequest, RankResponse,
    ranking_service_server::{RankingService, RankingServiceServer},
};
use recsys_server::grpc::{incoming, set_health, standard_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

/// Errors of running the ranking node.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] recsys_server::grpc::ReflectionError),
}

/// The ranking service before a model exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoModel;

#[tonic::async_trait]
impl RankingService for NoModel {
    async fn rank(&self, _request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        Err(Status::unimplemented(
            "this build has no ranking model yet (DCN-V2 arrives with the ranking stage)",
        ))
    }
}

/// Serves the ranking service on `listener` until `shutdown` is cancelled.
pub async fn run(listener: TcpListener, shutdown: CancellationToken) -> Result<(), RankingError> {
    let (health, router) = standard_router()?;
    let name = <RankingServiceServer<NoModel> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;
    tracing::info!(addr = ?listener.local_addr().ok(), "ranking node listening (no model: not serving)");
    router
        .add_service(RankingServiceServer::new(NoModel))
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
