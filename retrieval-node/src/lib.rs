//! Retrieval node: serves one shard of the item-embedding index.
//!
//! The node memory-maps its shard's usearch file from the bundle (`view`, so a
//! 390k-item shard is ready in milliseconds), answers `Search` with the shard-local
//! top-k, and applies exclusions inside the graph traversal so excluded items never
//! take a slot. Searches run on a sized blocking pool, never on the async workers.
//! With etcd, the node follows its shard's part of the item change log and
//! applies upserts and deletes on top of the bundle's shard (a [`LiveShard`]).

mod error;
mod item_changes;
mod metrics;
mod server;
mod service;
pub mod versions;

pub use error::NodeError;
pub use recsys_index::{LiveShard, LoadMode, ShardIndex};
pub use server::{DEFAULT_FOLD_MIN_ITEMS, NodeConfig, SearchLimits, run};
