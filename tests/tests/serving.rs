//! The core serving path through the gateway, against real retrieval nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_bundle::shard_of;
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_tests::*;
use tokio_stream::StreamExt;
use tonic::Code;

/// 100k items over 4 shards: the catalog of the recall target.
fn big() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        shared_bundle(
            &std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serving-100k"),
            100_000,
            4,
            7,
        )
    })
}

async fn start(bundle: &TestBundle) -> LocalCluster {
    LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap()
}

/// Query embeddings that are not users: items' vectors slightly moved, and raw users.
fn queries(bundle: &TestBundle, n: usize) -> Vec<Vec<f32>> {
    let items = &bundle.catalog.items;
    (0..n)
        .map(|i| {
            let row = (i * 7919) % items.len();
            items
                .row(row)
                .iter()
                .enumerate()
                .map(|(d, v)| v + 0.01 * ((i + d) % 5) as f32)
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_mode_matches_brute_force() {
    let bundle = big();
    let cluster = start(bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    for query in queries(bundle, 12) {
        let response = recommend(
            &mut client,
            by_embedding(query.clone(), 100, true),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let reference = bundle.reference(&query, &[]);
        let truth: std::collections::HashMap<u64, f64> = reference.iter().copied().collect();
        assert_eq!(response.items.len(), 100);
        for (rank, item) in response.items.iter().enumerate() {
            let (want_id, want_score) = reference[rank];
            // Same id at the same rank, or an item whose true score ties the
            // reference's within float rounding (their order is not defined).
            let got_score = truth[&item.item_id];
            assert!(
                item.item_id == want_id || (got_score - want_score).abs() < 1e-5,
                "rank {rank}: got {} ({got_score}), want {want_id} ({want_score})",
                item.item_id
            );
            assert!((f64::from(item.retrieval_score) - got_score).abs() < 1e-4);
        }
        let coverage = response.coverage.unwrap();
        assert_eq!((coverage.shards_asked, coverage.shards_answered), (4, 4));
        assert_eq!(coverage.items_searched, 100_000);
        assert!(!coverage.degraded);
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hnsw_recall_at_100_is_at_least_095() {
    let bundle = big();
    let cluster = start(bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    let (mut found, mut wanted) = (0usize, 0usize);
    let users: Vec<String> = bundle
        .catalog
        .users
        .ids()
        .iter()
        .take(50)
        .cloned()
        .collect();
    for user in &users {
        let exact = recommend(
            &mut client,
            by_user(user, 100, true),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let approx = recommend(
            &mut client,
            by_user(user, 100, false),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let truth: HashSet<u64> = ids(&exact).into_iter().collect();
        found += ids(&approx).iter().filter(|id| truth.contains(id)).count();
        wanted += truth.len();
    }
    let recall = found as f64 / wanted as f64;
    eprintln!("recall@100 over {} users: {recall:.4}", users.len());
    assert!(recall >= 0.95, "recall@100 = {recall:.4}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_recommendations_follow_the_planted_topics() {
    let bundle = big();
    let cluster = start(bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    let catalog = &bundle.catalog;
    let (mut in_topic, mut total) = (0, 0);
    for (u, user) in catalog.users.ids().iter().enumerate().take(20) {
        let response = recommend(
            &mut client,
            by_user(user, 20, false),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        for item in &response.items {
            total += 1;
            if catalog.item_cluster[item.item_id as usize] == catalog.user_cluster[u] {
                in_topic += 1;
            }
            assert!(item.name.contains(&format!("item {}", item.item_id)));
        }
    }
    assert!(
        in_topic as f64 / total as f64 > 0.9,
        "{in_topic} of {total} in the user's topic"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_items_never_appear_even_beyond_shard_size() {
    // 200 items over 4 shards: ~50 per shard, fewer than k + exclusions.
    let bundle = synthetic_bundle(200, 10, 16, 4, 11);
    let cluster = start(&bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    let query = bundle.catalog.items.row(0).to_vec();
    let top = bundle.reference(&query, &[]);
    // Exclude the 120 best items: every shard loses most of its items.
    let excluded: Vec<u64> = top.iter().take(120).map(|(id, _)| *id).collect();
    for exact in [true, false] {
        let mut request = by_embedding(query.clone(), 100, exact);
        request.exclude_item_ids = excluded.clone();
        if let Some(options) = request.options.as_mut() {
            options.top_k_probability = 1.0;
        }
        let response = recommend(&mut client, request, Duration::from_secs(5))
            .await
            .unwrap();
        let got = ids(&response);
        assert!(
            got.iter().all(|id| !excluded.contains(id)),
            "exact={exact}: an excluded id came back"
        );
        // 80 items remain; the exact scan must return all of them, best first.
        if exact {
            let want: Vec<u64> = bundle
                .reference(&query, &excluded)
                .iter()
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(got, want);
        } else {
            assert!(
                got.len() >= 75,
                "hnsw returned only {} of 80 remaining items",
                got.len()
            );
        }
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_invalid_argument_naming_field_and_limit() {
    let bundle = synthetic_bundle(500, 10, 16, 2, 12);
    let cluster = start(&bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    let good = bundle.catalog.items.row(0).to_vec();
    let poisoned = |at: usize, value: f32| {
        let mut query = good.clone();
        query[at] = value;
        query
    };
    let cases: Vec<(recsys_proto::v1::RecommendRequest, Code, &str)> = vec![
        (
            by_embedding(vec![0.5; 15], 10, false),
            Code::InvalidArgument,
            "query_embedding: has 15 values, the bundle's dimension is 16",
        ),
        (
            by_embedding(poisoned(3, f32::NAN), 10, false),
            Code::InvalidArgument,
            "value 3 is NaN",
        ),
        (
            by_embedding(poisoned(0, f32::INFINITY), 10, false),
            Code::InvalidArgument,
            "value 0 is inf",
        ),
        (
            by_embedding(good.clone(), 0, false),
            Code::InvalidArgument,
            "k: is 0, must be between 1 and 1000",
        ),
        (
            by_embedding(good.clone(), 1001, false),
            Code::InvalidArgument,
            "k: is 1001, must be between 1 and 1000",
        ),
        (
            {
                let mut r = by_embedding(good.clone(), 10, false);
                r.exclude_item_ids = (0..10_001).collect();
                r
            },
            Code::InvalidArgument,
            "exclude_item_ids: has 10001 ids, the limit is 10000",
        ),
        (
            recsys_proto::v1::RecommendRequest {
                k: 10,
                ..Default::default()
            },
            Code::InvalidArgument,
            "empty request",
        ),
        (
            by_user("nobody", 10, false),
            Code::NotFound,
            "\"nobody\" is not known",
        ),
    ];
    for (request, code, text) in cases {
        let status = recommend(&mut client, request, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(text),
            "{:?} does not contain {text:?}",
            status.message()
        );
    }
    // The cluster still answers after all that.
    assert!(
        recommend(
            &mut client,
            by_embedding(good, 5, false),
            Duration::from_secs(5)
        )
        .await
        .is_ok()
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_shard_gives_partial_coverage_within_the_deadline() {
    let bundle = big();
    let mut cluster = start(bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    cluster.stop_node(2, 0).await.unwrap();
    let deadline = Duration::from_secs(2);
    for user in bundle.catalog.users.ids().iter().take(5) {
        let started = Instant::now();
        let response = recommend(&mut client, by_user(user, 50, false), deadline)
            .await
            .unwrap();
        assert!(started.elapsed() < deadline, "took {:?}", started.elapsed());
        let coverage = response.coverage.clone().unwrap();
        assert_eq!((coverage.shards_asked, coverage.shards_answered), (4, 3));
        assert!(coverage.degraded);
        assert_eq!(coverage.reasons.len(), 1);
        assert_eq!(coverage.reasons[0].shard, Some(2));
        assert!(coverage.items_searched < coverage.items_total);
        assert_eq!(response.items.len(), 50);
        assert!(
            response
                .items
                .iter()
                .all(|item| shard_of(item.item_id, 4) != 2)
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_final_list_equals_recommend() {
    let bundle = big();
    let cluster = start(bundle).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    for (user, exact) in [("user-3", false), ("user-4", true)] {
        let unary = recommend(
            &mut client,
            by_user(user, 30, exact),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut stream = client
            .recommend_stream(by_user(user, 30, exact))
            .await
            .unwrap()
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream.next().await {
            messages.push(message.unwrap());
        }
        let (last, partials) = messages.split_last().unwrap();
        assert!(last.r#final);
        assert_eq!(partials.len(), 4, "one running top-k per shard");
        assert!(partials.iter().all(|m| !m.r#final));
        // The running top-k only grows in coverage.
        let answered: Vec<u32> = partials
            .iter()
            .map(|m| m.coverage.as_ref().unwrap().shards_answered)
            .collect();
        assert_eq!(answered, vec![1, 2, 3, 4]);
        let final_ids: Vec<u64> = last.items.iter().map(|i| i.item_id).collect();
        assert_eq!(final_ids, ids(&unary));
        // Retrieval only: the last running top-k is the final list.
        let last_partial: Vec<u64> = partials[3].items.iter().map(|i| i.item_id).collect();
        assert_eq!(last_partial, final_ids);
    }
    // Two-stage: the final message is the ranked list, the partials are retrieval order.
    let unary = recommend(
        &mut client,
        ranked("user-5", 10, 100),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut stream = client
        .recommend_stream(ranked("user-5", 10, 100))
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message.unwrap());
    }
    let last = messages.last().unwrap();
    assert!(last.r#final && last.ranked && unary.ranked);
    assert!(messages[..messages.len() - 1].iter().all(|m| !m.ranked));
    assert_eq!(
        last.items.iter().map(|i| i.item_id).collect::<Vec<_>>(),
        ids(&unary)
    );
    cluster.shutdown().await.unwrap();
}
