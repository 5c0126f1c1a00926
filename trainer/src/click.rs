//! Click-through ranking (issue 20, part 1): the objective a ranker is trained
//! for, implicit-feedback data with sampled negatives, and the metrics CTR
//! models are judged by (AUC, log loss, calibration).
//!
//! The data follows the usual recipe for implicit feedback (TFRS's DCN
//! tutorial on Criteo-like data, and the "MovieLens as clicks" setups of the
//! CTR literature): every rating is a click (label 1) and, per click, a number
//! of movies the user never rated, drawn uniformly from the catalog with a
//! seeded generator, are shown-and-not-clicked (label 0). The test split gets
//! its own negatives, never an item the user rated anywhere.

use std::collections::{HashMap, HashSet};

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Interaction;
use crate::error::{Result, TrainerError};

/// What a ranker is trained to predict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// The star rating: mean squared error, judged by RMSE; the served score is
    /// the predicted rating.
    #[default]
    Rating,
    /// Whether the user clicks: binary cross-entropy on the logit, judged by
    /// AUC and log loss; the served score is the probability (a sigmoid head).
    Click,
}

impl Objective {
    /// The served network's head.
    pub fn head(self) -> recsys_model::dcn_v2::Head {
        match self {
            Self::Rating => recsys_model::dcn_v2::Head::Regression,
            Self::Click => recsys_model::dcn_v2::Head::Logit,
        }
    }

    /// The training loss of raw outputs `raw` against `labels` (ratings, or 0/1).
    pub fn loss(self, raw: &Tensor, labels: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Rating => (raw - labels)?.sqr()?.mean_all()?,
            Self::Click => binary_cross_entropy_with_logits(raw, labels)?,
        })
    }

    /// The per-epoch metric from the mean loss: RMSE for ratings, log loss for clicks.
    pub fn metric(self, mean_loss: f64) -> f64 {
        match self {
            Self::Rating => mean_loss.sqrt(),
            Self::Click => mean_loss,
        }
    }

    /// Its name: a multi-objective ranker's head name, and the flag's value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rating => "rating",
            Self::Click => "click",
        }
    }

    /// The metric's name in progress lines.
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::Rating => "RMSE",
            Self::Click => "log loss",
        }
    }
}

/// Mean of `max(z, 0) − z·y + ln(1 + e^−|z|)`: the cross-entropy of
/// `sigmoid(z)` against `y`, without overflow for large |z|.
fn binary_cross_entropy_with_logits(z: &Tensor, y: &Tensor) -> candle_core::Result<Tensor> {
    let softplus_tail = (z.abs()?.neg()?.exp()? + 1.0)?.log()?;
    (z.relu()? - (z * y)?)?.add(&softplus_tail)?.mean_all()
}

/// `positives` as clicks (label 1) followed by `per_positive` sampled
/// non-clicks (label 0) each: items of `catalog` the user has no interaction
/// with in `seen`, drawn uniformly with the seeded `stream` of `seed`.
pub fn with_sampled_negatives(
    positives: &[Interaction],
    seen: &HashMap<String, HashSet<String>>,
    catalog: &[String],
    per_positive: usize,
    seed: u64,
    stream: u64,
) -> Result<Vec<Interaction>> {
    let mut out: Vec<Interaction> = positives
        .iter()
        .map(|p| Interaction {
            rating: Some(1.0),
            ..p.clone()
        })
        .collect();
    let negatives = sampled_negatives(positives, seen, catalog, per_positive, seed, stream)?;
    out.extend(negatives.into_iter().map(|n| Interaction {
        rating: Some(0.0),
        ..n
    }));
    Ok(out)
}

