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
    let count = pairs.len();
    Ok(TopKAccuracy {
        ks: ks.to_vec(),
        accuracy: hits
            .iter()
            .map(|&h| h as f64 / count.max(1) as f64)
            .collect(),
        count,
    })
}
