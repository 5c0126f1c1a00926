//! Routes only to nodes of the gateway's own bundle. In etcd every node says which
//! bundle version it serves and into how many shards it is cut; a node of another
//! bundle (a rolling upgrade half done, a node pointed at the wrong directory)
//! would answer from other items or another model, and merging its answer would
//! mix results silently. Such nodes are left out of the view the gateway routes
//! by, logged once each, and counted in `recsys_gateway_mismatched_nodes`;
//! registrations no cluster could route by (impossible shard numbers, refused
//! by `recsys_discovery::check_record` before they size anything) in
//! `recsys_gateway_invalid_registrations`.

use std::sync::Arc;

use recsys_discovery::ClusterView;
use rustc_hash::FxHashSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// What a node must serve to be routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleId {
    /// The bundle's manifest version.
    pub version: String,
    /// The bundle's shard count.
    pub shard_count: u32,
}

/// Follows `membership` and `bundle` until `shutdown`, and returns the view to
/// route by: `membership`'s, minus nodes of another bundle once the gateway's own
/// bundle is known (before that the gateway is not serving anyway).
pub fn spawn(
    mut membership: watch::Receiver<Arc<ClusterView>>,
    mut bundle: watch::Receiver<Option<BundleId>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<ClusterView>> {
    let (sender, routed) = watch::channel(membership.borrow().clone());
    tokio::spawn(async move {
        let mut reported = FxHashSet::default();
        // The loader drops its sender once the bundle is in; the last value stays.
        let mut bundle_open = true;
        loop {
            let view = membership.borrow_and_update().clone();
            metrics::invalid_registrations(view.invalid);
            let own = bundle.borrow_and_update().clone();
            let filtered = match own {
                None => view,
                Some(own) => {
                    let (kept, left_out) = view.for_bundle(&own.version, own.shard_count);
                    let ids: FxHashSet<String> =
                        left_out.iter().map(|n| n.node_id.clone()).collect();
                    for node in left_out.iter().filter(|n| !reported.contains(&n.node_id)) {
                        tracing::warn!(
                            node = %node.node_id,
                            addr = %node.addr,
                            version = %node.bundle_version,
                            shard_count = ?node.shard_count,
                            expected_version = %own.version,
                            expected_shard_count = own.shard_count,
                            "node serves another bundle; not routed to"
                        );
                    }
                    metrics::mismatched_nodes(ids.len());
                    reported = ids;
                    Arc::new(kept)
                }
            };
            sender.send_if_modified(|current| {
                let changed = **current != *filtered;
                if changed {
                    *current = filtered;
                }
                changed
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = membership.changed() => if changed.is_err() { return },
                changed = bundle.changed(), if bundle_open => bundle_open = changed.is_ok(),
            }
        }
    });
    routed
}
