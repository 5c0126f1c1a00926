//! Factorized top-k accuracy over the whole catalog, as
//! `tfrs.metrics.FactorizedTopK` (`metrics/factorized_top_k.py`): for each
//! held-out (user, item), is the item among the k highest-scoring catalog items
//! for that user? Exact: every catalog item is scored (TFRS's tutorial uses a
//! brute-force index too).
//!
//! TFRS's score-based path prepends the positive's score to the retrieved top
//! scores and asks `tf.math.in_top_k`, which counts ties as in; so the item is a
//! hit at k when fewer than k catalog items score strictly higher. We count
//! those items directly. A held-out item outside the vocabulary is a miss.

use std::collections::{HashMap, HashSet};

use crate::dataset::Interaction;
use crate::error::Result;
use crate::two_tower::TwoTower;

/// TFRS's default cut-offs.
pub const TFRS_KS: [usize; 5] = [1, 5, 10, 50, 100];

/// Top-k accuracies at several k.
#[derive(Debug, Clone, PartialEq)]
pub struct TopKAccuracy {
    /// The cut-offs.
    pub ks: Vec<usize>,
    /// Fraction of interactions whose item ranked within each k.
    pub accuracy: Vec<f64>,
    /// Interactions evaluated.
    pub count: usize,
}

impl TopKAccuracy {
    /// `hits[j]` of `count` interactions ranked within `ks[j]` (an empty set
    /// counts as accuracy 0).
    fn from_hits(ks: &[usize], hits: &[usize], count: usize) -> Self {
        Self {
            ks: ks.to_vec(),
            accuracy: hits
                .iter()
                .map(|&h| h as f64 / count.max(1) as f64)
                .collect(),
            count,
        }
    }

    /// The accuracy at `k`, if it was measured.
    pub fn at(&self, k: usize) -> Option<f64> {
        self.ks
            .iter()
            .position(|&x| x == k)
            .map(|i| self.accuracy[i])
    }
}

/// Evaluates `interactions` against the full catalog, `batch` queries at a time.
pub fn factorized_top_k(
    model: &TwoTower,
    interactions: &[Interaction],
    ks: &[usize],
    batch: usize,
) -> Result<TopKAccuracy> {
    factorized_top_k_unseen(model, interactions, &[], ks, batch)
}

/// [`factorized_top_k`] with each user's items in `seen` (their training
/// interactions) left out of the catalog they are ranked against, as the
/// gateway leaves a user's history out of their answers (TFRS's
/// `query_with_exclusions`).
pub fn factorized_top_k_unseen(
    model: &TwoTower,
    interactions: &[Interaction],
    seen: &[Interaction],
    ks: &[usize],
    batch: usize,
) -> Result<TopKAccuracy> {
    let candidates = model.catalog_embeddings()?.t()?.contiguous()?;
    let pairs = model.encode(interactions);
    let mut seen_by_user: HashMap<u32, HashSet<usize>> = HashMap::new();
    for (user, item) in model.encode(seen) {
        if let Some(column) = (item as usize).checked_sub(1) {
            seen_by_user.entry(user).or_default().insert(column);
        }
    }
    let no_items = HashSet::new();
    let mut hits = vec![0usize; ks.len()];
    for chunk in pairs.chunks(batch.max(1)) {
        let users: Vec<u32> = chunk.iter().map(|p| p.0).collect();
        let scores = model.query_embeddings(&users)?.matmul(&candidates)?;
        let scores = scores.to_vec2::<f32>()?;
        for (row, &(user, item)) in scores.iter().zip(chunk) {
            let Some(positive_column) = (item as usize).checked_sub(1) else {
                continue;
            };
            let positive = row[positive_column];
            let seen = seen_by_user.get(&user).unwrap_or(&no_items);
            let above = row
                .iter()
                .enumerate()
                .filter(|&(column, &s)| {
                    s > positive && (column == positive_column || !seen.contains(&column))
                })
                .count();
            for (h, &k) in hits.iter_mut().zip(ks) {
                *h += usize::from(above < k);
            }
        }
    }
    Ok(TopKAccuracy::from_hits(ks, &hits, pairs.len()))
}

/// The popularity baseline: everyone gets the same list, the catalog's items in
/// order of their count in `train` (ties: smaller id first), and a held-out
/// item is a hit at k when it is among the first k. What a retrieval model has
/// to beat, since the metric rewards popular items: in MovieLens 100K the 100
/// most-rated movies hold about a third of the ratings.
pub fn popularity_top_k(
    train: &[Interaction],
    interactions: &[Interaction],
    ks: &[usize],
) -> TopKAccuracy {
    popularity_top_k_unseen(train, interactions, &[], ks)
}

/// [`popularity_top_k`] with each user's items in `seen` left out of the list
/// they get.
pub fn popularity_top_k_unseen(
    train: &[Interaction],
    interactions: &[Interaction],
    seen: &[Interaction],
    ks: &[usize],
) -> TopKAccuracy {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in train {
        *counts.entry(i.item.as_str()).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = counts.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(r, (item, _))| (*item, r))
        .collect();
    // Each user's seen items' places in the list: an item moves up by those
    // before it.
    let mut seen_ranks: HashMap<&str, HashSet<usize>> = HashMap::new();
    for i in seen {
        if let Some(&r) = rank.get(i.item.as_str()) {
            seen_ranks.entry(i.user.as_str()).or_default().insert(r);
        }
    }
    let mut hits = vec![0usize; ks.len()];
    for i in interactions {
        let Some(&r) = rank.get(i.item.as_str()) else {
            continue;
        };
        let r = r - seen_ranks
            .get(i.user.as_str())
            .map_or(0, |ranks| ranks.iter().filter(|&&s| s < r).count());
        for (h, &k) in hits.iter_mut().zip(ks) {
            *h += usize::from(r < k);
        }
    }
    TopKAccuracy::from_hits(ks, &hits, interactions.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rating(user: &str, item: &str) -> Interaction {
        Interaction {
            user: user.into(),
            item: item.into(),
            rating: None,
            timestamp: None,
        }
    }

    #[test]
    fn popularity_ranks_by_training_count_then_id() {
        // Counts: b 3, a 2, c 2, d 1; order b, a, c, d.
        let train: Vec<Interaction> = ["b", "a", "b", "c", "a", "b", "c", "d"]
            .iter()
            .map(|i| rating("u", i))
            .collect();
        let test = [rating("v", "c"), rating("v", "b"), rating("v", "e")];
        let acc = popularity_top_k(&train, &test, &[1, 2, 3, 10]);
        assert_eq!(acc.count, 3);
        assert_eq!(
            acc.accuracy,
            vec![1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]
        );
        // v has seen b and a: c moves up to first, b (seen and held out) keeps
        // its place, e is unknown.
        let seen = [rating("v", "b"), rating("v", "a")];
        let acc = popularity_top_k_unseen(&train, &test, &seen, &[1, 2, 3, 10]);
        assert_eq!(
            acc.accuracy,
            vec![2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0, 2.0 / 3.0]
        );
    }
}
