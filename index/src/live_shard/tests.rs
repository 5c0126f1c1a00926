//! A live shard against a model of what it should hold: a map from id to vector,
//! changed by the same random upserts and deletes, searched by brute force.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recsys_bundle::{Manifest, Metric};

use super::*;
use crate::LoadMode;
use crate::test_bundle::{DIM, ITEMS, bundle, unit_vectors};

fn random_unit(rng: &mut StdRng) -> Vec<f32> {
    let mut v: Vec<f32> = (0..DIM).map(|_| rng.random::<f32>() - 0.5).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The exact top k of `model` for `query`, ties by smaller id.
fn brute_force(model: &BTreeMap<u64, Vec<f32>>, query: &[f32], k: usize) -> Vec<u64> {
    let mut scored: Vec<(u64, f32)> = model
        .iter()
        .map(|(id, v)| (*id, Metric::Ip.score(query, v)))
        .collect();
    scored.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.into_iter().take(k).map(|(id, _)| id).collect()
}

fn live(dir: &std::path::Path, mode: LoadMode) -> (LiveShard, BTreeMap<u64, Vec<f32>>) {
    let data = bundle(dir);
    let base = ShardIndex::open_with(dir, 0, mode).unwrap();
    let model = data
        .chunks(DIM)
        .enumerate()
        .map(|(id, v)| (id as u64, v.to_vec()))
        .collect();
    (LiveShard::new(base, 7).unwrap(), model)
}

/// Random batches of upserts (new ids and replacements of base and delta items)
/// and deletes (of base items, delta items and ids never seen), applied to the
/// shard and to the model: the exact search must then give the model's answer,
/// deleted ids never come back from either search, and every upserted item is the
/// first answer to its own vector.
#[test]
fn upserts_and_deletes_match_a_model_of_the_items() {
    for mode in [LoadMode::Packed, LoadMode::Load] {
        let dir = tempfile::tempdir().unwrap();
        let (shard, mut model) = live(dir.path(), mode);
        let mut rng = StdRng::seed_from_u64(42);
        let mut deleted = std::collections::BTreeSet::new();
        let mut revision = 7;
        for _ in 0..60 {
            // Ids past ITEMS are new items; some batches touch an id twice.
            let size = rng.random_range(1..200);
            let batch = random_batch(&mut rng, size);
            revision += 1 + rng.random_range(0..3);
            assert_eq!(shard.apply(revision, &batch).unwrap(), Applied::Changed);
            // As a node does when the log pauses: later batches must make the
            // packed copy stale, never searched.
            if rng.random_bool(0.3) {
                assert!(shard.pack_delta().unwrap() || shard.stats().delta == 0 || shard.folded());
            }
            // And folds now and then: later batches go to the fold's tail.
            if rng.random_bool(0.2) {
                assert!(shard.fold(0).unwrap() || shard.stats().delta == 0);
            }
            for change in batch {
                match change {
                    ItemChange::Upsert { id, vector } => {
                        deleted.remove(&id);
                        model.insert(id, vector);
                    }
                    ItemChange::Delete { id } => {
                        if model.remove(&id).is_some() {
                            deleted.insert(id);
                        }
                    }
                }
            }
        }
        check_against_model(&shard, &model, &deleted, revision, &format!("{mode:?}"));
        // Folded once the log pauses, the shard answers for the same items.
        assert!(shard.fold(0).unwrap());
        assert!(shard.folded());
        check_against_model(
            &shard,
            &model,
            &deleted,
            revision,
            &format!("{mode:?}, folded"),
        );
    }
}

/// What a shard must answer after the random changes of the model test.
fn check_against_model(
    shard: &LiveShard,
    model: &BTreeMap<u64, Vec<f32>>,
    deleted: &std::collections::BTreeSet<u64>,
    revision: u64,
    mode: &str,
) {
    let stats = shard.stats();
    assert_eq!(stats.items, model.len() as u64, "{stats:?}");
    assert_eq!(stats.revision, revision);
    let (mut found, mut wanted) = (0, 0);
    for query in unit_vectors(30, 5).chunks(DIM) {
        let exact: Vec<u64> = shard
            .search(query, 25, &[], true)
            .unwrap()
            .iter()
            .map(|hit| hit.0)
            .collect();
        assert_eq!(exact, brute_force(model, query, 25), "{mode:?}");
        let approximate = shard.search(query, 25, &[], false).unwrap();
        assert_eq!(approximate.len(), 25);
        found += approximate
            .iter()
            .filter(|hit| exact.contains(&hit.0))
            .count();
        wanted += exact.len();
        assert!(approximate.iter().all(|hit| !deleted.contains(&hit.0)));
        let ids: std::collections::BTreeSet<u64> = approximate.iter().map(|hit| hit.0).collect();
        assert_eq!(ids.len(), approximate.len(), "duplicate ids");
    }
    assert!(
        found * 10 >= wanted * 9,
        "{mode}: recall {found} of {wanted}"
    );
    // The vector a shard serves for an id (the query of "similar to this
    // item") is the model's, and a deleted id has none.
    for (id, vector) in model {
        assert_eq!(
            shard.vector(*id).unwrap().as_ref(),
            Some(vector),
            "{mode:?}: {id}"
        );
    }
    for id in deleted {
        assert_eq!(shard.vector(*id).unwrap(), None, "{mode:?}: deleted {id}");
    }
    // HNSW is approximate: an upserted item must be among the ten nearest
    // to its own vector (this caught lost items under parallel insertion).
    for (id, vector) in model.iter().filter(|(id, _)| **id >= ITEMS as u64) {
        let near = shard.search(vector, 10, &[], false).unwrap();
        assert!(
            near.iter().any(|hit| hit.0 == *id),
            "{mode:?}: upserted {id} not found by its vector: {near:?}"
        );
    }
}

/// The packed copy of the mutable part answers exactly as the part itself (the
/// same graph, another layout); it is made once per change, and a change after it
/// is seen at once, the copy left unsearched until the next pack.
#[test]
fn a_packed_delta_answers_as_the_delta_and_never_hides_a_later_change() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, _) = live(dir.path(), LoadMode::Packed);
    assert!(!shard.pack_delta().unwrap(), "nothing to pack yet");
    let mut rng = StdRng::seed_from_u64(5);
    let upserts: Vec<ItemChange> = (0..300)
        .map(|i| ItemChange::Upsert {
            id: if i % 3 == 0 { i } else { ITEMS as u64 + i },
            vector: random_unit(&mut rng),
        })
        .collect();
    shard.apply(8, &upserts).unwrap();
    let queries = unit_vectors(20, 11);
    let answers = |shard: &LiveShard| -> Vec<Vec<Hit>> {
        queries
            .chunks(DIM)
            .map(|query| shard.search(query, 30, &[], false).unwrap())
            .collect()
    };
    let unpacked = answers(&shard);
    assert!(shard.pack_delta().unwrap());
    assert!(!shard.pack_delta().unwrap(), "the copy is current");
    assert_eq!(answers(&shard), unpacked);

    // Delete the best new item of the first query and add one at the query.
    let first = &queries[..DIM];
    let best_new = unpacked[0]
        .iter()
        .find(|hit| hit.0 >= ITEMS as u64)
        .expect("a new item among the first query's 30")
        .0;
    let at_query = ITEMS as u64 + 1_000;
    shard
        .apply(
            9,
            &[
                ItemChange::Delete { id: best_new },
                ItemChange::Upsert {
                    id: at_query,
                    vector: first.to_vec(),
                },
            ],
        )
        .unwrap();
    let after = shard.search(first, 30, &[], false).unwrap();
    assert_eq!(after[0].0, at_query, "{after:?}");
    assert!(after.iter().all(|hit| hit.0 != best_new), "{after:?}");
    assert!(shard.pack_delta().unwrap());
    assert_eq!(shard.search(first, 30, &[], false).unwrap(), after);
}

