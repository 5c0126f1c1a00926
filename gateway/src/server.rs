//! `run(listener, config, membership, shutdown)`: the gateway's whole life.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use recsys_discovery::Membership;
use recsys_proto::v1::gateway_service_server::GatewayServiceServer;
use recsys_server::grpc::{incoming, set_health, standard_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::GatewayError;
use crate::bundle_state::BundleState;
use crate::node_channels::NodeChannels;
use crate::service::{Gateway, GatewayShared, RequestPolicy};

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The bundle directory (manifest, catalog, query model).
    pub bundle_dir: PathBuf,
    /// Request tunables.
    pub policy: RequestPolicy,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout: Duration,
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, routing by
/// `membership`. Health is `NOT_SERVING` until the bundle is loaded.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    membership: Arc<dyn Membership>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let (health, router) = standard_router()?;
    let name = <GatewayServiceServer<Gateway> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;

    let shared = Arc::new(GatewayShared {
        bundle: ArcSwapOption::empty(),
        view: membership.subscribe(),
        clients: NodeChannels::new(config.connect_timeout),
        policy: config.policy,
    });

    let loader = shared.clone();
    let loader_health = health.clone();
    let bundle_dir = config.bundle_dir.clone();
    let loading_shutdown = shutdown.clone();
    tokio::spawn(async move {
        match tokio::task::spawn_blocking(move || BundleState::load(&bundle_dir)).await {
            Ok(Ok(state)) => {
                tracing::info!(
                    version = %state.manifest.version,
                    shards = state.manifest.shard_count,
                    users = state.users.as_ref().map_or(0, |u| u.len()),
                    "gateway bundle loaded"
                );
                loader.bundle.store(Some(Arc::new(state)));
                if !loading_shutdown.is_cancelled() {
                    set_health(&loader_health, name, ServingStatus::Serving).await;
                }
            }
            Ok(Err(error)) => tracing::error!(%error, "gateway bundle failed to load"),
            Err(error) => tracing::error!(%error, "gateway bundle loader panicked"),
        }
    });

    let stop = shutdown.clone();
    let stop_health = health.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        set_health(&stop_health, name, ServingStatus::NotServing).await;
    });

    tracing::info!(addr = ?listener.local_addr().ok(), "gateway listening");
    router
        .add_service(GatewayServiceServer::new(Gateway::new(shared)))
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
