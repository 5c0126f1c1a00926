//! In-process retrieval nodes and a gateway registered in a test's etcd, for
//! the tests of the item change log: the one place they are started, so a new
//! node or gateway setting is added here once.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use recsys_discovery::{AnnounceOptions, EtcdMembership, EtcdOptions, EtcdServer};
use recsys_local_cluster::ServerHandle;
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_proto::v1::{
    CatalogChangeResponse, ItemUpsert, RecommendRequest, RecommendResponse, UpsertItemsRequest,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// A retrieval node of `shard` serving the bundle in `dir`, registered in
/// `etcd`'s `cluster` as `node_id` and following the cluster's change log
/// there, until `token` is cancelled. Returns its address at once: callers
/// poll it (or the gateway's health) for readiness.
pub async fn retrieval_node(
    dir: &Path,
    shard: u32,
    node_id: &str,
    etcd: &EtcdServer,
    cluster: &str,
    token: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let announce = AnnounceOptions::new(
        vec![etcd.endpoint()],
        cluster,
        node_id.to_string(),
        addr.to_string(),
    );
    let config = recsys_retrieval_node::NodeConfig {
        announce: Some(announce),
        ..crate::node_config(dir, shard)
    };
    tokio::spawn(recsys_retrieval_node::run(listener, config, token.clone()));
    addr
}

/// A gateway over the bundle in `dir` routing by `cluster`'s registrations in
/// `etcd` and appending item changes to its log there, refusing them once one
/// has waited `max_apply_lag` for a replica (zero: never); serving when this
/// returns (within `ready`).
pub async fn etcd_gateway(
    dir: &Path,
    etcd: &EtcdServer,
    cluster: &str,
    max_apply_lag: Duration,
    ready: Duration,
    token: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let membership = std::sync::Arc::new(EtcdMembership::start(EtcdOptions::new(
        vec![etcd.endpoint()],
        cluster.to_string(),
    )));
    let config = recsys_gateway::GatewayConfig {
        item_log: Some(recsys_gateway::ItemLogOptions {
            etcd: etcd.access(),
            cluster: cluster.into(),
            max_apply_lag,
        }),
        ..crate::static_gateway::gateway_config(dir)
    };
    let serve = recsys_gateway::run(listener, config, membership, token.clone());
    let mut gateway = ServerHandle::spawn("gateway", addr, token.clone(), serve);
    gateway
        .wait_serving(ready)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    addr
}

/// Upsert call number `call` of a flood: `items` items of `dimensions`, ids
/// from 1,000,000 up (`call * items + i`), spread pseudo-random vectors, the
/// first one fifty times longer, so that under inner product only other calls'
/// long items can outscore it for its own vector.
pub fn flood_batch(call: u64, items: u64, dimensions: usize) -> UpsertItemsRequest {
    UpsertItemsRequest {
        items: (0..items)
            .map(|i| {
                let id = 1_000_000 + call * items + i;
                ItemUpsert {
                    item_id: id,
                    embedding: (0..dimensions as u64)
                        .map(|d| {
                            let bits = splitmix(id * dimensions as u64 + d);
                            let unit = (bits >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                            if i == 0 { unit * 50.0 } else { unit }
                        })
                        .collect(),
                    name: format!("item {id}"),
                    ..Default::default()
                }
            })
            .collect(),
    }
}

/// `request` answered with `min_revision` set to `revision` (read your writes):
/// replicas still inserting a backlog wait a second for the revision and then
/// refuse naming `min_log_revision`, so this asks again until `timeout`.
pub async fn recommend_at(
    client: &mut GatewayServiceClient<Channel>,
    mut request: RecommendRequest,
    revision: u64,
    timeout: Duration,
) -> RecommendResponse {
    request.min_revision = revision;
    let started = std::time::Instant::now();
    loop {
        match crate::recommend(client, request.clone(), timeout).await {
            Ok(answer) => return answer,
            Err(status) if started.elapsed() < timeout => {
                assert!(status.message().contains("min_log_revision"), "{status:?}");
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}

/// SplitMix64: well-spread test values from a counter.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An item change sent with `send` until the gateway stops pushing back
/// (`RESOURCE_EXHAUSTED` while replicas lag, `--max-apply-lag-ms`), as a writer
/// should; any other error, or push-back past `timeout`, fails the test.
pub async fn until_accepted<F, Fut>(timeout: Duration, mut send: F) -> CatalogChangeResponse
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<CatalogChangeResponse>, Status>>,
{
    let started = std::time::Instant::now();
    loop {
        match send().await {
            Ok(answer) => return answer.into_inner(),
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    started.elapsed() < timeout,
                    "still pushed back after {timeout:?}: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    }
}
