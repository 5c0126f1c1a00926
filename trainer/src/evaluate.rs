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
    let candidates = model.catalog_embeddings()?.t()?.contiguous()?;
    let pairs = model.encode(interactions);
    let mut hits = vec![0usize; ks.len()];
    for chunk in pairs.chunks(batch.max(1)) {
        let users: Vec<u32> = chunk.iter().map(|p| p.0).collect();
        let scores = model.query_embeddings(&users)?.matmul(&candidates)?;
        let scores = scores.to_vec2::<f32>()?;
        for (row, &(_, item)) in scores.iter().zip(chunk) {
            let Some(positive) = (item as usize).checked_sub(1).map(|i| row[i]) else {
                continue;
            };
            let above = row.iter().filter(|&&s| s > positive).count();
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
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for i in train {
        *counts.entry(i.item.as_str()).or_default() += 1;
    }
    let mut order: Vec<(&str, usize)> = counts.into_iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let rank: std::collections::HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(r, (item, _))| (*item, r))
        .collect();
    let mut hits = vec![0usize; ks.len()];
    for i in interactions {
        let Some(&r) = rank.get(i.item.as_str()) else {
            continue;
        };
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
    }
}
