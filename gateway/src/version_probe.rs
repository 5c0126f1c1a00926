//! What the nodes of a static membership serve, asked with `Info`.
//!
//! Nodes in etcd register the versions they serve; nodes in a static list
//! cannot. So that a gateway of a static cluster (`recsys serve --bundle-root`,
//! one machine) also switches versions only once every shard serves the new
//! one, it asks each such node's `Info` every `interval` and keeps the answers
//! by address. Nodes that register their versions are not asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_discovery::{ClusterView, NodeRecord, Role, VersionPhase, VersionState};
use recsys_proto::v1::{
    InfoRequest, InfoResponse, LoadStatus, ranking_service_client::RankingServiceClient,
    retrieval_service_client::RetrievalServiceClient,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::node_channels::NodeChannels;

/// The versions each probed node serves, by address.
pub type Probed = HashMap<String, Vec<VersionState>>;

/// Probes the nodes of `membership` that name no version, every `interval`
/// until `shutdown`.
pub fn spawn(
    clients: Arc<NodeChannels>,
    mut membership: watch::Receiver<Arc<ClusterView>>,
    interval: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<Probed>> {
    let (sender, probed) = watch::channel(Arc::new(Probed::new()));
    tokio::spawn(async move {
        loop {
            let view = membership.borrow_and_update().clone();
            let unversioned: Vec<&NodeRecord> = view
                .nodes()
                .filter(|node| node.versions.is_empty() && node.bundle_version.is_empty())
                .collect();
            if !unversioned.is_empty() {
                let timeout = interval.clamp(Duration::from_millis(100), Duration::from_secs(1));
                let mut asks: FuturesUnordered<_> = unversioned
                    .into_iter()
                    .map(|node| {
                        let clients = clients.clone();
                        async move {
                            let versions = probe(&clients, node, timeout).await;
                            (node.addr.clone(), versions)
                        }
                    })
                    .collect();
                let mut next = Probed::new();
                while let Some((addr, versions)) = asks.next().await {
                    if let Some(versions) = versions {
                        next.insert(addr, versions);
                    }
                }
                sender.send_if_modified(|current| {
                    let changed = **current != next;
                    if changed {
                        *current = Arc::new(next);
                    }
                    changed
                });
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = membership.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    probed
}

/// The node's versions, or `None` when it did not answer.
async fn probe(
    clients: &NodeChannels,
    node: &NodeRecord,
    timeout: Duration,
) -> Option<Vec<VersionState>> {
    let handle = clients.node(node).ok()?;
    let mut request = tonic::Request::new(InfoRequest {});
    request.set_timeout(timeout);
    let answer = match node.role {
        Role::Retrieval => {
            tokio::time::timeout(
                timeout,
                RetrievalServiceClient::new(handle.channel.clone()).info(request),
            )
            .await
        }
        Role::Ranking => {
            tokio::time::timeout(
                timeout,
                RankingServiceClient::new(handle.channel.clone()).info(request),
            )
            .await
        }
    };
    let info = answer.ok()?.ok()?.into_inner();
    Some(versions_of(&info, node.shard_count))
}

/// The versions an `Info` answer lists; a node that predates rollouts lists
/// none, and serves its `bundle_version` when it is serving.
fn versions_of(info: &InfoResponse, shard_count: Option<u32>) -> Vec<VersionState> {
    let phase = |status: i32| match LoadStatus::try_from(status).unwrap_or(LoadStatus::Unspecified)
    {
        LoadStatus::Serving => VersionPhase::Serving,
        LoadStatus::Failed => VersionPhase::Failed,
        LoadStatus::Loading | LoadStatus::Unspecified => VersionPhase::Loading,
    };
    if info.versions.is_empty() {
        if info.bundle_version.is_empty() {
            return Vec::new();
        }
        return vec![VersionState {
            version: info.bundle_version.clone(),
            state: phase(info.load_status),
            error: info.load_error.clone(),
            shard_count,
        }];
    }
    info.versions
        .iter()
        .map(|version| VersionState {
            version: version.version.clone(),
            state: phase(version.load_status),
            error: version.load_error.clone(),
            shard_count: Some(version.shard_count).filter(|&n| n > 0).or(shard_count),
        })
        .collect()
}
