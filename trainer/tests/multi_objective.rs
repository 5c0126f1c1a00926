//! Multi-objective ranking (issue 20, part 2): one DCN-V2 trunk with a rating
//! head and a click head learns both planted signals; each head is about as
//! good as its single-objective model; the exported ranker declares its heads
//! and serves every head's score and the combined score as the trainer
//! computes them, with per-request weights recombining the same head scores.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use recsys_bundle::RankerFiles;
use recsys_model::{Ranker, Structure, UserContext};
use recsys_trainer::click::{self, Objective};
use recsys_trainer::synthetic_ratings::PlantedRatings;
use recsys_trainer::{
    Dataset, FeatureWidth, Interaction, RankingFeature, RankingModel, RankingModelConfig,
    RankingOptimizer, RankingTrainConfig, TrainedHead, random_split, train_ranking,
};

const PLANTED: PlantedRatings = PlantedRatings {
    users: 60,
    items: 40,
    clusters: 3,
    ratings_per_user: 30,
    noise: 0.2,
    seed: 11,
};

fn config(objective: Objective, heads: Vec<TrainedHead>) -> RankingModelConfig {
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
        objective,
        heads,
    }
}

fn both() -> Vec<TrainedHead> {
    vec![
        TrainedHead {
            objective: Objective::Rating,
            loss_weight: 1.0,
            weight: 0.2,
        },
        TrainedHead {
            objective: Objective::Click,
            loss_weight: 1.0,
            weight: 1.0,
        },
    ]
}

