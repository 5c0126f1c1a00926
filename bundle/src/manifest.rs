//! `manifest.json`: what a bundle holds and how its index was built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{RANKER_DIR, RankerFiles, ranker_file};
use crate::search_depth::SearchDepths;
use crate::{BundleError, FileDigest, IndexParams};

/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The format version this build reads and writes; bumped on incompatible changes.
/// The checksums (`files`) did not bump it: an older reader ignores the field, and
/// this one reads an older manifest (without it) but refuses to serve from it
/// ([`crate::verify`]).
pub const FORMAT_VERSION: u32 = 1;

/// One hash shard of the item index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard number, `0..shard_count`.
    pub shard: u32,
    /// Path of the usearch file relative to the bundle directory.
    pub file: String,
    /// Items in the shard.
    pub items: u64,
    /// The beams that reached each recall target on this shard, measured by
    /// the builder ([`crate::search_depth`]); absent in bundles built before
    /// it, whose searches use [`IndexParams::expansion_search`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search_depths: Option<SearchDepths>,
}

/// How the gateway turns a `user_id` into a query embedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueryModelSpec {
    /// A stored table of user embeddings (one row per known user): synthetic
    /// bundles, and embeddings computed elsewhere.
    EmbeddingTable {
        /// safetensors file holding the table.
        file: String,
        /// Name of the `[users, dimensions]` f32 tensor in it.
        tensor: String,
        /// Vocabulary file: line i is the user id of row i.
        vocabulary: String,
    },
    /// A trained query tower (`crate::query_tower`): user id and user feature
    /// embeddings summed, then optional dense layers; unknown users fall back to
    /// out-of-vocabulary rows.
    Tower(crate::query_tower::TowerSpec),
}

/// The ranking model's files, relative to the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RankerSpec {
    /// `RankerConfig` JSON.
    pub config: String,
    /// safetensors weights.
    pub weights: String,
    /// Item feature table.
    pub item_features: String,
    /// Stored user-side feature values (`user_features.tsv`), absent in rankers
    /// that take user features from the request only (and in older manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_features: Option<String>,
}

impl RankerSpec {
    /// The spec of a ranker directory attached under the bundle's
    /// [`RANKER_DIR`], with or without stored user features.
    pub fn attached(user_features: bool) -> Self {
        Self::attached_in(RANKER_DIR, user_features)
    }

    /// The spec of a ranker directory attached at `dir` (relative to the
    /// bundle: [`RANKER_DIR`], or a variant's directory).
    pub fn attached_in(dir: &str, user_features: bool) -> Self {
        let path = |file: &str| format!("{dir}/{file}");
        Self {
            config: path(ranker_file::CONFIG),
            weights: path(ranker_file::WEIGHTS),
            item_features: path(ranker_file::ITEM_FEATURES),
            user_features: user_features.then(|| path(ranker_file::USER_FEATURES)),
        }
    }

    /// The files as absolute paths inside the bundle at `dir`.
    pub fn files(&self, dir: &Path) -> RankerFiles {
        RankerFiles {
            bundle_dir: dir.to_path_buf(),
            config: dir.join(&self.config),
            weights: dir.join(&self.weights),
            item_features: dir.join(&self.item_features),
            user_features: self.user_features.as_ref().map(|path| dir.join(path)),
        }
    }
}

