//! A/B ranker variants (issue 20, part 3) through a real cluster: a bundle
//! carries two trained rankers, the gateway assigns each user to one by the
//! seeded hash of the user id and the shares, the assigned variant's ranker
//! ranks (its model version in the answer), the answer names the variant, the
//! shares change without a restart through the gateway's shares file, and the
//! gateway counts answers per variant.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use recsys_bundle::{Manifest, Shares};
use recsys_bundle_builder::{attach_ranker, attach_ranker_variant};
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::recommend_request::Query;
use recsys_proto::v1::{RecommendRequest, RecommendResponse};
use recsys_tests::trained_ranker::{PLANTED, export_planted_ranker, items_bundle};
use recsys_tests::*;

/// A bundle with the default ranker (`ranker-a`) and the variant `b`
/// (`ranker-b`, trained from another seed), shared half and half.
fn bundle(ids: &[u64]) -> tempfile::TempDir {
    let bundle = items_bundle(ids, 2, "variants");
    for (seed, version, variant) in [(3, "ranker-a", None), (4, "ranker-b", Some("b"))] {
        let source = tempfile::tempdir().unwrap();
        export_planted_ranker(source.path(), Vec::new(), seed, version);
        match variant {
            None => attach_ranker(bundle.path(), source.path(), ids).unwrap(),
            Some(name) => {
                attach_ranker_variant(bundle.path(), source.path(), ids, Some(name)).unwrap()
            }
        };
    }
    let mut manifest = Manifest::load(bundle.path()).unwrap();
    manifest.ranker_shares = BTreeMap::from([("default".into(), 1.0), ("b".into(), 1.0)]);
    recsys_bundle_builder::seal(bundle.path(), &mut manifest).unwrap();
    assert_eq!(manifest.variant_names(), ["default", "b"]);
    bundle
}

/// Items like item 1, ranked for `user`.
fn request(user: &str) -> RecommendRequest {
    RecommendRequest {
        query: Some(Query::UserId(user.into())),
        similar_to_item_id: Some(1),
        k: 5,
        retrieve_k: 20,
        ..Default::default()
    }
}

async fn answers(
    client: &mut recsys_proto::v1::gateway_service_client::GatewayServiceClient<
        tonic::transport::Channel,
    >,
    users: &[String],
) -> Vec<RecommendResponse> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        let answer = recommend(client, request(user), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(answer.ranked, "{:?}", answer.coverage);
        out.push(answer);
    }
    out
}

fn write_shares(path: &std::path::Path, text: &str) {
    // Through a rename, so the gateway never reads half a file.
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, text).unwrap();
    std::fs::rename(&staging, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_are_ranked_by_their_assigned_variant_and_shares_change_without_a_restart() {
    let ids: Vec<u64> = (1..=PLANTED.items as u64).collect();
    let bundle = bundle(&ids);
    let config = tempfile::tempdir().unwrap();
    let shares_file = config.path().join("shares.json");
    write_shares(&shares_file, r#"{"default": 3, "b": 1, "salt": "exp-1"}"#);
    let mut options = LocalClusterOptions::new(bundle.path());
    options.ranker_shares = Some(shares_file.clone());
    let cluster = LocalCluster::start(options).await.unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;

    // Every user where the shares put them, ranked by that variant's model.
    let users: Vec<String> = (0..200).map(|u| format!("user-{u}")).collect();
    let weights = BTreeMap::from([("default".to_string(), 3.0), ("b".to_string(), 1.0)]);
    let expected = Shares::new(&weights, &["default", "b"], "exp-1").unwrap();
    let first = answers(&mut client, &users).await;
    let mut in_b = 0;
    for (user, answer) in users.iter().zip(&first) {
        let variant = expected.assign(user);
        assert_eq!(answer.ranker_variant, variant, "{user}");
        let model = if variant == "b" {
            "ranker-b"
        } else {
            "ranker-a"
        };
        assert_eq!(answer.model_version, model, "{user}");
        in_b += usize::from(variant == "b");
    }
    // A quarter of 200 users (standard deviation about 6).
    assert!((30..=70).contains(&in_b), "{in_b} of 200 users in b");
    // Stable: the same users, the same variants.
    let again = answers(&mut client, &users[..40]).await;
    for (a, b) in first.iter().zip(&again) {
        assert_eq!(a.ranker_variant, b.ranker_variant);
    }
    // An embedding query has no user to keep in an arm: the default ranks.
    let anonymous = RecommendRequest {
        query: Some(Query::QueryEmbedding(recsys_proto::v1::QueryEmbedding {
            values: vec![0.5; recsys_tests::trained_ranker::DIM],
        })),
        k: 5,
        ..Default::default()
    };
    let answer = recommend(&mut client, anonymous, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(answer.ranker_variant, "default");

    // All traffic to b, then back, by rewriting the file only.
    for (text, variant, model) in [
        (r#"{"b": 1}"#, "b", "ranker-b"),
        (r#"{"default": 1}"#, "default", "ranker-a"),
    ] {
        write_shares(&shares_file, text);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answers = answers(&mut client, &users[..20]).await;
            if answers
                .iter()
                .all(|a| a.ranker_variant == variant && a.model_version == model)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the gateway did not take up {text} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // A file naming a variant the bundle lacks is not applied: the bundle's
    // own shares (half and half, salt "recsys") are.
    write_shares(&shares_file, r#"{"c": 1}"#);
    let bundle_shares = Manifest::load(bundle.path()).unwrap().shares().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answers = answers(&mut client, &users[..20]).await;
        let fits = users[..20]
            .iter()
            .zip(&answers)
            .all(|(u, a)| a.ranker_variant == bundle_shares.assign(u));
        if fits {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the bundle's shares never applied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Answers are counted per variant.
    let metrics = recsys_server::metrics::render();
    for variant in ["default", "b"] {
        let series = format!(
            "recsys_gateway_variant_answers_total{{outcome=\"ranked\",variant=\"{variant}\"}}"
        );
        assert!(metrics.contains(&series), "no {series} in:\n{metrics}");
    }
    assert!(metrics.contains("recsys_gateway_variant_seconds_count{variant=\"b\"}"));
    cluster.shutdown().await.unwrap();
}
