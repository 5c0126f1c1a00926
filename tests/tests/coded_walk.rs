//! The coded walk (`--load-mode coded`, issue 21) through a real cluster: the
//! same catalog served by nodes that walk usearch's graph as usearch does and by
//! nodes that walk it on 4-bit codes. The coded nodes must find what the others
//! find (recall against the exact top-k within a point of theirs at the same
//! recall target), with exact scores. What the codes may skip is pinned by
//! recsys-index's unit tests (`coded_graph.rs`), on a beam narrow enough that
//! a skipped neighbour shows; this checks the node serves the mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{RecommendOptions, RecommendRequest, RecommendResponse};
use recsys_retrieval_node::LoadMode;
use recsys_tests::*;

const ITEMS: usize = 20_000;
const K: u32 = 100;
const QUERIES: usize = 40;

fn retrieval(query: &[f32]) -> RecommendRequest {
    let mut request = by_embedding(query.to_vec(), K, false);
    request.options = Some(RecommendOptions {
        skip_ranking: true,
        recall_target: 0.95,
        ..Default::default()
    });
    request
}

/// Recall@K against the exact top-K of the bundle's first user vectors, and
/// the answers.
async fn measure(
    bundle: &TestBundle,
    cluster: &LocalCluster,
) -> (f64, Vec<(Vec<f32>, RecommendResponse)>) {
    let mut client = gateway_client(cluster.gateway_addr).await;
    let users = &bundle.catalog.users;
    let (mut found, mut answers) = (0usize, Vec::new());
    for row in 0..QUERIES {
        let query = users.data()[row * users.dimensions()..(row + 1) * users.dimensions()].to_vec();
        let answer = recommend(&mut client, retrieval(&query), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(answer.items.len(), K as usize);
        let truth: Vec<u64> = bundle
            .reference(&query, &[])
            .into_iter()
            .take(K as usize)
            .map(|(id, _)| id)
            .collect();
        found += ids(&answer).iter().filter(|id| truth.contains(id)).count();
        answers.push((query, answer));
    }
    (found as f64 / (QUERIES * K as usize) as f64, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coded_walk_finds_what_usearchs_walk_finds_with_exact_scores() {
    let bundle = synthetic_bundle(ITEMS, 100, 32, 1, 67);
    let start = |mode: LoadMode| {
        let mut options = LocalClusterOptions::new(bundle.path());
        options.load_mode = mode;
        LocalCluster::start(options)
    };
    let plain = start(LoadMode::Packed).await.unwrap();
    let coded = start(LoadMode::Coded).await.unwrap();
    let (plain_recall, _) = measure(&bundle, &plain).await;
    let (coded_recall, answers) = measure(&bundle, &coded).await;
    assert!(
        coded_recall >= plain_recall - 0.01,
        "coded walk recall@{K} {coded_recall:.3} against usearch's {plain_recall:.3}"
    );
    assert!(
        coded_recall > 0.8,
        "coded walk recall@{K} {coded_recall:.3}"
    );
    // Every score is the exact inner product, best first.
    for (query, answer) in &answers {
        let exact = bundle.reference(query, &[]);
        for pair in answer.items.windows(2) {
            assert!(
                pair[0].retrieval_score >= pair[1].retrieval_score,
                "best first"
            );
        }
        for item in &answer.items {
            let (_, score) = exact
                .iter()
                .find(|(id, _)| *id == item.item_id)
                .expect("an item of the catalog");
            let score = *score as f32;
            assert!(
                (item.retrieval_score - score).abs() <= 1e-4 * score.abs().max(1.0),
                "item {}: {} against the exact {score}",
                item.item_id,
                item.retrieval_score
            );
        }
    }
    plain.shutdown().await.unwrap();
    coded.shutdown().await.unwrap();
}
