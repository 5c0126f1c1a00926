//! The DCN-V2 ranker's training on planted ratings: it fits them, it is
//! deterministic for a seed, and what it exports scores in `recsys_model::Ranker`
//! exactly as the trainer's own forward pass.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;

use recsys_bundle::RankerFiles;
use recsys_bundle::layout::ranker_file::USER_FEATURES as USER_FEATURES_FILE;
use recsys_model::{FeatureInput, Ranker, Structure, UserContext};
use recsys_trainer::synthetic_ratings::PlantedRatings;
use recsys_trainer::{
    Dataset, FeatureWidth, RankingFeature, RankingModel, RankingModelConfig, RankingOptimizer,
    RankingTrainConfig, random_split, ranking_metric, train_ranking,
};

const PLANTED: PlantedRatings = PlantedRatings {
    users: 60,
    items: 40,
    clusters: 3,
    ratings_per_user: 30,
    noise: 0.2,
    seed: 5,
};

fn small(features: &[RankingFeature], cross_layers: usize) -> RankingModelConfig {
    RankingModelConfig {
        features: features
            .iter()
            .map(|&feature| FeatureWidth { feature, dim: 8 })
            .collect(),
        cross_layers,
        projection_dim: None,
        structure: Structure::Stacked,
        deep_units: vec![16, 16],
        objective: Default::default(),
        heads: Vec::new(),
    }
}

fn dcn_features() -> Vec<RankingFeature> {
    use RankingFeature::*;
    vec![
        MovieId,
        UserId,
        UserZipCode,
        UserOccupationText,
        UserGender,
        BucketizedUserAge,
        MovieGenres,
        MovieYear,
    ]
}

fn training(seed: u64, epochs: usize) -> RankingTrainConfig {
    RankingTrainConfig {
        epochs,
        batch_size: 128,
        seed,
        optimizer: RankingOptimizer::Adam {
            learning_rate: 0.01,
            weight_decay: 0.0,
        },
        validation_fraction: 0.0,
        patience: None,
        reshuffle_each_epoch: true,
    }
}

fn std_dev(values: &[f32]) -> f64 {
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
    (values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / values.len() as f64)
        .sqrt()
}

fn trained(data: &Dataset, config: RankingModelConfig, seed: u64, epochs: usize) -> RankingModel {
    let split = random_split(&data.interactions, 0.8, seed).unwrap();
    let model = RankingModel::new(config, data, seed).unwrap();
    train_ranking(&model, &split.train, &training(seed, epochs), &mut |_| {}).unwrap();
    model
}

#[test]
fn the_ranker_fits_a_planted_rating_function() {
    let data = PLANTED.draw();
    let split = random_split(&data.interactions, 0.8, 1).unwrap();
    let labels: Vec<f32> = split.test.iter().map(|i| i.rating.unwrap()).collect();
    let spread = std_dev(&labels);
    let model = RankingModel::new(small(&dcn_features(), 1), &data, 1).unwrap();
    let before = ranking_metric(&model, &split.test, 512).unwrap();
    let report = train_ranking(&model, &split.train, &training(1, 40), &mut |_| {}).unwrap();
    let test = ranking_metric(&model, &split.test, 512).unwrap();
    // The noise alone leaves 0.2 / √3 ≈ 0.12; chance (the mean) leaves the spread.
    assert!(spread > 0.8, "labels spread {spread}");
    assert!(
        test < 0.4 * spread,
        "test RMSE {test} (before training {before}, spread {spread}, {:?})",
        report.epochs.last()
    );
    let train = report.epochs.last().unwrap().train_metric;
    assert!(train < 0.4 * spread, "train RMSE {train}");
}

#[test]
fn early_stopping_keeps_the_best_validation_epoch() {
    let data = PLANTED.draw();
    let split = random_split(&data.interactions, 0.8, 3).unwrap();
    let model = RankingModel::new(small(&dcn_features(), 1), &data, 3).unwrap();
    let config = RankingTrainConfig {
        validation_fraction: 0.2,
        patience: Some(2),
        // A step so large that validation stops improving early.
        optimizer: RankingOptimizer::Adam {
            learning_rate: 0.05,
            weight_decay: 0.0,
        },
        ..training(3, 60)
    };
    let report = train_ranking(&model, &split.train, &config, &mut |_| {}).unwrap();
    assert_eq!(report.trained_on + report.validated_on, split.train.len());
    assert_eq!(
        report.validated_on,
        (split.train.len() as f64 * 0.2).round() as usize
    );
    let validation: Vec<f64> = report
        .epochs
        .iter()
        .map(|e| e.validation_metric.unwrap())
        .collect();
    let best = validation
        .iter()
        .copied()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(report.best_epoch, best.0, "{validation:?}");
    if report.epochs.len() < 60 {
        assert_eq!(
            report.epochs.len(),
            best.0 + 3,
            "stopped 2 epochs after the best"
        );
    }
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let data = PLANTED.draw();
    let weights = |model: &RankingModel| -> Vec<(String, Vec<f32>)> {
        model
            .named_vars()
            .into_iter()
            .map(|(name, var)| {
                (
                    name,
                    var.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
                )
            })
            .collect()
    };
    let a = weights(&trained(&data, small(&dcn_features(), 1), 7, 3));
    let b = weights(&trained(&data, small(&dcn_features(), 1), 7, 3));
    let c = weights(&trained(&data, small(&dcn_features(), 1), 8, 3));
    assert_eq!(a, b, "same seed, same weights, bit for bit");
    assert_ne!(a, c, "another seed, other weights");
}