/// The content of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bundle format, [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Version of this bundle's content; nodes report it so mixed versions are visible.
    pub version: String,
    /// Embedding dimensions of items and queries.
    pub dimensions: usize,
    /// HNSW and metric parameters, the same for every shard.
    pub index: IndexParams,
    /// Number of hash shards.
    pub shard_count: u32,
    /// The shards, in shard order.
    pub shards: Vec<ShardEntry>,
    /// Items in all shards.
    pub items: u64,
    /// Item names, relative path; absent when items have no names.
    pub catalog: Option<String>,
    /// The query model, absent when only raw query embeddings are accepted.
    pub query_model: Option<QueryModelSpec>,
    /// The ranking model, absent when the bundle only supports retrieval.
    #[serde(default)]
    pub ranker: Option<RankerSpec>,
    /// Where the items came from (`synthetic`, a file name), for people reading the bundle.
    pub source: String,
    /// Every other file of the bundle (paths relative to it, `/`-separated) with
    /// its size and checksum; written last by the builder (`seal`), checked by
    /// `recsys bundle verify` and by every node before it loads a file. Empty in
    /// manifests written before bundles were checksummed; nodes refuse those.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, FileDigest>,
    /// The revision of the cluster's item change log (`recsys-catalog-log`) this
    /// version already contains: nodes serving it apply the log's entries after
    /// it. 0 for a version built from a base alone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_revision: u64,
    /// What each user already has (`crate::user_history`), left out of their
    /// answers by default; absent in bundles built without interactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_history: Option<String>,
    /// Typed item attributes (`crate::attributes`), which filters and
    /// diversity caps read; absent in bundles built without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<String>,
    /// Further rankers by variant name (`crate::ranker_variants`), each under
    /// `rankers/{name}/`; the bundle's own ranker is the variant `default`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ranker_variants: BTreeMap<String, RankerSpec>,
    /// Traffic share of each variant (weights by name, `default` included);
    /// empty: everything to the default. A gateway's `--ranker-shares` file
    /// overrides them while it runs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ranker_shares: BTreeMap<String, f64>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Manifest {
    /// Reads and checks `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| BundleError::io(&path, e))?;
        Self::parse(&text, &path)
    }

    /// Parses and checks a manifest's text; errors name `origin` (the file,
    /// or the object it was read from).
    pub fn parse(text: &str, origin: &Path) -> Result<Self, BundleError> {
        let manifest: Manifest = serde_json::from_str(text)
            .map_err(|e| BundleError::corrupt(origin, format!("not a valid manifest: {e}")))?;
        manifest.validate(origin)?;
        Ok(manifest)
    }

    /// Writes `dir/manifest.json` through a flushed temporary file and a rename,
    /// so readers never see half of it, even after a crash.
    pub fn save(&self, dir: &Path) -> Result<(), BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BundleError::corrupt(&path, format!("cannot encode manifest: {e}")))?;
        crate::durable::write_atomic(&path, (text + "\n").as_bytes())
    }

    /// Every file the manifest names (shards, catalog, query model, ranker),
    /// relative to the bundle: each must be listed in [`Manifest::files`].
    /// The ranker's and the query tower's vocabularies are named inside their
    /// configs, and are covered by the checks of their directories instead.
    pub fn referenced_files(&self) -> Vec<String> {
        let mut files: Vec<String> = self.shards.iter().map(|s| s.file.clone()).collect();
        files.extend(self.catalog.iter().cloned());
        files.extend(self.user_history.iter().cloned());
        files.extend(self.attributes.iter().cloned());
        match &self.query_model {
            Some(QueryModelSpec::EmbeddingTable {
                file, vocabulary, ..
            }) => files.extend([file.clone(), vocabulary.clone()]),
            Some(QueryModelSpec::Tower(tower)) => {
                files.push(tower.weights.clone());
                files.extend(tower.features.iter().map(|f| f.vocabulary.clone()));
                files.extend(tower.users.iter().cloned());
            }
            None => {}
        }
        for ranker in self.ranker.iter().chain(self.ranker_variants.values()) {
            files.extend([
                ranker.config.clone(),
                ranker.weights.clone(),
                ranker.item_features.clone(),
            ]);
            files.extend(ranker.user_features.iter().cloned());
        }
        files
    }

    /// The shard entry for `shard`.
    pub fn shard(&self, shard: u32) -> Option<&ShardEntry> {
        self.shards.iter().find(|entry| entry.shard == shard)
    }

    /// The ranker's files as absolute paths, when the bundle has a ranker.
    pub fn ranker_files(&self, dir: &Path) -> Option<RankerFiles> {
        self.ranker.as_ref().map(|spec| spec.files(dir))
    }

    /// Absolute path of a file named in the manifest.
    pub fn resolve(dir: &Path, relative: &str) -> PathBuf {
        dir.join(relative)
    }

    fn validate(&self, path: &Path) -> Result<(), BundleError> {
        let fail = |reason: String| Err(BundleError::corrupt(path, reason));
        if self.format_version != FORMAT_VERSION {
            return fail(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.dimensions == 0 {
            return fail("dimensions must be positive".into());
        }
        if self.shard_count == 0 || self.shards.len() != self.shard_count as usize {
            return fail(format!(
                "shard_count is {} but {} shards are listed",
                self.shard_count,
                self.shards.len()
            ));
        }
        for (position, entry) in self.shards.iter().enumerate() {
            if entry.shard as usize != position {
                return fail(format!(
                    "shard at position {position} has number {}",
                    entry.shard
                ));
            }
            if let Some(depths) = &entry.search_depths
                && let Err(reason) = depths.check()
            {
                return fail(format!("shard {position}'s search_depths: {reason}"));
            }
        }
        for (file, digest) in &self.files {
            if !is_plain_relative(file) {
                return fail(format!(
                    "files lists {file:?}: paths must be relative and stay inside the bundle"
                ));
            }
            if !digest.is_well_formed() {
                return fail(format!(
                    "files[{file}]: xxh3_128 must be 32 lowercase hex digits"
                ));
            }
        }
        if let Err(reason) = self.check_variants() {
            return fail(reason);
        }
        // Checked: a sum that overflows would panic in a debug build and wrap in
        // a release one.
        let total = self
            .shards
            .iter()
            .try_fold(0u64, |sum, entry| sum.checked_add(entry.items));
        if total != Some(self.items) {
            return fail(format!(
                "items is {} but the shards hold {}",
                self.items,
                total.map_or("more than 2^64".to_string(), |t| t.to_string())
            ));
        }
        Ok(())
    }
}

/// A path that names a file inside the bundle: relative, no `..`, no empty or `.`
/// components, `/`-separated, and not the manifest itself.
fn is_plain_relative(path: &str) -> bool {
    !path.is_empty()
        && path != MANIFEST_FILE
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_only() {
        assert!(is_plain_relative("shards/shard-0.usearch"));
        assert!(is_plain_relative("catalog.tsv"));
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "./a",
            "manifest.json",
            "a\\b",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
    }
}
