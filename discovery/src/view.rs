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
}
