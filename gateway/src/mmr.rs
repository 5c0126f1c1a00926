//! Maximal marginal relevance (Carbonell and Goldstein, 1998) over the
//! candidates' item vectors (issue 19, part 3): the answer is picked one item
//! at a time, each the candidate with the best
//! `λ · relevance − (1 − λ) · (its highest cosine similarity to an item
//! already picked)`, so λ = 1 is the ranking order and smaller λ trades
//! relevance for items unlike the ones above them.
//!
//! Relevance is the ranking score when the answer is ranked, else the
//! retrieval score, scaled to [0, 1] over the candidates (the two terms must
//! share a scale for λ to mean the same for every ranker). The vectors come
//! back with the shards' answers (`SearchRequest.return_vectors`); a candidate
//! without one (kept from a session) is unlike every other.

use std::collections::HashMap;

use recsys_proto::v1::RecommendedItem;

use crate::GatewayError;

/// Most candidates an MMR answer considers: each pick compares every candidate
/// with the last one picked, so the cost is `k · candidates · dimensions`.
pub const MAX_MMR_CANDIDATES: u32 = 1_000;

/// Checks a request's λ: a finite number from 0 to 1.
pub fn check_lambda(lambda: f32) -> Result<f32, GatewayError> {
    if lambda.is_finite() && (0.0..=1.0).contains(&lambda) {
        Ok(lambda)
    } else {
        Err(GatewayError::invalid(
            "diversity.mmr_lambda",
            format!("is {lambda}, must be between 0 and 1"),
        ))
    }
}

/// The first `k` of `items` (best first) in MMR order with weight `lambda`.
pub fn reorder(
    items: Vec<RecommendedItem>,
    vectors: &HashMap<u64, Vec<f32>>,
    lambda: f32,
    k: usize,
) -> Vec<RecommendedItem> {
    let relevance: Vec<f32> = items
        .iter()
        .map(|item| item.ranking_score.unwrap_or(item.retrieval_score))
        .collect();
    let (low, high) = relevance
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), r| {
            (lo.min(*r), hi.max(*r))
        });
    let span = high - low;
    let scaled: Vec<f32> = relevance
        .iter()
        .map(|r| if span > 0.0 { (r - low) / span } else { 1.0 })
        .collect();
    let unit: Vec<Option<Vec<f32>>> = items
        .iter()
        .map(|item| vectors.get(&item.item_id).and_then(|v| normalized(v)))
        .collect();
    // Each candidate's highest similarity to an item picked so far.
    let mut nearest = vec![f32::NEG_INFINITY; items.len()];
    let mut picked = vec![false; items.len()];
    let mut order = Vec::with_capacity(k.min(items.len()));
    while order.len() < k.min(items.len()) {
        let mut best: Option<(usize, f32)> = None;
        for (i, done) in picked.iter().enumerate() {
            if *done {
                continue;
            }
            let penalty = if order.is_empty() {
                0.0
            } else {
                nearest[i].max(0.0)
            };
            let value = lambda * scaled[i] - (1.0 - lambda) * penalty;
            // Ties keep the earlier (better ranked) candidate.
            if best.is_none_or(|(_, b)| value > b) {
                best = Some((i, value));
            }
        }
        let Some((chosen, _)) = best else { break };
        picked[chosen] = true;
        order.push(chosen);
        if let Some(v) = &unit[chosen] {
            for (i, other) in unit.iter().enumerate() {
                if let (false, Some(o)) = (picked[i], other) {
                    let similarity: f32 = v.iter().zip(o).map(|(a, b)| a * b).sum();
                    nearest[i] = nearest[i].max(similarity);
                }
            }
        }
    }
    let mut items: Vec<Option<RecommendedItem>> = items.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| items[i].take()).collect()
}

/// `v` scaled to unit length, or `None` for a zero vector.
fn normalized(v: &[f32]) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (norm > 0.0 && norm.is_finite()).then(|| v.iter().map(|x| x / norm).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: u64, score: f32) -> RecommendedItem {
        RecommendedItem {
            item_id: id,
            ranking_score: Some(score),
            ..Default::default()
        }
    }

    fn vectors() -> HashMap<u64, Vec<f32>> {
        // 1 and 2 are the same direction, 3 is orthogonal to both.
        HashMap::from([
            (1, vec![1.0, 0.0]),
            (2, vec![2.0, 0.01]),
            (3, vec![0.0, 1.0]),
        ])
    }

    fn ids(items: &[RecommendedItem]) -> Vec<u64> {
        items.iter().map(|i| i.item_id).collect()
    }

    #[test]
    fn lambda_one_is_the_ranking_order_and_lower_lambdas_spread_the_answer() {
        let items = vec![item(1, 0.9), item(2, 0.8), item(3, 0.5)];
        assert_eq!(
            ids(&reorder(items.clone(), &vectors(), 1.0, 3)),
            vec![1, 2, 3]
        );
        // The near-copy of the first item drops below the unlike one.
        assert_eq!(
            ids(&reorder(items.clone(), &vectors(), 0.5, 3)),
            vec![1, 3, 2]
        );
        assert_eq!(ids(&reorder(items, &vectors(), 0.5, 2)), vec![1, 3]);
    }

    #[test]
    fn a_candidate_without_a_vector_is_unlike_every_other() {
        let items = vec![item(1, 0.9), item(2, 0.8), item(4, 0.7)];
        assert_eq!(ids(&reorder(items, &vectors(), 0.5, 3)), vec![1, 4, 2]);
    }

    #[test]
    fn lambdas_outside_zero_to_one_are_refused_by_name() {
        for lambda in [-0.1, 1.5, f32::NAN] {
            let error = check_lambda(lambda).unwrap_err().to_string();
            assert!(error.contains("diversity.mmr_lambda"), "{error}");
        }
        assert_eq!(check_lambda(0.0).unwrap(), 0.0);
    }

    proptest::proptest! {
        /// MMR returns k distinct candidates, whatever the scores and vectors.
        #[test]
        fn mmr_picks_k_distinct_candidates(
            scores in proptest::collection::vec(-10.0f32..10.0, 0..30),
            lambda in 0.0f32..=1.0,
            k in 0usize..40,
        ) {
            let items: Vec<RecommendedItem> =
                scores.iter().enumerate().map(|(i, s)| item(i as u64, *s)).collect();
            let vectors: HashMap<u64, Vec<f32>> = (0..scores.len() as u64)
                .map(|i| (i, vec![(i % 3) as f32, (i % 5) as f32, 1.0]))
                .collect();
            let picked = reorder(items, &vectors, lambda, k);
            proptest::prop_assert_eq!(picked.len(), k.min(scores.len()));
            let mut seen = ids(&picked);
            seen.sort_unstable();
            seen.dedup();
            proptest::prop_assert_eq!(seen.len(), picked.len());
        }
    }
}
