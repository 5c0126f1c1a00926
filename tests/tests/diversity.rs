//! Diversity caps through a real cluster (issue 19, part 3): a bundle with item
//! attributes (the synthetic catalog's topic and planted quality), a ranked
//! answer with at most two items of one quality bucket, never over the cap, a
//! short answer that says why, and bad caps refused by field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{Diversity, RecommendRequest};
use recsys_tests::*;
use tonic::Code;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("diversity");
        let bundle = shared_bundle(&root, 5_000, 2, 43);
        // The catalog's ground truth as attributes, added and sealed as
        // `recsys bundle --attributes` does.
        let tsv = bundle.topic_and_quality_tsv("", |_| String::new());
        add_attributes(&bundle, &tsv);
        bundle
    })
}

fn capped(user: &str, k: u32, attribute: &str, max: u32) -> RecommendRequest {
    RecommendRequest {
        diversity: Some(Diversity {
            attribute: attribute.into(),
            max_per_value: max,
            mmr_lambda: None,
        }),
        ..ranked(user, k, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_in_ranked_answers_and_a_short_answer_says_why() {
    let bundle = bundle();
    let quality = bundle.by_item(&bundle.catalog.item_quality);
    let topic = bundle.by_item(&bundle.catalog.item_cluster);
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let mut full = 0;
    for user in bundle.catalog.users.ids().iter().take(8) {
        let plain = recommend(&mut client, ranked(user, 10, 0), Duration::from_secs(5))
            .await
            .unwrap();
        let answer = recommend(
            &mut client,
            capped(user, 10, "quality", 2),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(answer.ranked);
        let mut counts: HashMap<u8, u32> = HashMap::new();
        for item in &answer.items {
            *counts.entry(quality[&item.item_id]).or_default() += 1;
        }
        assert!(counts.values().all(|n| *n <= 2), "{user}: {counts:?}");
        if answer.items.len() < 10 {
            assert!(
                answer.diversity_note.contains("cap of 2 per quality"),
                "{answer:?}"
            );
        } else {
            assert_eq!(answer.diversity_note, "");
            full += 1;
        }
        // In ranking order: each kept item outranks the ones after it.
        let scores: Vec<f32> = answer
            .items
            .iter()
            .map(|i| i.ranking_score.unwrap())
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
        // The plain answer's best item always survives a cap of two.
        assert_eq!(answer.items[0].item_id, plain.items[0].item_id);
    }
    assert!(
        full > 0,
        "a cap of two per quality bucket never filled an answer"
    );
    // One item per topic: a user's candidates come mostly from one topic, so
    // the answer is short and says why.
    let user = bundle.catalog.users.ids()[0].clone();
    let answer = recommend(
        &mut client,
        capped(&user, 10, "topic", 1),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let topics: std::collections::HashSet<u32> =
        answer.items.iter().map(|i| topic[&i.item_id]).collect();
    assert_eq!(topics.len(), answer.items.len(), "one item per topic");
    assert!(answer.items.len() < 10, "{answer:?}");
    assert!(
        answer.diversity_note.contains("of 10 items")
            && answer.diversity_note.contains("retrieve_k"),
        "{}",
        answer.diversity_note
    );
    for (request, words) in [
        (
            capped(&user, 10, "colour", 2),
            "unknown attribute \"colour\"",
        ),
        (capped(&user, 10, "quality", 0), "max_per_value"),
    ] {
        let status = recommend(&mut client, request, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{}", status.message());
    }
    cluster.shutdown().await.unwrap();
}

/// The mean cosine similarity of every pair of `ids`' vectors.
fn mean_similarity(bundle: &TestBundle, ids: &[u64]) -> f64 {
    let row = |id: u64| {
        let position = bundle
            .catalog
            .items
            .ids
            .iter()
            .position(|i| *i == id)
            .unwrap();
        let v: Vec<f64> = bundle
            .catalog
            .items
            .row(position)
            .iter()
            .map(|x| f64::from(*x))
            .collect();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f64>>()
    };
    let vectors: Vec<Vec<f64>> = ids.iter().map(|id| row(*id)).collect();
    let mut sum = 0.0;
    let mut pairs = 0;
    for i in 0..vectors.len() {
        for j in i + 1..vectors.len() {
            sum += vectors[i]
                .iter()
                .zip(&vectors[j])
                .map(|(a, b)| a * b)
                .sum::<f64>();
            pairs += 1;
        }
    }
    sum / f64::from(pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximal_marginal_relevance_spreads_the_answer_over_unlike_items() {
    let bundle = bundle();
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let timeout = Duration::from_secs(5);
    let mmr = |user: &str, lambda: f32| RecommendRequest {
        diversity: Some(Diversity {
            attribute: String::new(),
            max_per_value: 0,
            mmr_lambda: Some(lambda),
        }),
        ..ranked(user, 10, 40)
    };
    let (mut plain_similarity, mut mmr_similarity) = (0.0, 0.0);
    for user in bundle.catalog.users.ids().iter().take(6) {
        let plain = recommend(&mut client, ranked(user, 10, 40), timeout)
            .await
            .unwrap();
        // λ = 1 is the ranking order.
        let same = recommend(&mut client, mmr(user, 1.0), timeout)
            .await
            .unwrap();
        assert_eq!(ids(&same), ids(&plain), "{user}");
        let spread = recommend(&mut client, mmr(user, 0.3), timeout)
            .await
            .unwrap();
        assert!(spread.ranked);
        assert_eq!(spread.items.len(), 10);
        assert_eq!(spread.items[0].item_id, plain.items[0].item_id, "{user}");
        let mut distinct = ids(&spread);
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 10);
        plain_similarity += mean_similarity(bundle, &ids(&plain));
        mmr_similarity += mean_similarity(bundle, &ids(&spread));
    }
    assert!(
        mmr_similarity < plain_similarity,
        "MMR {mmr_similarity} vs plain {plain_similarity}"
    );
    let user = bundle.catalog.users.ids()[0].clone();
    for (request, words) in [
        (mmr(&user, 1.5), "diversity.mmr_lambda"),
        (
            RecommendRequest {
                retrieve_k: 2_000,
                ..mmr(&user, 0.5)
            },
            "retrieve_k: is 2000 with diversity.mmr_lambda",
        ),
    ] {
        let status = recommend(&mut client, request, timeout).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{}", status.message());
    }
    cluster.shutdown().await.unwrap();
}
