//! Traces across processes: a gateway, two retrieval nodes and a ranking node,
//! each its own process exporting OTLP to a collector this test serves on
//! loopback. One two-stage request must come back as one trace whose spans
//! nest across the hops (the gateway's `shard_search` → the node's `search` →
//! `index_search`; the gateway's `rank` → the node's `rank` → `ranking_batch`),
//! continuing the client's own `traceparent`; a refused request's span says why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use recsys_local_cluster::{CollectedSpan, ProcessCluster, ProcessOptions, TraceCollector};
use recsys_tests::*;
use tonic::Request;
use tonic::metadata::MetadataValue;

/// The spans of `trace_id` once `done` holds for them, polled until `timeout`.
async fn wait_for(
    collector: &TraceCollector,
    trace_id: &[u8],
    timeout: Duration,
    done: impl Fn(&[CollectedSpan]) -> bool,
) -> Vec<CollectedSpan> {
    let started = Instant::now();
    loop {
        let spans: Vec<CollectedSpan> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if done(&spans) {
            return spans;
        }
        assert!(
            started.elapsed() < timeout,
            "the trace did not arrive whole within {timeout:?}; received: {:#?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spans named `name` of `service`.
fn named<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> Vec<&'a CollectedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

/// The one span named `name` of `service`.
fn one<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> &'a CollectedSpan {
    let found = named(spans, service, name);
    assert_eq!(found.len(), 1, "{service} {name}: {found:#?}");
    found[0]
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

const GATEWAY: &str = "recsys-gateway";
const RETRIEVAL: &str = "recsys-retrieval-node";
const RANKING: &str = "recsys-ranking-node";

/// Every span a two-stage request over two shards makes, once each.
fn whole(spans: &[CollectedSpan]) -> bool {
    let count = |service: &str, name: &str| named(spans, service, name).len();
    count(GATEWAY, "recommend") == 1
        && count(GATEWAY, "retrieve") == 1
        && count(GATEWAY, "shard_search") == 2
        && count(GATEWAY, "rank") == 1
        && count(RETRIEVAL, "search") == 2
        && count(RETRIEVAL, "index_search") == 2
        && count(RANKING, "rank") == 1
        && count(RANKING, "ranking_batch") == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_stage_request_is_one_trace_across_the_gateway_and_its_nodes() {
    let collector = TraceCollector::start().await.unwrap();
    let bundle = synthetic_bundle(3_000, 60, 16, 2, 11);
    let options = ProcessOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.endpoint()),
            // Export within tens of milliseconds: the servers are killed, not
            // stopped, when the test ends.
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "20".into()),
        ],
        ..ProcessOptions::default()
    };
    let cluster = ProcessCluster::start(bundle.path(), &options)
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;

    // The client's own trace: the gateway's span continues it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut request = Request::new(ranked("user-1", 10, 50));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace}-{client_span}-01")).unwrap(),
    );
    request.set_timeout(Duration::from_secs(10));
    let answer = client.recommend(request).await.unwrap().into_inner();
    assert!(answer.ranked, "{answer:?}");
    assert_eq!(answer.items.len(), 10);

    let spans = wait_for(&collector, &hex(trace), Duration::from_secs(20), whole).await;
    let recommend = one(&spans, GATEWAY, "recommend");
    assert_eq!(recommend.parent_span_id, hex(client_span));
    assert_eq!(recommend.attributes["k"], "10");
    let retrieve = one(&spans, GATEWAY, "retrieve");
    assert_eq!(retrieve.parent_span_id, recommend.span_id);
    assert_eq!(retrieve.attributes["shards"], "2");
    let shard_searches = named(&spans, GATEWAY, "shard_search");
    let mut shards: Vec<&str> = shard_searches
        .iter()
        .map(|s| {
            assert_eq!(s.parent_span_id, retrieve.span_id);
            s.attributes["shard"].as_str()
        })
        .collect();
    shards.sort_unstable();
    assert_eq!(shards, ["0", "1"]);
    // Each node's search is the child of the gateway's call to its shard, and
    // its index search the child of that, with the beam it used.
    for search in named(&spans, RETRIEVAL, "search") {
        let caller = shard_searches
            .iter()
            .find(|s| s.span_id == search.parent_span_id)
            .unwrap_or_else(|| panic!("no shard_search is the parent of {search:#?}"));
        let index = named(&spans, RETRIEVAL, "index_search")
            .into_iter()
            .find(|s| s.parent_span_id == search.span_id)
            .unwrap_or_else(|| panic!("no index_search under {search:#?}"));
        assert_eq!(index.attributes["shard"], caller.attributes["shard"]);
        assert!(
            index.attributes["ef"].parse::<u32>().unwrap() >= 1,
            "{index:#?}"
        );
    }
    let rank = one(&spans, GATEWAY, "rank");
    assert_eq!(rank.parent_span_id, recommend.span_id);
    let node_rank = one(&spans, RANKING, "rank");
    assert_eq!(node_rank.parent_span_id, rank.span_id);
    assert_eq!(node_rank.attributes["candidates"], "50");
    let batch = one(&spans, RANKING, "ranking_batch");
    assert_eq!(batch.parent_span_id, node_rank.span_id);
    assert!(batch.links.is_empty(), "one request, one batch: {batch:#?}");
    assert!(spans.iter().all(|s| s.status_code != 2), "{spans:#?}");

    // A refused request: the gateway's span is failed with the reason.
    let refused_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let mut request = Request::new(ranked("user-1", 0, 50));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{refused_trace}-{client_span}-01")).unwrap(),
    );
    let status = client.recommend(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let spans = wait_for(
        &collector,
        &hex(refused_trace),
        Duration::from_secs(20),
        |spans| !named(spans, GATEWAY, "recommend").is_empty(),
    )
    .await;
    let refused = one(&spans, GATEWAY, "recommend");
    assert_eq!(refused.status_code, 2, "{refused:#?}");
    assert!(refused.status_message.contains('k'), "{refused:#?}");
    assert!(
        named(&spans, RETRIEVAL, "search").is_empty(),
        "a refused request reaches no node"
    );
    drop(cluster);
}
