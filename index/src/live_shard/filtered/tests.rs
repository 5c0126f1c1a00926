//! Filtered searches against the exact filtered top-k, at selectivities from
//! a half to a thousandth, on the base, with changes applied, and folded.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::filter::Filter;

use super::{AttributeFilter, Route, ShardAttributes, exact_filtered};
use crate::test_bundle::{DIM, ITEMS, bundle, unit_vectors};
use crate::{Applied, ItemChange, LiveShard, LoadMode, ShardIndex};

/// One boolean column per selectivity (a half, a tenth, a hundredth, a
/// thousandth of the items) and a keyword with four values.
fn synthetic_attributes() -> ItemAttributes {
    let mut text =
        String::from("id\ts50:boolean\ts10:boolean\ts1:boolean\ts01:boolean\tcolour:keyword\n");
    for id in 0..ITEMS as u64 {
        text.push_str(&format!(
            "{id}\t{}\t{}\t{}\t{}\t{}\n",
            id % 2 == 0,
            id % 10 == 3,
            id % 100 == 7,
            id % 1000 == 11,
            ["red", "green", "blue", "grey"][(id % 4) as usize],
        ));
    }
    ItemAttributes::parse(&text, Path::new("attributes.tsv")).unwrap()
}

fn live(dir: &Path) -> LiveShard {
    bundle(dir);
    LiveShard::new(ShardIndex::open_with(dir, 0, LoadMode::Packed).unwrap(), 1).unwrap()
}

/// Searches `shard` for 40 queries with `text`'s filter and compares with
/// the exact filtered top-k over `ids`: every answer, by each route, has
/// min(k, matching) items, all matching and none excluded; scans are exact;
/// the graph's recall is at least 0.95.
fn check(shard: &LiveShard, attributes: &ShardAttributes, text: &str, ids: &[u64]) {
    let filter = AttributeFilter::new(attributes, &Filter::parse(text).unwrap()).unwrap();
    let queries = unit_vectors(40, 99);
    let excluded: Vec<u64> = (0..ITEMS as u64).step_by(37).collect();
    let kept: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| excluded.binary_search(id).is_err())
        .collect();
    let (mut found, mut wanted) = (0usize, 0usize);
    let ids = |hits: &[(u64, f32)]| hits.iter().map(|hit| hit.0).collect::<Vec<_>>();
    for (k, query) in [10usize, 100].into_iter().cycle().zip(queries.chunks(DIM)) {
        let expected = exact_filtered(shard, query, k, &filter, &kept);
        for route in [Route::Choose, Route::PostFilter, Route::Scan, Route::Graph] {
            let answer = shard
                .search_filtered_by(query, k, &excluded, route, &filter)
                .unwrap();
            assert_eq!(
                answer.hits.len(),
                expected.len(),
                "{text}, k {k}, {route:?}"
            );
            for (id, _) in &answer.hits {
                assert!(filter.matches(*id), "{text}: {id} does not match");
                assert!(excluded.binary_search(id).is_err(), "{id} is excluded");
            }
            if answer.scanned() {
                assert_eq!(ids(&answer.hits), ids(&expected), "{text}: a scan is exact");
            } else {
                let got = ids(&answer.hits);
                found += ids(&expected).iter().filter(|id| got.contains(id)).count();
                wanted += expected.len();
            }
        }
        let exact = shard
            .search_filtered(query, k, &excluded, true, &filter)
            .unwrap();
        assert!(exact.scanned());
        assert_eq!(ids(&exact.hits), ids(&expected), "{text}: exact");
    }
    let recall = found as f64 / wanted as f64;
    assert!(recall >= 0.95, "{text}: graph recall {recall}");
}

