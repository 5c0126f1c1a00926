//! Multi-objective rankers ([`crate::dcn_v2`]'s `heads`): every head's score
//! beside the combined one, and per-request weights.
//!
//! A forward pass yields `(rows, heads)` head scores. The combined score, the
//! one candidates are ordered by, is `Σ weight_h · score_h` with the config's
//! weights; a request may override some of them (within
//! [`MAX_HEAD_WEIGHT`]), which recombines the same head scores and costs no
//! second pass. A single-output ranker has no heads to report: its score is
//! the combined score.

use std::collections::HashMap;

use super::{RankError, Ranker, Scores};
use crate::{HeadSpec, MAX_HEAD_WEIGHT};

impl Ranker {
    /// The heads of a multi-objective ranker, in the order of
    /// [`Scores::head_scores`]; empty for a single-output ranker.
    pub fn heads(&self) -> &[HeadSpec] {
        &self.config.dcn.heads
    }

    /// The combined score's weights, head by head: the config's, with
    /// `overrides` (by head name) in their place. Refused, naming the field
    /// and the limit, as the gateway refuses them
    /// (`recsys_bundle::ranker_inputs::head_weights`).
    pub fn head_weights(&self, overrides: &HashMap<String, f32>) -> Result<Vec<f64>, RankError> {
        let heads: Vec<(String, f64)> = self
            .heads()
            .iter()
            .map(|h| (h.name.clone(), h.weight))
            .collect();
        recsys_bundle::ranker_inputs::head_weights(&heads, overrides, MAX_HEAD_WEIGHT)
            .map_err(|reason| RankError::HeadWeights(format!("head_weights: {reason}")))
    }

    /// `scores` with its combined scores recomputed from its head scores with
    /// `weights` ([`Ranker::head_weights`]); unchanged for a single output.
    pub fn reweigh(&self, scores: &mut Scores, weights: &[f64]) {
        if weights.is_empty() || scores.head_scores.is_empty() {
            return;
        }
        scores.scores = combine(&scores.head_scores, weights);
    }

    /// Combined scores and the head scores (empty for a single output) of a
    /// pass's flattened `(rows, heads)` output.
    pub(super) fn split_heads(&self, flat: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
        if self.heads().is_empty() {
            return (flat, Vec::new());
        }
        let weights: Vec<f64> = self.heads().iter().map(|h| h.weight).collect();
        (combine(&flat, &weights), flat)
    }
}

/// `Σ weight_h · score_h` per row of row-major `head_scores`, in f64.
fn combine(head_scores: &[f32], weights: &[f64]) -> Vec<f32> {
    head_scores
        .chunks_exact(weights.len())
        .map(|row| {
            row.iter()
                .zip(weights)
                .map(|(&s, &w)| f64::from(s) * w)
                .sum::<f64>() as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::combine;

    #[test]
    fn combine_weighs_each_row() {
        assert_eq!(combine(&[1.0, 0.5, 4.0, 0.25], &[0.5, 2.0]), vec![1.5, 2.5]);
    }
}
