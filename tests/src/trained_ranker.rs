//! Small rankers trained by the trainer on planted ratings, and bundles to
//! attach them to, for the tests of what rankers serve (several heads, A/B
//! variants): real exports, not hand-written files.

use std::path::Path;

use recsys_bundle::IndexParams;
use recsys_bundle_builder::{BuildOptions, ItemVectors, build_bundle};
use recsys_model::Structure;
use recsys_trainer::click::{self, Objective};
use recsys_trainer::synthetic_ratings::PlantedRatings;
use recsys_trainer::{
    FeatureWidth, RankingFeature, RankingModel, RankingModelConfig, RankingOptimizer,
    RankingTrainConfig, TrainedHead, train_ranking,
};

/// The planted data set: 30 users, items 1 to 40.
pub const PLANTED: PlantedRatings = PlantedRatings {
    users: 30,
    items: 40,
    clusters: 3,
    ratings_per_user: 15,
    noise: 0.2,
    seed: 12,
};

/// Width of the bundles' item vectors.
pub const DIM: usize = 4;

/// A ranker of the `heads` (none: a single rating output) trained for a few
/// epochs from `seed` on the planted ratings with two sampled non-clicks per
/// rating, exported into `dir` as model version `version`.
pub fn export_planted_ranker(
    dir: &Path,
    heads: Vec<TrainedHead>,
    seed: u64,
    version: &str,
) -> RankingModel {
    let data = PLANTED.draw();
    let multi = !heads.is_empty();
    let config = planted_config(Objective::Rating, heads);
    let mut examples = data.interactions.clone();
    if multi {
        let seen = click::seen_by_user(&data.interactions);
        let catalog: Vec<String> = data.items.iter().map(|i| i.id.clone()).collect();
        let negatives = click::sampled_negatives(&data.interactions, &seen, &catalog, 2, seed, 10)
            .expect("the catalog has unrated items");
        examples.extend(negatives);
    }
    let model = RankingModel::new(config, &data, seed).expect("a valid ranker config");
    let training = RankingTrainConfig {
        batch_size: 64,
        reshuffle_each_epoch: false,
        ..planted_training(5, seed)
    };
    train_ranking(&model, &examples, &training, &mut |_| {}).expect("training runs");
    model.export(dir, version).expect("the export is written");
    model
}

/// The small network the tests train on the planted data: item, user and
/// genre embeddings of 8, one cross layer, one deep layer of 16.
pub fn planted_config(objective: Objective, heads: Vec<TrainedHead>) -> RankingModelConfig {
    use RankingFeature::*;
    RankingModelConfig {
        features: [MovieId, UserId, MovieGenres]
            .into_iter()
            .map(|feature| FeatureWidth { feature, dim: 8 })
            .collect(),
        cross_layers: 1,
        projection_dim: None,
        structure: Structure::Stacked,
        deep_units: vec![16],
        objective,
        heads,
    }
}

/// `epochs` of Adam at 0.01 in batches of 128 from `seed`, a new order each
/// epoch, no validation slice.
pub fn planted_training(epochs: usize, seed: u64) -> RankingTrainConfig {
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

/// A bundle of items `ids` in `shards` shards with arbitrary `DIM`-wide
/// vectors and no ranker yet.
pub fn items_bundle(ids: &[u64], shards: u32, version: &str) -> tempfile::TempDir {
    let bundle = tempfile::tempdir().expect("a temporary directory");
    let vectors: Vec<f32> = ids
        .iter()
        .flat_map(|&id| (0..DIM).map(move |d| ((id * 7 + d as u64 * 13) % 11) as f32 / 11.0))
        .collect();
    let items = ItemVectors::new(Path::new("test"), DIM, vectors, Some(ids.to_vec()), None)
        .expect("valid vectors");
    let options = BuildOptions {
        params: IndexParams::default(),
        shard_count: shards,
        version: version.into(),
        source: "test".into(),
        threads: 1,
    };
    build_bundle(bundle.path(), &items, None, &options, &|_| {}).expect("the bundle builds");
    bundle
}
