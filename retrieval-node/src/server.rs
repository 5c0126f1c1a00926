//! `run(listener, config, shutdown)`: the node's whole life, shared by the binary,
//! the local cluster and the tests.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use recsys_discovery::{AnnounceOptions, Announcer, Role, serve_and_drain};
use recsys_proto::v1::retrieval_service_server::RetrievalServiceServer;
use recsys_server::admission::{Admission, AdmissionRole, resolve_limit};
use recsys_server::grpc::{
    incoming, not_serving_on_shutdown, pool_size, router_with, set_health, spawn_loader,
};
use recsys_server::limits::ServerLimits;
use recsys_server::tls::ServerAccess;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::service::{LoadState, RetrievalNodeService};
use crate::{LiveShard, LoadMode, NodeError, ShardIndex};

/// Request limits; requests beyond them get `INVALID_ARGUMENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchLimits {
    /// Largest `k` a search may ask for.
    pub max_k: u32,
    /// Most excluded ids one search may carry.
    pub max_exclusions: usize,
    /// Exact searches running at once; more are refused with
    /// `RESOURCE_EXHAUSTED` (0 refuses every one with `FAILED_PRECONDITION`).
    pub max_exact_searches: usize,
}

impl Default for SearchLimits {
    fn default() -> Self {
        Self {
            max_k: recsys_proto::limits::MAX_RETRIEVE_K,
            max_exclusions: recsys_proto::limits::MAX_EXCLUSIONS,
            max_exact_searches: recsys_proto::limits::DEFAULT_MAX_EXACT_SEARCHES,
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
    /// How the shard file is opened.
    pub load_mode: LoadMode,
    /// Registration in etcd (`None`: static membership, nothing to announce).
    pub announce: Option<AnnounceOptions>,
    /// TLS (and client certificates) on the listener, and reflection.
    pub access: ServerAccess,
    /// Transport limits (HTTP/2 streams per connection).
    pub server_limits: ServerLimits,
    /// Most calls in flight; more are refused with `RESOURCE_EXHAUSTED`, except
    /// `Info` (0: the default per core, `recsys_server::admission`).
    pub max_in_flight: usize,
}

/// Checks the shard's file against the manifest's size and checksum, then opens
/// it: a torn, truncated or flipped file is refused here, naming the file, before
/// usearch maps a byte of it. Reading the file through also brings it into the
/// page cache that `view` and `packed` then map.
fn open_verified(
    dir: &std::path::Path,
    shard: u32,
    mode: LoadMode,
) -> Result<LiveShard, recsys_bundle::BundleError> {
    let manifest = recsys_bundle::Manifest::load(dir)?;
    let report = recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Shard(shard))?;
    tracing::info!(
        shard,
        bytes = report.bytes,
        verify_ms = report.elapsed.as_millis() as u64,
        "shard file verified"
    );
    let index = ShardIndex::open_with(dir, shard, mode)?;
    // Changes applied on top start after the revision the version contains.
    LiveShard::new(index, manifest.log_revision).map_err(|e| {
        recsys_bundle::BundleError::index(dir.join(recsys_bundle::shard_file(shard)), e)
    })
}

/// Serves `config.shard` on `listener` until `shutdown` is cancelled; with
/// `config.announce`, registers in etcd once the shard is loaded and drains before
/// stopping (see `recsys_discovery::announce`).
///
/// The server answers health checks at once (`NOT_SERVING`) while the shard loads
/// in the background, and turns `SERVING` when it is mapped. A shard that fails to
/// load keeps the node `NOT_SERVING`; `Info` and `Search` then say which file failed.
pub async fn run(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let (health, router) = router_with(&config.access, &config.server_limits)?;
    let name = <RetrievalServiceServer<RetrievalNodeService> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;

    let state = Arc::new(ArcSwap::from_pointee(LoadState::Loading));
    let threads = pool_size(config.search_threads);
    let (applied, applied_now) = tokio::sync::watch::channel(0);
    // Connecting is lazy without an etcd user: an etcd that is away only fails
    // the calls. With one, the login happens here, and a node started while its
    // etcd is away exits (its supervisor restarts it).
    let change_log = match &config.announce {
        Some(etcd) => {
            Some(recsys_catalog_log::ChangeLog::connect(&etcd.etcd, &etcd.cluster).await?)
        }
        None => None,
    };
    let service = RetrievalNodeService::new(
        state.clone(),
        Arc::new(Semaphore::new(threads)),
        config.limits,
        applied_now,
        change_log.clone(),
    );

    let announcer = Announcer::new(config.announce.clone());
    let (ready_state, failed_state) = (state.clone(), state.clone());
    let ready_announcer = announcer.clone();
    let (bundle_dir, shard, mode) = (config.bundle_dir.clone(), config.shard, config.load_mode);
    // With etcd the node also applies its shard's item changes.
    let (follow_with, follow_shutdown) = (change_log.clone(), shutdown.clone());
    spawn_loader(
        health.clone(),
        name,
        shutdown.clone(),
        "shard",
        move || open_verified(&bundle_dir, shard, mode),
        move |live| {
            let index = live.base();
            tracing::info!(
                shard = index.shard(),
                items = index.items(),
                log_revision = live.revision(),
                mode = ?mode,
                "shard ready"
            );
            ready_announcer.register(
                Role::Retrieval,
                Some(index.shard()),
                Some(index.shard_count()),
                index.bundle_version(),
            );
            let live = Arc::new(live);
            applied.send_replace(live.revision());
            if let Some(follow_with) = &follow_with {
                crate::item_changes::follow(
                    follow_with.clone(),
                    live.clone(),
                    applied.clone(),
                    follow_shutdown.clone(),
                );
            }
            ready_state.store(Arc::new(LoadState::Ready(live)));
        },
        move |error| failed_state.store(Arc::new(LoadState::Failed(error))),
    );
    not_serving_on_shutdown(health, name, shutdown.clone());

    tracing::info!(addr = ?listener.local_addr().ok(), shard = config.shard, "retrieval node listening");
    let stop = announcer.server_stop(shutdown);
    let limit = resolve_limit(AdmissionRole::Retrieval, config.max_in_flight);
    let admission = Admission::with_mode(name, limit, &["Info"], config.server_limits.admission);
    let serve = router
        .add_service(admission.wrap(
            RetrievalServiceServer::new(service).max_decoding_message_size(
                recsys_proto::limits::search_request_max_bytes(config.limits.max_exclusions),
            ),
        ))
        .serve_with_incoming_shutdown(incoming(listener), stop.clone().cancelled_owned());
    serve_and_drain(&announcer, &stop, serve).await?;
    Ok(())
}
