//! Per-shard search depth through a real cluster (issue 21): the same catalog
//! in one shard and in four; every shard searches with the beam its builder
//! measured for the recall target at the `k` the gateway asks of it, so four
//! smaller shards asked for fewer items each search with narrower beams than
//! one shard, and the merged answer still reaches the target against the
//! exact top-k.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{RecommendOptions, RecommendRequest, RecommendResponse};
use recsys_tests::*;
use tonic::Code;

const ITEMS: usize = 20_000;
const K: u32 = 100;
const QUERIES: usize = 60;

/// A retrieval request for `query` at `target` (0: the gateway's default).
fn at_target(query: &[f32], target: f32) -> RecommendRequest {
    let mut request = by_embedding(query.to_vec(), K, false);
    request.options = Some(RecommendOptions {
        skip_ranking: true,
        recall_target: target,
        ..Default::default()
    });
    request
}

/// Recall@K of the answers to the bundle's user vectors at `target`, the
/// widest beam a shard used (averaged), and the answers.
async fn measure(
    bundle: &TestBundle,
    gateway: std::net::SocketAddr,
    target: f32,
) -> (f64, f64, Vec<RecommendResponse>) {
    let mut client = gateway_client(gateway).await;
    let users = &bundle.catalog.users;
    let (mut found, mut beams, mut answers) = (0usize, 0f64, Vec::new());
    for row in 0..QUERIES {
        let query = &users.data()[row * users.dimensions()..(row + 1) * users.dimensions()];
        let answer = recommend(
            &mut client,
            at_target(query, target),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(answer.items.len(), K as usize);
        let truth: Vec<u64> = bundle
            .reference(query, &[])
            .into_iter()
            .take(K as usize)
            .map(|(id, _)| id)
            .collect();
        found += ids(&answer).iter().filter(|id| truth.contains(id)).count();
        beams += f64::from(answer.timings.as_ref().unwrap().search_ef);
        answers.push(answer);
    }
    (
        found as f64 / (QUERIES * K as usize) as f64,
        beams / QUERIES as f64,
        answers,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_search_as_deep_as_the_recall_target_needs() {
    let one = synthetic_bundle(ITEMS, 100, 32, 1, 61);
    let four = synthetic_bundle(ITEMS, 100, 32, 4, 61);
    let manifest = recsys_bundle::Manifest::load(four.path()).unwrap();
    let fixed = manifest.index.expansion_search as f64;
    assert!(
        manifest.shards.iter().all(|s| s.search_depths.is_some()),
        "the builder measures every shard's depths"
    );
    let one_cluster = LocalCluster::start(LocalClusterOptions::new(one.path()))
        .await
        .unwrap();
    let four_cluster = LocalCluster::start(LocalClusterOptions::new(four.path()))
        .await
        .unwrap();

    // The gateway's default target, 0.95.
    let (one_recall, one_beam, _) = measure(&one, one_cluster.gateway_addr, 0.0).await;
    let (four_recall, four_beam, answers) = measure(&four, four_cluster.gateway_addr, 0.0).await;
    eprintln!(
        "one shard: recall {one_recall:.3}, beam {one_beam:.1}; four: {four_recall:.3}, {four_beam:.1}"
    );
    assert!(one_recall >= 0.93, "one shard: recall {one_recall:.3}");
    assert!(four_recall >= 0.93, "four shards: recall {four_recall:.3}");
    assert!(
        answers.iter().all(|a| full_coverage(a, 4)),
        "every shard answered"
    );
    // Four shards are each asked for about a third of K from a quarter of
    // the items: narrower beams than one shard asked for all K.
    assert!(
        four_beam < one_beam,
        "four shards' beam {four_beam} vs one shard's {one_beam}"
    );

    // A higher target never searches narrower nor finds less (on shards this
    // small both may be at the floor, k'); the bundle's fixed beam (a gateway
    // whose default target is 0) is what every shard used before.
    let (high_recall, high_beam, _) = measure(&four, four_cluster.gateway_addr, 0.99).await;
    eprintln!("four shards at 0.99: recall {high_recall:.3}, beam {high_beam:.1}");
    assert!(high_beam >= four_beam, "{high_beam} vs {four_beam}");
    assert!(high_recall >= four_recall, "{high_recall} vs {four_recall}");
    assert!(high_recall >= 0.97, "target 0.99: recall {high_recall:.3}");
    let mut options = LocalClusterOptions::new(four.path());
    options.policy.recall_target = 0.0;
    let fixed_cluster = LocalCluster::start(options).await.unwrap();
    let (fixed_recall, fixed_beam, _) = measure(&four, fixed_cluster.gateway_addr, 0.0).await;
    eprintln!("four shards, fixed beam: recall {fixed_recall:.3}, beam {fixed_beam:.1}");
    assert_eq!(
        fixed_beam, fixed,
        "a gateway whose default is 0 uses the bundle's beam"
    );
    assert!(
        fixed_recall >= four_recall,
        "{fixed_recall} vs {four_recall}"
    );
    fixed_cluster.shutdown().await.unwrap();

    let mut client = gateway_client(four_cluster.gateway_addr).await;

    // Out of range: refused by name.
    for target in [1.5f32, -0.2, f32::NAN] {
        let status = recommend(
            &mut client,
            at_target(&[0.1; 32], target),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("options.recall_target"),
            "{}",
            status.message()
        );
    }
    one_cluster.shutdown().await.unwrap();
    four_cluster.shutdown().await.unwrap();
}
