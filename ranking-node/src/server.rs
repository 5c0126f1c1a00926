//! Running a ranking node: its configuration, loading the ranker off the async
//! workers, and serving until shutdown with a drain.

use std::sync::Arc;

use recsys_discovery::{
    AnnounceOptions, Announcer, GATEWAY_IDENTITY, VersionOptions, VersionSet, serve_and_drain,
};
use recsys_proto::v1::ranking_service_server::RankingServiceServer;
use recsys_server::admission::{Admission, AdmissionRole, resolve_limit};
use recsys_server::callers::CallerPolicy;
use recsys_server::grpc::{incoming, not_serving_on_shutdown, pool_size, router_with, set_health};
use recsys_server::limits::ServerLimits;
use recsys_server::tls::ServerAccess;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

use crate::RankingError;
use crate::batcher::{Batcher, BatcherConfig, Workers};
use crate::service::RankingNodeService;

/// How to run a ranking node.
#[derive(Debug, Clone)]
pub struct RankingConfig {
    /// The bundle: a version directory, or a bundle root (on the disk or in
    /// an object store) whose versions the node follows (`versions.rs`).
    pub bundle: recsys_bundle::BundleSource,
    /// How the node moves between versions.
    pub versions: VersionOptions,
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
    /// Defaults for `bundle` (a path: [`recsys_bundle::BundleSource::at`]): one scoring thread per core, batches of up to
    /// 1024 candidates, 1024 waiting requests holding at most 100 000 candidates
    /// (ten requests of the most candidates, 800 kB of ids), 10 000 candidates
    /// per request, unknown items refused, the admission limit's default.
    pub fn new(bundle: impl Into<recsys_bundle::BundleSource>) -> Self {
        Self {
            bundle: bundle.into(),
            versions: VersionOptions::default(),
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

/// How long a scoring thread that died waits before it starts again.
const THREAD_RESTART_DELAY: std::time::Duration = std::time::Duration::from_millis(100);

/// Reports `SERVING` while a ranker is loaded and every scoring thread runs,
/// `NOT_SERVING` otherwise (while the first version loads, while a
/// `--switch replace` node loads the next, and while a scoring thread that died
/// waits to be restarted: a node that cannot score at full strength should not
/// take its full share of traffic), until shutdown.
fn health_follows(
    health: tonic_health::server::HealthReporter,
    name: &'static str,
    mut workers: watch::Receiver<Workers>,
    mut serving: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut last = None;
        loop {
            let threads = *workers.borrow_and_update();
            let loaded = *serving.borrow_and_update();
            let status = if loaded && threads.all_alive() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            if last != Some(status) && !shutdown.is_cancelled() {
                if last.is_some() {
                    tracing::info!(
                        alive = threads.alive,
                        threads = threads.threads,
                        loaded,
                        ?status,
                        "ranking node health changed"
                    );
                }
                set_health(&health, name, status).await;
                last = Some(status);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = workers.changed() => if changed.is_err() { return },
                changed = serving.changed() => if changed.is_err() { return },
            }
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
    let name = <RankingServiceServer<RankingNodeService> as NamedService>::NAME;
    // With client certificates, only the gateway ranks: a client certificate of
    // the same CA would otherwise reach the node past the gateway's keys, limits
    // and checks. Health, reflection and `Info` stay open to the cluster's
    // certificates, for probes and operators.
    let callers = CallerPolicy::only(&[GATEWAY_IDENTITY], [format!("/{name}/Info")]);
    let (health, router) = router_with(&config.access, &config.server_limits, callers)?;
    set_health(&health, name, ServingStatus::NotServing).await;
    let versions = Arc::new(VersionSet::new());
    let batcher = Batcher::start(BatcherConfig {
        threads: pool_size(config.threads),
        max_queue: config.max_queue,
        max_queue_candidates: config.max_queue_candidates,
        max_batch_rows: config.max_batch_rows,
        allow_unknown_items: config.allow_unknown_items,
        restart_delay: THREAD_RESTART_DELAY,
    })
    .map_err(RankingError::Threads)?;
    let (serving, serving_now) = watch::channel(false);
    health_follows(
        health.clone(),
        name,
        batcher.workers(),
        serving_now,
        shutdown.clone(),
    );
    let service = RankingNodeService::new(versions.clone(), Arc::new(batcher), &config);

    // With etcd, every loaded version applies upserted items' features from the
    // change log (`item_overlay.rs`). Connecting is lazy without an etcd user:
    // an etcd that is away only fails the followers' calls.
    let change_log = match &config.announce {
        Some(etcd) => Some(
            recsys_catalog_log::ChangeLog::connect(&etcd.etcd, &etcd.cluster)
                .await
                .map_err(RankingError::ChangeLog)?,
        ),
        None => None,
    };
    let announcer = Announcer::new(config.announce.clone());
    crate::versions::start(
        versions,
        config.bundle.clone(),
        config.announce.clone(),
        announcer.clone(),
        change_log,
        config.versions,
        serving,
        shutdown.clone(),
    )
    .await;
    not_serving_on_shutdown(health, name, shutdown.clone());

    tracing::info!(addr = ?listener.local_addr().ok(), "ranking node listening");
    let stop = announcer.server_stop(shutdown);
    let limit = resolve_limit(AdmissionRole::Ranking, config.max_in_flight);
    let admission = Admission::with_mode(name, limit, &["Info"], config.server_limits.admission);
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
