//! The ranking stage: two-stage Recommend through the gateway, Rank against a
//! real ranking node, the fallback to retrieval order, and a ranker that does not
//! match its config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{
    FeatureValue, RankRequest, feature_value::Kind, ranking_service_client::RankingServiceClient,
};
use recsys_ranking_node::RankingConfig;
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("ranking-20k");
        shared_bundle(&root, 20_000, 4, 31)
    })
}

fn user_row(bundle: &TestBundle, user: &str) -> usize {
    bundle
        .catalog
        .users
        .ids()
        .iter()
        .position(|u| u == user)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stage_recommend_follows_the_planted_ranker() {
    let bundle = bundle();
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    assert_eq!(cluster.ranking_nodes(), 1);
    let mut client = gateway_client(cluster.gateway_addr).await;
    let mut reordered = 0;
    for user in bundle.catalog.users.ids().iter().take(12) {
        let response = recommend(&mut client, ranked(user, 10, 100), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(response.ranked, "{:?}", response.coverage);
        assert!(response.model_version.starts_with("planted-"));
        assert!(!response.coverage.as_ref().unwrap().degraded);
        let retrieval = recommend(
            &mut client,
            by_user(user, 100, false),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let candidates: Vec<u64> = ids(&retrieval);
        let row = user_row(bundle, user);
        let mut previous = f32::INFINITY;
        for item in &response.items {
            let score = item.ranking_score.unwrap();
            assert!(score <= previous, "not sorted by ranking score");
            previous = score;
            let want = planted_score(&bundle.catalog, row, item.item_id as usize);
            assert!(
                (f64::from(score) - want).abs() < 1e-4,
                "item {}: {score} vs {want}",
                item.item_id
            );
            assert_eq!(candidates[item.retrieval_rank as usize], item.item_id);
        }
        // The ranked top 10 are the best of the 100 candidates by the planted score.
        let mut by_planted: Vec<(f64, u64)> = candidates
            .iter()
            .map(|id| (planted_score(&bundle.catalog, row, *id as usize), *id))
            .collect();
        by_planted.sort_by(|a, b| b.0.total_cmp(&a.0));
        let best: HashSet<u64> = by_planted.iter().take(10).map(|(_, id)| *id).collect();
        assert_eq!(ids(&response).into_iter().collect::<HashSet<_>>(), best);
        if ids(&response) != candidates[..10] {
            reordered += 1;
        }
        // A caller who sends only the user and k gets the same two-stage
        // answer: the gateway retrieves its default 100 and ranks them.
        let plain = recommend(&mut client, ranked(user, 10, 0), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(plain.ranked);
        assert_eq!(ids(&plain), ids(&response), "user {user}");
    }
    assert!(reordered > 0, "quality never changed the retrieval order");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rank_validates_its_input() {
    let bundle = bundle();
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let addr = cluster.ranking_addr(0).unwrap();
    let mut client = RankingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let request = |user: &str, items: Vec<u64>| RankRequest {
        user_id: user.into(),
        item_ids: items,
        ..Default::default()
    };

    let status = client
        .rank(request("user-1", vec![1, 20_001, 20_002]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("2 unknown item(s): 20001, 20002"),
        "{}",
        status.message()
    );

    let status = client
        .rank(request("user-1", (0..10_001).collect()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("item_ids: has 10001 ids, the limit is 10000")
    );

    let known = client
        .rank(request("user-1", vec![1, 2, 3]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(known.scores.len(), 3);
    assert!(!known.user_out_of_vocabulary);
    // Features the ranker does not take are left alone (they may be the query
    // tower's), as Keras ignores extra inputs: the scores do not move.
    let mut with_extra = request("user-1", vec![1, 2, 3]);
    with_extra.user_features.insert(
        "age".into(),
        FeatureValue {
            kind: Some(Kind::FloatValue(3.5)),
        },
    );
    let extra = client.rank(with_extra).await.unwrap().into_inner();
    assert_eq!(extra.scores, known.scores);
    let stranger = client
        .rank(request("nobody", vec![1, 2, 3]))
        .await
        .unwrap()
        .into_inner();
    assert!(stranger.user_out_of_vocabulary);
    // Out of vocabulary: only the quality term is left, for each of the three.
    assert_eq!(stranger.scores.len(), 3, "{:?}", stranger.scores);
    for (row, score) in [1usize, 2, 3].iter().zip(&stranger.scores) {
        let quality = 0.3 * f32::from(bundle.catalog.item_quality[*row]) / 9.0;
        assert!((score - quality).abs() < 1e-5);
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_ranking_node_falls_back_to_retrieval_order() {
    let bundle = bundle();
    let mut cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    cluster.stop_ranking_node(0).await.unwrap();
    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let response = recommend(&mut client, ranked("user-2", 10, 100), deadline)
        .await
        .unwrap();
    assert!(started.elapsed() < deadline);
    assert!(!response.ranked);
    let coverage = response.coverage.clone().unwrap();
    assert!(coverage.degraded);
    assert_eq!(coverage.shards_answered, 4);
    assert!(
        coverage
            .reasons
            .iter()
            .any(|r| r.stage_kind() == recsys_proto::v1::Stage::Ranking),
        "{:?}",
        coverage.reasons
    );
    assert!(
        response
            .items
            .iter()
            .all(|item| item.ranking_score.is_none())
    );
    let retrieval = recommend(&mut client, by_user("user-2", 10, false), deadline)
        .await
        .unwrap();
    assert_eq!(ids(&response), ids(&retrieval));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranker_that_does_not_match_its_config_is_refused_by_name() {
    let bundle = synthetic_bundle(500, 5, 8, 2, 41);
    // Claim a 2-wide quality embedding: the stored tensor is [11, 1].
    let path = bundle.path().join("ranker/config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["features"][2]["dim"] = 2.into();
    config["dcn"]["input_dim"] = (config["dcn"]["input_dim"].as_u64().unwrap() + 1).into();
    std::fs::write(&path, config.to_string()).unwrap();
    // Sealed again, as a writer that got the config wrong would have: the
    // checksums pass and the shapes are what refuses it.
    let mut manifest = recsys_bundle::Manifest::load(bundle.path()).unwrap();
    manifest.files.remove("ranker/config.json");
    recsys_bundle_builder::seal(bundle.path(), &mut manifest).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    tokio::spawn(recsys_ranking_node::run(
        listener,
        RankingConfig::new(bundle.path()),
        token.clone(),
    ));
    let mut client = loop {
        if let Ok(client) = RankingServiceClient::connect(format!("http://{addr}")).await {
            break client;
        }
        tokio::task::yield_now().await;
    };
    let started = Instant::now();
    let message = loop {
        let status = client
            .rank(RankRequest {
                user_id: "user-0".into(),
                item_ids: vec![1],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        if !status.message().contains("still loading")
            || started.elapsed() > Duration::from_secs(30)
        {
            break status.message().to_string();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(message.contains("embedding.quality"), "{message}");
    assert!(
        message.contains("[11, 1]") && message.contains("[11, 2]"),
        "{message}"
    );
    token.cancel();
}
