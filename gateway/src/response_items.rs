//! The items of a `Recommend` answer: merged candidates, with ranking scores when
//! ranked, named from the bundle's catalog.
//!
//! Naming dominated the gateway's own time: with a 200 000-item catalog, each
//! name is a hash probe and a string read at random places in memory, two or
//! three cache misses per item, 40 µs of a k = 100 answer in `perf`
//! (docs/benchmarks.md). [`names`] therefore looks every name up first and reads
//! them all second, so that the misses of different items overlap instead of
//! queueing one behind the other with the allocation and copy of each item.

use recsys_proto::v1::RecommendedItem;

use crate::catalog_overlay::Names;
use crate::merge::Candidate;
use crate::session::SessionPlan;

/// The names of `ids` in order (empty where the catalog has none), with their
/// bytes already brought into cache.
pub fn names<'a>(catalog: &'a Names<'_>, ids: impl Iterator<Item = u64>) -> Vec<&'a str> {
    // A loop of look-ups only: iterations are independent, so the CPU runs the
    // probes of several items at once.
    let names: Vec<&str> = ids.map(|id| catalog.name(id)).collect();
    // One load per name, independent of each other: the misses on the string
    // bytes all overlap, and the copies that follow hit the cache.
    let touched = names.iter().fold(0u8, |acc, name| {
        acc ^ name.as_bytes().first().copied().unwrap_or(0)
    });
    std::hint::black_box(touched);
    names
}

/// The first `k` merged candidates as response items, in retrieval order.
pub fn retrieval_items(merged: &[Candidate], k: u32, catalog: &Names<'_>) -> Vec<RecommendedItem> {
    let merged = &merged[..merged.len().min(k as usize)];
    let names = names(catalog, merged.iter().map(|c| c.item_id));
    merged
        .iter()
        .zip(names)
        .enumerate()
        .map(|(rank, (candidate, name))| RecommendedItem {
            item_id: candidate.item_id,
            name: name.to_string(),
            retrieval_score: candidate.score,
            retrieval_rank: rank as u32,
            ranking_score: None,
            from_session: false,
            head_scores: Vec::new(),
        })
        .collect()
}

/// The `k` candidates with the best ranking scores (ties: better retrieval rank),
/// with both scores, the retrieval rank and, from a multi-objective ranker,
/// the head scores. `scores` is parallel to `merged`; `head_scores` holds
/// `heads` values per candidate (none for a single-output ranker).
pub fn ranked_items(
    merged: &[Candidate],
    scores: &[f32],
    (heads, head_scores): (usize, &[f32]),
    k: u32,
    catalog: &Names<'_>,
) -> Vec<RecommendedItem> {
    let mut order: Vec<usize> = (0..merged.len().min(scores.len())).collect();
    // A non-finite score (a broken model) ranks last rather than first.
    let key = |i: usize| {
        if scores[i].is_finite() {
            scores[i]
        } else {
            f32::NEG_INFINITY
        }
    };
    // A total order (ties broken by retrieval rank), so selecting the best k
    // and sorting only them gives the full sort's first k: a two-stage request
    // ranks hundreds of candidates for an answer of ten.
    let by_score = |a: &usize, b: &usize| key(*b).total_cmp(&key(*a)).then(a.cmp(b));
    let k = k as usize;
    if k < order.len() {
        // Everything before index k then ranks above what is at k.
        order.select_nth_unstable_by(k, by_score);
        order.truncate(k);
    }
    order.sort_unstable_by(by_score);
    let names = names(catalog, order.iter().map(|&i| merged[i].item_id));
    order
        .into_iter()
        .zip(names)
        .map(|(i, name)| RecommendedItem {
            item_id: merged[i].item_id,
            name: name.to_string(),
            retrieval_score: merged[i].score,
            retrieval_rank: i as u32,
            ranking_score: Some(scores[i]),
            from_session: false,
            head_scores: head_scores
                .get(i * heads..(i + 1) * heads)
                .unwrap_or_default()
                .to_vec(),
        })
        .collect()
}

