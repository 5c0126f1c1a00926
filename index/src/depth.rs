//! Measures a freshly built shard's [`SearchDepths`]: for each `k` of a grid and
//! each recall target, the smallest beam whose recall@k over held-out queries
//! met the target.
//!
//! The queries are items of the shard spread over it and held out of the graph
//! while it is measured ([`crate::build_shard`] inserts them last), so they
//! are drawn from the catalog's own distribution without a query log and the
//! graph has never seen them. (Leaving an item in and only out of its answer
//! flatters the graph: the search walks to the item's own node, whose links
//! are its nearest neighbours; on 24-d random vectors that measured beam 11 for
//! recall@10 0.9 where held-out queries got 0.875.) The exact answers come
//! from usearch's brute-force scan of the same index, so quantized shards are
//! judged against what they store. A cell counts as met when the mean recall
//! over the queries reaches the target, as recall@k is defined. (A first
//! version asked the mean less two standard errors to reach it: per-query
//! recall is bimodal on clustered catalogs, a few queries whose cluster the
//! graph reaches badly get little, so the bound swung with a handful of
//! queries: one 1M-item build got beam 2,450 for recall@100 0.95 where the
//! same catalog in two shards got 110, and answered at a fifth of the rate;
//! see docs/benchmarks-history.md.)

use rayon::prelude::*;
use recsys_bundle::search_depth::MEASURED_RECALL_PERMILLE;
use recsys_bundle::{DepthRow, SearchDepths};
use rustc_hash::FxHashMap;
use usearch::Index;

/// Held-out queries per shard: enough that the mean recall@100 is steady to
/// about a point, few enough that measuring costs seconds on 1M items.
pub(crate) const DEPTH_QUERIES: usize = 200;

/// Fewest held-out queries worth a table: a shard of fewer than ten times
/// this many items gets none (and searches with the fixed beam).
const MIN_DEPTH_QUERIES: usize = 10;

/// How many of a shard's `items` [`crate::build_shard`] holds out to measure
/// with: 0 when the shard is too small for a table.
pub(crate) fn held_out_count(items: usize) -> usize {
    let count = DEPTH_QUERIES.min(items / 10);
    if count < MIN_DEPTH_QUERIES { 0 } else { count }
}

/// The `k` measured; requests between two are interpolated.
const K_GRID: [usize; 14] = [1, 5, 10, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000];

/// The deepest beam tried; a target not met by it gets the plateau's beam
/// ([`PLATEAU`]).
const MAX_MEASURED_EF: usize = 4096;

/// Each beam tried is this much wider than the last (and at least one wider).
const EF_GROWTH: f64 = 1.15;

/// A target that no beam reached gets the narrowest beam within this much of
/// the best recall any beam reached: on some graphs recall stops growing
/// below the target (a 20k-item inner-product shard of clustered vectors
/// tops out at recall@100 0.926 from beam 1,000 to 4,000), and searching
/// 4,096 deep there costs ten times the CPU for nothing.
const PLATEAU: f64 = 0.005;