fn load(dir: &std::path::Path) -> Ranker {
    Ranker::load(&RankerFiles::in_dir(dir)).unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn an_exported_ranker_scores_as_the_trainer_with_only_the_user_id() {
    let data = PLANTED.draw();
    let model = trained(&data, small(&dcn_features(), 1), 11, 3);
    let dir = tempfile::tempdir().unwrap();
    model.export(dir.path(), "planted-test").unwrap();
    let ranker = load(dir.path());
    assert_eq!(ranker.version(), "planted-test");
    assert_eq!(ranker.items(), PLANTED.items);
    assert_eq!(ranker.stored_users(), PLANTED.users);

    let items: Vec<u64> = (1..=PLANTED.items as u64).collect();
    for user in ["u0", "u1", "u17", "u59"] {
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (user.to_string(), i.to_string()))
            .collect();
        let refs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(u, i)| (u.as_str(), i.as_str()))
            .collect();
        let want = model.predict(&refs).unwrap();
        let context = UserContext {
            user_id: user.into(),
            features: HashMap::new(),
        };
        let got = ranker.score(&context, &items, false).unwrap();
        assert!(!got.user_out_of_vocabulary);
        assert_close(&got.scores, &want);
    }

    // A request value overrides the stored one: u0's own value scores the same,
    // another occupation does not.
    let with = |occupation: &str| UserContext {
        user_id: "u0".into(),
        features: HashMap::from([(
            "user_occupation_text".to_string(),
            FeatureInput::from(occupation),
        )]),
    };
    let stored = ranker.score(&with("c0"), &items, false).unwrap();
    let alone = ranker
        .score(
            &UserContext {
                user_id: "u0".into(),
                features: HashMap::new(),
            },
            &items,
            false,
        )
        .unwrap();
    assert_close(&stored.scores, &alone.scores);
    let other = ranker.score(&with("c1"), &items, false).unwrap();
    assert_eq!(other.scores.len(), alone.scores.len());
    assert!(
        other
            .scores
            .iter()
            .zip(&alone.scores)
            .any(|(a, b)| (a - b).abs() > 1e-4),
        "the request's occupation is used"
    );

    // An unknown user scores with out-of-vocabulary rows, as the trainer's row 0.
    let stranger = UserContext {
        user_id: "nobody".into(),
        features: HashMap::new(),
    };
    let got = ranker.score(&stranger, &items[..5], false).unwrap();
    assert!(got.user_out_of_vocabulary);
    let refs: Vec<(&str, &str)> = vec![
        ("nobody", "1"),
        ("nobody", "2"),
        ("nobody", "3"),
        ("nobody", "4"),
        ("nobody", "5"),
    ];
    assert_close(&got.scores, &model.predict(&refs).unwrap());
}

#[test]
fn a_plain_mlp_exports_without_user_features() {
    // TFRS's basic ranking shape: no cross layer, ids only, titles as item keys.
    let data = PLANTED.draw();
    let config = small(&[RankingFeature::UserId, RankingFeature::MovieTitle], 0);
    let model = trained(&data, config, 2, 2);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(USER_FEATURES_FILE), "stale").unwrap();
    model.export(dir.path(), "mlp").unwrap();
    assert!(
        !dir.path().join(USER_FEATURES_FILE).exists(),
        "a stale table is removed"
    );
    let ranker = load(dir.path());
    let items = [3u64, 1, 40];
    let got = ranker
        .score(
            &UserContext {
                user_id: "u3".into(),
                features: HashMap::new(),
            },
            &items,
            false,
        )
        .unwrap();
    let want = model
        .predict(&[("u3", "3"), ("u3", "1"), ("u3", "40")])
        .unwrap();
    assert_close(&got.scores, &want);
}

#[test]
fn a_feature_the_data_lacks_is_named() {
    let mut data = PLANTED.draw();
    for user in &mut data.users {
        user.features.remove("zip");
    }
    let error = RankingModel::new(small(&dcn_features(), 1), &data, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "feature user_zip_code: needs the user field zip and no user in the user file has it"
    );
    let mut unrated = PLANTED.draw();
    unrated.interactions[4].rating = None;
    let model = RankingModel::new(small(&[RankingFeature::UserId], 0), &unrated, 0).unwrap();
    let error = train_ranking(&model, &unrated.interactions, &training(0, 1), &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(error.contains("interaction 4 has no rating"), "{error}");
}
