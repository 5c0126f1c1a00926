//! A whole cluster in one process: every shard of a bundle (with any number of
//! replicas), ranking nodes when the bundle has a ranker, and a gateway, each a real gRPC server on its own loopback port, wired
//! by static membership, or by etcd when given one (nodes register, the gateway
//! watches). `recsys demo`, `recsys serve` and the integration tests all start
//! clusters this way, so what the tests exercise is what users run.
//!
//! The same servers as processes of their own, for what only a process shows
//! (`kill -9`, `SIGTERM`, one runtime per server), are [`ServerProcess`]es started
//! from the workspace's binaries ([`workspace_binary`]): the one harness of the
//! integration tests and of `recsys-bench --processes`. It lives here, next to the
//! free port and the health poll it is built on, because both of its users
//! already depend on this crate; a crate of its own would have had to take those
//! two from here, or move them out from under the in-process cluster.

mod binaries;
mod cluster_tls;
mod error;
mod options;
mod process;
mod process_cluster;
mod server_handle;
mod trace_collector;

pub use binaries::{binaries_dir, workspace_binary};
pub use cluster_tls::ClusterTls;
pub use error::ClusterError;
pub use options::{EtcdCluster, LocalClusterOptions};
pub use process::{ServerCommand, ServerProcess};
pub use process_cluster::{ProcessCluster, ProcessOptions};
pub use server_handle::{ServerError, ServerHandle};
pub use trace_collector::{CollectedSpan, TraceCollector};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use recsys_bundle::Manifest;
use recsys_discovery::etcd_auth::ClusterUser;
use recsys_discovery::{EtcdMembership, EtcdOptions, Membership, StaticMembership, StaticSpec};
use recsys_gateway::{GatewayConfig, GatewayError};
use recsys_ranking_node::{RankingConfig, RankingError};
use recsys_retrieval_node::{NodeConfig, NodeError, SearchLimits};
use recsys_server::tls::ClientTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A running cluster.
#[derive(Debug)]
pub struct LocalCluster {
    /// The gateway's address.
    pub gateway_addr: SocketAddr,
    /// The certificates every server uses, when TLS is on.
    pub tls: Option<ClusterTls>,
    /// `nodes[shard][replica]`; a stopped node's slot is `None`.
    nodes: Vec<Vec<Option<ServerHandle<NodeError>>>>,
    /// Ranking nodes; a stopped node's slot is `None`.
    rankers: Vec<Option<ServerHandle<RankingError>>>,
    gateway: ServerHandle<GatewayError>,
    manifest: Manifest,
    /// The directory of the version served at start.
    bundle_dir: PathBuf,
}

/// Binds `addr` and runs one server, called `name`, on it with its own shutdown token.
async fn spawn<E, F, Fut>(
    name: String,
    addr: SocketAddr,
    run: F,
) -> Result<ServerHandle<E>, ClusterError>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: Into<ServerError> + Send + 'static,
{
    let bind_error = |source| ClusterError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let token = CancellationToken::new();
    let server = run(listener, token.clone());
    Ok(ServerHandle::spawn(name, addr, token, server))
}

