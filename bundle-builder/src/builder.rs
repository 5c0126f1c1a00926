//! Builds a bundle directory from item embeddings: hash-shards the items, builds one
//! HNSW index per shard with all cores (`recsys_index::build_shard`), writes the catalog and the query
//! model, and seals the bundle (`crate::seal`: every file flushed and checksummed
//! in the manifest, written last). It writes into the directory it is given; to
//! build where no reader can see a half bundle, give it a `crate::Staging` path.

use std::path::Path;

use recsys_bundle::{
    BundleError, Catalog, FORMAT_VERSION, IndexParams, MANIFEST_FILE, Manifest, QueryModelSpec,
    ShardEntry, UserEmbeddings, shard_file, shard_of,
};

use recsys_index::ShardProgress;

use crate::ItemVectors;

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Index parameters of every shard.
    pub params: IndexParams,
    /// Number of hash shards.
    pub shard_count: u32,
    /// The bundle's version string.
    pub version: String,
    /// Where the items came from, recorded in the manifest.
    pub source: String,
    /// Threads for index construction; 0 means all cores.
    pub threads: usize,
}

/// Progress of a build, for a progress bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// Construction of `shard` (holding `items`) begins.
    ShardStarted {
        /// The shard.
        shard: u32,
        /// Items it will hold.
        items: u64,
    },
    /// `added` more items are in the index of the current shard.
    ItemsAdded {
        /// Items added since the previous event.
        added: u64,
    },
    /// The shard's index file is written.
    ShardSaved {
        /// The shard.
        shard: u32,
    },
    /// The shard's search depths are being measured with items held out of its
    /// graph (`recsys_index::build_shard`): seconds on a large shard.
    MeasuringDepths {
        /// The shard.
        shard: u32,
        /// Held-out queries it runs at each beam.
        queries: u32,
    },
}

/// Writes a bundle into `dir` (created if missing). `users`, when given, becomes
/// the query model that turns a `user_id` into a query embedding.
pub fn build_bundle(
    dir: &Path,
    items: &ItemVectors,
    users: Option<&UserEmbeddings>,
    options: &BuildOptions,
    progress: &(dyn Fn(BuildEvent) + Sync),
) -> Result<Manifest, BundleError> {
    if options.shard_count == 0 {
        return Err(BundleError::invalid("shards", "must be at least 1"));
    }
    if let Some(users) = users
        && users.dimensions() != items.dimensions
    {
        return Err(BundleError::invalid(
            "users",
            format!(
                "user embeddings have {} dimensions, items {}",
                users.dimensions(),
                items.dimensions
            ),
        ));
    }
    if options.params.connectivity < 2 {
        return Err(BundleError::invalid("connectivity", "must be at least 2"));
    }
    std::fs::create_dir_all(dir.join("shards")).map_err(|e| BundleError::io(dir, e))?;
    // A stale manifest would describe the old shards while new ones are written.
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| BundleError::io(&manifest_path, e))?;
    }

    let shards = build_shards(dir, items, options, progress)?;

    let catalog = match &items.names {
        Some(names) => {
            let file = "catalog.tsv".to_string();
            Catalog::write(&dir.join(&file), &items.ids, names)?;
            Some(file)
        }
        None => None,
    };

    let query_model = match users {
        Some(users) => {
            let (file, tensor, vocabulary) = (
                "query_model.safetensors",
                "user_embedding",
                "vocab/user_id.txt",
            );
            users.save(&dir.join(file), tensor, &dir.join(vocabulary))?;
            Some(QueryModelSpec::EmbeddingTable {
                file: file.into(),
                tensor: tensor.into(),
                vocabulary: vocabulary.into(),
            })
        }
        None => None,
    };

    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        version: options.version.clone(),
        dimensions: items.dimensions,
        index: options.params,
        shard_count: options.shard_count,
        shards,
        items: items.len() as u64,
        catalog,
        query_model,
        ranker: None,
        source: options.source.clone(),
        files: Default::default(),
        log_revision: 0,
        user_history: None,
        attributes: None,
        ranker_variants: Default::default(),
        ranker_shares: Default::default(),
    };
    crate::seal(dir, &mut manifest)?;
    tracing::info!(
        dir = %dir.display(),
        items = manifest.items,
        shards = manifest.shard_count,
        "bundle written"
    );
    Ok(manifest)
}

