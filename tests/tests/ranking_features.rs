//! Multi-hot and numeric features through a real ranking node: a ranker whose
//! x0 is `[user_id, liked (user list, sum), age (user number), genres (item list,
//! mean), popularity (item number)]` and whose head adds x0 up, so every score can
//! be worked out by hand. The ranker goes into the bundle with `attach_ranker`,
//! the path an exported ranker takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use recsys_bundle::IndexParams;
use recsys_bundle_builder::{BuildOptions, ItemVectors, attach_ranker, build_bundle};
use recsys_local_cluster::ServerHandle;
use recsys_model::dcn_v2::Head;
use recsys_model::{
    Activation, DcnConfig, FeatureKind, FeatureSpec, Normalization, Pooling, RankerConfig, Side,
    Structure,
};
use recsys_proto::v1::{
    FeatureValue, RankRequest, RankResponse, StringList, feature_value::Kind,
    ranking_service_client::RankingServiceClient,
};
use recsys_ranking_node::{RankingConfig, RankingError};
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

fn write_ranker(dir: &Path) {
    std::fs::create_dir_all(dir.join("vocab")).unwrap();
    let vocab = |name: &str, values: &[&str]| {
        std::fs::write(
            dir.join(recsys_bundle::layout::vocabulary_file(name)),
            values.join("\n") + "\n",
        )
        .unwrap();
        recsys_bundle::layout::vocabulary_file(name)
    };
    let user_id = FeatureSpec::categorical("user_id", Side::User, &vocab("user_id", &["u1"]), 1);
    let liked = FeatureSpec {
        kind: FeatureKind::MultiHot,
        pooling: Some(Pooling::Sum),
        ..FeatureSpec::categorical(
            "liked",
            Side::User,
            &vocab("liked", &["action", "comedy"]),
            1,
        )
    };
    let age = FeatureSpec {
        kind: FeatureKind::Numeric,
        normalization: Some(Normalization {
            mean: 30.0,
            std: 10.0,
        }),
        ..FeatureSpec::categorical("age", Side::User, "", 1)
    };
    let genres = FeatureSpec {
        kind: FeatureKind::MultiHot,
        ..FeatureSpec::categorical(
            "genres",
            Side::Item,
            &vocab("genres", &["action", "comedy", "drama"]),
            2,
        )
    };
    let popularity = FeatureSpec {
        kind: FeatureKind::Numeric,
        ..FeatureSpec::categorical("popularity", Side::Item, "", 1)
    };
    let device = Device::Cpu;
    let table = |rows: Vec<f32>, dim: usize| {
        let n = rows.len() / dim;
        Tensor::from_vec(rows, (n, dim), &device).unwrap()
    };
    let tensors: HashMap<String, Tensor> = [
        ("embedding.user_id", table(vec![0.0, 0.25], 1)),
        ("embedding.liked", table(vec![0.0, 1.0, 2.0], 1)),
        (
            "embedding.genres",
            table(vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 2.0, 2.0], 2),
        ),
        ("head.weight", table(vec![1.0; 6], 6)),
        (
            "head.bias",
            Tensor::zeros(1, candle_core::DType::F32, &device).unwrap(),
        ),
    ]
    .into_iter()
    .map(|(name, t)| (name.to_string(), t))
    .collect();
    candle_core::safetensors::save(&tensors, dir.join("weights.safetensors")).unwrap();
    let config = RankerConfig {
        version: "kinds-1".into(),
        dcn: DcnConfig {
            input_dim: 6,
            cross_layers: 0,
            projection_dim: None,
            diag_scale: 0.0,
            use_bias: true,
            cross_activation: Activation::Linear,
            structure: Structure::Stacked,
            deep_units: Vec::new(),
            deep_activation: Activation::Relu,
            head: Head::Regression,
            experts: None,
            heads: Vec::new(),
        },
        features: vec![user_id, liked, age, genres, popularity],
    };
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("item_features.tsv"),
        "item_id\tgenres\tpopularity\n1\taction|comedy\t5\n2\t\t\n3\tdrama|western\t-1\n",
    )
    .unwrap();
}

/// A one-shard bundle of `ids` with `dim`-wide `vectors`, no ranker yet.
fn bundle_of(ids: &[u64], dim: usize, vectors: Vec<f32>) -> tempfile::TempDir {
    let bundle = tempfile::tempdir().unwrap();
    let items =
        ItemVectors::new(Path::new("test"), dim, vectors, Some(ids.to_vec()), None).unwrap();
    let options = BuildOptions {
        params: IndexParams::default(),
        shard_count: 1,
        version: "kinds".into(),
        source: "test".into(),
        threads: 1,
    };
    build_bundle(bundle.path(), &items, None, &options, &|_| {}).unwrap();
    bundle
}