impl LocalCluster {
    /// Starts every shard, the ranking nodes and the gateway, and returns once all
    /// report SERVING.
    pub async fn start(options: LocalClusterOptions) -> Result<Self, ClusterError> {
        let first = recsys_bundle::BundleSource::at(&options.bundle_dir).resolve()?;
        let manifest = Manifest::load(&first.dir)?;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut nodes = Vec::with_capacity(manifest.shard_count as usize);
        for shard in 0..manifest.shard_count {
            let mut replicas = Vec::with_capacity(options.replicas);
            for replica in 0..options.replicas.max(1) {
                let mut config = NodeConfig {
                    bundle: recsys_bundle::BundleSource::at(&options.bundle_dir),
                    versions: options.versions,
                    shard,
                    search_threads: options.search_threads,
                    limits: SearchLimits::default(),
                    load_mode: options.load_mode,
                    announce: None,
                    access: options.tls.as_ref().map_or_else(Default::default, |tls| {
                        tls.server(&format!("retrieval-shard-{shard}"))
                    }),
                    server_limits: Default::default(),
                    max_in_flight: 0,
                    fold_min_items: recsys_retrieval_node::DEFAULT_FOLD_MIN_ITEMS,
                };
                let name = format!("retrieval node {replica} of shard {shard}");
                let handle = spawn(name, loopback, |listener, token| {
                    config.announce = options.announce(
                        &format!("retrieval-{shard}"),
                        ClusterUser::Retrieval,
                        &listener,
                    );
                    recsys_retrieval_node::run(listener, config, token)
                })
                .await?;
                replicas.push(Some(handle));
            }
            nodes.push(replicas);
        }
        let ranking_nodes = options
            .ranking_nodes
            .unwrap_or(usize::from(manifest.ranker.is_some()));
        let mut rankers = Vec::with_capacity(ranking_nodes);
        for index in 0..ranking_nodes {
            let mut config = RankingConfig::new(&options.bundle_dir);
            config.versions = options.versions;
            if let Some(tls) = &options.tls {
                config.access = tls.server("ranking");
            }
            let handle = spawn(
                format!("ranking node {index}"),
                loopback,
                |listener, token| {
                    config.announce = options.announce("ranking", ClusterUser::Ranking, &listener);
                    recsys_ranking_node::run(listener, config, token)
                },
            )
            .await?;
            rankers.push(Some(handle));
        }
        let node_probe = options.tls.as_ref().map(|tls| tls.client("gateway-client"));
        for handle in nodes.iter_mut().flatten().flatten() {
            handle.probe = node_probe.clone();
            handle.wait_serving(options.ready_timeout).await?;
        }
        for handle in rankers.iter_mut().flatten() {
            handle.probe = node_probe.clone();
            handle.wait_serving(options.ready_timeout).await?;
        }

        let spec = StaticSpec {
            shards: nodes
                .iter()
                .map(|replicas| {
                    replicas
                        .iter()
                        .flatten()
                        .map(|h| h.addr.to_string())
                        .collect()
                })
                .collect(),
            ranking: rankers
                .iter()
                .flatten()
                .map(|h| h.addr.to_string())
                .collect(),
        };
        let membership: Arc<dyn Membership> = match &options.etcd {
            Some(etcd) => Arc::new(EtcdMembership::start(EtcdOptions::new(
                etcd.access_for(ClusterUser::Gateway),
                etcd.cluster.clone(),
            ))),
            None => Arc::new(StaticMembership::new(&spec)?),
        };
        let config = GatewayConfig {
            bundle: recsys_bundle::BundleSource::at(&options.bundle_dir),
            versions: options.versions,
            policy: options.policy,
            connect_timeout: Duration::from_secs(1),
            health_interval: Duration::from_secs(1),
            security: options
                .tls
                .as_ref()
                .map_or_else(Default::default, ClusterTls::gateway),
            server_limits: Default::default(),
            max_in_flight: 0,
            // With etcd, `recsys items` can change the items of the running cluster.
            item_log: options
                .etcd
                .as_ref()
                .map(|etcd| recsys_gateway::ItemLogOptions {
                    etcd: etcd.access_for(ClusterUser::Gateway),
                    cluster: etcd.cluster.clone(),
                    max_apply_lag: recsys_gateway::DEFAULT_MAX_APPLY_LAG,
                }),
            ranker_shares: options.ranker_shares.clone(),
            impression_log: options.impression_log.clone(),
        };
        if options.etcd.is_some() {
            let expected = (manifest.shard_count, spec.ranking.len());
            wait_for_view(membership.as_ref(), expected, options.ready_timeout).await?;
        }
        let mut gateway = spawn("gateway".into(), options.gateway_addr, |listener, token| {
            recsys_gateway::run(listener, config, membership, token)
        })
        .await?;
        gateway.probe = options.tls.as_ref().map(|tls| tls.client("client"));
        gateway.wait_serving(options.ready_timeout).await?;
        Ok(Self {
            gateway_addr: gateway.addr,
            tls: options.tls.clone(),
            nodes,
            rankers,
            gateway,
            manifest,
            bundle_dir: first.dir,
        })
    }