fn training() -> RankingTrainConfig {
    RankingTrainConfig {
        epochs: 40,
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

/// The planted ratings (every rating a click with its stars) and two unrated
/// non-clicks per click, split 80/20.
struct Data {
    data: Dataset,
    train: Vec<Interaction>,
    test: Vec<Interaction>,
}

/// The planted ratings, of which users keep every one of their taste's genre
/// and one in four of the others: what they click follows their taste too.
fn data() -> Data {
    let mut data = PLANTED.draw();
    let mut index = 0;
    data.interactions.retain(|i| {
        index += 1;
        i.rating.unwrap() > 3.3 || index % 4 == 0
    });
    let split = random_split(&data.interactions, 0.8, 4).unwrap();
    let seen = click::seen_by_user(&data.interactions);
    let catalog: Vec<String> = data.items.iter().map(|i| i.id.clone()).collect();
    let with_negatives = |split: &[Interaction], stream| {
        let mut all = split.to_vec();
        all.extend(click::sampled_negatives(split, &seen, &catalog, 2, 4, stream).unwrap());
        all
    };
    Data {
        train: with_negatives(&split.train, 10),
        test: with_negatives(&split.test, 11),
        data,
    }
}

fn pairs(examples: &[Interaction]) -> Vec<(&str, &str)> {
    examples
        .iter()
        .map(|i| (i.user.as_str(), i.item.as_str()))
        .collect()
}

fn rmse(predicted: &[f32], examples: &[Interaction]) -> f64 {
    let errors: Vec<f64> = examples
        .iter()
        .zip(predicted)
        .filter_map(|(i, &p)| i.rating.map(|r| f64::from(p - r).powi(2)))
        .collect();
    (errors.iter().sum::<f64>() / errors.len() as f64).sqrt()
}

fn clicks(examples: &[Interaction]) -> Vec<f32> {
    examples
        .iter()
        .map(|i| f32::from(u8::from(i.rating.is_some())))
        .collect()
}

fn as_clicks(examples: &[Interaction]) -> Vec<Interaction> {
    examples
        .iter()
        .map(|i| Interaction {
            rating: Some(f32::from(u8::from(i.rating.is_some()))),
            ..i.clone()
        })
        .collect()
}

#[test]
fn each_head_learns_its_objective_about_as_well_as_its_own_model() {
    let d = data();
    let multi = RankingModel::new(config(Objective::Rating, both()), &d.data, 4).unwrap();
    train_ranking(&multi, &d.train, &training(), &mut |_| {}).unwrap();
    let heads = multi.predict_heads(&pairs(&d.test)).unwrap();
    assert_eq!(heads.len(), 2);

    let rated_train: Vec<Interaction> = d
        .train
        .iter()
        .filter(|i| i.rating.is_some())
        .cloned()
        .collect();
    let rating = RankingModel::new(config(Objective::Rating, Vec::new()), &d.data, 4).unwrap();
    train_ranking(&rating, &rated_train, &training(), &mut |_| {}).unwrap();
    let click_model = RankingModel::new(config(Objective::Click, Vec::new()), &d.data, 4).unwrap();
    train_ranking(&click_model, &as_clicks(&d.train), &training(), &mut |_| {}).unwrap();

    let multi_rmse = rmse(&heads[0], &d.test);
    let single_rmse = rmse(&rating.predict(&pairs(&d.test)).unwrap(), &d.test);
    let labels = clicks(&d.test);
    let multi_auc = click::click_metrics(&heads[1], &labels).unwrap().auc;
    let single_auc = click::click_metrics(&click_model.predict(&pairs(&d.test)).unwrap(), &labels)
        .unwrap()
        .auc;
    eprintln!(
        "rating head RMSE {multi_rmse:.4} (alone {single_rmse:.4}), click head AUC {multi_auc:.4} (alone {single_auc:.4})"
    );
    // The planted ratings are learnable far below their spread (≈ 0.9); the
    // clicks follow the taste for about two in three (an AUC near 0.8 is
    // what the data allow, 0.5 is chance).
    assert!(multi_rmse < 0.35, "rating head RMSE {multi_rmse}");
    assert!(multi_auc > 0.7, "click head AUC {multi_auc}");
    // Small data, so a loose bound: no head far behind its own model.
    assert!(
        multi_rmse < single_rmse + 0.1,
        "{multi_rmse} vs {single_rmse}"
    );
    assert!(multi_auc > single_auc - 0.06, "{multi_auc} vs {single_auc}");
    // The heads' scores are what they say: probabilities for clicks.
    assert!(heads[1].iter().all(|p| (0.0..=1.0).contains(p)));
}

#[test]
fn an_exported_two_head_ranker_serves_every_head_as_trained() {
    let d = data();
    let model = RankingModel::new(config(Objective::Rating, both()), &d.data, 4).unwrap();
    let mut short = training();
    short.epochs = 3;
    train_ranking(&model, &d.train, &short, &mut |_| {}).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.export(dir.path(), "two-heads").unwrap();
    let ranker = Ranker::load(&RankerFiles::in_dir(dir.path())).unwrap();
    let names: Vec<&str> = ranker.heads().iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["rating", "click"]);

    let items: Vec<u64> = (1..=PLANTED.items as u64).collect();
    for user in ["u0", "u7", "u33", "nobody"] {
        let ids: Vec<String> = items.iter().map(u64::to_string).collect();
        let refs: Vec<(&str, &str)> = ids.iter().map(|i| (user, i.as_str())).collect();
        let want_heads = model.predict_heads(&refs).unwrap();
        let want = model.predict(&refs).unwrap();
        let context = UserContext {
            user_id: user.into(),
            features: HashMap::new(),
        };
        let mut got = ranker.score(&context, &items, false).unwrap();
        assert_eq!(got.head_scores.len(), items.len() * 2);
        for (i, row) in got.head_scores.chunks(2).enumerate() {
            assert!((row[0] - want_heads[0][i]).abs() < 1e-4, "rating {row:?}");
            assert!((row[1] - want_heads[1][i]).abs() < 1e-5, "click {row:?}");
            let combined = 0.2 * row[0] + row[1];
            assert!((got.scores[i] - combined).abs() < 1e-4);
            assert!(
                (got.scores[i] - want[i]).abs() < 1e-4,
                "{} vs {}",
                got.scores[i],
                want[i]
            );
        }
        // A request's weights recombine the same head scores: clicks only.
        let weights = ranker
            .head_weights(&HashMap::from([("rating".to_string(), 0.0)]))
            .unwrap();
        ranker.reweigh(&mut got, &weights);
        for (i, row) in got.head_scores.chunks(2).enumerate() {
            assert_eq!(got.scores[i], row[1]);
        }
    }
    for (weights, refused) in [
        (
            HashMap::from([("watch_time".to_string(), 1.0)]),
            "the ranker has no head \"watch_time\" (it has rating, click)",
        ),
        (HashMap::from([("click".to_string(), -1.0)]), "not within"),
        (
            HashMap::from([("click".to_string(), f32::NAN)]),
            "not within",
        ),
        (
            HashMap::from([("click".to_string(), 0.0), ("rating".to_string(), 0.0)]),
            "every head weighs 0",
        ),
    ] {
        let error = ranker.head_weights(&weights).unwrap_err().to_string();
        assert!(error.contains(refused), "{error}");
        assert!(error.starts_with("head_weights"), "{error}");
    }
}
