//! A gateway in the test process over a static membership of addresses the test
//! chose (real nodes, misbehaving ones, black holes): the tests' one way to start
//! it, so a new gateway setting is added here once, not in every test file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use recsys_discovery::{StaticMembership, StaticSpec};
use recsys_gateway::{GatewayConfig, RequestPolicy};
use recsys_local_cluster::ServerHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The tests' gateway settings for the bundle in `bundle_dir`: default policy,
/// plaintext, no admission limit beyond the default, a one-second connect
/// timeout, and health checks only every minute, so that a node leaves routing
/// only through a call the test makes. Change fields with struct update syntax.
pub fn gateway_config(bundle_dir: &Path) -> GatewayConfig {
    GatewayConfig {
        bundle: recsys_bundle::BundleSource::at(bundle_dir.to_path_buf()),
        versions: Default::default(),
        policy: RequestPolicy::default(),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(60),
        security: Default::default(),
        server_limits: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
    }
}

/// Starts a gateway with `config` over `shards` (replica addresses per shard) and
/// `ranking` on a free loopback port, and returns its address once it serves;
/// fails the test at once with the gateway's own error if it stops first.
pub async fn serve_static_gateway(
    config: GatewayConfig,
    shards: &[Vec<SocketAddr>],
    ranking: &[SocketAddr],
    token: &CancellationToken,
) -> SocketAddr {
    let text = |addrs: &[SocketAddr]| addrs.iter().map(ToString::to_string).collect();
    let membership = Arc::new(
        StaticMembership::new(&StaticSpec {
            shards: shards.iter().map(|replicas| text(replicas)).collect(),
            ranking: text(ranking),
        })
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serve = recsys_gateway::run(listener, config, membership, token.clone());
    let mut gateway = ServerHandle::spawn("gateway", addr, token.clone(), serve);
    gateway
        .wait_serving(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    addr
}
