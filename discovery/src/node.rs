//! One node as membership knows it; the JSON value stored in etcd.

use serde::{Deserialize, Serialize};

use crate::VersionState;

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
    /// Every bundle version the node holds (loading, serving or failed), when it
    /// serves several during a rollout; empty from nodes that predate rollouts,
    /// which serve `bundle_version` alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<VersionState>,
}

impl NodeRecord {
    /// Whether the node answers requests for bundle `version`: one of its
    /// `versions` serving, or (older records) its `bundle_version`; a node that
    /// names no version at all (static membership) is taken to serve any.
    pub fn serves_version(&self, version: &str) -> bool {
        if self.versions.is_empty() {
            self.bundle_version.is_empty() || self.bundle_version == version
        } else {
            self.versions.iter().any(|state| state.serves(version))
        }
    }

    /// The shard count the node serves `version` with: the version's own when
    /// it says, else the record's.
    pub fn shard_count_of(&self, version: &str) -> Option<u32> {
        self.versions
            .iter()
            .find(|state| state.version == version)
            .and_then(|state| state.shard_count)
            .or(self.shard_count)
    }
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
