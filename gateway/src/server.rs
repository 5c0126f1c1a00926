//! `run(listener, config, membership, shutdown)`: the gateway's whole life.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use recsys_discovery::{Membership, VersionOptions};
use recsys_proto::v1::catalog_service_server::CatalogServiceServer;
use recsys_proto::v1::gateway_service_server::GatewayServiceServer;
use recsys_server::admission::{Admission, AdmissionRole, resolve_limit};
use recsys_server::callers::CallerPolicy;
use recsys_server::grpc::{incoming, not_serving_on_shutdown, router_with, set_health};
use recsys_server::limits::ServerLimits;
use recsys_server::tls::ServerAccess;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;

use crate::GatewayError;
use crate::api_keys::{ApiKeyCheck, ApiKeys};
use crate::catalog_service::{Catalog, ItemLogOptions};
use crate::node_channels::NodeChannels;
use crate::node_identity::{NodeTls, NodeTlsFiles};
use crate::service::{Gateway, GatewayShared, RequestPolicy};

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The bundle (manifest, catalog, query model): a version directory, or a
    /// bundle root (on the disk or in an object store) whose versions the
    /// gateway follows (`versions.rs`).
    pub bundle: recsys_bundle::BundleSource,
    /// How the gateway moves between versions. With `item_log` (the cluster's
    /// etcd) it follows the desired version there (`recsys rollout`), else the
    /// bundle root's `CURRENT`.
    pub versions: VersionOptions,
    /// Request tunables.
    pub policy: RequestPolicy,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout: Duration,
    /// How often every node's health is checked.
    pub health_interval: Duration,
    /// Who may call the gateway, and how it talks to its nodes.
    pub security: GatewaySecurity,
    /// Transport limits (HTTP/2 streams per connection).
    pub server_limits: ServerLimits,
    /// Most requests in flight; more are refused with `RESOURCE_EXHAUSTED`
    /// (0: the default per core, `recsys_server::admission`).
    pub max_in_flight: usize,
    /// The change log `CatalogService` appends item changes to (`None`: no etcd,
    /// and the service refuses with `FAILED_PRECONDITION`).
    pub item_log: Option<ItemLogOptions>,
    /// A shares file (`ranker_shares.rs`) overriding the bundle's ranker
    /// variant shares, re-read while the gateway runs.
    pub ranker_shares: Option<PathBuf>,
    /// Where to log what every answer showed (`impression_log.rs`); `None`: no log.
    pub impression_log: Option<crate::impression_log::ImpressionLogOptions>,
}

/// TLS on both sides of the gateway and API keys; the default is plaintext
/// everywhere with reflection, what `recsys demo` on loopback runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewaySecurity {
    /// TLS (and client certificates) on the public listener, and reflection.
    pub access: ServerAccess,
    /// Mutual TLS toward the nodes, each node's certificate checked against its
    /// registration (`node_identity`); `None`: plaintext.
    pub node_tls: Option<NodeTlsFiles>,
    /// File of accepted API key hashes (`api_keys`); `None`: no key asked for.
    pub api_keys: Option<PathBuf>,
    /// File of session token keys (`session`); `None`: a random key of this
    /// gateway's own, so sessions stay with it.
    pub session_keys: Option<PathBuf>,
}

