//! Where things are inside a bundle and inside a ranker directory: the one place
//! that spells the paths, so the builder, the trainer's exports, the attach step
//! and the loaders cannot drift apart.

use std::path::{Path, PathBuf};

/// Relative path of shard `shard`'s index inside a bundle.
pub fn shard_file(shard: u32) -> String {
    format!("shards/shard-{shard}.usearch")
}

/// The bundle subdirectory a ranker lives in.
pub const RANKER_DIR: &str = "ranker";

/// A ranker directory's files, relative to it (`tools/tfrs_export` and the trainer
/// write a directory of this shape; [`crate::Manifest::ranker`] names them
/// relative to the bundle once attached).
pub mod ranker_file {
    /// `RankerConfig` JSON: version, network, features in x0 order.
    pub const CONFIG: &str = "config.json";
    /// Embedding tables and DCN-V2 tensors.
    pub const WEIGHTS: &str = "weights.safetensors";
    /// Item-side feature values, one item per line.
    pub const ITEM_FEATURES: &str = "item_features.tsv";
    /// Stored user-side feature values, one user per line (optional).
    pub const USER_FEATURES: &str = "user_features.tsv";
}

/// A feature's vocabulary inside a model directory (a ranker's, the query
/// tower's): line i is the value of embedding row i + 1.
pub fn vocabulary_file(feature: &str) -> String {
    format!("vocab/{feature}.txt")
}

/// Where a ranker's files are, as absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankerFiles {
    /// The directory vocabulary paths in the config are relative to (the bundle,
    /// or the ranker directory itself before it is attached).
    pub bundle_dir: PathBuf,
    /// [`ranker_file::CONFIG`].
    pub config: PathBuf,
    /// [`ranker_file::WEIGHTS`].
    pub weights: PathBuf,
    /// [`ranker_file::ITEM_FEATURES`].
    pub item_features: PathBuf,
    /// [`ranker_file::USER_FEATURES`], when the ranker stores user-side values
    /// (rankers trained on user features do, so that a request needs only the
    /// user id).
    pub user_features: Option<PathBuf>,
}

impl RankerFiles {
    /// The files of a stand-alone ranker directory (what the exporters write),
    /// whose vocabulary paths are relative to `dir`; `user_features` when the file
    /// is there.
    pub fn in_dir(dir: &Path) -> Self {
        let user_features = dir.join(ranker_file::USER_FEATURES);
        Self {
            bundle_dir: dir.to_path_buf(),
            config: dir.join(ranker_file::CONFIG),
            weights: dir.join(ranker_file::WEIGHTS),
            item_features: dir.join(ranker_file::ITEM_FEATURES),
            user_features: user_features.is_file().then_some(user_features),
        }
    }
}
