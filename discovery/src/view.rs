//! A snapshot of the cluster: replicas of each shard and the ranking pool.
//!
//! Registrations are what anyone with write access to the prefix wrote, so their
//! shard numbers are checked against [`MAX_SHARD_COUNT`] and each other before
//! they size anything: a record claiming `shard_count: 4294967295` once made the
//! view allocate a replica list per claimed shard (issue 18), which left the
//! gateway up but answering nothing.

use tracing::debug;

use crate::{NodeRecord, NodeState, Role};

/// The most shards a registration may claim. The view holds a replica list per
/// shard, so this bounds what a registration can make it allocate (24 KiB); real
/// clusters have tens of shards.
pub const MAX_SHARD_COUNT: u32 = 1024;

/// Why a registration cannot be routed to, whatever bundle the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRecord {
    /// A retrieval node that names no shard.
    #[error("retrieval node without a shard")]
    NoShard,
    /// A shard count of 0 or above [`MAX_SHARD_COUNT`].
    #[error("shard_count {0} is outside 1..={MAX_SHARD_COUNT}")]
    ShardCount(u32),
    /// A shard number not below the node's shard count (or, without one, not
    /// below [`MAX_SHARD_COUNT`]).
    #[error("shard {shard} is not below shard_count {shard_count}")]
    ShardBeyondCount {
        /// The shard claimed.
        shard: u32,
        /// The count it must be below.
        shard_count: u32,
    },
}

/// Checks that `node`'s shard fields can be routed by: a retrieval node names a
/// shard below a shard count in `1..=MAX_SHARD_COUNT`. Ranking nodes have none to check.
pub fn check_record(node: &NodeRecord) -> Result<(), InvalidRecord> {
    if node.role != Role::Retrieval {
        return Ok(());
    }
    let shard = node.shard.ok_or(InvalidRecord::NoShard)?;
    let shard_count = match node.shard_count {
        Some(count) if count == 0 || count > MAX_SHARD_COUNT => {
            return Err(InvalidRecord::ShardCount(count));
        }
        Some(count) => count,
        None => MAX_SHARD_COUNT,
    };
    if shard >= shard_count {
        return Err(InvalidRecord::ShardBeyondCount { shard, shard_count });
    }
    Ok(())
}

/// Routable nodes at one moment, grouped for the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Shards in the cluster's bundle; 0 when no retrieval node is known.
    pub shard_count: u32,
    /// `shards[s]` lists the serving replicas of shard `s`.
    pub shards: Vec<Vec<NodeRecord>>,
    /// Serving ranking nodes.
    pub ranking: Vec<NodeRecord>,
    /// Serving registrations left out because [`check_record`] refused them.
    pub invalid: usize,
}

