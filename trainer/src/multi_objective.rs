//! Multi-objective ranking (issue 20, part 2): one DCN-V2 trunk, a head per
//! objective, trained jointly on a weighted sum of the objectives' losses, as
//! TFRS's multitask tutorial trains its rating and retrieval tasks
//! (`loss = rating_weight · rating_loss + retrieval_weight · retrieval_loss`).
//!
//! The data are click examples ([`crate::click`]) that keep their stars: a
//! rated interaction is a click whose rating the rating head learns; an
//! unrated one (a sampled non-click) teaches the click head only. So the
//! rating head's loss is the squared error over the rated examples of a batch,
//! the click head's the cross-entropy over all of them.
//!
//! Served, each head's score is its output (rating) or the output's sigmoid
//! (click), and candidates are ordered by `Σ weight_h · score_h`
//! ([`recsys_model::dcn_v2`]); the weights are the served config's, and a
//! request may override them.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::click::Objective;
use crate::dataset::Interaction;
use crate::error::{Result, TrainerError};
use crate::ranking_model::{Encoded, RankingModel};

/// One head of a multi-objective ranker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainedHead {
    /// What the head predicts; it names the head (`rating`, `click`).
    pub objective: Objective,
    /// Its loss's weight in the training loss.
    pub loss_weight: f64,
    /// Its score's weight in the served, combined score.
    pub weight: f64,
}

impl TrainedHead {
    /// The served network's description of the head.
    pub fn spec(&self) -> recsys_model::HeadSpec {
        recsys_model::HeadSpec {
            name: self.objective.name().to_string(),
            kind: self.objective.head(),
            weight: self.weight,
        }
    }
}

/// Checks a model's heads: each objective once, weights finite and within
/// limits, some loss weight positive.
pub fn check_heads(heads: &[TrainedHead]) -> Result<()> {
    let invalid = |reason: String| {
        Err(TrainerError::InvalidConfig {
            field: "heads",
            reason,
        })
    };
    for (i, head) in heads.iter().enumerate() {
        if heads[..i].iter().any(|h| h.objective == head.objective) {
            return invalid(format!("{} is there twice", head.objective.name()));
        }
        if !(0.0..=1e6).contains(&head.loss_weight) {
            return invalid(format!(
                "{}'s loss weight {} is not within [0, 1e6]",
                head.objective.name(),
                head.loss_weight
            ));
        }
        if !(0.0..=recsys_model::MAX_HEAD_WEIGHT).contains(&head.weight) {
            return invalid(format!(
                "{}'s weight {} is not within [0, {}]",
                head.objective.name(),
                head.weight,
                recsys_model::MAX_HEAD_WEIGHT
            ));
        }
    }
    if !heads.is_empty() && heads.iter().all(|h| h.loss_weight == 0.0) {
        return invalid("every loss weight is 0: nothing would be learned".into());
    }
    Ok(())
}

impl RankingModel {
    /// Entity rows of `interactions` with click labels (rated or not), stars and
    /// the mask of rated ones.
    pub(crate) fn encode_multi(&self, interactions: &[Interaction]) -> Encoded {
        let mut encoded = Encoded::default();
        for i in interactions {
            encoded.users.push(self.tables().users.lookup(&i.user));
            encoded.items.push(self.tables().items.lookup(&i.item));
            encoded
                .ratings
                .push(f32::from(u8::from(i.rating.is_some())));
            encoded.stars.push(i.rating.unwrap_or(0.0));
            encoded.rated.push(f32::from(u8::from(i.rating.is_some())));
        }
        encoded
    }

    /// The training loss of a batch: the objective's, or the weighted sum of
    /// the heads'.
    pub fn batch_loss(&self, batch: &Encoded) -> Result<Tensor> {
        let device = Device::Cpu;
        let n = batch.len();
        let labels = Tensor::from_slice(&batch.ratings, n, &device)?;
        let raw = self.forward_raw(&batch.users, &batch.items)?;
        let heads = &self.config().heads;
        if heads.is_empty() {
            return self.config().objective.loss(&raw.squeeze(1)?, &labels);
        }
        let stars = Tensor::from_slice(&batch.stars, n, &device)?;
        let rated = Tensor::from_slice(&batch.rated, n, &device)?;
        let rated_count = f64::from(batch.rated.iter().sum::<f32>().max(1.0));
        let mut total: Option<Tensor> = None;
        for (h, head) in heads.iter().enumerate() {
            let z = raw.narrow(1, h, 1)?.squeeze(1)?;
            let loss = match head.objective {
                Objective::Click => Objective::Click.loss(&z, &labels)?,
                Objective::Rating => ((z - &stars)?.sqr()?.mul(&rated)?.sum_all()? / rated_count)?,
            };
            let weighted = (loss * head.loss_weight)?;
            total = Some(match total {
                None => weighted,
                Some(sum) => (sum + weighted)?,
            });
        }
        total.ok_or(TrainerError::Empty("no heads"))
    }

