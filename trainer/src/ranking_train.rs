//! Fits a [`RankingModel`] to ratings with the mean squared error, as
//! `tfrs.tasks.Ranking(loss=MeanSquaredError())`, and measures it by RMSE; or,
//! for the click objective ([`crate::click`]), to 0/1 labels with the binary
//! cross-entropy of the logit, as `tfrs.tasks.Ranking(loss=BinaryCrossentropy(
//! from_logits=True))`, measured by log loss.
//!
//! Batches follow TFRS's tutorials, `train.shuffle(100_000).batch(8192).cache()`:
//! one shuffled order kept for every epoch unless `reshuffle_each_epoch`.
//! With `validation_fraction > 0` a slice of the *training* interactions is held
//! out (the test set is never looked at), its RMSE is measured after every
//! epoch, and with `patience` training stops once it has not improved for that
//! many epochs; the weights of the best epoch are restored either way.
//!
//! Determinism: the seed drives the initial weights (stream 0, in
//! [`RankingModel::new`]), the batch order (stream 1) and the validation slice
//! (stream 2); candle's CPU kernels are deterministic, so the same data, config
//! and seed give bit-identical weights.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::click::Objective;
use crate::dataset::Interaction;
use crate::error::{Result, TrainerError};
use crate::multi_objective::log_loss_of_logit;
use crate::optimizer::Stepper;
use crate::ranking_model::{Encoded, RankingModel};

/// The optimizer and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankingOptimizer {
    /// Keras's Adagrad ([`crate::adagrad`]): TFRS's basic ranking tutorial, 0.1.
    Adagrad {
        /// Step size.
        learning_rate: f64,
    },
    /// Adam with Keras's β₁ 0.9, β₂ 0.999, ε 1e-7 (candle's AdamW), and
    /// decoupled weight decay (0: plain Adam, the DCN tutorial's).
    Adam {
        /// Step size.
        learning_rate: f64,
        /// AdamW's decay per step, as a fraction of the step size.
        weight_decay: f64,
    },
}

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RankingTrainConfig {
    /// Most passes over the training interactions.
    pub epochs: usize,
    /// Interactions per batch.
    pub batch_size: usize,
    /// Seeds the batch order and the validation slice (the model has its own seed).
    pub seed: u64,
    /// Optimizer.
    pub optimizer: RankingOptimizer,
    /// Share of the training interactions held out for validation (0: none).
    pub validation_fraction: f64,
    /// Stop after this many epochs without a better validation RMSE.
    pub patience: Option<usize>,
    /// A new batch order every epoch (TFRS's tutorials keep one).
    pub reshuffle_each_epoch: bool,
}

