//! `run(listener, config, shutdown)`: the node's whole life, shared by the binary,
//! the local cluster and the tests.

use std::sync::Arc;

use recsys_discovery::{
    AnnounceOptions, Announcer, GATEWAY_IDENTITY, VersionOptions, VersionSet, serve_and_drain,
};
use recsys_proto::v1::retrieval_service_server::RetrievalServiceServer;
use recsys_server::admission::{Admission, AdmissionRole, resolve_limit};
use recsys_server::callers::CallerPolicy;
use recsys_server::grpc::{incoming, not_serving_on_shutdown, pool_size, router_with, set_health};
use recsys_server::limits::ServerLimits;
use recsys_server::tls::ServerAccess;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::service::RetrievalNodeService;
use crate::{LoadMode, NodeError};

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
    /// The bundle: a version directory, served as it is, or a bundle root (on
    /// the disk or in an object store), whose versions the node follows
    /// (`versions.rs`).
    pub bundle: recsys_bundle::BundleSource,
    /// How the node moves between versions.
    pub versions: VersionOptions,
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
    /// Fold the mutable part into a copy of the base once the change log has
    /// been quiet and the part holds at least this many items (0: never);
    /// [`DEFAULT_FOLD_MIN_ITEMS`].
    pub fold_min_items: usize,
}

/// The mutable part's size from which a node folds it into the base: below a
/// few per cent of a shard the two searches cost little more than one
/// (docs/benchmarks-history.md, "Live shard"), and a fold costs an HNSW insertion per
/// item and a second copy of the shard in memory.
pub const DEFAULT_FOLD_MIN_ITEMS: usize = 10_000;

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
    let name = <RetrievalServiceServer<RetrievalNodeService> as NamedService>::NAME;
    // With client certificates, only the gateway searches: a client certificate of
    // the same CA would otherwise reach the node past the gateway's keys, limits
    // and checks. Health, reflection and `Info` stay open to the cluster's
    // certificates, for probes and operators.
    let callers = CallerPolicy::only(&[GATEWAY_IDENTITY], [format!("/{name}/Info")]);
    let (health, router) = router_with(&config.access, &config.server_limits, callers)?;
    set_health(&health, name, ServingStatus::NotServing).await;

    let versions = Arc::new(VersionSet::new());
    let threads = pool_size(config.search_threads);
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
        versions.clone(),
        Arc::new(Semaphore::new(threads)),
        config.limits,
        change_log.clone(),
    );

    let announcer = Announcer::new(config.announce.clone());
    // Health follows whether some version can answer: NOT_SERVING while the
    // first loads, and while a `--switch replace` node loads the next.
    let (serving, mut serving_now) = tokio::sync::watch::channel(false);
    let (health_reporter, health_stop) = (health.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let status = if *serving_now.borrow_and_update() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if !health_stop.is_cancelled() {
                set_health(&health_reporter, name, status).await;
            }
            tokio::select! {
                () = health_stop.cancelled() => return,
                changed = serving_now.changed() => if changed.is_err() { return },
            }
        }
    });
    crate::versions::start(
        versions,
        crate::versions::VersionsSetup {
            source: config.bundle.clone(),
            shard: config.shard,
            mode: config.load_mode,
            announce: config.announce.clone(),
            announcer: announcer.clone(),
            change_log,
            fold_min_items: config.fold_min_items,
            options: config.versions,
        },
        serving,
        shutdown.clone(),
    )
    .await;
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
