//! Hedging against a hung replica: every shard has a black hole (accepts TCP,
//! never answers) beside a real retrieval node, hedging is on, and every answer
//! comes back with full coverage while the hedge counter moves by exactly one per
//! shard per request.
//!
//! The gateway here is the real `GatewayService` implementation served on its own
//! gRPC server, but without `recsys_gateway::run`'s health checker: that checker
//! takes a black hole out of routing within a second (its job, pinned in
//! `gateway/src/fanout/call_replicas_tests.rs`), after which nothing would be
//! hedged. And the test holds one call "in flight" on each real replica, so the
//! gateway's power-of-two choice always tries the (idle-looking) black hole first
//! and the hedge is certain rather than a coin flip. This file holds one test, so
//! the process-wide hedge counter moves only for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_discovery::{ClusterView, NodeRecord, NodeState, Role};
use recsys_gateway::RequestPolicy;
use recsys_gateway::bundle_state::BundleState;
use recsys_gateway::node_channels::NodeChannels;
use recsys_gateway::service::{Gateway, GatewayShared};
use recsys_local_cluster::wait_until_serving;
use recsys_proto::v1::gateway_service_server::GatewayServiceServer;
use recsys_tests::misbehaving::{black_hole, retrieval_node};
use recsys_tests::*;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 2;
const REQUESTS: usize = 4;
const HEDGE_AFTER: Duration = Duration::from_millis(20);

fn record(addr: &str, shard: u32) -> NodeRecord {
    NodeRecord {
        node_id: addr.into(),
        addr: addr.into(),
        role: Role::Retrieval,
        shard: Some(shard),
        shard_count: Some(SHARDS),
        bundle_version: String::new(),
        state: NodeState::Serving,
        versions: Vec::new(),
    }
}

fn hedges() -> Option<f64> {
    metric_value(
        &recsys_server::metrics::render(),
        "recsys_gateway_hedged_calls_total",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_replica_is_hedged_around_with_full_coverage() {
    let bundle = synthetic_bundle(2_000, 10, 16, SHARDS, 61);
    let token = CancellationToken::new();
    let mut nodes = Vec::new();
    let (mut holes, mut real) = (Vec::new(), Vec::new());
    for shard in 0..SHARDS {
        let hole = black_hole(&token).await.to_string();
        let node = retrieval_node(bundle.path(), shard, &token)
            .await
            .to_string();
        nodes.push(record(&hole, shard));
        nodes.push(record(&node, shard));
        holes.push(hole);
        real.push(node);
    }
    let view = ClusterView::from_nodes(nodes);
    assert_eq!(view.shards.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2]);
    let (_view_sender, view) = watch::channel(Arc::new(view));
    let clients = Arc::new(NodeChannels::new(Duration::from_secs(1)));
    let _busy: Vec<_> = real
        .iter()
        .zip(0..)
        .map(|(addr, shard)| clients.node(&record(addr, shard)).unwrap().start_call())
        .collect();
    let shared = GatewayShared::new(
        view,
        clients.clone(),
        RequestPolicy {
            default_timeout: Duration::from_secs(10),
            hedge_after: Some(HEDGE_AFTER),
            ..RequestPolicy::default()
        },
    );
    let state = BundleState::load(bundle.path()).unwrap();
    let version = state.manifest.version.clone();
    shared.versions.insert(
        &version,
        state,
        recsys_discovery::VersionState {
            version: version.clone(),
            state: recsys_discovery::VersionPhase::Serving,
            error: String::new(),
            shard_count: None,
        },
    );
    let shared = Arc::new(shared);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = listener.local_addr().unwrap();
    let (health, router) = recsys_server::grpc::standard_router().unwrap();
    recsys_server::grpc::set_health(
        &health,
        "recsys.v1.GatewayService",
        tonic_health::ServingStatus::Serving,
    )
    .await;
    let serve = router
        .add_service(GatewayServiceServer::new(Gateway::new(shared)))
        .serve_with_incoming_shutdown(
            recsys_server::grpc::incoming(listener),
            token.clone().cancelled_owned(),
        );
    tokio::spawn(async move { serve.await.expect("gateway failed") });
    wait_until_serving(gateway, Duration::from_secs(30))
        .await
        .unwrap();

    let before = hedges().unwrap_or(0.0);
    let mut client = gateway_client(gateway).await;
    for i in 0..REQUESTS {
        let query = bundle.catalog.items.row(i * 7).to_vec();
        let want: Vec<u64> = bundle
            .reference(&query, &[])
            .iter()
            .take(10)
            .map(|(id, _)| *id)
            .collect();
        let started = Instant::now();
        let response = recommend(
            &mut client,
            by_embedding(query, 10, true),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        // The black hole never answers: whatever came, came from the hedge.
        assert!(started.elapsed() >= HEDGE_AFTER);
        let coverage = response.coverage.clone().unwrap();
        assert!(full_coverage(&response, SHARDS), "{coverage:?}");
        assert!(!coverage.degraded, "{coverage:?}");
        assert!(coverage.reasons.is_empty(), "{:?}", coverage.reasons);
        assert_eq!(ids(&response), want, "request {i}");
    }
    let after = hedges().expect("the hedge counter is not exported");
    assert_eq!(after - before, (REQUESTS as u32 * SHARDS) as f64);
    // The calls the hedges beat were dropped: nothing is left in flight on the
    // black holes, and the real replicas hold only the test's own marker.
    let in_flight = |addrs: &[String]| {
        addrs
            .iter()
            .zip(0..)
            .map(|(addr, shard)| clients.node(&record(addr, shard)).unwrap().in_flight())
            .collect::<Vec<_>>()
    };
    assert_eq!(in_flight(&holes), [0, 0]);
    assert_eq!(in_flight(&real), [1, 1]);
    token.cancel();
}
