//! Running a ranking node: its configuration, loading the ranker off the async
//! workers, and serving until shutdown with a drain.

use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use recsys_bundle::Manifest;
use recsys_discovery::{AnnounceOptions, Announcer, Role, serve_and_drain};
use recsys_model::Ranker;
use recsys_proto::v1::ranking_service_server::RankingServiceServer;
use recsys_server::admission::{Admission, AdmissionRole, resolve_limit};
use recsys_server::grpc::{
    incoming, not_serving_on_shutdown, pool_size, router_with, set_health, spawn_loader,
};
use recsys_server::limits::ServerLimits;
use recsys_server::tls::ServerAccess;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::RankingError;
use crate::batcher::{Batcher, BatcherConfig, Workers};
use crate::error::RankerLoadError;
use crate::item_overlay::ServingRanker;
use crate::service::{LoadState, RankingNodeService};

/// How to run a ranking node.
#[derive(Debug, Clone)]
pub struct RankingConfig {
    /// The bundle directory.
    pub bundle_dir: PathBuf,
    /// Scoring threads, each running one forward pass at a time (0 = one per core).
    pub threads: usize,
    /// Most candidates one forward pass takes from concurrent requests (0 = one
    /// request per pass); see [`batcher`].
    pub max_batch_rows: usize,
    /// Most requests waiting for a scoring thread; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    pub max_queue: usize,
    /// Most candidates waiting for a scoring thread, over all requests; more
    /// are refused with `RESOURCE_EXHAUSTED` (a request alone is always taken).
    pub max_queue_candidates: usize,
    /// Most candidates one `Rank` may carry.
    pub max_candidates: usize,
    /// Score unknown item ids with out-of-vocabulary features instead of refusing them.
    pub allow_unknown_items: bool,
    /// Registration in etcd (`None`: static membership).
    pub announce: Option<AnnounceOptions>,
    /// TLS (and client certificates) on the listener, and reflection.
    pub access: ServerAccess,
    /// Transport limits (HTTP/2 streams per connection).
    pub server_limits: ServerLimits,
    /// Most calls in flight; more are refused with `RESOURCE_EXHAUSTED` (0: the
    /// default per core, `recsys_server::admission`).
    pub max_in_flight: usize,
}

impl RankingConfig {
    /// Defaults for `bundle_dir`: one scoring thread per core, batches of up to
    /// 1024 candidates, 1024 waiting requests holding at most 100 000 candidates
    /// (ten requests of the most candidates, 800 kB of ids), 10 000 candidates
    /// per request, unknown items refused, the admission limit's default.
    pub fn new(bundle_dir: impl Into<PathBuf>) -> Self {
        Self {
            bundle_dir: bundle_dir.into(),
            threads: 0,
            max_batch_rows: 1024,
            max_queue: 1024,
            max_queue_candidates: 100_000,
            max_candidates: recsys_proto::limits::MAX_RETRIEVE_K as usize,
            allow_unknown_items: false,
            announce: None,
            access: ServerAccess::default(),
            server_limits: ServerLimits::default(),
            max_in_flight: 0,
        }
    }
}

/// The ranker, once its files pass their checksums, with the version of the
/// bundle it came in (what the node registers as, so the gateway can tell it
/// apart from nodes of another bundle) and the change-log revision it contains.
fn load(dir: &std::path::Path) -> Result<ServingRanker, RankerLoadError> {
    let manifest = Manifest::load(dir)?;
    // Every file of the ranker directory against its recorded checksum, before
    // candle or the feature readers see a byte: a corrupt file is named here.
    recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Ranker)?;
    let files = manifest
        .ranker_files(dir)
        .ok_or_else(|| RankerLoadError::NoRanker(dir.join(recsys_bundle::MANIFEST_FILE)))?;
    let ranker = Ranker::load(&files)?;
    // Item changes apply on top from the revision the version contains.
    Ok(ServingRanker::new(
        ranker,
        manifest.version,
        manifest.log_revision,
    ))
}

