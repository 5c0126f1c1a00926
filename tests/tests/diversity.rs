//! Diversity caps through a real cluster (issue 19, part 3): a bundle with item
//! attributes (the synthetic catalog's topic and planted quality), a ranked
//! answer with at most two items of one quality bucket, never over the cap, a
//! short answer that says why, and bad caps refused by field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use recsys_bundle::Manifest;
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
        let catalog = &bundle.catalog;
        let mut tsv = String::from("id\ttopic:keyword\tquality:integer\n");
        for ((id, topic), quality) in catalog
            .items
            .ids
            .iter()
            .zip(&catalog.item_cluster)
            .zip(&catalog.item_quality)
        {
            tsv.push_str(&format!("{id}\ttopic-{topic}\t{quality}\n"));
        }
        std::fs::write(bundle.path().join("attributes.tsv"), tsv).unwrap();
        let mut manifest = Manifest::load(bundle.path()).unwrap();
        manifest.attributes = Some("attributes.tsv".into());
        recsys_bundle_builder::seal(bundle.path(), &mut manifest).unwrap();
        bundle
    })
}

fn capped(user: &str, k: u32, attribute: &str, max: u32) -> RecommendRequest {
    RecommendRequest {
        diversity: Some(Diversity {
            attribute: attribute.into(),
            max_per_value: max,
        }),
        ..ranked(user, k, 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_hold_in_ranked_answers_and_a_short_answer_says_why() {
    let bundle = bundle();
    let quality: HashMap<u64, u8> = bundle
        .catalog
        .items
        .ids
        .iter()
        .copied()
        .zip(bundle.catalog.item_quality.iter().copied())
        .collect();
    let topic: HashMap<u64, u32> = bundle
        .catalog
        .items
        .ids
        .iter()
        .copied()
        .zip(bundle.catalog.item_cluster.iter().copied())
        .collect();
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