/// What happens during training, for progress displays.
#[derive(Debug, Clone, PartialEq)]
pub enum RankingEvent {
    /// An epoch begins with `steps` batches.
    EpochStarted {
        /// 0-based epoch.
        epoch: usize,
        /// Batches in the epoch.
        steps: usize,
    },
    /// A batch was trained on.
    Step {
        /// The batch's mean loss (squared error, or cross-entropy for clicks).
        loss: f32,
    },
    /// An epoch ended.
    EpochFinished(RankingEpoch),
}

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingEpoch {
    /// 0-based epoch.
    pub epoch: usize,
    /// The objective's metric ([`Objective::metric`]: RMSE for ratings, log loss
    /// for clicks) over the epoch's batches as they were trained on (Keras's
    /// running metric).
    pub train_metric: f64,
    /// The same metric on the validation slice after the epoch.
    pub validation_metric: Option<f64>,
    /// Wall time of the epoch.
    pub elapsed: Duration,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingReport {
    /// Every epoch run.
    pub epochs: Vec<RankingEpoch>,
    /// The epoch whose weights were kept (the last without validation).
    pub best_epoch: usize,
    /// Interactions trained on (the training set minus the validation slice).
    pub trained_on: usize,
    /// Interactions in the validation slice.
    pub validated_on: usize,
}

/// Trains `model` on the rated interactions `train`, calling `on_event` as it goes.
pub fn train_ranking(
    model: &RankingModel,
    train: &[Interaction],
    config: &RankingTrainConfig,
    on_event: &mut dyn FnMut(RankingEvent),
) -> Result<RankingReport> {
    if config.batch_size == 0 {
        return Err(TrainerError::InvalidConfig {
            field: "batch_size",
            reason: "must be at least 1".into(),
        });
    }
    if !(0.0..1.0).contains(&config.validation_fraction) {
        return Err(TrainerError::InvalidConfig {
            field: "validation_fraction",
            reason: format!("{} is not within [0, 1)", config.validation_fraction),
        });
    }
    let all = model.encode(train)?;
    let (fit, validation) = carve_validation(&all, config.validation_fraction, config.seed);
    if fit.is_empty() {
        return Err(TrainerError::Empty("no training interactions"));
    }
    let mut optimizer = match config.optimizer {
        RankingOptimizer::Adagrad { learning_rate } => {
            Stepper::adagrad(model.vars(), learning_rate)?
        }
        RankingOptimizer::Adam {
            learning_rate,
            weight_decay,
        } => Stepper::adam(model.vars(), learning_rate, weight_decay)?,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(1);
    let mut order: Vec<usize> = (0..fit.len()).collect();
    order.shuffle(&mut rng);
    let steps = fit.len().div_ceil(config.batch_size);
    let mut epochs = Vec::with_capacity(config.epochs);
    let mut best: Option<(
        f64,
        usize,
        std::collections::HashMap<String, candle_core::Tensor>,
    )> = None;
    for epoch in 0..config.epochs {
        if epoch > 0 && config.reshuffle_each_epoch {
            order.shuffle(&mut rng);
        }
        on_event(RankingEvent::EpochStarted { epoch, steps });
        let started = Instant::now();
        let mut squared = 0.0f64;
        for batch in order.chunks(config.batch_size) {
            let loss = model.batch_loss(&fit.pick(batch))?;
            optimizer.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            if !loss.is_finite() {
                return Err(TrainerError::InvalidConfig {
                    field: "learning_rate",
                    reason: format!("the loss became {loss} in epoch {epoch}"),
                });
            }
            squared += f64::from(loss) * batch.len() as f64;
            on_event(RankingEvent::Step { loss });
        }
        let validation_metric = if validation.is_empty() {
            None
        } else {
            Some(metric_encoded(model, &validation, 4096)?)
        };
        let report = RankingEpoch {
            epoch,
            train_metric: model.metric_of_loss(squared / fit.len() as f64),
            validation_metric,
            elapsed: started.elapsed(),
        };
        tracing::debug!(epoch, train_metric = report.train_metric, "epoch finished");
        on_event(RankingEvent::EpochFinished(report.clone()));
        epochs.push(report);
        if let Some(v) = validation_metric {
            if best.as_ref().is_none_or(|(b, _, _)| v < *b) {
                best = Some((v, epoch, model.snapshot()?));
            } else if let (Some(patience), Some((_, at, _))) = (config.patience, &best)
                && epoch - at >= patience
            {
                break;
            }
        }
    }
    let best_epoch = match &best {
        Some((_, epoch, snapshot)) => {
            model.restore(snapshot)?;
            *epoch
        }
        None => epochs.len().saturating_sub(1),
    };
    Ok(RankingReport {
        epochs,
        best_epoch,
        trained_on: fit.len(),
        validated_on: validation.len(),
    })
}

/// The held-out slice: a seeded shuffle's last `fraction` (stream 2 of `seed`).
fn carve_validation(all: &Encoded, fraction: f64, seed: u64) -> (Encoded, Encoded) {
    if fraction <= 0.0 {
        return (all.clone(), Encoded::default());
    }
    let mut order: Vec<usize> = (0..all.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(2);
    order.shuffle(&mut rng);
    let held = ((all.len() as f64) * fraction).round() as usize;
    let (fit, held_out) = order.split_at(all.len() - held);
    (all.pick(fit), all.pick(held_out))
}

/// The objective's metric on `interactions`: the RMSE of the predicted
/// ratings, or the log loss of the predicted click probabilities.
pub fn ranking_metric(
    model: &RankingModel,
    interactions: &[Interaction],
    batch_size: usize,
) -> Result<f64> {
    let encoded = model.encode(interactions)?;
    if encoded.is_empty() {
        return Err(TrainerError::Empty("no interactions to evaluate"));
    }
    metric_encoded(model, &encoded, batch_size)
}

/// The served scores of `interactions` (ratings, or click probabilities).
pub fn predict_interactions(
    model: &RankingModel,
    interactions: &[Interaction],
    batch_size: usize,
) -> Result<Vec<f32>> {
    let pairs: Vec<(&str, &str)> = interactions
        .iter()
        .map(|i| (i.user.as_str(), i.item.as_str()))
        .collect();
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch_size.max(1)) {
        out.extend(model.predict(chunk)?);
    }
    Ok(out)
}

/// Raw outputs `[n × heads]`, row-major.
fn raw_outputs(model: &RankingModel, encoded: &Encoded, batch_size: usize) -> Result<Vec<f32>> {
    let mut out = Vec::with_capacity(encoded.len());
    let all: Vec<usize> = (0..encoded.len()).collect();
    for chunk in all.chunks(batch_size.max(1)) {
        let b = encoded.pick(chunk);
        let raw = model.forward_raw(&b.users, &b.items)?;
        out.extend(raw.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

fn metric_encoded(model: &RankingModel, encoded: &Encoded, batch_size: usize) -> Result<f64> {
    let raw = raw_outputs(model, encoded, batch_size)?;
    if !model.config().heads.is_empty() {
        return Ok(model.multi_metric(&raw, encoded));
    }
    let n = encoded.len() as f64;
    Ok(match model.config().objective {
        Objective::Rating => {
            let squared: f64 = raw
                .iter()
                .zip(&encoded.ratings)
                .map(|(p, r)| f64::from(p - r).powi(2))
                .sum();
            (squared / n).sqrt()
        }
        Objective::Click => {
            let loss: f64 = raw
                .iter()
                .zip(&encoded.ratings)
                .map(|(&z, &y)| log_loss_of_logit(f64::from(z), f64::from(y)))
                .sum();
            loss / n
        }
    })
}