/// The non-clicks [`with_sampled_negatives`] draws (the same ones, for the
/// same arguments), unrated: a multi-objective ranker's negatives, beside
/// positives that keep their stars.
pub fn sampled_negatives(
    positives: &[Interaction],
    seen: &HashMap<String, HashSet<String>>,
    catalog: &[String],
    per_positive: usize,
    seed: u64,
    stream: u64,
) -> Result<Vec<Interaction>> {
    let mut out = Vec::with_capacity(positives.len() * per_positive);
    if per_positive == 0 {
        return Ok(out);
    }
    if catalog.is_empty() {
        return Err(TrainerError::Empty("no catalog to draw negatives from"));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let empty = HashSet::new();
    for positive in positives {
        let rated = seen.get(&positive.user).unwrap_or(&empty);
        if rated.len() >= catalog.len() {
            continue;
        }
        for _ in 0..per_positive {
            // Rejection sampling: users rate a small share of the catalog.
            let item = loop {
                let candidate = &catalog[rng.random_range(0..catalog.len())];
                if !rated.contains(candidate) {
                    break candidate;
                }
            };
            out.push(Interaction {
                user: positive.user.clone(),
                item: item.clone(),
                rating: None,
                timestamp: positive.timestamp,
            });
        }
    }
    Ok(out)
}

/// The items each user interacted with.
pub fn seen_by_user(interactions: &[Interaction]) -> HashMap<String, HashSet<String>> {
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for i in interactions {
        seen.entry(i.user.clone())
            .or_default()
            .insert(i.item.clone());
    }
    seen
}

/// Labels of `interactions` as 0/1 (their `rating`), refusing anything else:
/// a generic CSV's label column for `--negatives 0`.
pub fn labels(interactions: &[Interaction]) -> Result<Vec<f32>> {
    interactions
        .iter()
        .map(|i| match i.rating {
            Some(label) if label == 0.0 || label == 1.0 => Ok(label),
            other => Err(TrainerError::InvalidConfig {
                field: "label",
                reason: format!(
                    "a click label is 0 or 1; ({}, {}) has {other:?}",
                    i.user, i.item
                ),
            }),
        })
        .collect()
}

/// How well predicted click probabilities match 0/1 labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClickMetrics {
    /// Area under the ROC curve (ties count half): the chance a random click
    /// scores above a random non-click.
    pub auc: f64,
    /// Mean binary cross-entropy (probabilities clamped to [1e-7, 1 − 1e-7]).
    pub log_loss: f64,
    /// The mean predicted probability.
    pub mean_predicted: f64,
    /// The observed click rate.
    pub observed_rate: f64,
    /// Ten buckets by predicted probability, equal in size: (mean predicted,
    /// observed rate, examples), lowest first.
    pub calibration: Vec<(f64, f64, usize)>,
}

/// Metrics of `probabilities` against `labels` (0 or 1).
pub fn click_metrics(probabilities: &[f32], labels: &[f32]) -> Result<ClickMetrics> {
    if probabilities.len() != labels.len() || labels.is_empty() {
        return Err(TrainerError::Empty("no labelled predictions to evaluate"));
    }
    let n = labels.len() as f64;
    let positives = labels.iter().filter(|&&l| l > 0.5).count();
    let negatives = labels.len() - positives;
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probabilities[a].total_cmp(&probabilities[b]));
    // Mann–Whitney U with average ranks over ties.
    let mut rank_sum = 0.0f64;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && probabilities[order[end]] == probabilities[order[start]] {
            end += 1;
        }
        let average_rank = (start + end + 1) as f64 / 2.0;
        rank_sum += order[start..end]
            .iter()
            .filter(|&&i| labels[i] > 0.5)
            .count() as f64
            * average_rank;
        start = end;
    }
    let auc = if positives == 0 || negatives == 0 {
        f64::NAN
    } else {
        let p = positives as f64;
        (rank_sum - p * (p + 1.0) / 2.0) / (p * negatives as f64)
    };
    let log_loss = probabilities
        .iter()
        .zip(labels)
        .map(|(&p, &y)| {
            let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
            if y > 0.5 { -p.ln() } else { -(1.0 - p).ln() }
        })
        .sum::<f64>()
        / n;
    let buckets = 10.min(order.len());
    let calibration = (0..buckets)
        .map(|b| {
            let slice = &order[b * order.len() / buckets..(b + 1) * order.len() / buckets];
            let count = slice.len().max(1) as f64;
            let predicted = slice
                .iter()
                .map(|&i| f64::from(probabilities[i]))
                .sum::<f64>()
                / count;
            let observed = slice.iter().filter(|&&i| labels[i] > 0.5).count() as f64 / count;
            (predicted, observed, slice.len())
        })
        .collect();
    Ok(ClickMetrics {
        auc,
        log_loss,
        mean_predicted: probabilities.iter().map(|&p| f64::from(p)).sum::<f64>() / n,
        observed_rate: positives as f64 / n,
        calibration,
    })
}