/// Exclusions hold in both parts, and a replayed or older revision changes nothing.
#[test]
fn exclusions_hold_and_replays_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, _) = live(dir.path(), LoadMode::Packed);
    let query = unit_vectors(1, 3);
    let new_item = ItemChange::Upsert {
        id: 90_000,
        vector: query.clone(),
    };
    assert_eq!(shard.apply(8, &[new_item]).unwrap(), Applied::Changed);
    let first = shard.search(&query, 10, &[], false).unwrap();
    assert_eq!(first[0].0, 90_000);
    let mut excluded: Vec<u64> = first.iter().take(4).map(|hit| hit.0).collect();
    excluded.sort_unstable();
    for exact in [false, true] {
        let second = shard.search(&query, 10, &excluded, exact).unwrap();
        assert_eq!(second.len(), 10);
        assert!(
            second
                .iter()
                .all(|hit| excluded.binary_search(&hit.0).is_err())
        );
    }
    let delete = ItemChange::Delete { id: 90_000 };
    assert_eq!(
        shard.apply(8, std::slice::from_ref(&delete)).unwrap(),
        Applied::Replayed
    );
    assert_eq!(
        shard.apply(3, std::slice::from_ref(&delete)).unwrap(),
        Applied::Replayed
    );
    assert_eq!(shard.search(&query, 1, &[], false).unwrap()[0].0, 90_000);
    assert_eq!(shard.apply(9, &[delete]).unwrap(), Applied::Changed);
    assert_ne!(shard.search(&query, 1, &[], false).unwrap()[0].0, 90_000);
}

