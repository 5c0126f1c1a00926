//! The coded walk against usearch's own walk and the exact answer.

use crate::test_bundle::{DIM, ITEMS, bundle, unit_vectors};
use crate::{LoadMode, ShardIndex};

/// The exact top `k` of `query` by inner product over `data` (ids = rows).
fn exact(data: &[f32], query: &[f32], k: usize) -> Vec<(u64, f32)> {
    let mut all: Vec<(u64, f32)> = data
        .chunks_exact(DIM)
        .enumerate()
        .map(|(id, row)| {
            (
                id as u64,
                crate::live_shard::fast_score(recsys_bundle::Metric::Ip, query, row),
            )
        })
        .collect();
    crate::index_reads::sort_hits(&mut all);
    all.truncate(k);
    all
}

#[test]
fn the_coded_walk_finds_the_exact_neighbours_with_exact_scores() {
    let dir = tempfile::tempdir().unwrap();
    let data = bundle(dir.path());
    for mode in [LoadMode::Packed, LoadMode::View, LoadMode::HugePages] {
        let mut shard = ShardIndex::open_with(dir.path(), 0, mode).unwrap();
        let bytes = shard.code_base_layer().unwrap();
        assert!(shard.coded());
        shard.set_expansion_search(200);
        // Codes and links: more than the links alone, less than the vectors twice.
        assert!(
            bytes > ITEMS * 16 * 4 && bytes < ITEMS * DIM * 4 * 8,
            "{bytes} bytes"
        );
        let queries = unit_vectors(50, 99);
        let (mut found, mut wanted) = (0, 0);
        for query in queries.chunks_exact(DIM) {
            let hits = shard.search(query, 10, &[], false).unwrap();
            let truth = exact(&data, query, 10);
            assert_eq!(hits.len(), 10);
            for pair in hits.windows(2) {
                assert!(pair[0].1 >= pair[1].1, "best first: {hits:?}");
            }
            for (id, score) in &hits {
                let row = &data[*id as usize * DIM..][..DIM];
                assert!(
                    (score - crate::live_shard::fast_score(recsys_bundle::Metric::Ip, query, row))
                        .abs()
                        < 1e-5,
                    "exact scores"
                );
            }
            found += hits
                .iter()
                .filter(|h| truth.iter().any(|t| t.0 == h.0))
                .count();
            wanted += truth.len();
            // The same answer again: per-thread buffers are reset between searches.
            assert_eq!(shard.search(query, 10, &[], false).unwrap(), hits);
        }
        let recall = found as f64 / wanted as f64;
        assert!(recall >= 0.9, "{mode:?}: recall@10 {recall}");
    }
}

/// The share of usearch's own top-10 that the coded walk finds on the
/// bundle in `dir`, both at a beam of 24; where both find an item, its
/// score must agree.
fn agreement_with_usearch(dir: &std::path::Path, queries: &[f32]) -> f64 {
    let plain = ShardIndex::open_with(dir, 0, LoadMode::Packed).unwrap();
    let coded = ShardIndex::open_with(dir, 0, LoadMode::Coded).unwrap();
    assert!(coded.coded() && !plain.coded());
    plain.set_expansion_search(24);
    coded.set_expansion_search(24);
    let (mut same, mut all) = (0, 0);
    for query in queries.chunks_exact(DIM) {
        let a = plain.search(query, 10, &[], false).unwrap();
        let b = coded.search(query, 10, &[], false).unwrap();
        for hit in &b {
            if let Some(h) = a.iter().find(|h| h.0 == hit.0) {
                assert!((h.1 - hit.1).abs() < 1e-4, "scores {h:?} {hit:?}");
                same += 1;
            }
        }
        all += a.len();
    }
    same as f64 / all as f64
}

/// The beam holds exact distances, so the coded walk differs from
/// usearch's own on the same graph only where the codes skipped a
/// neighbour that would have entered the beam: with the default margin,
/// next to never. A narrow beam makes every wrongly skipped node show.
#[test]
fn the_coded_walk_answers_as_usearchs_walk_does() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path());
    let agreement = agreement_with_usearch(dir.path(), &unit_vectors(200, 5));
    assert!(agreement >= 0.99, "{agreement} of usearch's answers found");
}

/// Every metric's margin (ip, cos and l2 each bound the coding error their
/// own way) keeps the walk usearch's, on vectors of unequal lengths.
#[test]
fn every_metric_answers_as_usearchs_walk_does() {
    use recsys_bundle::{IndexParams, Metric};
    for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
        let dir = tempfile::tempdir().unwrap();
        let params = IndexParams {
            metric,
            connectivity: 12,
            ..IndexParams::default()
        };
        crate::test_bundle::bundle_with(dir.path(), params);
        let agreement = agreement_with_usearch(dir.path(), &unit_vectors(100, 11));
        assert!(
            agreement >= 0.99,
            "{metric:?}: {agreement} of usearch's answers found"
        );
    }
}

#[test]
fn a_loaded_shard_cannot_be_coded_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path());
    let mut shard = ShardIndex::open_with(dir.path(), 0, LoadMode::Load).unwrap();
    let error = shard.code_base_layer().unwrap_err().to_string();
    assert!(error.contains("viewed index"), "{error}");
    assert!(!shard.coded());
}
