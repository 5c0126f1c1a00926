//! Routes only to nodes of a bundle version the gateway holds. In etcd every
//! node says which bundle versions it serves (during a rollout, two) and into
//! how many shards each is cut; a node of another bundle (a rollout not yet
//! there, a node pointed at the wrong directory) would answer from other items
//! or another model, and merging its answer would mix results silently. So
//! the gateway keeps one view per version it holds ([`VersionViews`]): a
//! request picks its version and routes by that version's view only. Nodes of
//! no version the gateway holds are left out, logged once each, and counted
//! in `recsys_gateway_mismatched_nodes`; registrations no cluster could route
//! by (impossible shard numbers, refused by `recsys_discovery::check_record`
//! before they size anything) in `recsys_gateway_invalid_registrations`.
//!
//! Nodes of a static membership name no version. What they serve comes from
//! their `Info` (`version_probe`); until a probe answered, a node is taken to
//! serve the gateway's primary version, as before rollouts existed.

use std::collections::HashMap;
use std::sync::Arc;

use recsys_discovery::{ClusterView, NodeRecord};
use rustc_hash::FxHashSet;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::version_probe::Probed;

/// What a node must serve to be routed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleId {
    /// The bundle's manifest version.
    pub version: String,
    /// The bundle's shard count.
    pub shard_count: u32,
    /// Whether the bundle has a ranker.
    pub has_ranker: bool,
}

/// The view to route by for each version the gateway holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VersionViews {
    by_version: HashMap<String, Arc<ClusterView>>,
}

impl VersionViews {
    /// The nodes that serve `version` (an empty view for a version not held).
    pub fn get(&self, version: &str) -> Arc<ClusterView> {
        self.by_version.get(version).cloned().unwrap_or_default()
    }

    /// Whether the view of `version` has been worked out: until it has, a
    /// request of that version would find no node at all.
    pub fn holds(&self, version: &str) -> bool {
        self.by_version.contains_key(version)
    }
}

/// `node` with what it serves filled in from a probe, or (static membership,
/// not probed yet) taken to be the gateway's primary version.
fn with_versions(node: &NodeRecord, probed: &Probed, primary: &str) -> NodeRecord {
    let mut node = node.clone();
    if node.versions.is_empty() && node.bundle_version.is_empty() {
        match probed.get(&node.addr) {
            Some(versions) if !versions.is_empty() => node.versions = versions.clone(),
            _ => node.bundle_version = primary.to_string(),
        }
    }
    node
}

/// Follows `membership`, the versions the gateway holds (`bundles`, primary
/// first) and the probes until `shutdown`; returns the view of every node
/// routable for some held version (what health checks cover) and the view per
/// version. Before the gateway holds a version the first is the membership's
/// own (the gateway is not serving anyway).
pub fn spawn(
    mut membership: watch::Receiver<Arc<ClusterView>>,
    mut bundles: watch::Receiver<Vec<BundleId>>,
    mut probed: watch::Receiver<Arc<Probed>>,
    shutdown: CancellationToken,
) -> (
    watch::Receiver<Arc<ClusterView>>,
    watch::Receiver<Arc<VersionViews>>,
) {
    let (all_sender, all) = watch::channel(membership.borrow().clone());
    let (views_sender, views) = watch::channel(Arc::new(VersionViews::default()));
    tokio::spawn(async move {
        let mut reported = FxHashSet::default();
        let (mut bundles_open, mut probed_open) = (true, true);
        loop {
            let view = membership.borrow_and_update().clone();
            metrics::invalid_registrations(view.invalid);
            let own = bundles.borrow_and_update().clone();
            let probes = probed.borrow_and_update().clone();
            if let Some(primary) = own.first() {
                let nodes: Vec<NodeRecord> = view
                    .nodes()
                    .map(|node| with_versions(node, &probes, &primary.version))
                    .collect();
                let enriched = ClusterView {
                    invalid: view.invalid,
                    ..ClusterView::from_nodes(nodes)
                };
                let mut by_version = HashMap::new();
                let mut routable: FxHashSet<String> = FxHashSet::default();
                let mut kept_nodes = Vec::new();
                for bundle in &own {
                    let (kept, _) = enriched.for_bundle(&bundle.version, bundle.shard_count);
                    for node in kept.nodes() {
                        if routable.insert(node.node_id.clone()) {
                            kept_nodes.push(node.clone());
                        }
                    }
                    by_version.insert(bundle.version.clone(), Arc::new(kept));
                }
                let left_out: Vec<&NodeRecord> = enriched
                    .nodes()
                    .filter(|node| !routable.contains(&node.node_id))
                    .collect();
                for node in left_out.iter().filter(|n| !reported.contains(&n.node_id)) {
                    tracing::warn!(
                        node = %node.node_id,
                        addr = %node.addr,
                        version = %node.bundle_version,
                        shard_count = ?node.shard_count,
                        expected_version = %primary.version,
                        expected_shard_count = primary.shard_count,
                        "node serves no bundle version this gateway holds; not routed to"
                    );
                }
                metrics::mismatched_nodes(left_out.len());
                reported = left_out.iter().map(|n| n.node_id.clone()).collect();
                let all_view = Arc::new(ClusterView {
                    invalid: view.invalid,
                    ..ClusterView::from_nodes(kept_nodes)
                });
                all_sender.send_if_modified(|current| replace(current, all_view));
                let views = Arc::new(VersionViews { by_version });
                views_sender.send_if_modified(|current| replace(current, views));
            } else {
                all_sender.send_if_modified(|current| replace(current, view));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = membership.changed() => if changed.is_err() { return },
                changed = bundles.changed(), if bundles_open => bundles_open = changed.is_ok(),
                changed = probed.changed(), if probed_open => probed_open = changed.is_ok(),
            }
        }
    });
    (all, views)
}

fn replace<T: PartialEq>(current: &mut Arc<T>, next: Arc<T>) -> bool {
    let changed = **current != *next;
    if changed {
        *current = next;
    }
    changed
}
