//! A small one-shard bundle of unit vectors for this crate's tests.

use std::path::Path;

use recsys_bundle::{FORMAT_VERSION, IndexParams, Manifest, ShardEntry, shard_file};

pub(crate) const DIM: usize = 24;
pub(crate) const ITEMS: usize = 3_000;

/// Deterministic pseudo-random unit vectors (a 64-bit LCG), so a failure reproduces.
pub(crate) fn unit_vectors(rows: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    let mut data: Vec<f32> = (0..rows * DIM)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    for row in data.chunks_mut(DIM) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        row.iter_mut().for_each(|v| *v /= norm);
    }
    data
}

/// A one-shard bundle of unit vectors (ids = rows), written the way the bundle
/// builder writes one: the index file, then the manifest.
pub(crate) fn bundle(dir: &Path) -> Vec<f32> {
    bundle_with(dir, IndexParams::default())
}

/// [`bundle`] with other index parameters (another metric, say); the same
/// vectors, scaled by each row's id (1 to 2) so that inner product, cosine and
/// squared distance order them differently.
pub(crate) fn bundle_with(dir: &Path, params: IndexParams) -> Vec<f32> {
    let mut data = unit_vectors(ITEMS, 7);
    if params != IndexParams::default() {
        for (row, vector) in data.chunks_mut(DIM).enumerate() {
            let scale = 1.0 + row as f32 / ITEMS as f32;
            vector.iter_mut().for_each(|v| *v *= scale);
        }
    }
    let file = shard_file(0);
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let ids: Vec<u64> = (0..ITEMS as u64).collect();
    let order: Vec<usize> = (0..ITEMS).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let built = crate::build_shard(
        &dir.join(&file),
        &params,
        DIM,
        &data,
        &ids,
        &order,
        &pool,
        &|_| {},
    )
    .unwrap();
    let search_depths = built.search_depths;
    Manifest {
        format_version: FORMAT_VERSION,
        version: "test".into(),
        dimensions: DIM,
        index: params,
        shard_count: 1,
        shards: vec![ShardEntry {
            shard: 0,
            file,
            items: ITEMS as u64,
            search_depths,
        }],
        items: ITEMS as u64,
        catalog: None,
        query_model: None,
        ranker: None,
        source: "unit vectors".into(),
        files: Default::default(),
        log_revision: 0,
        user_history: None,
        attributes: None,
        ranker_variants: Default::default(),
        ranker_shares: Default::default(),
    }
    .save(dir)
    .unwrap();
    data
}
