//! One node as membership knows it; the JSON value stored in etcd.

use serde::{Deserialize, Serialize};

/// What a node does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Serves one shard of the item index.
    Retrieval,
    /// Scores candidates.
    Ranking,
}

impl Role {
    /// The lowercase name used in JSON and in etcd keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retrieval => "retrieval",
            Self::Ranking => "ranking",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a node takes new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Takes requests.
    Serving,
    /// Finishing in-flight work before it stops; route nothing new to it.
    Draining,
}

/// A node's registration: `{addr, role, shard, shard_count, bundle_version, state}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Unique within the cluster.
    pub node_id: String,
    /// `host:port` of its gRPC server.
    pub addr: String,
    /// What it does.
    pub role: Role,
    /// The shard it serves (retrieval nodes).
    pub shard: Option<u32>,
    /// Shards in its bundle (retrieval nodes).
    pub shard_count: Option<u32>,
    /// Version of the bundle it loaded; empty when not known.
    pub bundle_version: String,
    /// Whether to route to it.
    pub state: NodeState,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_match_json() {
        for role in [Role::Retrieval, Role::Ranking] {
            let json = serde_json::to_string(&role).unwrap();
            assert_eq!(json, format!("\"{}\"", role.as_str()));
        }
    }
}
