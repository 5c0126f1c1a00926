//! Faults: a shard that never answers, and bundle files that are missing or corrupt.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_discovery::{StaticMembership, StaticSpec};
use recsys_gateway::{GatewayConfig, RequestPolicy};
use recsys_local_cluster::ServerHandle;
use recsys_proto::v1::{InfoRequest, LoadStatus, retrieval_service_client::RetrievalServiceClient};
use recsys_retrieval_node::NodeError;
use recsys_tests::misbehaving::black_hole;
use recsys_tests::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A retrieval node in this process, not waited for; stopping it reports its error.
async fn start_node(
    bundle: &std::path::Path,
    shard: u32,
    token: &CancellationToken,
) -> ServerHandle<NodeError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = recsys_tests::node_config(bundle, shard);
    let run = recsys_retrieval_node::run(listener, config, token.clone());
    ServerHandle::spawn(
        format!("retrieval node of shard {shard}"),
        addr,
        token.clone(),
        run,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_shard_turns_into_coverage_at_the_deadline() {
    let bundle = synthetic_bundle(4_000, 20, 16, 4, 21);
    let token = CancellationToken::new();
    let mut shards = Vec::new();
    let mut nodes = Vec::new();
    for shard in 0..3 {
        let mut node = start_node(bundle.path(), shard, &token).await;
        node.wait_serving(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        shards.push(vec![node.addr.to_string()]);
        nodes.push(node);
    }
    shards.push(vec![black_hole(&token).await.to_string()]);
    let membership = Arc::new(
        StaticMembership::new(&StaticSpec {
            shards,
            ranking: vec![],
        })
        .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway_addr = listener.local_addr().unwrap();
    let config = GatewayConfig {
        bundle: recsys_bundle::BundleSource::at(bundle.path().to_path_buf()),
        versions: Default::default(),
        // Far beyond the client's deadline, so that only the client's deadline can
        // end the retrieval stage in time.
        policy: RequestPolicy {
            default_timeout: Duration::from_secs(60),
            ..RequestPolicy::default()
        },
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(1),
        security: Default::default(),
        server_limits: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
    };
    let run = recsys_gateway::run(listener, config, membership, token.clone());
    let mut gateway = ServerHandle::spawn("gateway", gateway_addr, token.clone(), run);
    gateway
        .wait_serving(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let mut client = gateway_client(gateway_addr).await;
    let deadline = Duration::from_millis(300);
    let started = Instant::now();
    // The gateway budgets its retrieval from the client's deadline and answers with
    // what arrived: an answer whose coverage names the hung shard as "deadline
    // exceeded" is the structural proof. A gateway that ignored the deadline gets
    // cut by tonic's server-side grpc-timeout (CANCELLED "Timeout expired") and
    // fails the unwrap; the 10 s bound only keeps a broken one from hanging the
    // test. The time is measured, not asserted.
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        recommend(&mut client, by_user("user-1", 10, false), deadline),
    )
    .await
    .expect("no answer within 10 s")
    .unwrap();
    let elapsed = started.elapsed();
    eprintln!("measured: answered {elapsed:?} after a {deadline:?} deadline with one shard hung");
    let coverage = response.coverage.unwrap();
    assert_eq!((coverage.shards_asked, coverage.shards_answered), (4, 3));
    assert_eq!(coverage.reasons[0].shard, Some(3));
    assert_eq!(coverage.reasons[0].reason, "deadline exceeded");
    assert_eq!(response.items.len(), 10);
    gateway.stop().await.unwrap();
    for node in nodes {
        node.stop().await.unwrap();
    }
}

async fn node_info(addr: SocketAddr) -> recsys_proto::v1::InfoResponse {
    let mut client = RetrievalServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.info(InfoRequest {}).await.unwrap().into_inner()
}

/// Polls `Info` until the node leaves the loading state.
async fn settled_info(addr: SocketAddr) -> recsys_proto::v1::InfoResponse {
    let started = Instant::now();
    loop {
        let info = node_info(addr).await;
        if info.load_status() != LoadStatus::Loading || started.elapsed() > Duration::from_secs(30)
        {
            return info;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_missing_shard_files_keep_the_node_not_serving() {
    let bundle = synthetic_bundle(2_000, 10, 16, 3, 22);
    let token = CancellationToken::new();
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

    // Garbage in shard 0's file.
    std::fs::write(
        bundle.path().join("shards/shard-0.usearch"),
        b"not an index at all",
    )
    .unwrap();
    // Shard 1's file cut in half.
    let path = bundle.path().join("shards/shard-1.usearch");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    // Shard 2's file gone.
    std::fs::remove_file(bundle.path().join("shards/shard-2.usearch")).unwrap();

    let mut nodes = Vec::new();
    for shard in 0..3 {
        let node = start_node(bundle.path(), shard, &token).await;
        let addr = node.addr;
        nodes.push(node);
        let info = settled_info(addr).await;
        assert_eq!(info.load_status(), LoadStatus::Failed, "shard {shard}");
        #[allow(deprecated)] // the string kept for older clients must agree
        let state = info.state.clone();
        assert_eq!(state, "failed", "shard {shard}");
        let file = format!("shard-{shard}.usearch");
        assert!(
            info.load_error.contains(&file),
            "shard {shard}: {:?}",
            info.load_error
        );
        assert_eq!(health_status(addr).await, not_serving);
        let mut client = RetrievalServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let status = client
            .search(recsys_proto::v1::SearchRequest {
                query: vec![0.0; 16],
                k: 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains(&file));
    }
    // A failed load keeps a node up and NOT_SERVING; its task never fails.
    for node in nodes {
        node.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::new();
    let node = start_node(dir.path(), 0, &token).await;
    let info = settled_info(node.addr).await;
    assert_eq!(info.load_status(), LoadStatus::Failed);
    assert!(
        info.load_error.contains("manifest.json"),
        "{}",
        info.load_error
    );
    node.stop().await.unwrap();
}
