//! Bundles: the versioned, read-only directory every node loads.
//!
//! A bundle is written once (by `recsys-bundle-builder`: `recsys bundle`, the
//! trainer's exports, the synthetic catalogs) and read by every retrieval node,
//! ranking node and gateway of a cluster:
//!
//! ```text
//! bundle/
//!   manifest.json              version, dimensions, metric, index parameters, shards
//!   catalog.tsv                item id <TAB> name
//!   query_model.safetensors    user embedding table (synthetic bundles), or
//!   query_tower/               a trained query tower (crate::query_tower)
//!   vocab/user_id.txt          row i of the table belongs to line i
//!   shards/shard-N.usearch     one HNSW index per hash shard (opened by recsys-index)
//!   ranker/                    ranking model (layout: crate::layout), when present
//!   user_history.bin           each user's items, left out of their answers (crate::user_history)
//!   attributes.tsv             typed item attributes for filters (crate::attributes)
//! ```
//!
//! This crate is the format only: paths, the manifest, the catalog, sharding, the
//! index parameters as plain data and the query model's inference (plain Rust, a
//! few microseconds). It links no index library and no tensor library, so the
//! gateway that reads it stays small. The manifest is written last, so a
//! directory without one is an unfinished build.
//!
//! Versions are immutable and verifiable: the manifest records every other
//! file's size and checksum ([`digest`], checked by [`verify`]), and a bundle
//! root ([`root`]) holds versions side by side with a pointer to the one to serve,
//! on the local disk or in an object store ([`remote`]).

pub mod attributes;
pub mod catalog;
pub mod digest;
pub mod durable;
pub mod error;
pub mod filter;
#[cfg(feature = "flags")]
pub mod flags;
pub mod index_params;
pub mod layout;
pub mod lines;
pub mod manifest;
pub mod query_model;
pub mod query_tower;
pub mod ranker_inputs;
pub mod ranker_variants;
pub mod remote;
pub mod root;
pub mod search_depth;
pub mod sharding;
pub mod user_history;
pub mod varint;
pub mod verify;
pub mod vocabulary;

pub use catalog::Catalog;
pub use digest::FileDigest;
pub use error::BundleError;
pub use index_params::{IndexParams, Metric, Quantization};
pub use layout::{RankerFiles, shard_file};
pub use manifest::{
    FORMAT_VERSION, MANIFEST_FILE, Manifest, QueryModelSpec, RankerSpec, ShardEntry,
};
pub use query_model::{QueryModel, UserEmbeddings};
pub use query_tower::{QueryTower, TowerParts, TowerSpec};
pub use ranker_variants::{DEFAULT_VARIANT, Shares};
pub use remote::{LocatedVersion, RemoteRoot, RemoteSource, VersionPin};
pub use root::{BundleRoot, BundleSource, ResolvedBundle};
pub use search_depth::{DepthRow, SearchDepths};
pub use sharding::shard_of;
pub use verify::{FileSet, VerifyReport, verify_bundle, verify_files};
pub use vocabulary::Vocabulary;
