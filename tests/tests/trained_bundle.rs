//! A model trained by the trainer, exported as a bundle and served by a real
//! cluster, answers as the trainer's own in-process scoring does: the same top-k
//! per user, users encoded by the query tower in the gateway (stored features
//! included), unknown users through their out-of-vocabulary rows and features.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use recsys_bundle::user_history::UserHistory;
use recsys_bundle::{IndexParams, QueryModelSpec};
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{FeatureValue, feature_value::Kind};
use recsys_tests::*;
use recsys_trainer::synthetic::{PlantedSpec, planted};
use recsys_trainer::{
    CatalogIds, Dataset, ExportOptions, FeatureChoice, OptimizerChoice, TrainConfig, TwoTower,
    TwoTowerConfig, catalog_ids, export_bundle,
};

const SEGMENTS: usize = 4;

/// Planted clusters, and a user feature `segment` that says the cluster for half
/// the users and is noise for the others.
fn data() -> (Dataset, PlantedSpec) {
    let spec = PlantedSpec {
        users: 160,
        items: 240,
        clusters: SEGMENTS,
        interactions_per_user: 30,
        in_cluster: 0.8,
        seed: 5,
    };
    let mut data = planted(&spec);
    for (u, user) in data.users.iter_mut().enumerate() {
        let segment = if u % 2 == 0 {
            u % SEGMENTS
        } else {
            u / 7 % SEGMENTS
        };
        user.features
            .insert("segment".into(), format!("s{segment}"));
    }
    (data, spec)
}

fn trained(data: &Dataset) -> TwoTower {
    let model = TwoTower::new(
        TwoTowerConfig {
            dim: 16,
            features: FeatureChoice {
                user_features: true,
                ..FeatureChoice::IDS_ONLY
            },
        },
        data,
        3,
    )
    .unwrap();
    let config = TrainConfig {
        epochs: 6,
        batch_size: 256,
        optimizer: OptimizerChoice::Adam {
            learning_rate: 0.02,
        },
        ..TrainConfig::tfrs_basic_retrieval(3)
    };
    recsys_trainer::train(&model, &data.interactions, &config, &mut |_| {}).unwrap();
    model
}

fn export(model: &TwoTower, data: &Dataset, dir: &std::path::Path) -> (CatalogIds, UserHistory) {
    let keys = model.vocabularies().item_id.values();
    let catalog = catalog_ids(keys, data).unwrap();
    let history = recsys_trainer::user_history(keys, &catalog, data);
    let options = ExportOptions {
        shards: 3,
        params: IndexParams::default(),
        version: "trained-test".into(),
        source: "planted".into(),
        threads: 2,
    };
    let attributes = recsys_trainer::item_attributes(keys, &catalog, data).unwrap();
    export_bundle(
        model,
        &catalog,
        &history,
        attributes.as_ref(),
        dir,
        &options,
        &|_| {},
    )
    .unwrap();
    (catalog, history)
}

/// A retrieval-only request for `user` that keeps the items the user has.
fn with_seen(user: &str, k: u32, exact: bool) -> recsys_proto::v1::RecommendRequest {
    let mut request = by_user(user, k, exact);
    if let Some(options) = request.options.as_mut() {
        options.include_seen = true;
    }
    request
}

