//! "Items like this one" through the gateway (issue 19, part 2): the item's own
//! vector, fetched from its shard, is the query; the item is left out; alone it
//! is answered in retrieval order, with a user it is ranked for that user; an
//! unknown item is NOT_FOUND and a second query is INVALID_ARGUMENT, by name.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::RecommendRequest;
use recsys_tests::*;
use tonic::Code;

const SHARDS: u32 = 4;

fn similar_to(item: u64, k: u32) -> RecommendRequest {
    RecommendRequest {
        similar_to_item_id: Some(item),
        k,
        options: Some(recsys_proto::v1::RecommendOptions {
            exact: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_items_are_the_items_nearest_to_its_own_vector() {
    let bundle = synthetic_bundle(8_000, 20, 16, SHARDS, 23);
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    assert!(cluster.ranking_nodes() > 0, "the bundle has a ranker");
    let mut client = gateway_client(cluster.gateway_addr).await;
    let timeout = Duration::from_secs(10);

    // Exact: the brute-force neighbours of the item's vector, itself left out,
    // in retrieval order (nobody to rank for).
    for item in [0u64, 17, 4_321, 7_999] {
        let answer = recommend(&mut client, similar_to(item, 20), timeout)
            .await
            .unwrap();
        let vector = bundle.catalog.items.row(item as usize).to_vec();
        let expected: Vec<u64> = bundle
            .reference(&vector, &[item])
            .iter()
            .take(20)
            .map(|(id, _)| *id)
            .collect();
        assert_eq!(ids(&answer), expected, "item {item}");
        assert!(!answer.ranked, "item {item}: ranked with no user");
        assert!(full_coverage(&answer, SHARDS), "{:?}", answer.coverage);
    }

    // With a user: the same candidates, ranked for that user; still never itself.
    let mut request = similar_to(17, 10);
    request.query = Some(recsys_proto::v1::recommend_request::Query::UserId(
        "user-3".into(),
    ));
    request.retrieve_k = 50;
    let answer = recommend(&mut client, request, timeout).await.unwrap();
    assert!(answer.ranked, "{answer:?}");
    assert_eq!(answer.items.len(), 10);
    assert!(!ids(&answer).contains(&17));
    let vector = bundle.catalog.items.row(17).to_vec();
    let candidates: Vec<u64> = bundle
        .reference(&vector, &[17])
        .iter()
        .take(50)
        .map(|(id, _)| *id)
        .collect();
    assert!(ids(&answer).iter().all(|id| candidates.contains(id)));

    // An item no shard holds, and a request with two queries.
    let missing = recommend(&mut client, similar_to(10_000_000, 10), timeout)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert!(
        missing
            .message()
            .contains("similar_to_item_id: item 10000000 is not in bundle version"),
        "{missing:?}"
    );
    let mut both = similar_to(17, 10);
    both.query = Some(recsys_proto::v1::recommend_request::Query::QueryEmbedding(
        recsys_proto::v1::QueryEmbedding { values: vector },
    ));
    let refused = recommend(&mut client, both, timeout).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("similar_to_item_id: cannot be combined with query_embedding"),
        "{refused:?}"
    );
    cluster.shutdown().await.unwrap();
}
