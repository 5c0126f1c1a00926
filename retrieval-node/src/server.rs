//! `run(listener, config, shutdown)`: the node's whole life, shared by the binary,
//! the local cluster and the tests.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use recsys_proto::v1::retrieval_service_server::RetrievalServiceServer;
use recsys_server::grpc::{incoming, set_health, standard_router};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::service::{LoadState, RetrievalNodeService};
use crate::{NodeError, ShardIndex};

/// Request limits; requests beyond them get `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// Largest `k` a search may ask for.
    pub max_k: u32,
    /// Most excluded ids one search may carry.
    pub max_exclusions: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self {
            max_k: 10_000,
            max_exclusions: 100_000,
        }
    }
}

/// How to run a retrieval node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The bundle directory.
    pub bundle_dir: PathBuf,
    /// The shard to serve.
    pub shard: u32,
    /// Searches running at once; more wait. 0 means one per core.
    pub search_threads: usize,
    /// Request limits.
    pub limits: SearchLimits,
}

/// Serves `config.shard` on `listener` until `shutdown` is cancelled.
///
/// The server answers health checks at once (`NOT_SERVING`) while the shard loads
/// in the background, and turns `SERVING` when it is mapped. A shard that fails to
/// load keeps the node `NOT_SERVING`; `Info` and `Search` then say which file failed.
pub async fn run(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let (health, router) = standard_router()?;
    let name = <RetrievalServiceServer<RetrievalNodeService> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;

    let state = Arc::new(ArcSwap::from_pointee(LoadState::Loading));
    let threads = if config.search_threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        config.search_threads
    };
    let service = RetrievalNodeService::new(
        state.clone(),
        Arc::new(Semaphore::new(threads)),
        config.limits,
    );

    let loader_health = health.clone();
    let loader_state = state.clone();
    let (bundle_dir, shard) = (config.bundle_dir.clone(), config.shard);
    let loading_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let loaded =
            tokio::task::spawn_blocking(move || ShardIndex::open(&bundle_dir, shard)).await;
        match loaded {
            Ok(Ok(index)) => {
                tracing::info!(
                    shard = index.shard(),
                    items = index.items(),
                    load_ms = started.elapsed().as_millis() as u64,
                    "shard loaded"
                );
                loader_state.store(Arc::new(LoadState::Ready(Arc::new(index))));
                if !loading_shutdown.is_cancelled() {
                    set_health(&loader_health, name, ServingStatus::Serving).await;
                }
            }
            Ok(Err(error)) => {
                tracing::error!(shard, %error, "shard failed to load");
                loader_state.store(Arc::new(LoadState::Failed(error.to_string())));
            }
            Err(error) => {
                tracing::error!(shard, %error, "shard loader panicked");
                loader_state.store(Arc::new(LoadState::Failed(format!(
                    "loader failed: {error}"
                ))));
            }
        }
    });

    let stop = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        set_health(&health, name, ServingStatus::NotServing).await;
    });

    tracing::info!(addr = ?listener.local_addr().ok(), shard = config.shard, "retrieval node listening");
    router
        .add_service(RetrievalServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
