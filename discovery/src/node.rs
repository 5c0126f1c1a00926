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