/// A SERVING ranking node in this process and a client of it; stopping the node
/// reports its error.
async fn ranking_node(
    bundle: &Path,
) -> (ServerHandle<RankingError>, RankingServiceClient<Channel>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let run = recsys_ranking_node::run(listener, RankingConfig::new(bundle), token.clone());
    let mut node = ServerHandle::spawn("ranking node", addr, token, run);
    node.wait_serving(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let client = RankingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    (node, client)
}

fn value(kind: Kind) -> FeatureValue {
    FeatureValue { kind: Some(kind) }
}

fn request(user: &str, features: Vec<(&str, Kind)>) -> RankRequest {
    RankRequest {
        bundle_version: String::new(),
        user_id: user.into(),
        user_features: features
            .into_iter()
            .map(|(name, kind)| (name.to_string(), value(kind)))
            .collect(),
        item_ids: vec![1, 2, 3],
        min_log_revision: 0,
        head_weights: Default::default(),
        ranker_variant: String::new(),
    }
}

fn assert_scores(response: &RankResponse, expected: [f32; 3]) {
    // One score per candidate: `zip` alone would pass an empty answer.
    assert_eq!(
        response.scores.len(),
        expected.len(),
        "{:?} vs {expected:?}",
        response.scores
    );
    for (got, want) in response.scores.iter().zip(expected) {
        assert!(
            (got - want).abs() < 1e-5,
            "{:?} vs {expected:?}",
            response.scores
        );
    }
}

fn list(values: &[&str]) -> Kind {
    Kind::StringList(StringList {
        values: values.iter().map(|v| v.to_string()).collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_hot_and_numeric_features_score_as_worked_out() {
    let ids = vec![1u64, 2, 3];
    let bundle = bundle_of(&ids, 2, vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let source = tempfile::tempdir().unwrap();
    write_ranker(source.path());
    let attached = attach_ranker(bundle.path(), source.path(), &ids).unwrap();
    assert_eq!(attached.unknown_items, 0);

    let (node, mut client) = ranking_node(bundle.path()).await;

    // Items: genres mean (action|comedy → 0.5 + 0.5 = 1; none → 0; drama and an
    // unknown genre → (2 + 0) / 2 per column = 2), popularity 5, missing (0), -1.
    // u1: 0.25; liked action + comedy, summed: 3; age 40 → (40 - 30) / 10 = 1.
    let full = request(
        "u1",
        vec![
            ("liked", list(&["action", "comedy"])),
            ("age", Kind::FloatValue(40.0)),
        ],
    );
    let response = client.rank(full).await.unwrap().into_inner();
    assert!(!response.user_out_of_vocabulary);
    assert_scores(&response, [10.25, 4.25, 5.25]);

    // An integer age and a single liked value; an unknown user, no features: only
    // the item side is left (missing age is the mean, an empty list is zeros).
    let ints = request(
        "u1",
        vec![
            ("liked", Kind::StringValue("comedy".into())),
            ("age", Kind::IntValue(20)),
        ],
    );
    let response = client.rank(ints).await.unwrap().into_inner();
    assert_scores(&response, [7.25, 1.25, 2.25]);
    let stranger = client
        .rank(request("nobody", Vec::new()))
        .await
        .unwrap()
        .into_inner();
    assert!(stranger.user_out_of_vocabulary);
    assert_scores(&stranger, [6.0, 0.0, 1.0]);

    // Values of the wrong shape are refused by name.
    for (features, needle) in [
        (vec![("age", list(&["40"]))], "user_features[age]"),
        (
            vec![("age", Kind::StringValue("old".into()))],
            "user_features[age]",
        ),
        (
            vec![("age", Kind::FloatValue(f32::NAN))],
            "user_features: feature age is NaN",
        ),
        (
            vec![("liked", Kind::FloatValue(1.0))],
            "user_features[liked]",
        ),
    ] {
        let status = client.rank(request("u1", features)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(needle), "{}", status.message());
    }
    let too_long: Vec<String> = (0..1025).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = too_long.iter().map(String::as_str).collect();
    let status = client
        .rank(request("u1", vec![("liked", list(&refs))]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("user_features: feature liked has 1025 values, the limit is 1024"),
        "{}",
        status.message()
    );
    node.stop().await.unwrap();
}

#[test]
fn a_malformed_numeric_cell_is_named_with_its_line() {
    let bundle = bundle_of(&[1], 1, vec![1.0]);
    let source = tempfile::tempdir().unwrap();
    write_ranker(source.path());
    std::fs::write(
        source.path().join("item_features.tsv"),
        "item_id\tgenres\tpopularity\n1\taction\tlots\n",
    )
    .unwrap();
    let error = attach_ranker(bundle.path(), source.path(), &[1])
        .unwrap_err()
        .to_string();
    assert!(error.contains("item_features.tsv: line 2"), "{error}");
    assert!(error.contains("popularity"), "{error}");
}
