//! One shard's usearch index, memory-mapped from the bundle, with HNSW and exact search.

use std::path::Path;

use recsys_bundle::{BundleError, Manifest, Metric, Quantization};
use usearch::Index;

use crate::NodeError;

/// A loaded shard.
pub struct ShardIndex {
    index: Index,
    shard: u32,
    shard_count: u32,
    dimensions: usize,
    metric: Metric,
    quantization: Quantization,
    items: u64,
    bundle_version: String,
}

impl std::fmt::Debug for ShardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardIndex")
            .field("shard", &self.shard)
            .field("items", &self.items)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

/// How a shard's file becomes an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Memory-map the file: ready at once, pages fault in on first use.
    View,
    /// Read the whole file into memory: slower to start, no page faults afterwards.
    Load,
}

/// One result: item id and score (higher is better).
pub type Hit = (u64, f32);

impl ShardIndex {
    /// Opens shard `shard` of the bundle in `dir`, checking the file against the
    /// manifest so a mismatched or truncated file is refused with its name.
    pub fn open(dir: &Path, shard: u32) -> Result<Self, BundleError> {
        Self::open_with(dir, shard, LoadMode::View)
    }

    /// Opens shard `shard` of the bundle in `dir`, mapping or copying the file.
    pub fn open_with(dir: &Path, shard: u32, mode: LoadMode) -> Result<Self, BundleError> {
        let manifest = Manifest::load(dir)?;
        let entry = manifest.shard(shard).ok_or_else(|| {
            BundleError::invalid(
                "shard",
                format!(
                    "bundle {} has shards 0..{}, not {shard}",
                    dir.display(),
                    manifest.shard_count
                ),
            )
        })?;
        let path = Manifest::resolve(dir, &entry.file);
        let path_str = path
            .to_str()
            .ok_or_else(|| BundleError::invalid("bundle", "path is not valid UTF-8"))?;
        let file_len = std::fs::metadata(&path)
            .map_err(|e| BundleError::io(&path, e))?
            .len();
        let meta = Index::metadata(path_str)
            .map_err(|e| BundleError::corrupt(&path, format!("not a usearch index: {e}")))?;
        let params = manifest.index;
        if meta.dimensions as usize != manifest.dimensions {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index has {} dimensions, the manifest says {}",
                    meta.dimensions, manifest.dimensions
                ),
            ));
        }
        if meta.metric != params.metric.usearch_kind() {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index metric differs from the manifest's {}",
                    params.metric.as_str()
                ),
            ));
        }
        if meta.quantization != params.quantization.usearch_kind() {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index quantization differs from the manifest's {}",
                    params.quantization.as_str()
                ),
            ));
        }
        if meta.count_present != entry.items {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index holds {} items, the manifest says {}",
                    meta.count_present, entry.items
                ),
            ));
        }
        // A lower bound on the size of a valid file: every vector must be in it.
        // usearch's view trusts the header, so a truncated file would fault on access.
        let bytes_per_scalar: u64 = match params.quantization {
            Quantization::F32 => 4,
            Quantization::F16 => 2,
            Quantization::I8 => 1,
        };
        let minimum = entry.items * manifest.dimensions as u64 * bytes_per_scalar;
        if file_len < minimum {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "file is {file_len} bytes, too short for {} vectors",
                    entry.items
                ),
            ));
        }
        let index = Index::new(&params.usearch_options(manifest.dimensions))
            .map_err(|e| BundleError::usearch(&path, e))?;
        match mode {
            LoadMode::View => index.view(path_str),
            LoadMode::Load => index.load(path_str),
        }
        .map_err(|e| BundleError::corrupt(&path, format!("cannot open the index: {e}")))?;
        if index.size() as u64 != entry.items {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index maps {} items, the manifest says {}",
                    index.size(),
                    entry.items
                ),
            ));
        }
        index.change_expansion_search(params.expansion_search);
        Ok(Self {
            index,
            shard,
            shard_count: manifest.shard_count,
            dimensions: manifest.dimensions,
            metric: params.metric,
            quantization: params.quantization,
            items: entry.items,
            bundle_version: manifest.version,
        })
    }

    /// Overrides the HNSW search beam width (`ef`) the manifest set; searches use at
    /// least `k` whatever this is.
    pub fn set_expansion_search(&self, expansion: usize) {
        self.index.change_expansion_search(expansion);
    }

    /// usearch's description of the SIMD kernels in use, for benchmark reports.
    pub fn hardware_acceleration(&self) -> String {
        self.index.hardware_acceleration()
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Shards in the bundle.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Embedding dimensions.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Items in the shard.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The stored scalar type.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// Version of the bundle the shard came from.
    pub fn bundle_version(&self) -> &str {
        &self.bundle_version
    }

    /// The `k` best items for `query`, best first (ties: smaller id first), none of
    /// them in `excluded` (which must be sorted). Blocking CPU work: call from the
    /// search pool.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        exact: bool,
    ) -> Result<Vec<Hit>, NodeError> {
        if query.len() != self.dimensions {
            return Err(NodeError::invalid(
                "query",
                format!(
                    "has {} dimensions, the index has {}",
                    query.len(),
                    self.dimensions
                ),
            ));
        }
        if k == 0 || self.items == 0 {
            return Ok(Vec::new());
        }
        let matches = if exact {
            // usearch's brute-force scan takes no filter: ask for enough extra items
            // that k survive the exclusions, then drop the excluded ones.
            let wanted = (k + excluded.len()).min(self.items as usize);
            self.index.exact_search(query, wanted)
        } else if excluded.is_empty() {
            self.index.search(query, k)
        } else {
            // The predicate runs inside the traversal, so excluded items never fill a slot.
            self.index
                .filtered_search(query, k, |key| excluded.binary_search(&key).is_err())
        }
        .map_err(|e| NodeError::Search(e.to_string()))?;
        let mut hits: Vec<Hit> = matches
            .keys
            .iter()
            .zip(&matches.distances)
            .filter(|(key, _)| excluded.binary_search(key).is_err())
            .map(|(key, distance)| (*key, self.metric.score_from_distance(*distance)))
            .collect();
        hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        Ok(hits)
    }
}
