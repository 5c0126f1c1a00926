//! Prometheus metrics: after real requests through the gateway, a scrape of
//! `/metrics` shows the gRPC calls by code, the per-shard answers and the stages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_tests::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The value of `series`, which must be there.
fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_codes_shards_and_stages() {
    let bundle = synthetic_bundle(3_000, 10, 8, 2, 41);
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let token = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(recsys_server::metrics::serve(listener, token.clone()));

    // The registry is per process and the cluster may have counted something while
    // starting: every count below is the exact change across these requests.
    let before = scrape(metrics_addr).await;
    let mut client = gateway_client(cluster.gateway_addr).await;
    let user = bundle.catalog.users.ids()[0].clone();
    for _ in 0..3 {
        recommend(&mut client, ranked(&user, 5, 50), Duration::from_secs(5))
            .await
            .unwrap();
    }
    let status = recommend(
        &mut client,
        by_user(&user, 0, false),
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let text = scrape(metrics_addr).await;
    assert!(text.starts_with("HTTP/1.0 200"), "{text}");
    assert!(text.contains("text/plain; version=0.0.4"), "{text}");
    // The series must be there after the requests; before them it may be absent (0).
    let delta = |series: &str| value(&text, series) - metric_value(&before, series).unwrap_or(0.0);
    let gateway = |code: &str| {
        format!(
            r#"recsys_grpc_server_handled_total{{code="{code}",method="Recommend",service="recsys.v1.GatewayService"}}"#
        )
    };
    assert_eq!(delta(&gateway("Ok")), 3.0);
    assert_eq!(delta(&gateway("InvalidArgument")), 1.0);
    // Two shards, three valid requests; the invalid one reaches no node.
    let searches = delta(
        r#"recsys_grpc_server_handled_total{code="Ok",method="Search",service="recsys.v1.RetrievalService"}"#,
    );
    assert_eq!(searches, 6.0, "two shards, three requests");
    for shard in ["0", "1"] {
        let answered = delta(&format!(
            r#"recsys_gateway_shard_answers_total{{outcome="answered",shard="{shard}"}}"#
        ));
        assert_eq!(answered, 3.0, "shard {shard}");
        let searched = delta(&format!(
            r#"recsys_retrieval_search_seconds_count{{mode="hnsw",shard="{shard}"}}"#
        ));
        assert_eq!(searched, 3.0, "shard {shard}");
    }
    // One Rank call per ranked request, each in a pass of its own (they are sequential).
    let rank_calls = delta(
        r#"recsys_grpc_server_handled_total{code="Ok",method="Rank",service="recsys.v1.RankingService"}"#,
    );
    assert_eq!(rank_calls, 3.0);
    assert_eq!(delta("recsys_ranking_candidates_count"), 3.0);
    assert_eq!(delta("recsys_ranking_score_seconds_count"), 3.0);
    for stage in ["total", "retrieval", "ranking"] {
        let count = delta(&format!(
            r#"recsys_gateway_stage_seconds_count{{stage="{stage}"}}"#
        ));
        assert_eq!(count, 3.0, "stage {stage}");
    }

    token.cancel();
    cluster.shutdown().await.unwrap();
}