/// The popularity baseline: each item's click rate in `train` (Laplace
/// smoothed, `(clicks + 1) / (shown + 2)`), as the probability for every user.
pub fn popularity_probabilities(train: &[Interaction], evaluated: &[Interaction]) -> Vec<f32> {
    let mut counts: HashMap<&str, (f64, f64)> = HashMap::new();
    for i in train {
        let entry = counts.entry(i.item.as_str()).or_default();
        entry.0 += f64::from(i.rating.unwrap_or(0.0));
        entry.1 += 1.0;
    }
    evaluated
        .iter()
        .map(|i| {
            let (clicks, shown) = counts.get(i.item.as_str()).copied().unwrap_or_default();
            ((clicks + 1.0) / (shown + 2.0)) as f32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interaction(user: &str, item: &str, label: f32) -> Interaction {
        Interaction {
            user: user.into(),
            item: item.into(),
            rating: Some(label),
            timestamp: None,
        }
    }

    #[test]
    fn auc_counts_ordered_pairs_and_ties_half() {
        let m = click_metrics(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((m.auc - 0.75).abs() < 1e-12, "{}", m.auc);
        let tied = click_metrics(&[0.5, 0.5], &[0.0, 1.0]).unwrap();
        assert!((tied.auc - 0.5).abs() < 1e-12);
        let perfect = click_metrics(&[0.1, 0.9], &[0.0, 1.0]).unwrap();
        assert!((perfect.auc - 1.0).abs() < 1e-12);
        assert!((perfect.log_loss - (-(0.9f64).ln())).abs() < 1e-6);
        assert!((perfect.observed_rate - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_loss_is_the_cross_entropy_of_the_sigmoid_even_for_large_logits() {
        let device = candle_core::Device::Cpu;
        let z = Tensor::new(&[0.0f32, 2.0, -3.0, 80.0, -80.0], &device).unwrap();
        let y = Tensor::new(&[1.0f32, 0.0, 0.0, 1.0, 0.0], &device).unwrap();
        let loss = Objective::Click
            .loss(&z, &y)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let expected = [
            -(sigmoid(0.0)).ln(),
            -(1.0 - sigmoid(2.0)).ln(),
            -(1.0 - sigmoid(-3.0)).ln(),
            0.0,
            0.0,
        ]
        .iter()
        .sum::<f64>()
            / 5.0;
        assert!(
            (f64::from(loss) - expected).abs() < 1e-5,
            "{loss} {expected}"
        );
    }

    #[test]
    fn negatives_are_unseen_items_and_reproducible() {
        let positives = vec![interaction("u", "a", 5.0), interaction("u", "b", 3.0)];
        let catalog: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let seen = seen_by_user(&positives);
        let one = with_sampled_negatives(&positives, &seen, &catalog, 3, 7, 1).unwrap();
        assert_eq!(one.len(), 2 + 6);
        assert!(one[..2].iter().all(|i| i.rating == Some(1.0)));
        assert!(
            one[2..]
                .iter()
                .all(|i| i.rating == Some(0.0) && !["a", "b"].contains(&i.item.as_str()))
        );
        assert_eq!(
            one,
            with_sampled_negatives(&positives, &seen, &catalog, 3, 7, 1).unwrap()
        );
        assert_ne!(
            one,
            with_sampled_negatives(&positives, &seen, &catalog, 3, 7, 2).unwrap()
        );
    }

    #[test]
    fn labels_must_be_zero_or_one() {
        assert!(labels(&[interaction("u", "a", 1.0), interaction("u", "b", 0.0)]).is_ok());
        let error = labels(&[interaction("u", "a", 4.0)])
            .unwrap_err()
            .to_string();
        assert!(error.contains("0 or 1"), "{error}");
    }

    #[test]
    fn popularity_is_the_smoothed_click_rate_of_the_item() {
        let train = vec![
            interaction("u", "a", 1.0),
            interaction("v", "a", 1.0),
            interaction("w", "a", 0.0),
            interaction("u", "b", 0.0),
        ];
        let p = popularity_probabilities(
            &train,
            &[interaction("x", "a", 1.0), interaction("x", "z", 0.0)],
        );
        assert!((p[0] - 3.0 / 5.0).abs() < 1e-6);
        assert!((p[1] - 0.5).abs() < 1e-6);
    }
}