/// Hash-shards `items` and writes one HNSW index per shard under `dir/shards/`
/// (which must exist), each in locality order: the part of a build that
/// `build_bundle` and `crate::compact` share.
pub(crate) fn build_shards(
    dir: &Path,
    items: &ItemVectors,
    options: &BuildOptions,
    progress: &(dyn Fn(BuildEvent) + Sync),
) -> Result<Vec<ShardEntry>, BundleError> {
    let mut rows_of_shard: Vec<Vec<usize>> = vec![Vec::new(); options.shard_count as usize];
    for (row, id) in items.ids.iter().enumerate() {
        rows_of_shard[shard_of(*id, options.shard_count) as usize].push(row);
    }

    let threads = if options.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        options.threads
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bundle-build-{i}"))
        .build()
        .map_err(|e| BundleError::invalid("threads", e.to_string()))?;

    let mut shards = Vec::with_capacity(rows_of_shard.len());
    for (shard, rows) in rows_of_shard.iter().enumerate() {
        let shard = shard as u32;
        let file = shard_file(shard);
        let path = dir.join(&file);
        progress(BuildEvent::ShardStarted {
            shard,
            items: rows.len() as u64,
        });
        // A random skeleton, then near vectors in near slots: faster searches, a
        // higher recall at the same beam, a build that runs 3-4x faster, and no
        // recall plateau on shards of millions (crate::locality, docs/benchmarks.md).
        let order =
            pool.install(|| crate::locality::insertion_order(&items.data, items.dimensions, rows));
        let built = recsys_index::build_shard(
            &path,
            &options.params,
            items.dimensions,
            &items.data,
            &items.ids,
            &order,
            &pool,
            &|event| match event {
                ShardProgress::Added(added) => progress(BuildEvent::ItemsAdded { added }),
                ShardProgress::MeasuringDepths { queries } => {
                    progress(BuildEvent::MeasuringDepths { shard, queries })
                }
            },
        )?;
        progress(BuildEvent::ShardSaved { shard });
        shards.push(ShardEntry {
            shard,
            file,
            items: rows.len() as u64,
            search_depths: built.search_depths,
        });
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::synthetic::{SyntheticSpec, generate};

    #[test]
    fn builds_a_loadable_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = generate(&SyntheticSpec {
            items: 2_000,
            users: 20,
            dimensions: 8,
            clusters: 4,
            seed: 3,
        })
        .unwrap();
        let options = BuildOptions {
            params: IndexParams::default(),
            shard_count: 3,
            version: "test-1".into(),
            source: "synthetic".into(),
            threads: 2,
        };
        let added = AtomicU64::new(0);
        let manifest = build_bundle(
            dir.path(),
            &catalog.items,
            Some(&catalog.users),
            &options,
            &|event| {
                if let BuildEvent::ItemsAdded { added: n } = event {
                    added.fetch_add(n, Ordering::Relaxed);
                }
            },
        )
        .unwrap();
        assert_eq!(added.load(Ordering::Relaxed), 2_000);
        assert_eq!(manifest.items, 2_000);
        let loaded = Manifest::load(dir.path()).unwrap();
        assert_eq!(loaded, manifest);
        for entry in &loaded.shards {
            let index = recsys_index::ShardIndex::open(dir.path(), entry.shard).unwrap();
            assert_eq!(index.items(), entry.items);
            assert!(entry.items > 500, "shard {} is unbalanced", entry.shard);
        }
        assert!(dir.path().join("catalog.tsv").exists());
        let (_, report) = recsys_bundle::verify_bundle(dir.path()).unwrap();
        // 3 shards, the catalog, the user table and its vocabulary.
        assert_eq!(report.files.len(), 6, "{:?}", report.files);
    }
}