/// The table for `index` measured with `queries` (vectors the index does not
/// hold), on `pool`'s threads; `None` without queries or with an index too
/// small for any measured `k`. Sets the index's own beam to 1 (every search
/// here says how wide it wants it).
pub(crate) fn measure_depths(
    index: &Index,
    queries: &[&[f32]],
    pool: &rayon::ThreadPool,
) -> Result<Option<SearchDepths>, String> {
    let items = index.size();
    let ks: Vec<usize> = K_GRID.iter().copied().filter(|k| *k < items).collect();
    let (Some(&k_max), false) = (ks.last(), queries.is_empty()) else {
        return Ok(None);
    };
    index.change_expansion_search(1);
    // Each query's exact top k_max: id → rank.
    let truth: Vec<FxHashMap<u64, usize>> = pool.install(|| {
        queries
            .par_iter()
            .map(|query| {
                let found = index
                    .exact_search(query, k_max)
                    .map_err(|e| e.to_string())?;
                Ok(found
                    .keys
                    .into_iter()
                    .enumerate()
                    .map(|(rank, key)| (key, rank))
                    .collect())
            })
            .collect::<Result<_, String>>()
    })?;

    let targets: Vec<f64> = MEASURED_RECALL_PERMILLE
        .iter()
        .map(|p| f64::from(*p) / 1000.0)
        .collect();
    let mut cells: Vec<Vec<Option<usize>>> = vec![vec![None; targets.len()]; ks.len()];
    // Per row, the mean recall at each beam tried (from the row's k on).
    let mut measured: Vec<Vec<(usize, f64)>> = vec![Vec::new(); ks.len()];
    let largest = MAX_MEASURED_EF.min(items);
    let mut ef = 1usize;
    loop {
        let last = ef >= largest;
        let recalls: Vec<Vec<f64>> = pool.install(|| {
            queries
                .par_iter()
                .zip(&truth)
                .map(|(query, truth)| {
                    let hits = index.search(query, ef).map_err(|e| e.to_string())?.keys;
                    Ok(ks
                        .iter()
                        .map(|&k| {
                            let k = k.min(truth.len()).max(1);
                            let right = hits
                                .iter()
                                .take(k)
                                .filter(|key| truth.get(key).is_some_and(|rank| *rank < k))
                                .count();
                            right as f64 / k as f64
                        })
                        .collect())
                })
                .collect::<Result<_, String>>()
        })?;
        for (row, cells) in cells.iter_mut().enumerate() {
            let k = ks[row];
            if k > ef {
                continue;
            }
            let mean =
                recalls.iter().map(|per_k| per_k[row]).sum::<f64>() / recalls.len().max(1) as f64;
            measured[row].push((ef, mean));
            for (cell, target) in cells.iter_mut().zip(&targets) {
                if cell.is_none() && mean >= *target {
                    *cell = Some(ef);
                }
            }
        }
        if last || cells.iter().flatten().all(Option::is_some) {
            break;
        }
        ef = ((ef as f64 * EF_GROWTH).ceil() as usize)
            .max(ef + 1)
            .min(largest);
    }
    let rows = ks
        .iter()
        .zip(cells)
        .zip(&measured)
        .map(|((&k, cells), measured)| {
            let best = measured.iter().map(|m| m.1).fold(0.0f64, f64::max);
            // A target no beam reached: the narrowest beam on the plateau
            // (deeper beams bought less than half a point), not the deepest.
            let plateau = measured
                .iter()
                .find(|m| m.1 >= best - PLATEAU)
                .map_or(largest, |m| m.0);
            // A higher target never gets a narrower beam than a lower one.
            let mut deepest = k;
            DepthRow {
                k: k as u32,
                ef: cells
                    .into_iter()
                    .map(|cell| {
                        deepest = deepest.max(cell.unwrap_or(plateau));
                        deepest as u32
                    })
                    .collect(),
                best_permille: (best * 1000.0).floor() as u16,
            }
        })
        .collect();
    Ok(Some(SearchDepths {
        queries: queries.len() as u32,
        recall_permille: MEASURED_RECALL_PERMILLE.to_vec(),
        rows,
    }))
}

#[cfg(test)]
mod tests {
    use crate::test_bundle::{DIM, bundle, unit_vectors};
    use crate::{LiveShard, ShardIndex};

    /// Recall@k of `live`'s HNSW search at beam `ef` over `queries`, against
    /// the exact scan.
    fn recall(live: &LiveShard, queries: &[f32], k: usize, ef: usize) -> f64 {
        let (mut found, mut wanted) = (0, 0);
        for query in queries.chunks(DIM) {
            let exact = live.search(query, k, &[], true).unwrap();
            let approximate = live.search_at(query, k, &[], false, ef).unwrap();
            assert_eq!(approximate.len(), k);
            found += approximate
                .iter()
                .filter(|hit| exact.iter().any(|e| e.0 == hit.0))
                .count();
            wanted += k;
        }
        found as f64 / wanted as f64
    }

    #[test]
    fn measured_beams_reach_their_targets_on_held_out_queries() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let live = LiveShard::new(ShardIndex::open(dir.path(), 0).unwrap(), 0).unwrap();
        let shard = live.base();
        let depths = shard.search_depths().expect("the builder measured depths");
        depths.check().unwrap();
        assert_eq!(depths.queries as usize, super::DEPTH_QUERIES);
        for row in &depths.rows {
            assert!(row.ef.windows(2).all(|w| w[0] <= w[1]), "{row:?}");
        }
        // Wider answers need wider beams; higher targets too.
        assert!(shard.depth_for(10, Some(0.95)) <= shard.depth_for(100, Some(0.95)));
        assert!(shard.depth_for(50, Some(0.9)) <= shard.depth_for(50, Some(0.99)));
        // No target, or a target on a shard without a table: the fixed beam.
        assert_eq!(shard.depth_for(10, None), shard.params().expansion_search);
        // Queries the measurement never saw, from the same distribution: the
        // beam for a target reaches about it.
        let queries = unit_vectors(200, 11);
        for k in [10, 50, 100] {
            for target in [0.9f32, 0.95, 0.99] {
                let ef = shard.depth_for(k, Some(target));
                let got = recall(&live, &queries, k, ef);
                assert!(
                    got >= f64::from(target) - 0.02,
                    "k {k} target {target}: beam {ef} gave recall {got:.3}"
                );
            }
        }
    }

    #[test]
    fn a_search_at_the_default_beam_is_the_plain_search() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let shard = ShardIndex::open(dir.path(), 0).unwrap();
        let ef = shard.depth_for(20, None);
        let live = LiveShard::new(shard, 0).unwrap();
        for query in unit_vectors(20, 3).chunks(DIM) {
            assert_eq!(
                live.search(query, 20, &[], false).unwrap(),
                live.search_at(query, 20, &[], false, ef).unwrap()
            );
        }
    }
}
