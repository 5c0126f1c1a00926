//! What the trainer writes does not depend on the thread count. rayon's pool
//! and candle's matmuls both size themselves from `RAYON_NUM_THREADS` once per
//! process, so each count gets a process of its own: this test runs itself again
//! with the variable set and compares the files the children wrote, byte for
//! byte. (The in-batch softmax sums its row losses in row order for this reason;
//! `training_is_deterministic_for_a_seed` in the other files pins the seed, this
//! pins the threads.)

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;

use recsys_model::Structure;
use recsys_trainer::synthetic::{PlantedSpec, planted};
use recsys_trainer::synthetic_ratings::PlantedRatings;
use recsys_trainer::{
    FeatureChoice, FeatureWidth, RankingFeature, RankingModel, RankingModelConfig,
    RankingOptimizer, RankingTrainConfig, TrainConfig, TwoTower, TwoTowerConfig, random_split,
    train, train_ranking,
};

/// Set in the children: where to write what they trained.
const CHILD_VAR: &str = "RECSYS_TRAINER_THREADS_OUT";
const TEST: &str = "training_writes_the_same_files_with_any_thread_count";

/// Trains both models briefly and writes them into `out`.
fn train_and_write(out: &Path) {
    let data = planted(&PlantedSpec {
        users: 120,
        items: 80,
        clusters: 4,
        interactions_per_user: 30,
        in_cluster: 0.9,
        seed: 3,
    });
    let model = TwoTower::new(
        TwoTowerConfig {
            dim: 16,
            features: FeatureChoice::IDS_ONLY,
        },
        &data,
        3,
    )
    .unwrap();
    let config = TrainConfig {
        epochs: 2,
        batch_size: 256,
        ..TrainConfig::tfrs_basic_retrieval(11)
    };
    train(&model, &data.interactions, &config, &mut |_| {}).unwrap();
    model.save(&out.join("two-tower")).unwrap();

    let ratings = PlantedRatings {
        users: 60,
        items: 40,
        clusters: 3,
        ratings_per_user: 30,
        noise: 0.2,
        seed: 5,
    }
    .draw();
    let split = random_split(&ratings.interactions, 0.8, 7).unwrap();
    use RankingFeature::*;
    let config = RankingModelConfig {
        features: [MovieId, UserId, UserOccupationText, MovieGenres]
            .into_iter()
            .map(|feature| FeatureWidth { feature, dim: 8 })
            .collect(),
        cross_layers: 2,
        projection_dim: None,
        structure: Structure::Stacked,
        deep_units: vec![32, 16],
        objective: Default::default(),
        heads: Vec::new(),
    };
    let ranker = RankingModel::new(config, &ratings, 7).unwrap();
    let training = RankingTrainConfig {
        epochs: 2,
        batch_size: 128,
        seed: 7,
        optimizer: RankingOptimizer::Adam {
            learning_rate: 0.01,
            weight_decay: 0.0,
        },
        validation_fraction: 0.0,
        patience: None,
        reshuffle_each_epoch: true,
    };
    train_ranking(&ranker, &split.train, &training, &mut |_| {}).unwrap();
    ranker.export(&out.join("ranker"), "threads-test").unwrap();
}

/// Every file under `dir` with its bytes, by relative path.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn training_writes_the_same_files_with_any_thread_count() {
    if let Some(out) = std::env::var_os(CHILD_VAR) {
        train_and_write(Path::new(&out));
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut outputs = Vec::new();
    for threads in [1, 2, 3] {
        let out = root.path().join(format!("threads-{threads}"));
        let child = Command::new(&exe)
            .args([TEST, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD_VAR, &out)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "the child with {threads} threads failed:\n{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        let written = files(&out);
        assert!(
            written
                .iter()
                .any(|(name, _)| name.ends_with(".safetensors")),
            "the child with {threads} threads wrote no weights: {:?}",
            written.iter().map(|(name, _)| name).collect::<Vec<_>>()
        );
        outputs.push((threads, written));
    }
    let (_, first) = &outputs[0];
    for (threads, written) in &outputs[1..] {
        let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            files.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(written), names(first), "{threads} threads");
        for ((name, a), (_, b)) in first.iter().zip(written) {
            assert!(a == b, "{name} differs between 1 and {threads} threads");
        }
    }
    println!(
        "{} files identical with 1, 2 and 3 threads",
        outputs[0].1.len()
    );
}
