//! A snapshot of the cluster: replicas of each shard and the ranking pool.

use crate::{NodeRecord, NodeState, Role};

/// Routable nodes at one moment, grouped for the gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// Shards in the cluster's bundle; 0 when no retrieval node is known.
    pub shard_count: u32,
    /// `shards[s]` lists the serving replicas of shard `s`.
    pub shards: Vec<Vec<NodeRecord>>,
    /// Serving ranking nodes.
    pub ranking: Vec<NodeRecord>,
}

impl ClusterView {
    /// Groups `nodes` by role and shard, keeping only serving ones. The shard count is
    /// the largest `shard_count` any retrieval node reports.
    pub fn from_nodes(nodes: impl IntoIterator<Item = NodeRecord>) -> Self {
        let nodes: Vec<NodeRecord> = nodes
            .into_iter()
            .filter(|node| node.state == NodeState::Serving)
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
        }
    }

    /// Every node in the view: the replicas of each shard, then the ranking pool.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.shards.iter().flatten().chain(&self.ranking)
    }

    /// The nodes that serve bundle `version` cut into `shard_count` shards, and
    /// those left out. A node of another bundle would answer from other items or
    /// another model (a rolling upgrade half done, a node pointed at the wrong
    /// directory), so routing to it would mix results silently. Nodes that report
    /// no version (static membership) are kept.
    pub fn for_bundle(&self, version: &str, shard_count: u32) -> (Self, Vec<NodeRecord>) {
        let (kept, left_out): (Vec<&NodeRecord>, Vec<&NodeRecord>) =
            self.nodes().partition(|node| {
                let version_ok = node.bundle_version.is_empty() || node.bundle_version == version;
                let shards_ok = node.role != Role::Retrieval
                    || node.shard_count.is_none_or(|count| count == shard_count);
                version_ok && shards_ok
            });
        (
            Self::from_nodes(kept.into_iter().cloned()),
            left_out.into_iter().cloned().collect(),
        )
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
