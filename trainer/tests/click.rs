//! The click objective (issue 20, part 1): a DCN-V2 trained with binary
//! cross-entropy on 0/1 labels learns a planted click rule far beyond the
//! popularity baseline, its probabilities are calibrated, and the exported
//! ranker serves the same probabilities as the trainer computes.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use recsys_bundle::RankerFiles;
use recsys_model::{Ranker, Structure, UserContext};
use recsys_trainer::click::{self, Objective};
use recsys_trainer::synthetic_ratings::PlantedRatings;
use recsys_trainer::{
    FeatureWidth, Interaction, RankingFeature, RankingModel, RankingModelConfig, RankingOptimizer,
    RankingTrainConfig, predict_interactions, random_split, train_ranking,
};

const PLANTED: PlantedRatings = PlantedRatings {
    users: 60,
    items: 40,
    clusters: 3,
    ratings_per_user: 30,
    noise: 0.2,
    seed: 9,
};

/// A click where the user's taste is the item's genre (the planted rating is
/// then above 3.6; a mismatch stays below 3.0).
fn clicks() -> recsys_trainer::Dataset {
    let mut data = PLANTED.draw();
    for i in &mut data.interactions {
        i.rating = Some(if i.rating.unwrap() > 3.3 { 1.0 } else { 0.0 });
    }
    data
}

fn config() -> RankingModelConfig {
    use RankingFeature::*;
    RankingModelConfig {
        features: [MovieId, UserId, UserOccupationText, MovieGenres]
            .into_iter()
            .map(|feature| FeatureWidth { feature, dim: 8 })
            .collect(),
        cross_layers: 1,
        projection_dim: None,
        structure: Structure::Stacked,
        deep_units: vec![16, 16],
        objective: Objective::Click,
        heads: Vec::new(),
    }
}

fn training() -> RankingTrainConfig {
    RankingTrainConfig {
        epochs: 30,
        batch_size: 128,
        seed: 4,
        optimizer: RankingOptimizer::Adam {
            learning_rate: 0.01,
            weight_decay: 0.0,
        },
        validation_fraction: 0.0,
        patience: None,
        reshuffle_each_epoch: true,
    }
}

fn trained() -> (RankingModel, Vec<Interaction>, Vec<Interaction>) {
    let data = clicks();
    let split = random_split(&data.interactions, 0.8, 4).unwrap();
    let model = RankingModel::new(config(), &data, 4).unwrap();
    let report = train_ranking(&model, &split.train, &training(), &mut |_| {}).unwrap();
    let last = report.epochs.last().unwrap();
    assert!(
        last.train_metric < 0.2,
        "train log loss {}",
        last.train_metric
    );
    (model, split.train, split.test)
}

#[test]
fn a_click_ranker_learns_a_planted_rule_beyond_popularity_and_is_calibrated() {
    let (model, train, test) = trained();
    let labels = click::labels(&test).unwrap();
    let probabilities = predict_interactions(&model, &test, 512).unwrap();
    assert!(probabilities.iter().all(|p| (0.0..=1.0).contains(p)));
    let m = click::click_metrics(&probabilities, &labels).unwrap();
    let popularity =
        click::click_metrics(&click::popularity_probabilities(&train, &test), &labels).unwrap();
    assert!(m.auc > 0.95, "model AUC {}", m.auc);
    assert!(
        m.auc > popularity.auc + 0.2,
        "model AUC {} against popularity's {}",
        m.auc,
        popularity.auc
    );
    assert!(m.log_loss < popularity.log_loss, "{m:?} {popularity:?}");
    assert!(
        (m.mean_predicted - m.observed_rate).abs() < 0.05,
        "predicted {} against observed {}",
        m.mean_predicted,
        m.observed_rate
    );
}

#[test]
fn an_exported_click_ranker_serves_the_trainers_probabilities() {
    let (model, _, _) = trained();
    let dir = tempfile::tempdir().unwrap();
    model.export(dir.path(), "clicks-test").unwrap();
    let ranker = Ranker::load(&RankerFiles::in_dir(dir.path())).unwrap();
    let items: Vec<u64> = (1..=PLANTED.items as u64).collect();
    for user in ["u0", "u1", "u2", "u41"] {
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (user.to_string(), i.to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(u, i)| (u.as_str(), i.as_str()))
            .collect();
        let want = model.predict(&refs).unwrap();
        let got = ranker
            .score(
                &UserContext {
                    user_id: user.into(),
                    features: HashMap::new(),
                },
                &items,
                false,
            )
            .unwrap();
        for (g, w) in got.scores.iter().zip(&want) {
            assert!((0.0..=1.0).contains(g), "{g} is not a probability");
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
