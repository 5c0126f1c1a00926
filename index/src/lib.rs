//! A shard's item index: the only crate in the workspace that names usearch.
//!
//! The bundle crate describes a shard as plain data (metric, quantization, HNSW
//! parameters, file path); this crate turns that description into a usearch
//! index, either by building one from vectors ([`build_shard`], used by the
//! bundle builder) or by opening a bundle's file for serving ([`ShardIndex`], used
//! by the retrieval node), and converts usearch's distances into the scores every
//! other crate sees (higher is better). Keeping usearch here keeps its C++ build
//! out of the gateway's and the trainer's dependency graphs.

mod build;
mod coded_graph;
mod depth;
mod error;
mod index_reads;
mod live_shard;
mod options;
mod shard_index;
#[cfg(test)]
mod test_bundle;

pub use build::{BuiltShard, ShardProgress, build_shard};
pub use error::SearchError;
pub use live_shard::{
    Applied, AttributeFilter, BLOCK_MAX_SHARE, BLOCK_MIN_ITEMS, ChangeError, FilteredHits,
    ItemChange, LiveShard, LiveStats, POST_FILTER_SHARE, Route, SCAN_FACTOR, ShardAttributes,
    ValueBlocks, scan_instead,
};
pub use options::usearch_options;
pub use shard_index::{Hit, LoadMode, ShardIndex};
