//! Item upserts and deletes reaching serving retrieval nodes through the change
//! log in a real etcd (issue 17): each node follows its shard's part of the log
//! and applies it on top of its bundle version, every replica the same, across an
//! etcd restart and a node restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use recsys_bundle::shard_of;
use recsys_catalog_log::ChangeLog;
use recsys_discovery::EtcdServer;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{
    InfoRequest, ItemChangeRecord, ItemUpsert, SearchRequest, ShardChangeRecord,
    item_change_record::Change,
};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 2;
const DIMENSIONS: usize = 16;
const CLUSTER: &str = "live";
/// Generous bound on a change becoming visible; a healthy run takes milliseconds.
const VISIBLE: Duration = Duration::from_secs(30);

/// A retrieval node of `shard` registered in (and following the log of) `etcd`.
async fn node(
    bundle: &TestBundle,
    shard: u32,
    replica: &str,
    etcd: &EtcdServer,
    token: &CancellationToken,
) -> SocketAddr {
    let id = format!("retrieval-{shard}-{replica}");
    live_cluster::retrieval_node(bundle.path(), shard, &id, etcd, CLUSTER, token).await
}

async fn client(addr: SocketAddr) -> RetrievalServiceClient<tonic::transport::Channel> {
    let deadline = tokio::time::Instant::now() + VISIBLE;
    loop {
        if let Ok(client) = RetrievalServiceClient::connect(format!("http://{addr}")).await {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The node's top ids for `query`, once it serves.
async fn top(addr: SocketAddr, query: &[f32], k: u32) -> Option<Vec<u64>> {
    let mut client = client(addr).await;
    let request = SearchRequest {
        bundle_version: String::new(),
        min_log_revision: 0,
        query: query.to_vec(),
        k,
        exclude_item_ids: Vec::new(),
        exact: false,
        ..Default::default()
    };
    client
        .search(request)
        .await
        .ok()
        .map(|response| response.into_inner().item_ids)
}

/// Polls `check` on the node's answer until it holds, failing after [`VISIBLE`].
async fn eventually(addr: SocketAddr, query: &[f32], what: &str, check: impl Fn(&[u64]) -> bool) {
    let deadline = tokio::time::Instant::now() + VISIBLE;
    loop {
        if let Some(ids) = top(addr, query, 10).await
            && check(&ids)
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr}: never {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn upsert(id: u64, vector: &[f32]) -> ItemChangeRecord {
    ItemChangeRecord {
        change: Some(Change::Upsert(ItemUpsert {
            item_id: id,
            embedding: vector.to_vec(),
            ..Default::default()
        })),
    }
}

fn delete(id: u64) -> ItemChangeRecord {
    ItemChangeRecord {
        change: Some(Change::DeleteItemId(id)),
    }
}

fn record(shard: u32, changes: Vec<ItemChangeRecord>) -> ShardChangeRecord {
    ShardChangeRecord {
        shard,
        shard_count: SHARDS,
        bundle_version: String::new(),
        changes,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserts_and_deletes_reach_every_replica_through_etcd() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let bundle = synthetic_bundle(2_000, 10, DIMENSIONS, SHARDS, 31);
    let token = CancellationToken::new();
    let shard = 0;
    let replica_a = node(&bundle, shard, "a", &etcd, &token).await;
    let replica_b_token = token.child_token();
    let replica_b = node(&bundle, shard, "b", &etcd, &replica_b_token).await;

    // The best item of shard 0 for a query, to be deleted; a new item placed
    // exactly at another query, to be found first.
    let query = bundle.catalog.items.row(3).to_vec();
    let best = bundle
        .reference(&query, &[])
        .into_iter()
        .map(|(id, _)| id)
        .find(|id| shard_of(*id, SHARDS) == shard)
        .unwrap();
    eventually(replica_a, &query, "served its best item", |ids| {
        ids.first() == Some(&best)
    })
    .await;
    let new_id = (1_000_000u64..)
        .find(|id| shard_of(*id, SHARDS) == shard)
        .unwrap();
    let other_shard_id = (1_000_000u64..)
        .find(|id| shard_of(*id, SHARDS) == 1)
        .unwrap();
    let new_vector: Vec<f32> = bundle
        .catalog
        .items
        .row(7)
        .iter()
        .map(|v| v * 3.0)
        .collect();

    let log = ChangeLog::connect(&[etcd.endpoint()], CLUSTER)
        .await
        .unwrap();
    log.append(&[
        record(shard, vec![upsert(new_id, &new_vector), delete(best)]),
        record(1, vec![upsert(other_shard_id, &new_vector)]),
    ])
    .await
    .unwrap();
    for replica in [replica_a, replica_b] {
        eventually(replica, &query, "dropped the deleted item", |ids| {
            !ids.contains(&best)
        })
        .await;
        eventually(
            replica,
            &new_vector,
            "found the upserted item first",
            |ids| ids.first() == Some(&new_id) && !ids.contains(&other_shard_id),
        )
        .await;
    }
    // Once the log pauses, the follower packs the mutable part, and searches
    // read the packed copy: still the same answers.
    let packed = r#"recsys_retrieval_delta_packed{shard="0"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric_value(&recsys_server::metrics::render(), packed) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the mutable part was never packed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for replica in [replica_a, replica_b] {
        let ids = top(replica, &new_vector, 10).await.unwrap();
        assert_eq!(ids.first(), Some(&new_id), "{ids:?}");
        assert!(!top(replica, &query, 10).await.unwrap().contains(&best));
    }
    // Once it has been quiet for a second, the follower folds the mutable
    // part into a copy of the base (the tests' nodes fold from one item), and
    // searches read the fold: still the same answers.
    for replica in [replica_a, replica_b] {
        let mut client = RetrievalServiceClient::connect(format!("http://{replica}"))
            .await
            .unwrap();
        while !client
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .folded
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{replica} never folded its mutable part"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for replica in [replica_a, replica_b] {
        let ids = top(replica, &new_vector, 10).await.unwrap();
        assert_eq!(ids.first(), Some(&new_id), "{ids:?}");
        assert!(!top(replica, &query, 10).await.unwrap().contains(&best));
    }

    // While etcd is down the nodes serve what they have; after it returns, and
    // after a replica restarts from its bundle, the log brings everyone level.
    etcd.stop().await.unwrap();
    assert_eq!(top(replica_a, &new_vector, 1).await.unwrap(), vec![new_id]);
    etcd.restart().await.unwrap();
    replica_b_token.cancel();
    let moved: Vec<f32> = bundle
        .catalog
        .items
        .row(11)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    log.append(&[record(shard, vec![upsert(new_id, &moved)])])
        .await
        .unwrap();
    let replica_c = node(&bundle, shard, "c", &etcd, &token).await;
    for replica in [replica_a, replica_c] {
        eventually(replica, &moved, "moved the upserted item", |ids| {
            ids.first() == Some(&new_id)
        })
        .await;
        eventually(replica, &query, "kept the delete", |ids| {
            !ids.contains(&best)
        })
        .await;
    }
    // Every replica at the same revision answers alike.
    let revisions = {
        let mut revisions = Vec::new();
        for replica in [replica_a, replica_c] {
            let info = client(replica).await.info(InfoRequest {}).await.unwrap();
            let info = info.into_inner();
            assert_eq!(info.live_items, 1);
            revisions.push(info.log_revision);
        }
        revisions
    };
    assert_eq!(revisions[0], revisions[1]);
    for row in 0..20 {
        let query = bundle.catalog.items.row(row * 37).to_vec();
        assert_eq!(
            top(replica_a, &query, 10).await,
            top(replica_c, &query, 10).await
        );
    }
    token.cancel();
}

/// A gateway routing by the nodes' etcd registrations and appending item
/// changes to the cluster's log there, refusing them past `max_apply_lag`.
async fn etcd_gateway(
    bundle: &TestBundle,
    etcd: &EtcdServer,
    max_apply_lag: Duration,
    token: &CancellationToken,
) -> SocketAddr {
    live_cluster::etcd_gateway(bundle.path(), etcd, CLUSTER, max_apply_lag, VISIBLE, token).await
}

/// The whole path a user takes: `UpsertItems` and `DeleteItems` on the gateway,
/// then `Recommend` through the same gateway finds the new item and never the
/// withdrawn one; bad calls are refused by name, and a gateway without etcd
/// says what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_service_changes_what_recommend_answers() {
    use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
    use recsys_proto::v1::{DeleteItemsRequest, UpsertItemsRequest};
    use tonic::Code;

    let mut etcd = EtcdServer::start().await.unwrap();
    let bundle = synthetic_bundle(2_000, 10, DIMENSIONS, SHARDS, 33);
    let token = CancellationToken::new();
    for shard in 0..SHARDS {
        node(&bundle, shard, "a", &etcd, &token).await;
    }
    let gateway = etcd_gateway(
        &bundle,
        &etcd,
        recsys_gateway::DEFAULT_MAX_APPLY_LAG,
        &token,
    )
    .await;
    let mut recommend_client = gateway_client(gateway).await;
    let mut catalog = CatalogServiceClient::connect(format!("http://{gateway}"))
        .await
        .unwrap();
    let top_ids = |response: &recsys_proto::v1::RecommendResponse| ids(response);
    let query = bundle.catalog.items.row(5).to_vec();
    // Wait until both shards answer through the gateway.
    let deadline = tokio::time::Instant::now() + VISIBLE;
    let best = loop {
        let request = by_embedding(query.clone(), 10, false);
        if let Ok(response) = recommend(&mut recommend_client, request, VISIBLE).await
            && full_coverage(&response, SHARDS)
        {
            break top_ids(&response)[0];
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cluster never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let new_id = 5_000_000u64;
    let new_vector: Vec<f32> = bundle
        .catalog
        .items
        .row(9)
        .iter()
        .map(|v| v * 3.0)
        .collect();
    let upserted = catalog
        .upsert_items(UpsertItemsRequest {
            items: vec![ItemUpsert {
                item_id: new_id,
                embedding: new_vector.clone(),
                name: "a new item".into(),
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(upserted.items, 1);
    let deleted = catalog
        .delete_items(DeleteItemsRequest {
            item_ids: vec![best],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(deleted.revision > upserted.revision);
    // Read your writes: carrying the revision the delete answered, the very next
    // request is answered only by replicas that have applied both changes.
    let after = |values: Vec<f32>| {
        let mut request = by_embedding(values, 10, false);
        request.min_revision = deleted.revision;
        request
    };
    let first = recommend(&mut recommend_client, after(new_vector.clone()), VISIBLE)
        .await
        .unwrap();
    assert_eq!(top_ids(&first).first(), Some(&new_id), "{first:?}");
    let second = recommend(&mut recommend_client, after(query.clone()), VISIBLE)
        .await
        .unwrap();
    assert!(!top_ids(&second).contains(&best), "{second:?}");
    assert!(full_coverage(&second, SHARDS));
    // Items like the new one start from its upserted vector: the answer to that
    // vector, less the item; like the deleted one, there are none.
    let exact = Some(recsys_proto::v1::RecommendOptions {
        exact: true,
        ..Default::default()
    });
    let similar = |item: u64| recsys_proto::v1::RecommendRequest {
        similar_to_item_id: Some(item),
        k: 10,
        min_revision: deleted.revision,
        options: exact,
        ..Default::default()
    };
    let like_new = recommend(&mut recommend_client, similar(new_id), VISIBLE)
        .await
        .unwrap();
    let mut by_vector = after(new_vector.clone());
    by_vector.exclude_item_ids = vec![new_id];
    by_vector.options = exact;
    let by_vector = recommend(&mut recommend_client, by_vector, VISIBLE)
        .await
        .unwrap();
    assert_eq!(top_ids(&like_new), top_ids(&by_vector));
    let like_deleted = recommend(&mut recommend_client, similar(best), VISIBLE)
        .await
        .unwrap_err();
    assert_eq!(like_deleted.code(), Code::NotFound, "{like_deleted:?}");
    // A revision no replica has reached is refused, naming it, not answered stale.
    let mut ahead = by_embedding(query.clone(), 10, false);
    ahead.min_revision = deleted.revision + 1_000;
    let refused = recommend(&mut recommend_client, ahead, VISIBLE)
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("min_log_revision"),
        "{refused:?}"
    );

    // The CLI does the same: `recsys items delete` prints the entry's revision.
    let output = std::process::Command::new(recsys_tests::processes::binary("recsys"))
        .args([
            "items",
            "delete",
            "--gateway",
            &gateway.to_string(),
            "--ids",
            "11,12",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(printed > deleted.revision, "{output:?}");

    // Bad calls are refused by name; nothing is appended for them.
    let refused = catalog
        .upsert_items(UpsertItemsRequest {
            items: vec![ItemUpsert {
                item_id: 7,
                embedding: vec![f32::NAN; DIMENSIONS],
                ..Default::default()
            }],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("items[0].embedding"),
        "{refused:?}"
    );
    let refused = catalog
        .delete_items(DeleteItemsRequest {
            item_ids: (0..recsys_proto::limits::MAX_CATALOG_ITEMS as u64 + 1).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("4096"), "{refused:?}");
    // etcd away: changes are refused as unavailable, reads go on.
    etcd.stop().await.unwrap();
    let refused = catalog
        .delete_items(DeleteItemsRequest { item_ids: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let answer = recommend(
        &mut recommend_client,
        by_embedding(new_vector.clone(), 10, false),
        VISIBLE,
    )
    .await
    .unwrap();
    assert_eq!(top_ids(&answer)[0], new_id);
    token.cancel();

    // A gateway without etcd has no log to write to, and says so.
    let token = CancellationToken::new();
    let config = recsys_tests::static_gateway::gateway_config(bundle.path());
    // Nothing listens on port 1: the gateway serves, its shards do not.
    let nowhere: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let shards = vec![vec![nowhere]; SHARDS as usize];
    let static_gateway =
        recsys_tests::static_gateway::serve_static_gateway(config, &shards, &[], &token).await;
    let mut catalog = CatalogServiceClient::connect(format!("http://{static_gateway}"))
        .await
        .unwrap();
    let refused = catalog
        .delete_items(DeleteItemsRequest { item_ids: vec![1] })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("--etcd"), "{refused:?}");
    token.cancel();
}

/// etcd's database has a size quota (`--quota-backend-bytes`). A change log that
/// fills it is refused with RESOURCE_EXHAUSTED naming that limit and what frees
/// it, not UNAVAILABLE (a retry never succeeds until an operator acts), and
/// nothing etcd accepted before is lost: the last accepted change is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_log_past_etcds_quota_is_refused_by_name_and_keeps_what_it_took() {
    use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
    use tonic::Code;

    // 2 MiB: a few dozen 40 KB entries fill it; the default is 2 GiB.
    let etcd = EtcdServer::start_with_quota(2 << 20).await.unwrap();
    let bundle = synthetic_bundle(1_000, 10, DIMENSIONS, SHARDS, 35);
    let token = CancellationToken::new();
    for shard in 0..SHARDS {
        node(&bundle, shard, "a", &etcd, &token).await;
    }
    // No push-back: this floods etcd faster than debug replicas insert, and
    // what it checks is etcd's refusal.
    let gateway = etcd_gateway(&bundle, &etcd, Duration::ZERO, &token).await;
    let mut catalog = CatalogServiceClient::connect(format!("http://{gateway}"))
        .await
        .unwrap();
    let batch = |call: u64| live_cluster::flood_batch(call, 500, DIMENSIONS);
    let mut accepted = None;
    let refused = 'fill: {
        // 2 MiB in 40 KB entries (and their history): well under 400 calls.
        for call in 0..400 {
            match catalog.upsert_items(batch(call)).await {
                Ok(answer) => accepted = Some((call, answer.into_inner().revision)),
                Err(status) => break 'fill status,
            }
        }
        panic!("etcd's 2 MiB quota never refused a change");
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("quota-backend-bytes"),
        "{refused:?}"
    );
    let (call, revision) = accepted.expect("the first change fit in the quota");
    // What was accepted is served: the last batch's first item, by its own
    // vector. The bundle scores by inner product, so another batch's long item
    // may outscore it, but only those (at most one per call, under 400): it is
    // among the best 500.
    let last = batch(call).items.swap_remove(0);
    let mut client = gateway_client(gateway).await;
    let request = by_embedding(last.embedding.clone(), 500, false);
    let answer = live_cluster::recommend_at(&mut client, request, revision, VISIBLE).await;
    assert!(ids(&answer).contains(&last.item_id), "{answer:?}");
    // And a second refusal says the same: the alarm holds until disarmed.
    let again = catalog.upsert_items(batch(999)).await.unwrap_err();
    assert_eq!(again.code(), Code::ResourceExhausted, "{again:?}");
    token.cancel();
}
