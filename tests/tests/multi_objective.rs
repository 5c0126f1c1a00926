//! A multi-objective ranker through a real cluster (issue 20, part 2): a DCN-V2
//! with a rating head and a click head, trained by the trainer and attached to
//! a bundle as an exported ranker is, answers through the gateway with its head
//! names, every item's head scores as the trainer computes them, and the
//! combined score as the order; a request's head weights reorder the same
//! candidates, and weights the ranker cannot take are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_bundle_builder::attach_ranker;
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::recommend_request::Query;
use recsys_proto::v1::{QueryEmbedding, RecommendRequest, RecommendResponse};
use recsys_tests::trained_ranker::{DIM, PLANTED, export_planted_ranker, items_bundle};
use recsys_tests::*;
use recsys_trainer::click::Objective;
use recsys_trainer::{RankingModel, TrainedHead};
use tonic::Code;

/// A two-shard bundle of the planted items with a two-head ranker (rating,
/// click) trained briefly and attached.
fn bundle(ids: &[u64]) -> (tempfile::TempDir, RankingModel) {
    let bundle = items_bundle(ids, 2, "heads");
    let source = tempfile::tempdir().unwrap();
    let heads = vec![
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
    ];
    let model = export_planted_ranker(source.path(), heads, 3, "two-heads-test");
    let attached = attach_ranker(bundle.path(), source.path(), ids).unwrap();
    assert_eq!(attached.unknown_items, 0);
    (bundle, model)
}

fn request(head_weights: &[(&str, f32)]) -> RecommendRequest {
    RecommendRequest {
        query: Some(Query::QueryEmbedding(QueryEmbedding {
            values: vec![0.5; DIM],
        })),
        k: 10,
        retrieve_k: 40,
        head_weights: head_weights
            .iter()
            .map(|(name, w)| (name.to_string(), *w))
            .collect(),
        ..Default::default()
    }
}

/// Every item's (combined, rating, click) scores, in answer order.
fn scored(response: &RecommendResponse) -> Vec<(u64, f32, f32, f32)> {
    response
        .items
        .iter()
        .map(|item| {
            assert_eq!(item.head_scores.len(), 2, "{item:?}");
            (
                item.item_id,
                item.ranking_score.unwrap(),
                item.head_scores[0],
                item.head_scores[1],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_head_ranker_answers_with_every_head_and_orders_by_the_weights() {
    let ids: Vec<u64> = (1..=PLANTED.items as u64).collect();
    let (bundle, model) = bundle(&ids);
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let timeout = Duration::from_secs(10);

    let answer = recommend(&mut client, request(&[]), timeout).await.unwrap();
    assert!(answer.ranked, "{:?}", answer.coverage);
    assert_eq!(answer.heads, ["rating", "click"]);
    assert_eq!(answer.model_version, "two-heads-test");
    let items = scored(&answer);
    assert_eq!(items.len(), 10);
    // The trainer's own head scores for the query's (unknown) user.
    let id_strings: Vec<String> = items.iter().map(|i| i.0.to_string()).collect();
    let pairs: Vec<(&str, &str)> = id_strings.iter().map(|id| ("", id.as_str())).collect();
    let want = model.predict_heads(&pairs).unwrap();
    for (i, &(id, combined, rating, click)) in items.iter().enumerate() {
        assert!(
            (rating - want[0][i]).abs() < 1e-4,
            "item {id}: rating {rating} vs {}",
            want[0][i]
        );
        assert!(
            (click - want[1][i]).abs() < 1e-5,
            "item {id}: click {click} vs {}",
            want[1][i]
        );
        assert!((0.0..=1.0).contains(&click));
        assert!(
            (combined - (0.2 * rating + click)).abs() < 1e-4,
            "{items:?}"
        );
    }
    assert!(items.windows(2).all(|w| w[0].1 >= w[1].1), "{items:?}");

    // Clicks only: ordered by the click head, which is now the score.
    let clicks_only = recommend(&mut client, request(&[("rating", 0.0)]), timeout)
        .await
        .unwrap();
    let items = scored(&clicks_only);
    assert!(items.iter().all(|i| (i.1 - i.3).abs() < 1e-6), "{items:?}");
    assert!(items.windows(2).all(|w| w[0].3 >= w[1].3), "{items:?}");
    // Ratings only: ordered by the rating head.
    let ratings_only = recommend(
        &mut client,
        request(&[("rating", 1.0), ("click", 0.0)]),
        timeout,
    )
    .await
    .unwrap();
    let items = scored(&ratings_only);
    assert!(items.windows(2).all(|w| w[0].2 >= w[1].2), "{items:?}");

    for (weights, needle) in [
        (vec![("watch_time", 1.0)], "no head \"watch_time\""),
        (
            vec![("click", -0.5)],
            "click: -0.5 is not within [0, 1000000]",
        ),
        (vec![("click", f32::INFINITY)], "not within"),
        (vec![("click", 0.0), ("rating", 0.0)], "every head weighs 0"),
    ] {
        let status = recommend(&mut client, request(&weights), timeout)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("head_weights"),
            "{}",
            status.message()
        );
        assert!(status.message().contains(needle), "{}", status.message());
    }
    cluster.shutdown().await.unwrap();
}