    /// The manifest of the version served at start.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The directory of the version served at start.
    pub fn bundle_dir(&self) -> PathBuf {
        self.bundle_dir.clone()
    }

    /// Address of a retrieval node, if it runs.
    pub fn node_addr(&self, shard: usize, replica: usize) -> Option<SocketAddr> {
        self.nodes
            .get(shard)?
            .get(replica)?
            .as_ref()
            .map(|h| h.addr)
    }

    /// Stops one retrieval node, as a crash of that machine would; its error if it
    /// had failed.
    pub async fn stop_node(&mut self, shard: usize, replica: usize) -> Result<(), ClusterError> {
        match self
            .nodes
            .get_mut(shard)
            .and_then(|replicas| replicas.get_mut(replica))
            .and_then(Option::take)
        {
            Some(handle) => handle.stop().await,
            None => Ok(()),
        }
    }

    /// Address of a ranking node, if it runs.
    pub fn ranking_addr(&self, index: usize) -> Option<SocketAddr> {
        self.rankers.get(index)?.as_ref().map(|h| h.addr)
    }

    /// Ranking nodes started.
    pub fn ranking_nodes(&self) -> usize {
        self.rankers.len()
    }

    /// Stops one ranking node; its error if it had failed.
    pub async fn stop_ranking_node(&mut self, index: usize) -> Result<(), ClusterError> {
        match self.rankers.get_mut(index).and_then(Option::take) {
            Some(handle) => handle.stop().await,
            None => Ok(()),
        }
    }

    /// Fails, naming the server and its error, when a server of the cluster has
    /// ended without being stopped.
    pub async fn check(&mut self) -> Result<(), ClusterError> {
        self.gateway.check().await?;
        for handle in self.nodes.iter_mut().flatten().flatten() {
            handle.check().await?;
        }
        for handle in self.rankers.iter_mut().flatten() {
            handle.check().await?;
        }
        Ok(())
    }

    /// Waits until Ctrl-C or `token` is cancelled, then stops everything.
    pub async fn serve_until(self, token: CancellationToken) -> Result<(), ClusterError> {
        token.cancelled().await;
        self.shutdown().await
    }

    /// Stops the gateway, then every node, and returns the first failure of any
    /// server, during its life or its stop (the others are logged): a test that
    /// ends with this sees a server that died, by name, instead of a timeout.
    pub async fn shutdown(self) -> Result<(), ClusterError> {
        let mut failures = Vec::new();
        failures.extend(self.gateway.stop().await.err());
        for handle in self.nodes.into_iter().flatten().flatten() {
            failures.extend(handle.stop().await.err());
        }
        for handle in self.rankers.into_iter().flatten() {
            failures.extend(handle.stop().await.err());
        }
        let mut failures = failures.into_iter();
        let first = failures.next();
        for error in failures {
            tracing::error!(%error, "server failed");
        }
        first.map_or(Ok(()), Err)
    }
}

/// Waits until `membership` shows every shard with a replica and `ranking` ranking
/// nodes: with etcd, registration follows loading, so SERVING nodes may not be
/// registered yet.
async fn wait_for_view(
    membership: &dyn Membership,
    (shards, ranking): (u32, usize),
    timeout: Duration,
) -> Result<(), ClusterError> {
    let mut view = membership.subscribe();
    let complete = |v: &recsys_discovery::ClusterView| {
        v.shard_count == shards
            && v.shards.iter().all(|replicas| !replicas.is_empty())
            && v.ranking.len() >= ranking
    };
    let waited = tokio::time::timeout(timeout, view.wait_for(|v| complete(v))).await;
    match waited {
        Ok(Ok(_)) => Ok(()),
        _ => Err(ClusterError::MembershipIncomplete {
            shards,
            ranking,
            waited: timeout,
        }),
    }
}

