//! The two-tower model on planted preferences: it learns the clusters, it is
//! deterministic for a seed, and it scores the same after save and load.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;

use recsys_trainer::evaluate::{factorized_top_k, factorized_top_k_unseen};
use recsys_trainer::synthetic::{PlantedSpec, planted};
use recsys_trainer::{
    Dataset, FeatureChoice, OptimizerChoice, TrainConfig, TwoTower, TwoTowerConfig, random_split,
    train,
};

const SPEC: PlantedSpec = PlantedSpec {
    users: 200,
    items: 100,
    clusters: 5,
    interactions_per_user: 40,
    in_cluster: 0.9,
    seed: 7,
};

fn config(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 256,
        ..TrainConfig::tfrs_basic_retrieval(11)
    }
}

fn trained(
    data: &Dataset,
    train_on: &[recsys_trainer::Interaction],
    features: FeatureChoice,
    epochs: usize,
) -> TwoTower {
    let model = TwoTower::new(TwoTowerConfig { dim: 16, features }, data, 3).unwrap();
    train(&model, train_on, &config(epochs), &mut |_| {}).unwrap();
    model
}

#[test]
fn learns_the_planted_clusters() {
    let data = planted(&SPEC);
    let split = random_split(&data.interactions, 0.8, 42).unwrap();
    let model = trained(&data, &split.train, FeatureChoice::IDS_ONLY, 15);

    // Each user's top 20 (a cluster's size) should be its own cluster: chance is 1/5.
    let per_cluster = SPEC.items / SPEC.clusters;
    let mut in_cluster = 0;
    for u in 0..SPEC.users {
        let user = format!("u{u}");
        let want = SPEC.cluster_of(&user);
        in_cluster += model
            .recommend(&user, per_cluster)
            .unwrap()
            .iter()
            .filter(|(item, _)| SPEC.cluster_of(item) == want)
            .count();
    }
    let precision = in_cluster as f64 / (SPEC.users * per_cluster) as f64;
    assert!(
        precision > 0.9,
        "cluster precision of the top {per_cluster}: {precision}"
    );

    // A held-out item is in the user's cluster 92% of the time (0.9 + 0.1 / 5), and
    // then within the top 20 if the clusters were learned; chance is 20%.
    let accuracy = factorized_top_k(&model, &split.test, &[1, 20, 100], 1000).unwrap();
    let at20 = accuracy.at(20).unwrap();
    assert!(at20 > 0.8, "top-20 accuracy {at20}");
    assert!(
        (accuracy.at(100).unwrap() - 1.0).abs() < 1e-9,
        "every item is in the top 100 of 100"
    );
    assert_eq!(accuracy.count, split.test.len());
    // Leaving each user's training items out only lifts a held-out item's
    // rank (never past the whole catalog), and with this many seen items,
    // somewhere.
    let unseen =
        factorized_top_k_unseen(&model, &split.test, &split.train, &[1, 20, 100], 1000).unwrap();
    for (with, without) in accuracy.accuracy.iter().zip(&unseen.accuracy) {
        assert!(without >= with, "{:?} vs {:?}", unseen, accuracy);
    }
    assert!(unseen.at(1).unwrap() > accuracy.at(1).unwrap());
}

#[test]
fn training_is_deterministic_for_a_seed() {
    let data = planted(&SPEC);
    let weights = |seed: u64| {
        let model = TwoTower::new(
            TwoTowerConfig {
                dim: 8,
                features: FeatureChoice::IDS_ONLY,
            },
            &data,
            3,
        )
        .unwrap();
        let mut losses = Vec::new();
        let config = TrainConfig {
            seed,
            reshuffle_each_epoch: true,
            ..config(2)
        };
        train(&model, &data.interactions, &config, &mut |e| {
            if let recsys_trainer::TrainEvent::Step { loss } = e {
                losses.push(loss);
            }
        })
        .unwrap();
        let vars: Vec<Vec<f32>> = model
            .vars()
            .iter()
            .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
            .collect();
        (vars, losses)
    };
    let (a, loss_a) = weights(5);
    let (b, loss_b) = weights(5);
    let (c, _) = weights(6);
    assert_eq!(a, b, "same seed, different weights");
    assert_eq!(loss_a, loss_b);
    assert_ne!(a, c, "the batch order ignored the seed");
}

/// Planted data with every kind of feature, so save and load cover the tables.
fn with_features() -> Dataset {
    let mut data = planted(&PlantedSpec {
        users: 60,
        items: 30,
        ..SPEC
    });
    for (j, item) in data.items.iter_mut().enumerate() {
        item.title = Some(format!(
            "Item {} of cluster {} ({})",
            j,
            j % 5,
            1990 + j % 10
        ));
        item.year = Some(1990 + (j % 10) as u16);
        item.genres = (0..=j % 3).map(|g| format!("g{g}")).collect();
    }
    for (u, user) in data.users.iter_mut().enumerate() {
        user.features = BTreeMap::from([
            ("age".to_string(), (20 + u % 4).to_string()),
            ("plan".to_string(), ["free", "paid"][u % 2].to_string()),
        ]);
    }
    data
}

#[test]
fn save_then_load_scores_the_same() {
    let data = with_features();
    let model = trained(&data, &data.interactions, FeatureChoice::ALL, 2);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let loaded = TwoTower::load(dir.path()).unwrap();

    assert_eq!(loaded.config(), model.config());
    assert_eq!(loaded.vocabularies(), model.vocabularies());
    let catalog = |m: &TwoTower| m.catalog_embeddings().unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(catalog(&loaded), catalog(&model));
    let users: Vec<u32> = (0..=60).collect();
    let queries = |m: &TwoTower| {
        m.query_embeddings(&users)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap()
    };
    assert_eq!(queries(&loaded), queries(&model));
    for user in ["u0", "u17", "someone new"] {
        assert_eq!(
            loaded.recommend(user, 10).unwrap(),
            model.recommend(user, 10).unwrap()
        );
    }
}

#[test]
fn features_and_loss_options_train() {
    let data = with_features();
    let model = TwoTower::new(
        TwoTowerConfig {
            dim: 8,
            features: FeatureChoice::ALL,
        },
        &data,
        1,
    )
    .unwrap();
    let config = TrainConfig {
        optimizer: OptimizerChoice::Adam {
            learning_rate: 0.01,
        },
        loss: recsys_trainer::in_batch_softmax::LossOptions {
            temperature: Some(0.5),
            remove_accidental_hits: true,
        },
        log_q_correction: true,
        ..config(3)
    };
    let reports = train(&model, &data.interactions, &config, &mut |_| {}).unwrap();
    assert_eq!(reports.len(), 3);
    assert!(
        reports[2].mean_batch_loss < reports[0].mean_batch_loss,
        "{reports:?}"
    );
}

#[test]
fn saved_files_with_wrong_shapes_are_named() {
    let data = with_features();
    let model = trained(&data, &data.interactions, FeatureChoice::IDS_ONLY, 1);
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    // A vocabulary with one value fewer than the weights have rows.
    let path = dir.path().join("vocab/item_id.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    let shorter: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&path, shorter.join("\n") + "\n").unwrap();
    let err = TwoTower::load(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("weights.safetensors") && err.contains("item.id"),
        "{err}"
    );
}
