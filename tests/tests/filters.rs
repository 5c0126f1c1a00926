//! Attribute filters through a real cluster (issue 19, part 1): a bundle with
//! item attributes cut into shards; filtered answers, exact and through the
//! graph, at selectivities from a half to a thousandth, against the exact
//! filtered top-k; the structured filter and the text form alike; ranked
//! answers only from matching items; bad filters refused naming the attribute.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{
    AttributeEquals, AttributeLiteral, AttributeRange, Filter, FilterList, RecommendRequest,
    attribute_literal, filter::Kind,
};
use recsys_tests::live_cluster::splitmix;
use recsys_tests::*;
use tonic::Code;

const ITEMS: usize = 5_000;
const SHARDS: u32 = 2;

/// Item `id`'s bucket: the share of items in bucket "half" is a half, in
/// "tenth" a tenth, and so on (by a hash, so every shard holds some).
fn buckets(id: u64) -> Vec<&'static str> {
    let h = splitmix(id) % 1000;
    let mut buckets = Vec::new();
    if h < 500 {
        buckets.push("half");
    }
    if h < 100 {
        buckets.push("tenth");
    }
    if h < 10 {
        buckets.push("hundredth");
    }
    if h < 1 {
        buckets.push("thousandth");
    }
    buckets
}

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("filters");
        let bundle = shared_bundle(&root, ITEMS, SHARDS, 47);
        let tsv = bundle.topic_and_quality_tsv("bucket:keyword_list\t", |id| {
            format!("{}\t", buckets(id).join("|"))
        });
        add_attributes(&bundle, &tsv);
        bundle
    })
}

fn filtered(query: Vec<f32>, k: u32, exact: bool, expression: &str) -> RecommendRequest {
    RecommendRequest {
        filter_expression: expression.into(),
        ..by_embedding(query, k, exact)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_answers_hold_k_matching_items_at_every_selectivity() {
    let bundle = bundle();
    let catalog = &bundle.catalog;
    let quality = bundle.by_item(&catalog.item_quality);
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let timeout = Duration::from_secs(10);
    let k = 10usize;
    let (mut found, mut wanted) = (0usize, 0usize);
    for bucket in ["half", "tenth", "hundredth", "thousandth"] {
        let matches = |id: u64| buckets(id).contains(&bucket);
        let matching: Vec<u64> = catalog
            .items
            .ids
            .iter()
            .copied()
            .filter(|id| matches(*id))
            .collect();
        assert!(!matching.is_empty(), "{bucket}");
        let not_matching: Vec<u64> = catalog
            .items
            .ids
            .iter()
            .copied()
            .filter(|id| !matches(*id))
            .collect();
        for row in [3usize, 1_234, 4_000] {
            let query = catalog.items.row(row).to_vec();
            let expected: Vec<u64> = bundle
                .reference(&query, &not_matching)
                .iter()
                .take(k)
                .map(|(id, _)| *id)
                .collect();
            let expression = format!("bucket = \"{bucket}\"");
            for exact in [true, false] {
                let answer = recommend(
                    &mut client,
                    filtered(query.clone(), k as u32, exact, &expression),
                    timeout,
                )
                .await
                .unwrap();
                assert!(full_coverage(&answer, SHARDS), "{:?}", answer.coverage);
                // k items whenever k match; all of them when fewer do.
                assert_eq!(
                    answer.items.len(),
                    k.min(matching.len()),
                    "{bucket} exact {exact}"
                );
                assert!(
                    ids(&answer).iter().all(|id| matches(*id)),
                    "{bucket}: {answer:?}"
                );
                if exact {
                    assert_eq!(ids(&answer), expected, "{bucket}: exact answers are exact");
                } else {
                    let got = ids(&answer);
                    found += expected.iter().filter(|id| got.contains(id)).count();
                    wanted += expected.len();
                }
            }
        }
    }
    let recall = found as f64 / wanted as f64;
    assert!(recall >= 0.95, "filtered recall {recall}");

    // The structured form means the same as the text.
    let query = catalog.items.row(77).to_vec();
    let text = filtered(
        query.clone(),
        10,
        true,
        "bucket = \"tenth\" and quality >= 2",
    );
    let structured = RecommendRequest {
        filter: Some(Filter {
            kind: Some(Kind::All(FilterList {
                filters: vec![
                    Filter {
                        kind: Some(Kind::Equals(AttributeEquals {
                            attribute: "bucket".into(),
                            value: Some(AttributeLiteral {
                                value: Some(attribute_literal::Value::Keyword("tenth".into())),
                            }),
                        })),
                    },
                    Filter {
                        kind: Some(Kind::Range(AttributeRange {
                            attribute: "quality".into(),
                            min: Some(2.0),
                            ..Default::default()
                        })),
                    },
                ],
            })),
        }),
        ..by_embedding(query, 10, true)
    };
    let a = recommend(&mut client, text, timeout).await.unwrap();
    let b = recommend(&mut client, structured, timeout).await.unwrap();
    assert_eq!(ids(&a), ids(&b));
    assert_eq!(a.items.len(), 10);
    assert!(
        ids(&a)
            .iter()
            .all(|id| buckets(*id).contains(&"tenth") && quality[id] >= 2),
        "{a:?}"
    );

    // Ranked for a user, from matching candidates only.
    let user = catalog.users.ids()[0].clone();
    let request = RecommendRequest {
        filter_expression: "not (bucket = \"half\")".into(),
        ..ranked(&user, 10, 0)
    };
    let answer = recommend(&mut client, request, timeout).await.unwrap();
    assert!(answer.ranked, "{answer:?}");
    assert_eq!(answer.items.len(), 10);
    assert!(
        ids(&answer)
            .iter()
            .all(|id| !buckets(*id).contains(&"half"))
    );

    // Bad filters, by name.
    for (expression, words) in [
        (
            "colour = \"red\"",
            "filter_expression: unknown attribute \"colour\"",
        ),
        ("quality = \"high\"", "\"quality\" is an integer"),
        ("quality >= ", "at column 12"),
    ] {
        let status = recommend(
            &mut client,
            filtered(catalog.items.row(0).to_vec(), 10, false, expression),
            timeout,
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(words), "{}", status.message());
    }
    cluster.shutdown().await.unwrap();
}