/// Serves the gateway on `listener` until `shutdown` is cancelled, routing by
/// `membership`. Health is `NOT_SERVING` until the bundle is loaded.
pub async fn run(
    listener: TcpListener,
    config: GatewayConfig,
    membership: Arc<dyn Membership>,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    // The public side admits any client certificate of its CA; API keys say who
    // the caller is.
    let (health, router) = router_with(
        &config.security.access,
        &config.server_limits,
        CallerPolicy::any_certificate(),
    )?;
    let node_tls = match &config.security.node_tls {
        Some(files) => Some(Arc::new(NodeTls::load(files)?)),
        None => None,
    };
    let api_keys = match &config.security.api_keys {
        Some(path) => Some(ApiKeys::watch(path, shutdown.clone())?),
        None => None,
    };
    let name = <GatewayServiceServer<Gateway> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;

    let clients = Arc::new(NodeChannels::new(config.connect_timeout).with_tls(node_tls));
    let (bundles, held) = watch::channel(Vec::new());
    // Static nodes say what they serve through `Info`; registered ones in etcd.
    let probed = crate::version_probe::spawn(
        clients.clone(),
        membership.subscribe(),
        config.health_interval.min(Duration::from_millis(500)),
        shutdown.clone(),
    );
    let (routed, views) =
        crate::bundle_filter::spawn(membership.subscribe(), held, probed, shutdown.clone());
    let mut shared = GatewayShared::new(routed.clone(), clients, config.policy);
    shared.views = Some(views.clone());
    if let Some(path) = &config.security.session_keys {
        let keys = crate::watched_file::watch(
            path,
            "session keys",
            crate::session::SessionKeys::parse,
            shutdown.clone(),
        )
        .map_err(|reason| GatewayError::SessionKeys {
            path: path.clone(),
            reason,
        })?;
        shared.sessions = crate::session::SessionKeyring::new(keys, config.policy.session_ttl);
    }
    if let Some(path) = &config.ranker_shares {
        let shares = crate::watched_file::watch(
            path,
            "ranker shares",
            crate::ranker_shares::SharesFile::parse,
            shutdown.clone(),
        )
        .map_err(|reason| GatewayError::RankerShares {
            path: path.clone(),
            reason,
        })?;
        shared.ranker_shares = Some(shares);
    }
    if let Some(options) = &config.impression_log {
        let log = crate::impression_log::ImpressionLog::start(options.clone()).map_err(|e| {
            GatewayError::ImpressionLog {
                path: options.dir.clone(),
                reason: e.to_string(),
            }
        })?;
        shared.impressions = Some(log);
    }
    let shared = Arc::new(shared);

    let (serving, mut serving_now) = watch::channel(false);
    let (health_reporter, health_stop) = (health.clone(), shutdown.clone());
    let (health_versions, mut health_views) = (shared.versions.clone(), views.clone());
    tokio::spawn(async move {
        loop {
            // SERVING once a version is loaded and its view worked out: the
            // view follows the load on another task, and a request between the
            // two would find no node for any shard ("no replica available").
            let loaded = *serving_now.borrow_and_update();
            let routed = health_versions
                .primary_version()
                .is_some_and(|version| health_views.borrow_and_update().holds(&version));
            let status = if loaded && routed {
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
                changed = health_views.changed() => if changed.is_err() { return },
            }
        }
    });
    crate::versions::start(
        shared.versions.clone(),
        config.bundle.clone(),
        config.item_log.clone(),
        config.versions,
        views,
        bundles,
        serving,
        shutdown.clone(),
    )
    .await;
    not_serving_on_shutdown(health, name, shutdown.clone());
    crate::health_check::spawn(
        shared.clients.clone(),
        routed,
        config.health_interval,
        shutdown.clone(),
    );

    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = config.security.access.tls.is_some(),
        node_tls = config.security.node_tls.is_some(),
        api_keys = config.security.api_keys.is_some(),
        "gateway listening"
    );
    let limit = resolve_limit(AdmissionRole::Gateway, config.max_in_flight);
    let admission = Admission::with_mode(name, limit, &[], config.server_limits.admission);
    // Item changes: behind the same API keys, outside admission control (an
    // operator's call, not traffic), and decoded up to twice what one change-log
    // entry may hold so that a call over it is refused by name, not by size.
    let catalog = CatalogServiceServer::new(Catalog::new(
        shared.clone(),
        config.item_log.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(2 * recsys_catalog_log::limits::MAX_ENTRY_BYTES);
    router
        .add_service(InterceptedService::new(
            catalog,
            ApiKeyCheck::new(api_keys.clone()),
        ))
        // The API key is checked before admission, so calls without an accepted
        // key never take a slot from the callers that have one.
        .add_service(InterceptedService::new(
            admission.wrap(
                GatewayServiceServer::new(Gateway::new(shared))
                    .max_decoding_message_size(recsys_proto::limits::recommend_request_max_bytes()),
            ),
            ApiKeyCheck::new(api_keys),
        ))
        .serve_with_incoming_shutdown(incoming(listener), shutdown.cancelled_owned())
        .await?;
    Ok(())
}