#[test]
fn filtered_searches_equal_the_exact_filtered_top_k_at_every_selectivity() {
    let dir = tempfile::tempdir().unwrap();
    let shard = live(dir.path());
    let attributes = ShardAttributes::without_blocks(synthetic_attributes());
    let ids: Vec<u64> = (0..ITEMS as u64).collect();
    for text in [
        "s50 = true",
        "s10 = true",
        "s1 = true",
        "s01 = true",
        r#"colour in ["red", "blue"] and not (s10 = true)"#,
    ] {
        check(&shard, &attributes, text, &ids);
    }
    // The selective filters are scanned, the broad ones searched in the
    // graph (on 3,000 items the switch is at about 2,000 matches at ef 64).
    let estimate = |text: &str| {
        AttributeFilter::new(&attributes, &Filter::parse(text).unwrap())
            .unwrap()
            .estimated_matches()
    };
    assert_eq!(estimate("s01 = true"), 3.0);
    assert_eq!(estimate("s50 = true"), 1500.0);
    let query = unit_vectors(1, 5);
    let searched = |text: &str| {
        let filter = AttributeFilter::new(&attributes, &Filter::parse(text).unwrap()).unwrap();
        shard
            .search_filtered(&query, 10, &[], false, &filter)
            .unwrap()
            .route
    };
    assert_eq!(searched("s1 = true"), Route::Scan);
    assert_eq!(searched("not (s01 = true)"), Route::PostFilter);
    // With blocks, a filter on one value scans its block; the answers stay
    // exact.
    let blocked =
        ShardAttributes::with_small_blocks(synthetic_attributes(), shard.base(), 100).unwrap();
    assert!(blocked.blocks().len() >= 2, "{:?}", blocked.blocks().len());
    // (The four colours fill the budget of one shard's vectors, largest first.)
    for text in [r#"colour = "red""#, r#"colour = "blue" and s50 = true"#] {
        let filter = AttributeFilter::new(&blocked, &Filter::parse(text).unwrap()).unwrap();
        assert!(filter.block().is_some(), "{text}");
        check(&shard, &blocked, text, &ids);
    }
}

#[test]
fn filtered_searches_follow_upserts_deletes_and_folds() {
    let dir = tempfile::tempdir().unwrap();
    let shard = live(dir.path());
    // Blocks for the values of 100 items or more: the scans read them.
    let attributes =
        ShardAttributes::with_small_blocks(synthetic_attributes(), shard.base(), 100).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    // Replace a fifth of the items, delete a tenth, add 300 new ones.
    let mut changes = Vec::new();
    let fresh = unit_vectors(ITEMS + 300, 1234);
    let mut deleted = std::collections::BTreeSet::new();
    for id in 0..ITEMS as u64 + 300 {
        let roll: f64 = rng.random();
        let vector = fresh[id as usize * DIM..(id as usize + 1) * DIM].to_vec();
        if id >= ITEMS as u64 || roll < 0.2 {
            changes.push(ItemChange::Upsert { id, vector });
        } else if roll < 0.3 {
            changes.push(ItemChange::Delete { id });
            deleted.insert(id);
        }
    }
    assert_eq!(shard.apply(2, &changes).unwrap(), Applied::Changed);
    let live_ids: Vec<u64> = (0..ITEMS as u64 + 300)
        .filter(|id| !deleted.contains(id))
        .collect();
    for folded in [false, true] {
        if folded {
            assert!(shard.fold(1).unwrap());
            assert!(shard.folded());
        }
        for text in [
            "s50 = true",
            "s10 = true",
            "s1 = true",
            "not (s50 = true)",
            r#"colour = "grey""#,
            r#"colour = "green" and s10 = true"#,
        ] {
            check(&shard, &attributes, text, &live_ids);
        }
        // New items have no attributes: they match only a negation.
        let negation =
            AttributeFilter::new(&attributes, &Filter::parse("not (s10 = true)").unwrap()).unwrap();
        assert!(negation.block().is_none());
        let new_item = ITEMS as u64 + 17;
        let vector = &fresh[new_item as usize * DIM..(new_item as usize + 1) * DIM];
        for exact in [false, true] {
            let hits = shard
                .search_filtered(vector, 5, &[], exact, &negation)
                .unwrap()
                .hits;
            assert_eq!(hits[0].0, new_item, "exact {exact}");
        }
    }
}