    /// The per-epoch metric from a mean batch loss: the objective's (RMSE,
    /// log loss), or the weighted loss itself for several heads.
    pub fn metric_of_loss(&self, mean_loss: f64) -> f64 {
        if self.config().heads.is_empty() {
            self.config().objective.metric(mean_loss)
        } else {
            mean_loss
        }
    }

    /// The metric's name in progress lines.
    pub fn metric_name(&self) -> &'static str {
        if self.config().heads.is_empty() {
            self.config().objective.metric_name()
        } else {
            "weighted loss"
        }
    }

    /// The weighted loss of raw outputs `[n × heads]` (row-major) on `encoded`,
    /// in f64: each rating head's mean squared error over the rated examples,
    /// each click head's mean cross-entropy over all.
    pub(crate) fn multi_metric(&self, raw: &[f32], encoded: &Encoded) -> f64 {
        let heads = &self.config().heads;
        let rated = encoded.rated.iter().filter(|&&r| r > 0.5).count().max(1) as f64;
        let n = encoded.len().max(1) as f64;
        heads
            .iter()
            .enumerate()
            .map(|(h, head)| {
                let z = raw
                    .iter()
                    .skip(h)
                    .step_by(heads.len())
                    .map(|&z| f64::from(z));
                let loss = match head.objective {
                    Objective::Rating => {
                        z.zip(&encoded.stars)
                            .zip(&encoded.rated)
                            .map(|((z, &s), &r)| f64::from(r) * (z - f64::from(s)).powi(2))
                            .sum::<f64>()
                            / rated
                    }
                    Objective::Click => {
                        z.zip(&encoded.ratings)
                            .map(|(z, &y)| log_loss_of_logit(z, f64::from(y)))
                            .sum::<f64>()
                            / n
                    }
                };
                head.loss_weight * loss
            })
            .sum()
    }
}

/// `max(z, 0) − z·y + ln(1 + e^−|z|)`: the cross-entropy of `sigmoid(z)`
/// against `y`, without overflow.
pub(crate) fn log_loss_of_logit(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(objective: Objective, loss_weight: f64, weight: f64) -> TrainedHead {
        TrainedHead {
            objective,
            loss_weight,
            weight,
        }
    }

    #[test]
    fn heads_are_checked() {
        assert!(
            check_heads(&[
                head(Objective::Rating, 1.0, 0.2),
                head(Objective::Click, 1.0, 1.0)
            ])
            .is_ok()
        );
        let twice = check_heads(&[
            head(Objective::Click, 1.0, 1.0),
            head(Objective::Click, 1.0, 1.0),
        ]);
        assert!(twice.unwrap_err().to_string().contains("twice"));
        let nothing = check_heads(&[head(Objective::Rating, 0.0, 1.0)]);
        assert!(
            nothing
                .unwrap_err()
                .to_string()
                .contains("nothing would be learned")
        );
        let negative = check_heads(&[head(Objective::Rating, 1.0, -1.0)]);
        assert!(negative.unwrap_err().to_string().contains("not within"));
        let nan = check_heads(&[head(Objective::Rating, f64::NAN, 1.0)]);
        assert!(nan.is_err());
    }

    #[test]
    fn the_log_loss_of_a_logit_is_the_cross_entropy_of_its_sigmoid() {
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        for (z, y) in [(0.0, 1.0), (2.0, 0.0), (-3.0, 1.0)] {
            let p: f64 = sigmoid(z);
            let expected = -(y * p.ln() + (1.0 - y) * (1.0 - p).ln());
            assert!((log_loss_of_logit(z, y) - expected).abs() < 1e-12);
        }
        assert!(log_loss_of_logit(800.0, 1.0).abs() < 1e-12);
    }
}