/// A batch with one bad change is refused whole: nothing in it is applied and the
/// revision stays.
#[test]
fn a_bad_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path());
    // The same file declared as shard 0 of 2: about half the ids are foreign.
    let mut manifest = Manifest::load(dir.path()).unwrap();
    manifest.shard_count = 2;
    let mut second = manifest.shards[0].clone();
    second.shard = 1;
    manifest.shards.push(second);
    manifest.items *= 2;
    manifest.save(dir.path()).unwrap();
    let shard = LiveShard::new(ShardIndex::open(dir.path(), 0).unwrap(), 0).unwrap();
    let own = (0..).find(|id| shard_of(*id, 2) == 0).unwrap();
    let foreign = (0..).find(|id| shard_of(*id, 2) == 1).unwrap();
    let good = ItemChange::Delete { id: own };
    let cases = [
        (ItemChange::Delete { id: foreign }, "shard"),
        (
            ItemChange::Upsert {
                id: own,
                vector: vec![0.5; DIM - 1],
            },
            "dimensions",
        ),
        (
            ItemChange::Upsert {
                id: own,
                vector: vec![f32::NAN; DIM],
            },
            "non-finite",
        ),
    ];
    for (bad, words) in cases {
        let error = shard.apply(1, &[good.clone(), bad]).unwrap_err();
        assert!(error.to_string().contains(words), "{error}");
        assert_eq!(shard.stats().hidden, 0);
        assert_eq!(shard.revision(), 0);
    }
}

/// New items alike, all near one query: the delta holds most of that query's
/// best items, far more than its share of the shard suggests, and the search
/// must still find them (the narrow first search of the delta is widened).
#[test]
fn a_cluster_of_new_items_near_the_query_is_found_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, mut model) = live(dir.path(), LoadMode::Packed);
    let mut rng = StdRng::seed_from_u64(9);
    let center = random_unit(&mut rng);
    let batch: Vec<ItemChange> = (0..300)
        .map(|i| {
            let mut vector: Vec<f32> = center
                .iter()
                .map(|x| x + 0.05 * (rng.random::<f32>() - 0.5))
                .collect();
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            vector.iter_mut().for_each(|x| *x /= norm);
            ItemChange::Upsert {
                id: ITEMS as u64 + i,
                vector,
            }
        })
        .collect();
    shard.apply(8, &batch).unwrap();
    for change in batch {
        if let ItemChange::Upsert { id, vector } = change {
            model.insert(id, vector);
        }
    }
    let best = brute_force(&model, &center, 100);
    assert!(
        best.iter().all(|id| *id >= ITEMS as u64),
        "the cluster is the answer"
    );
    let found = shard.search(&center, 100, &[], false).unwrap();
    let overlap = found.iter().filter(|hit| best.contains(&hit.0)).count();
    assert!(overlap >= 90, "found {overlap} of the 100 best");
}

/// Random upserts (new ids and replacements) and deletes, as the model test's.
fn random_batch(rng: &mut StdRng, size: usize) -> Vec<ItemChange> {
    (0..size)
        .map(|_| {
            let id = rng.random_range(0..ITEMS as u64 + 400);
            if rng.random_bool(0.7) {
                ItemChange::Upsert {
                    id,
                    vector: random_unit(rng),
                }
            } else {
                ItemChange::Delete { id }
            }
        })
        .collect()
}