/// The catalog's ids ranked for the query `q` by the trainer's own tensors.
fn brute_force(model: &TwoTower, catalog: &CatalogIds, q: &[f32], k: usize) -> Vec<(u64, f32)> {
    let items = model
        .catalog_embeddings()
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // One embedding per catalog id: `zip` alone would rank a truncated catalog.
    assert_eq!(items.len(), catalog.ids.len(), "embeddings and catalog ids");
    let mut scored: Vec<(u64, f32)> = items
        .iter()
        .zip(&catalog.ids)
        .map(|(v, &id)| (id, v.iter().zip(q).map(|(a, b)| a * b).sum()))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

/// Same ids in the same order, except where two items' scores tie within float
/// rounding (the cluster and the trainer sum in different orders).
fn assert_same_top_k(got: &[(u64, f32)], want: &[(u64, f32)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let want_score: HashMap<u64, f32> = want.iter().copied().collect();
    for (rank, ((got_id, got_score), (want_id, want_s))) in got.iter().zip(want).enumerate() {
        assert!(
            (got_score - want_s).abs() < 1e-4,
            "{what}: rank {rank} scores {got_score} and {want_s}"
        );
        if got_id != want_id {
            let other = want_score.get(got_id).copied().unwrap_or(f32::NAN);
            assert!(
                (other - want_s).abs() < 1e-5,
                "{what}: rank {rank} is {got_id} ({other}), the trainer says {want_id} ({want_s})"
            );
        }
    }
}

/// (id, retrieval score) of each item `request` gets back.
async fn scored(
    client: &mut recsys_proto::v1::gateway_service_client::GatewayServiceClient<
        tonic::transport::Channel,
    >,
    request: recsys_proto::v1::RecommendRequest,
) -> Vec<(u64, f32)> {
    recommend(client, request, Duration::from_secs(5))
        .await
        .unwrap()
        .items
        .iter()
        .map(|i| (i.item_id, i.retrieval_score))
        .collect()
}

fn feature(value: &str) -> FeatureValue {
    FeatureValue {
        kind: Some(Kind::StringValue(value.into())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_bundle_answers_as_the_trainer() {
    let (data, spec) = data();
    let model = trained(&data);
    let dir = tempfile::tempdir().unwrap();
    let (catalog, history) = export(&model, &data, dir.path());
    let manifest = recsys_bundle::Manifest::load(dir.path()).unwrap();
    assert!(manifest.user_history.is_some());
    assert_eq!(history.interactions(), {
        let pairs: std::collections::HashSet<(&str, &str)> = data
            .interactions
            .iter()
            .map(|i| (i.user.as_str(), i.item.as_str()))
            .collect();
        pairs.len()
    });
    assert!(matches!(
        manifest.query_model,
        Some(QueryModelSpec::Tower(_))
    ));
    assert_eq!(manifest.items, spec.items as u64);

    let cluster = LocalCluster::start(LocalClusterOptions::new(dir.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    // The export numbers the vocabulary's items in order: as many ids as keys.
    assert_eq!(
        catalog.ids.len(),
        model.vocabularies().item_id.values().len()
    );
    let id_to_key: HashMap<u64, &String> = catalog
        .ids
        .iter()
        .copied()
        .zip(model.vocabularies().item_id.values())
        .collect();
    let key_to_id: HashMap<&String, u64> = id_to_key.iter().map(|(&id, &key)| (key, id)).collect();
    let mut in_cluster = 0usize;
    let mut hnsw_found = 0usize;
    let k = 20;
    for u in 0..24 {
        let user = format!("u{u}");
        let want: Vec<(u64, f32)> = model
            .recommend(&user, k)
            .unwrap()
            .into_iter()
            .map(|(key, score)| (key_to_id[&key], score))
            .collect();
        for exact in [true, false] {
            let response = recommend(
                &mut client,
                with_seen(&user, k as u32, exact),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            let got: Vec<(u64, f32)> = response
                .items
                .iter()
                .map(|i| (i.item_id, i.retrieval_score))
                .collect();
            if exact {
                assert_same_top_k(&got, &want, &format!("{user} exact"));
            } else {
                // HNSW, and per-shard k' below k (Vespa's formula): an
                // approximation of the same list.
                hnsw_found += got
                    .iter()
                    .filter(|g| want.iter().any(|w| w.0 == g.0))
                    .count();
            }
            let coverage = response.coverage.unwrap();
            assert_eq!(coverage.shards_answered, 3);
        }
        // By default the items the user already has are left out: the
        // trainer's list past them.
        let seen = history.items(&user);
        assert!(!seen.is_empty(), "{user} has a history");
        let unseen: Vec<(u64, f32)> = model
            .recommend(&user, k + seen.len())
            .unwrap()
            .into_iter()
            .map(|(key, score)| (key_to_id[&key], score))
            .filter(|(id, _)| seen.binary_search(id).is_err())
            .take(k)
            .collect();
        let response = recommend(
            &mut client,
            by_user(&user, k as u32, true),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(response.seen_excluded as usize, seen.len());
        let got: Vec<(u64, f32)> = response
            .items
            .iter()
            .map(|i| (i.item_id, i.retrieval_score))
            .collect();
        assert_same_top_k(&got, &unseen, &format!("{user} without what it has"));
        // The catalog names the items by their keys (the planted ids have no titles).
        in_cluster += want
            .iter()
            .filter(|(id, _)| spec.cluster_of(id_to_key[id]) == spec.cluster_of(&user))
            .count();
    }
    let recall = hnsw_found as f64 / (24 * k) as f64;
    assert!(
        recall > 0.9,
        "HNSW recall@{k} against the trainer is {recall:.3}"
    );
    // The model learned the planted clusters: most of each user's top-k is in it
    // (a quarter by chance).
    let share = in_cluster as f64 / (24 * k) as f64;
    assert!(
        share > 0.6,
        "only {share:.2} of the top-k is in the user's cluster"
    );

    // A user the tower has never seen, with a segment: the OOV id row plus the
    // segment's row, as the trainer's tables compute it.
    let id_table = model.tensor("user.id").unwrap().to_vec2::<f32>().unwrap();
    let segment_table = model
        .tensor("user.feature.segment")
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let segment_row = model.vocabularies().user_features["segment"].lookup("s2") as usize;
    let q: Vec<f32> = id_table[0]
        .iter()
        .zip(&segment_table[segment_row])
        .map(|(a, b)| a + b)
        .collect();
    let mut request = by_user("newcomer", k as u32, true);
    request.user_features = HashMap::from([("segment".to_string(), feature("s2"))]);
    let got = scored(&mut client, request).await;
    assert_same_top_k(&got, &brute_force(&model, &catalog, &q, k), "newcomer");

    // A known user whose request overrides the stored segment.
    let u1_row = model.vocabularies().user_id.lookup("u1") as usize;
    let q: Vec<f32> = id_table[u1_row]
        .iter()
        .zip(&segment_table[segment_row])
        .map(|(a, b)| a + b)
        .collect();
    let mut request = with_seen("u1", k as u32, true);
    request.user_features = HashMap::from([("segment".to_string(), feature("s2"))]);
    let got = scored(&mut client, request).await;
    assert_same_top_k(&got, &brute_force(&model, &catalog, &q, k), "u1 as s2");

    // Unknown and featureless: nothing to encode.
    let status = recommend(
        &mut client,
        by_user("nobody", 10, false),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(status.message().contains("nobody"), "{}", status.message());

    // A number where the tower needs a category.
    let mut request = by_user("u1", 10, false);
    request.user_features = HashMap::from([(
        "segment".to_string(),
        FeatureValue {
            kind: Some(Kind::FloatValue(2.0)),
        },
    )]);
    let status = recommend(&mut client, request, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("user_features") && status.message().contains("segment"),
        "{}",
        status.message()
    );
    cluster.shutdown().await.unwrap();
}