impl ClusterView {
    /// Groups `nodes` by role and shard, keeping only serving ones that pass
    /// [`check_record`] (the others are skipped before anything is sized by them).
    /// The shard count is the largest `shard_count` any retrieval node reports.
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeRecord>) -> Self {
        let mut invalid = 0;
        let nodes: Vec<NodeRecord> = nodes
            .into_iter()
            .filter(|node| node.state == NodeState::Serving)
            .filter(|node| match check_record(node) {
                Ok(()) => true,
                Err(reason) => {
                    // Sources log bad registrations where they read them (etcd:
                    // once per put); this only keeps them out of the view.
                    debug!(node = %node.node_id, %reason, "node left out of the view");
                    invalid += 1;
                    false
                }
            })
            .collect();
        let shard_count = nodes
            .iter()
            .filter(|node| node.role == Role::Retrieval)
            .filter_map(|node| node.shard_count)
            .max()
            .unwrap_or(0);
        let mut shards = vec![Vec::new(); shard_count as usize];
        let mut ranking = Vec::new();
        for node in nodes {
            match (node.role, node.shard) {
                (Role::Retrieval, Some(shard)) if shard < shard_count => {
                    shards[shard as usize].push(node);
                }
                (Role::Ranking, _) => ranking.push(node),
                _ => {}
            }
        }
        for replicas in &mut shards {
            replicas.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        }
        ranking.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Self {
            shard_count,
            shards,
            ranking,
            invalid,
        }
    }

    /// Every node in the view: the replicas of each shard, then the ranking pool.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.shards.iter().flatten().chain(&self.ranking)
    }

    /// The nodes that serve bundle `version` cut into `shard_count` shards, and
    /// those left out. A node of another bundle would answer from other items or
    /// another model (a rolling upgrade half done, a node pointed at the wrong
    /// directory), so routing to it would mix results silently. A node serving
    /// several versions during a rollout is kept for each of them
    /// ([`NodeRecord::serves_version`]), with the shard count of that version.
    /// Nodes that report no version (static membership) are kept.
    pub fn for_bundle(&self, version: &str, shard_count: u32) -> (Self, Vec<NodeRecord>) {
        let (kept, left_out): (Vec<&NodeRecord>, Vec<&NodeRecord>) =
            self.nodes().partition(|node| {
                let shards_ok = node.role != Role::Retrieval
                    || node
                        .shard_count_of(version)
                        .is_none_or(|count| count == shard_count);
                node.serves_version(version) && shards_ok
            });
        let kept = kept.into_iter().map(|node| {
            let mut node = node.clone();
            if node.role == Role::Retrieval {
                node.shard_count = node.shard_count_of(version);
            }
            node
        });
        let mut view = Self::from_nodes(kept);
        view.invalid = self.invalid;
        (view, left_out.into_iter().cloned().collect())
    }

    /// Whether a gateway may switch to bundle `version` of `shard_count` shards:
    /// every shard has a serving replica of it, and, when the version has a ranker
    /// (`needs_ranking`), so does the ranking pool.
    pub fn can_serve(&self, version: &str, shard_count: u32, needs_ranking: bool) -> bool {
        let (view, _) = self.for_bundle(version, shard_count);
        view.shard_count == shard_count
            && view.shards.iter().all(|replicas| !replicas.is_empty())
            && (!needs_ranking || !view.ranking.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, role: Role, shard: Option<u32>, state: NodeState) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            addr: format!("{id}:1"),
            role,
            shard,
            shard_count: shard.map(|_| 2),
            bundle_version: "v".into(),
            state,
            versions: Vec::new(),
        }
    }

    #[test]
    fn groups_by_shard_and_drops_draining_nodes() {
        let view = ClusterView::from_nodes([
            node("b", Role::Retrieval, Some(0), NodeState::Serving),
            node("a", Role::Retrieval, Some(0), NodeState::Serving),
            node("c", Role::Retrieval, Some(1), NodeState::Draining),
            node("r", Role::Ranking, None, NodeState::Serving),
        ]);
        assert_eq!(view.shard_count, 2);
        let ids: Vec<_> = view.shards[0].iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(view.shards[1].is_empty());
        assert_eq!(view.ranking.len(), 1);
    }

    #[test]
    fn hostile_shard_numbers_never_size_the_view() {
        let mut huge = node("huge", Role::Retrieval, Some(0), NodeState::Serving);
        huge.shard_count = Some(u32::MAX);
        let mut beyond = node("beyond", Role::Retrieval, Some(7), NodeState::Serving);
        beyond.shard_count = Some(2);
        let mut zero = node("zero", Role::Retrieval, Some(0), NodeState::Serving);
        zero.shard_count = Some(0);
        let mut shardless = node("shardless", Role::Retrieval, None, NodeState::Serving);
        shardless.shard_count = Some(2);
        let mut uncounted = node(
            "uncounted",
            Role::Retrieval,
            Some(u32::MAX),
            NodeState::Serving,
        );
        uncounted.shard_count = None;
        assert_eq!(
            check_record(&huge),
            Err(InvalidRecord::ShardCount(u32::MAX))
        );
        assert_eq!(
            check_record(&beyond),
            Err(InvalidRecord::ShardBeyondCount {
                shard: 7,
                shard_count: 2
            })
        );
        assert_eq!(check_record(&zero), Err(InvalidRecord::ShardCount(0)));
        assert_eq!(check_record(&shardless), Err(InvalidRecord::NoShard));
        assert!(matches!(
            check_record(&uncounted),
            Err(InvalidRecord::ShardBeyondCount { .. })
        ));
        let mut largest = node("largest", Role::Retrieval, Some(1), NodeState::Serving);
        largest.shard_count = Some(MAX_SHARD_COUNT);
        assert_eq!(check_record(&largest), Ok(()));

        let view = ClusterView::from_nodes([
            node("a", Role::Retrieval, Some(0), NodeState::Serving),
            huge,
            beyond,
            zero,
            shardless,
            uncounted,
            node("b", Role::Retrieval, Some(1), NodeState::Serving),
            node("r", Role::Ranking, None, NodeState::Serving),
        ]);
        assert_eq!(view.shard_count, 2);
        assert_eq!(view.shards.len(), 2);
        let ids: Vec<_> = view.nodes().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "r"]);
        let (kept, left_out) = view.for_bundle("v", 2);
        assert_eq!(kept, view);
        assert!(left_out.is_empty());
    }

    #[test]
    fn nodes_of_another_bundle_are_left_out() {
        let mut other = node("x", Role::Retrieval, Some(1), NodeState::Serving);
        other.bundle_version = "w".into();
        let mut resharded = node("y", Role::Retrieval, Some(0), NodeState::Serving);
        resharded.shard_count = Some(3);
        let mut unversioned = node("z", Role::Ranking, None, NodeState::Serving);
        unversioned.bundle_version.clear();
        let view = ClusterView::from_nodes([
            node("a", Role::Retrieval, Some(0), NodeState::Serving),
            node("b", Role::Retrieval, Some(1), NodeState::Serving),
            other,
            resharded,
            unversioned,
        ]);
        assert_eq!(view.shard_count, 3);
        let (kept, left_out) = view.for_bundle("v", 2);
        assert_eq!(kept.shard_count, 2);
        let ids: Vec<_> = kept.nodes().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "z"]);
        let ids: Vec<_> = left_out.iter().map(|n| n.node_id.as_str()).collect();
        assert_eq!(ids, ["y", "x"]);
    }
}