/// How long a scoring thread that died waits before it starts again.
const THREAD_RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Reports `NOT_SERVING` while a scoring thread is missing (it died and waits to
/// be restarted) and `SERVING` again once every thread is back, if the ranker is
/// loaded and shutdown has not begun: a node that cannot score at full strength
/// should not take its full share of traffic.
fn health_follows_workers(
    health: tonic_health::server::HealthReporter,
    name: &'static str,
    mut workers: watch::Receiver<Workers>,
    state: Arc<ArcSwap<LoadState>>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = workers.changed() => if changed.is_err() { return },
            }
            let now = *workers.borrow_and_update();
            // Until the ranker is loaded, the loader reports health.
            if !matches!(state.load().as_ref(), LoadState::Ready(_)) || shutdown.is_cancelled() {
                continue;
            }
            let status = if now.all_alive() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            tracing::info!(
                alive = now.alive,
                threads = now.threads,
                ?status,
                "scoring threads changed"
            );
            set_health(&health, name, status).await;
        }
    });
}

/// Serves ranking on `listener` until `shutdown` is cancelled; with
/// `config.announce`, registers in etcd once the ranker is loaded and drains
/// before stopping.
pub async fn run(
    listener: TcpListener,
    config: RankingConfig,
    shutdown: CancellationToken,
) -> Result<(), RankingError> {
    let (health, router) = router_with(&config.access, &config.server_limits)?;
    let name = <RankingServiceServer<RankingNodeService> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;
    let state = Arc::new(ArcSwap::from_pointee(LoadState::Loading));
    let batcher = Batcher::start(BatcherConfig {
        threads: pool_size(config.threads),
        max_queue: config.max_queue,
        max_queue_candidates: config.max_queue_candidates,
        max_batch_rows: config.max_batch_rows,
        allow_unknown_items: config.allow_unknown_items,
        restart_delay: THREAD_RESTART_DELAY,
    })
    .map_err(RankingError::Threads)?;
    health_follows_workers(
        health.clone(),
        name,
        batcher.workers(),
        state.clone(),
        shutdown.clone(),
    );
    let service = RankingNodeService::new(state.clone(), Arc::new(batcher), &config);

    // Connecting is lazy: an etcd that is away only fails the follower's calls.
    let change_log = match &config.announce {
        Some(etcd) => Some(
            recsys_catalog_log::ChangeLog::connect(&etcd.endpoints, &etcd.cluster)
                .await
                .map_err(RankingError::ChangeLog)?,
        ),
        None => None,
    };
    let follow_shutdown = shutdown.clone();
    let announcer = Announcer::new(config.announce.clone());
    let ready_announcer = announcer.clone();
    let (ready_state, failed_state) = (state.clone(), state.clone());
    let dir = config.bundle_dir.clone();
    spawn_loader(
        health.clone(),
        name,
        shutdown.clone(),
        "ranker",
        move || load(&dir),
        move |serving: ServingRanker| {
            tracing::info!(
                version = serving.ranker().version(),
                bundle_version = serving.bundle_version(),
                items = serving.ranker().items(),
                log_revision = serving.revision(),
                "ranker ready"
            );
            ready_announcer.register(Role::Ranking, None, None, serving.bundle_version());
            let serving = Arc::new(serving);
            // With etcd the node also applies upserted items' features.
            if let Some(log) = change_log {
                crate::item_overlay::follow(log, serving.clone(), follow_shutdown);
            }
            ready_state.store(Arc::new(LoadState::Ready(serving)));
        },
        move |error| failed_state.store(Arc::new(LoadState::Failed(error))),
    );
    not_serving_on_shutdown(health, name, shutdown.clone());

    tracing::info!(addr = ?listener.local_addr().ok(), "ranking node listening");
    let stop = announcer.server_stop(shutdown);
    let limit = resolve_limit(AdmissionRole::Ranking, config.max_in_flight);
    let admission = Admission::new(name, limit, &[]);
    let serve = router
        .add_service(admission.wrap(
            RankingServiceServer::new(service).max_decoding_message_size(
                recsys_proto::limits::rank_request_max_bytes(config.max_candidates),
            ),
        ))
        .serve_with_incoming_shutdown(incoming(listener), stop.clone().cancelled_owned());
    serve_and_drain(&announcer, &stop, serve).await?;
    Ok(())
}
