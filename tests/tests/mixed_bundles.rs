//! A node that registers for a shard but serves another bundle (a rolling
//! upgrade half done, a node pointed at the wrong directory) is never routed to:
//! every answer stays the gateway's own bundle's.
//!
//! Its own test binary: the gateway's `recsys_gateway_mismatched_nodes` gauge is
//! per process, and here only one gateway sets it, so it says when the gateway
//! has seen the stranger.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use recsys_discovery::{EtcdMembership, EtcdOptions, EtcdServer, Membership};
use recsys_local_cluster::{EtcdCluster, LocalCluster, LocalClusterOptions};
use recsys_proto::v1::SearchRequest;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_tests::processes::{self, RetrievalProcess, free_addr};
use recsys_tests::*;

const SHARDS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_another_bundle_is_not_routed_to() {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mixed-bundles");
    let own = shared_bundle(&root.join("own"), 4_000, SHARDS, 61);
    let other = shared_bundle(&root.join("other"), 4_000, SHARDS, 62);
    let etcd = EtcdServer::start().await.unwrap();
    let mut options = LocalClusterOptions::new(own.path());
    options.etcd = Some(EtcdCluster {
        etcd: etcd.access(),
        cluster: "versions".into(),
        lease_ttl: Duration::from_secs(2),
        users: None,
    });
    let cluster = LocalCluster::start(options).await.unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let users = own.catalog.users.ids();
    let request = |i: usize| by_user(&users[i % users.len()], 10, false);
    let mut expected = Vec::new();
    for i in 0..20 {
        let answer = recommend(&mut client, request(i), Duration::from_secs(5))
            .await
            .unwrap();
        expected.push(answer.items);
    }

    let metrics = free_addr();
    let mut stranger = processes::retrieval(&RetrievalProcess {
        bundle: other.path(),
        etcd: etcd.endpoint(),
        cluster: "versions",
        shard: 0,
        name: "other-s0",
        metrics,
        lease_ttl_s: 2,
    });
    stranger
        .wait_serving(Duration::from_secs(60))
        .await
        .unwrap();
    let membership = EtcdMembership::start(EtcdOptions::new(vec![etcd.endpoint()], "versions"));
    let mut view = membership.subscribe();
    tokio::time::timeout(
        Duration::from_secs(10),
        view.wait_for(|v| v.nodes().any(|n| n.node_id == "other-s0")),
    )
    .await
    .expect("other-s0 registered")
    .unwrap();
    // The gateway has seen it, and left it out, once its gauge counts it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let gauge = "recsys_gateway_mismatched_nodes ";
    while metric_value(&recsys_server::metrics::render(), gauge) != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the gateway never noticed other-s0"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two replicas of shard 0 in etcd: an unfiltered gateway would send about half
    // of shard 0's searches to the stranger.
    for (i, expected) in expected.iter().enumerate() {
        let answer = recommend(&mut client, request(i), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.coverage.unwrap().shards_answered, SHARDS);
        assert_eq!(&answer.items, expected, "request {i}");
    }
    assert_eq!(searches(metrics).await, 0.0, "other-s0 was searched");
    // A missing series also reads as 0: one search of our own must count exactly
    // one, so the zero above was a count (right node, right series), not an absence.
    let mut direct = RetrievalServiceClient::connect(format!("http://{}", stranger.addr))
        .await
        .unwrap();
    direct
        .search(SearchRequest {
            query: vec![0.5; other.catalog.items.dimensions],
            k: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        searches(metrics).await,
        1.0,
        "other-s0 counts searches at {metrics}: the gateway's would show here"
    );

    // Once it leaves, the gauge goes back to zero.
    stranger.terminate(Duration::from_secs(15)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(&recsys_server::metrics::render(), gauge) != Some(0.0) {
        assert!(Instant::now() < deadline, "the gauge stayed up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await.unwrap();
}
