//! Push-back on item writes (issue 17): a writer faster than the retrieval
//! replicas can insert is refused with RESOURCE_EXHAUSTED naming the lag and the
//! flag, is accepted again once the replicas catch up, and every change the
//! gateway accepted is served.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_discovery::EtcdServer;
use recsys_proto::v1::UpsertItemsRequest;
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const SHARDS: u32 = 2;
const DIMENSIONS: usize = 16;
const CLUSTER: &str = "lag";
/// Generous bound on the replicas catching up; a healthy run takes seconds.
const CATCH_UP: Duration = Duration::from_secs(60);
/// The push-back bound under test: well below the time the replicas need to
/// insert the flood, well above an etcd append.
const MAX_LAG: Duration = Duration::from_millis(300);
/// Items per call: the most one call may carry.
const BATCH: u64 = 4_000;

fn batch(call: u64) -> UpsertItemsRequest {
    live_cluster::flood_batch(call, BATCH, DIMENSIONS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_faster_than_the_replicas_are_refused_until_they_catch_up() {
    let etcd = EtcdServer::start().await.unwrap();
    let bundle = synthetic_bundle(1_000, 10, DIMENSIONS, SHARDS, 41);
    let token = CancellationToken::new();
    for shard in 0..SHARDS {
        for replica in ["a", "b"] {
            let id = format!("retrieval-{shard}-{replica}");
            live_cluster::retrieval_node(bundle.path(), shard, &id, &etcd, CLUSTER, &token).await;
        }
    }
    let gateway =
        live_cluster::etcd_gateway(bundle.path(), &etcd, CLUSTER, MAX_LAG, CATCH_UP, &token).await;
    let mut catalog = CatalogServiceClient::connect(format!("http://{gateway}"))
        .await
        .unwrap();

    // Flood: 4,000-item calls back to back, each an etcd append of a few
    // milliseconds, against four replicas inserting on two cores.
    let mut accepted = Vec::new();
    let refused = 'flood: {
        for call in 0..200 {
            match catalog.upsert_items(batch(call)).await {
                Ok(answer) => accepted.push((call, answer.into_inner().revision)),
                Err(status) => break 'flood status,
            }
        }
        panic!(
            "{} calls of {BATCH} items were all accepted within a {MAX_LAG:?} lag",
            accepted.len()
        );
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    for words in ["--max-apply-lag-ms 300", "of shard", "retry"] {
        assert!(refused.message().contains(words), "{words}: {refused:?}");
    }
    assert!(
        !accepted.is_empty(),
        "the first call had nothing to wait for"
    );

    // Accepted again once the replicas have caught up.
    let next = accepted.len() as u64;
    let revision = live_cluster::until_accepted(CATCH_UP, || {
        let mut catalog = catalog.clone();
        async move { catalog.upsert_items(batch(next)).await }
    })
    .await
    .revision;
    accepted.push((next, revision));

    // Nothing accepted was lost: each accepted call's long item is found by
    // its own vector once the replicas hold the last revision (it is among
    // the best 300: only other calls' long items can outscore it).
    let mut client = gateway_client(gateway).await;
    for (call, _) in &accepted {
        let item = batch(*call).items.swap_remove(0);
        let request = by_embedding(item.embedding.clone(), 300, false);
        let answer = live_cluster::recommend_at(&mut client, request, revision, CATCH_UP).await;
        assert!(
            ids(&answer).contains(&item.item_id),
            "call {call}'s item {} is missing",
            item.item_id
        );
    }
    token.cancel();
}
