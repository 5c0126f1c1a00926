//! Active health checks of every node in the cluster view: a node routes only while
//! its `grpc.health.v1` check answers `SERVING` (a node still loading its bundle,
//! draining, or gone answers otherwise or not at all). Failed calls mark a node
//! unhealthy at once (`call_replicas`); these checks are also what bring it back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_discovery::ClusterView;
use rustc_hash::FxHashSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::node_channels::{NodeChannels, NodeHandle};

/// Probes every node of the current view each `interval` until `shutdown`, and
/// whenever the view changes; forgets channels of nodes that left the view.
pub fn spawn(
    clients: Arc<NodeChannels>,
    mut view: watch::Receiver<Arc<ClusterView>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            let current = view.borrow_and_update().clone();
            check_all(&clients, &current, interval).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = view.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
}

/// One round: checks every node of `view` at once and records each verdict.
pub(crate) async fn check_all(clients: &NodeChannels, view: &ClusterView, interval: Duration) {
    let records: Vec<_> = view.shards.iter().flatten().chain(&view.ranking).collect();
    let addrs: FxHashSet<&str> = records.iter().map(|node| node.addr.as_str()).collect();
    clients.retain(&addrs);
    let timeout = interval.min(Duration::from_secs(1));
    let mut checks: FuturesUnordered<_> = records
        .iter()
        .filter_map(|record| clients.node(record).ok())
        .map(|node| async move {
            let verdict = check(&node, timeout).await;
            (node, verdict)
        })
        .collect();
    while let Some((node, verdict)) = checks.next().await {
        if node.set_healthy(verdict.is_ok()) {
            match verdict {
                Ok(()) => {
                    tracing::info!(node = %node.addr, "node passes its health check, routing to it")
                }
                Err(reason) => {
                    tracing::warn!(node = %node.addr, %reason, "node fails its health check, not routing to it")
                }
            }
        }
    }
}

/// `Ok` when the node says `SERVING` within `timeout`.
async fn check(node: &NodeHandle, timeout: Duration) -> Result<(), String> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(timeout);
    let answer = tokio::time::timeout(
        timeout,
        HealthClient::new(node.channel.clone()).check(request),
    )
    .await
    .map_err(|_| "health check timed out".to_string())?
    .map_err(|status| format!("health check failed: {}", status.message()))?;
    match answer.into_inner().status() {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("node reports {}", other.as_str_name())),
    }
}
