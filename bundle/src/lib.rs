//! Bundles: the versioned directory every node loads.
//!
//! A bundle is written once (by `recsys bundle`, later by the trainer) and read by
//! every retrieval node, ranking node and gateway of a cluster:
//!
//! ```text
//! bundle/
//!   manifest.json              version, dimensions, metric, index parameters, shards
//!   catalog.tsv                item id <TAB> name
//!   query_model.safetensors    user embedding table (synthetic bundles), or
//!   query_tower/               a trained query tower (crate::query_tower)
//!   vocab/user_id.txt          row i of the table belongs to line i
//!   shards/shard-N.usearch     one HNSW index per hash shard
//!   ranker/                    ranking model (recsys_model::ranker), when present
//! ```
//!
//! The manifest is written last, so a directory without one is an unfinished build.

pub mod attach_ranker;
pub mod builder;
pub mod catalog;
pub mod error;
pub mod index_params;
pub mod locality;
pub mod manifest;
pub mod query_model;
pub mod query_tower;
pub mod sharding;
pub mod synthetic;
pub mod vectors;

pub use attach_ranker::{AttachedRanker, attach_ranker};
pub use builder::{BuildEvent, BuildOptions, build_bundle};
pub use catalog::Catalog;
pub use error::BundleError;
pub use index_params::{IndexParams, Metric, Quantization};
pub use manifest::{MANIFEST_FILE, Manifest, QueryModelSpec, RankerSpec, ShardEntry};
pub use query_model::{QueryModel, UserTable};
pub use query_tower::{QueryTower, TowerParts, TowerSpec};
pub use sharding::shard_of;
pub use vectors::ItemVectors;