/// A free loopback address for a server started in another process: binds port 0,
/// reads it, lets go. Another process could take it in between; callers' readiness
/// checks then fail loudly rather than hang.
pub fn free_loopback_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Polls `grpc.health.v1` at `addr` until it says SERVING; on failure returns how
/// long it waited and the last answer. Polls rather than sleeps: a node that loads
/// fast is used at once.
pub async fn wait_until_serving(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), (Duration, String)> {
    wait_until_serving_polling(addr, timeout, Duration::from_millis(100)).await
}

/// [`wait_until_serving`] over TLS with `tls` when given.
pub async fn wait_until_serving_with(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    timeout: Duration,
) -> Result<(), (Duration, String)> {
    poll_health(addr, tls, timeout, Duration::from_millis(100)).await
}

/// [`wait_until_serving`] with the longest pause between two polls: the pauses
/// double from 1 ms up to `max_delay`. A benchmark of start-up time passes 1 ms,
/// so that the poll itself adds at most a millisecond to what it measures.
pub async fn wait_until_serving_polling(
    addr: SocketAddr,
    timeout: Duration,
    max_delay: Duration,
) -> Result<(), (Duration, String)> {
    poll_health(addr, None, timeout, max_delay).await
}

async fn poll_health(
    addr: SocketAddr,
    tls: Option<&ClientTls>,
    timeout: Duration,
    max_delay: Duration,
) -> Result<(), (Duration, String)> {
    let started = tokio::time::Instant::now();
    let mut detail = String::from("no answer yet");
    let mut delay = Duration::from_millis(1).min(max_delay);
    while started.elapsed() < timeout {
        match check_health(addr, tls).await {
            Ok(ServingStatus::Serving) => return Ok(()),
            Ok(status) => detail = format!("health is {status:?}"),
            Err(error) => detail = error,
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(max_delay);
    }
    Err((started.elapsed(), detail))
}

async fn check_health(addr: SocketAddr, tls: Option<&ClientTls>) -> Result<ServingStatus, String> {
    let (scheme, tls) = match tls {
        Some(tls) => ("https", Some(tls.load().map_err(|e| e.to_string())?)),
        None => ("http", None),
    };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| format!("health check failed: {}", status.message()))?;
    Ok(response.into_inner().status())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn failing(name: &str) -> ServerHandle<GatewayError> {
        let addr = free_loopback_addr().unwrap();
        ServerHandle::spawn(name, addr, CancellationToken::new(), async {
            Err(GatewayError::NoQueryModel)
        })
    }

    #[tokio::test]
    async fn a_server_that_fails_before_serving_says_why_instead_of_timing_out() {
        let mut server = failing("doomed gateway");
        // A health timeout far longer than the test's: only the task's end can end
        // the wait in time.
        let error = tokio::time::timeout(
            Duration::from_secs(60),
            server.wait_serving(Duration::from_secs(3600)),
        )
        .await
        .expect("the wait ignored that the server had failed")
        .unwrap_err();
        assert!(
            matches!(error, ClusterError::ServerFailed { .. }),
            "{error}"
        );
        let message = error.to_string();
        assert!(message.contains("doomed gateway failed"), "{message}");
        assert!(message.contains("query model"), "{message}");
    }

    #[tokio::test]
    async fn a_failure_surfaces_at_check_and_at_stop() {
        let mut server = failing("checked gateway");
        let error = loop {
            match server.check().await {
                Ok(()) => tokio::task::yield_now().await,
                Err(error) => break error,
            }
        };
        assert!(
            error.to_string().contains("checked gateway failed"),
            "{error}"
        );

        let error = failing("stopped gateway").stop().await.unwrap_err();
        assert!(
            error.to_string().contains("stopped gateway failed"),
            "{error}"
        );

        let addr = free_loopback_addr().unwrap();
        let panicking = ServerHandle::<GatewayError>::spawn(
            "panicking gateway",
            addr,
            CancellationToken::new(),
            async { panic!("boom") },
        );
        let error = panicking.stop().await.unwrap_err();
        assert!(
            matches!(error, ClusterError::ServerPanicked { .. }),
            "{error}"
        );
    }
}