/// A fold is a function of the bundle and the changes alone: a replica that
/// folded after every batch and one that never did answer alike once both
/// folded the same revision (replicas must, whenever their log paused). A
/// change after a fold is seen at once, and exclusions hold in the fold.
#[test]
fn replicas_that_fold_at_different_times_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let (eager, _) = live(dir.path(), LoadMode::Packed);
    let (late, _) = live(dir.path(), LoadMode::Packed);
    assert!(!eager.fold(0).unwrap(), "nothing to fold yet");
    let mut rng = StdRng::seed_from_u64(3);
    for revision in 8..20 {
        let batch = random_batch(&mut rng, 150);
        eager.apply(revision, &batch).unwrap();
        late.apply(revision, &batch).unwrap();
        assert!(eager.fold(0).unwrap());
        assert!(!eager.fold(0).unwrap(), "the fold is current");
    }
    assert!(!late.fold(usize::MAX).unwrap(), "below the size asked for");
    assert!(late.fold(0).unwrap());
    let queries = unit_vectors(40, 13);
    for query in queries.chunks(DIM) {
        assert_eq!(
            eager.search(query, 30, &[], false).unwrap(),
            late.search(query, 30, &[], false).unwrap()
        );
    }

    // A new item at the first query, then a delete of the best one: each is
    // seen at once (from the fold's tail), and by the next fold.
    let first = &queries[..DIM];
    let at_query = ITEMS as u64 + 5_000;
    let upsert = ItemChange::Upsert {
        id: at_query,
        vector: first.to_vec(),
    };
    eager.apply(20, &[upsert]).unwrap();
    assert!(eager.folded(), "the fold stays in use beside its tail");
    assert_eq!(eager.search(first, 10, &[], false).unwrap()[0].0, at_query);
    assert!(eager.fold(0).unwrap());
    let folded = eager.search(first, 10, &[], false).unwrap();
    assert_eq!(folded[0].0, at_query);
    // Exclusions hold in the fold, and the answer stays full.
    let mut excluded: Vec<u64> = folded.iter().take(4).map(|hit| hit.0).collect();
    excluded.sort_unstable();
    let second = eager.search(first, 10, &excluded, false).unwrap();
    assert_eq!(second.len(), 10);
    assert!(
        second
            .iter()
            .all(|hit| excluded.binary_search(&hit.0).is_err())
    );
    eager
        .apply(21, &[ItemChange::Delete { id: at_query }])
        .unwrap();
    assert_ne!(eager.search(first, 10, &[], false).unwrap()[0].0, at_query);
    assert!(eager.fold(0).unwrap());
    assert!(
        eager
            .search(first, 10, &[], false)
            .unwrap()
            .iter()
            .all(|hit| hit.0 != at_query)
    );
}

/// Changes applied while a fold is being made land in its tail: once it is
/// in use, the shard answers for every change, made before, during or after.
#[test]
fn changes_during_a_fold_are_kept_in_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, mut model) = live(dir.path(), LoadMode::Packed);
    let mut rng = StdRng::seed_from_u64(21);
    let mut deleted = std::collections::BTreeSet::new();
    let mut record = |batch: &[ItemChange], model: &mut BTreeMap<u64, Vec<f32>>| {
        for change in batch {
            match change {
                ItemChange::Upsert { id, vector } => {
                    deleted.remove(id);
                    model.insert(*id, vector.clone());
                }
                ItemChange::Delete { id } => {
                    if model.remove(id).is_some() {
                        deleted.insert(*id);
                    }
                }
            }
        }
    };
    let before = random_batch(&mut rng, 400);
    shard.apply(8, &before).unwrap();
    record(&before, &mut model);
    let during: Vec<Vec<ItemChange>> = (0..20).map(|_| random_batch(&mut rng, 30)).collect();
    std::thread::scope(|scope| {
        let folding = scope.spawn(|| shard.fold(0).unwrap());
        for (revision, batch) in (9..).zip(&during) {
            shard.apply(revision, batch).unwrap();
        }
        assert!(folding.join().unwrap());
    });
    for batch in &during {
        record(batch, &mut model);
    }
    assert!(shard.folded());
    let after = random_batch(&mut rng, 50);
    shard.apply(40, &after).unwrap();
    record(&after, &mut model);
    assert!(shard.folded());
    check_against_model(&shard, &model, &deleted, 40, "fold with a tail");
}

/// The exact scan of given ids (a filtered search's fallback) scores what the
/// shard serves now: upserted vectors, no deleted or unknown id, each once,
/// as the model's brute force over the same ids.
#[test]
fn a_scan_of_given_ids_matches_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (shard, mut model) = live(dir.path(), LoadMode::Packed);
    let mut rng = StdRng::seed_from_u64(8);
    for revision in 8..14 {
        let batch = random_batch(&mut rng, 120);
        shard.apply(revision, &batch).unwrap();
        for change in batch {
            match change {
                ItemChange::Upsert { id, vector } => {
                    model.insert(id, vector);
                }
                ItemChange::Delete { id } => {
                    model.remove(&id);
                }
            }
        }
        if revision == 10 {
            assert!(shard.fold(0).unwrap());
        }
    }
    // Every other id up to past the new ones, some twice, some never held.
    let mut ids: Vec<u64> = (0..ITEMS as u64 + 500).step_by(2).collect();
    ids.extend([4, 6, 8, u64::MAX - 1]);
    let subset: BTreeMap<u64, Vec<f32>> = model
        .iter()
        .filter(|(id, _)| ids.contains(id))
        .map(|(id, v)| (*id, v.clone()))
        .collect();
    for query in unit_vectors(10, 19).chunks(DIM) {
        let got: Vec<u64> = shard
            .search_among(query, 15, &ids)
            .unwrap()
            .iter()
            .map(|hit| hit.0)
            .collect();
        assert_eq!(got, brute_force(&subset, query, 15));
    }
    assert!(shard.search_among(&[0.0; 3], 5, &ids).is_err());
}
