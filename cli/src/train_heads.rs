//! The evaluation of a multi-objective ranker (`recsys train ranking
//! --objective rating,click`): each head measured as its own single-objective
//! model would be, on the same test split, and the combined score beside them.

use recsys_trainer::click::{self, Objective};
use recsys_trainer::{Interaction, RankingModel};

/// Prints the rating head's RMSE on the rated test examples, the click head's
/// AUC, log loss and calibration on all of them (beside popularity), and the
/// AUC of the served, combined score.
pub fn print_evaluation(
    model: &RankingModel,
    train: &[Interaction],
    test: &[Interaction],
) -> anyhow::Result<()> {
    let pairs: Vec<(&str, &str)> = test
        .iter()
        .map(|i| (i.user.as_str(), i.item.as_str()))
        .collect();
    let heads = model.predict_heads(&pairs)?;
    let clicks: Vec<f32> = test
        .iter()
        .map(|i| f32::from(u8::from(i.rating.is_some())))
        .collect();
    for (head, scores) in model.config().heads.iter().zip(&heads) {
        match head.objective {
            Objective::Rating => {
                let (squared, n) = test
                    .iter()
                    .zip(scores)
                    .filter_map(|(i, &p)| i.rating.map(|r| f64::from(p - r).powi(2)))
                    .fold((0.0, 0usize), |(sum, n), e| (sum + e, n + 1));
                println!(
                    "rating head: test RMSE {:.4} on {n} rated examples",
                    (squared / n.max(1) as f64).sqrt()
                );
            }
            Objective::Click => {
                let m = click::click_metrics(scores, &clicks)?;
                let as_clicks = |split: &[Interaction]| -> Vec<Interaction> {
                    split
                        .iter()
                        .map(|i| Interaction {
                            rating: Some(f32::from(u8::from(i.rating.is_some()))),
                            ..i.clone()
                        })
                        .collect()
                };
                let popularity = click::click_metrics(
                    &click::popularity_probabilities(&as_clicks(train), test),
                    &clicks,
                )?;
                println!(
                    "click head: test AUC {:.4}, log loss {:.4}, mean predicted {:.4} against an observed click rate of {:.4} (popularity: AUC {:.4}, log loss {:.4})",
                    m.auc,
                    m.log_loss,
                    m.mean_predicted,
                    m.observed_rate,
                    popularity.auc,
                    popularity.log_loss
                );
                let buckets: Vec<String> = m
                    .calibration
                    .iter()
                    .map(|(predicted, observed, _)| format!("{predicted:.3}/{observed:.3}"))
                    .collect();
                println!(
                    "click head calibration (predicted/observed by decile): {}",
                    buckets.join(" ")
                );
            }
        }
    }
    let combined = model.predict(&pairs)?;
    let weights: Vec<String> = model
        .config()
        .heads
        .iter()
        .map(|h| format!("{} × {}", h.weight, h.objective.name()))
        .collect();
    println!(
        "combined score ({}): test AUC {:.4} as a click score",
        weights.join(" + "),
        click::click_metrics(&combined, &clicks)?.auc
    );
    Ok(())
}