/// The answer's `items` merged with what `session` was shown (or the next
/// page of it), with the next token and the note (`crate::session`).
pub fn continue_session(
    session: SessionPlan,
    items: Vec<RecommendedItem>,
    ranked: bool,
    k: u32,
    catalog: &Names<'_>,
) -> (Vec<RecommendedItem>, Vec<u8>, String) {
    let score = |item: &RecommendedItem| match (ranked, item.ranking_score) {
        (true, Some(score)) => score,
        _ => item.retrieval_score,
    };
    let answer: Vec<(u64, f32)> = items
        .iter()
        .map(|item| (item.item_id, score(item)))
        .collect();
    let (merged, token, note) =
        session.finish(&answer, ranked, k as usize, |id| catalog.deleted(id));
    let mut by_id: std::collections::HashMap<u64, RecommendedItem> =
        items.into_iter().map(|item| (item.item_id, item)).collect();
    let items = merged
        .into_iter()
        .map(|(id, score, from_session)| match by_id.remove(&id) {
            Some(item) if !from_session => item,
            _ => RecommendedItem {
                item_id: id,
                name: catalog.name(id).to_string(),
                retrieval_score: if ranked { 0.0 } else { score },
                retrieval_rank: 0,
                ranking_score: ranked.then_some(score),
                from_session: true,
                head_scores: Vec::new(),
            },
        })
        .collect();
    (items, token, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use recsys_bundle::Catalog;

    fn catalog() -> Catalog {
        Catalog::from_pairs([(1, "one".to_string()), (2, "two".to_string())])
    }

    fn candidates(ids_scores: &[(u64, f32)]) -> Vec<Candidate> {
        ids_scores
            .iter()
            .map(|&(item_id, score)| Candidate { item_id, score })
            .collect()
    }

    #[test]
    fn retrieval_items_keep_order_names_and_ranks() {
        let merged = candidates(&[(2, 0.9), (7, 0.5), (1, 0.1)]);
        let items = retrieval_items(&merged, 2, &Names::of_catalog(&catalog()));
        let got: Vec<_> = items
            .iter()
            .map(|i| {
                (
                    i.item_id,
                    i.name.as_str(),
                    i.retrieval_rank,
                    i.ranking_score,
                )
            })
            .collect();
        assert_eq!(got, [(2, "two", 0, None), (7, "", 1, None)]);
        assert_eq!(
            retrieval_items(&merged, 10, &Names::of_catalog(&catalog())).len(),
            3
        );
    }

    #[test]
    fn ranked_items_sort_by_score_then_retrieval_rank_and_nan_last() {
        let merged = candidates(&[(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]);
        let scores = [0.5, f32::NAN, 0.5, 0.9];
        let items = ranked_items(
            &merged,
            &scores,
            (0, &[]),
            4,
            &Names::of_catalog(&catalog()),
        );
        let got: Vec<_> = items
            .iter()
            .map(|i| (i.item_id, i.name.as_str(), i.retrieval_rank))
            .collect();
        assert_eq!(got, [(4, "", 3), (1, "one", 0), (3, "", 2), (2, "two", 1)]);
        assert_eq!(
            ranked_items(
                &merged,
                &scores,
                (0, &[]),
                1,
                &Names::of_catalog(&catalog())
            )[0]
            .item_id,
            4
        );
    }

    proptest! {
        /// The selection of the best k gives the full stable sort's first k,
        /// ties and NaNs included.
        #[test]
        fn ranked_items_are_the_full_sorts_first_k(
            scores in prop::collection::vec(
                prop_oneof![(0u8..4).prop_map(|s| f32::from(s) / 4.0), prop::num::f32::ANY],
                0..40,
            ),
            k in 0u32..50,
        ) {
            let merged = candidates(
                &scores.iter().enumerate().map(|(i, _)| (i as u64, 0.0)).collect::<Vec<_>>(),
            );
            let key = |s: f32| if s.is_finite() { s } else { f32::NEG_INFINITY };
            let mut expected: Vec<usize> = (0..scores.len()).collect();
            expected.sort_by(|&a, &b| key(scores[b]).total_cmp(&key(scores[a])));
            expected.truncate(k as usize);
            let got: Vec<usize> = ranked_items(&merged, &scores, (0, &[]), k, &Names::of_catalog(&catalog()))
                .iter()
                .map(|i| i.retrieval_rank as usize)
                .collect();
            prop_assert_eq!(got, expected);
        }
    }
}
