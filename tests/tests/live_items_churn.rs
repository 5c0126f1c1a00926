//! Issue 17's item-churn test: 10,000 random upserts and deletes through the
//! gateway's `CatalogService` while one retrieval replica of each shard is
//! killed (`SIGKILL`) and started again. Afterwards every replica of a shard
//! answers 100 queries identically, no deleted id is ever returned, every
//! upserted id is found by its own vector, and a ranked answer holding new items
//! is complete and names them. Real etcd; every server a process of this tree's
//! binaries (two shards of two replicas, a ranking node, a gateway).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use recsys_bundle::shard_of;
use recsys_discovery::EtcdServer;
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::recommend_request::Query;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{
    DeleteItemsRequest, FeatureValue, ItemUpsert, QueryEmbedding, RecommendRequest, SearchRequest,
    UpsertItemsRequest,
};
use recsys_tests::noise::Noise;
use recsys_tests::processes::{ServerCommand, ServerProcess, binary, free_addr};
use recsys_tests::*;
use tonic::transport::Channel;

const SHARDS: u32 = 2;
const DIMENSIONS: usize = 16;
const CLUSTER: &str = "churn";
const CHANGES: usize = 10_000;
const BATCH: usize = 100;
/// Generous bound on anything the cluster does by itself.
const SETTLE: Duration = Duration::from_secs(60);
const QUERIES: usize = 100;
const K: u32 = 10;

/// One server process and its log.
struct Node {
    process: ServerProcess,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

/// Starts `binary_name` as node `id` of the cluster, configured as compose does
/// (`RECSYS_*` variables); waits until it serves.
async fn start(
    binary_name: &str,
    id: &str,
    bundle: &Path,
    etcd: &EtcdServer,
    logs: &Path,
    extra: &[(&str, String)],
) -> Node {
    let addr = free_addr();
    let log = logs.join(format!("{id}.log"));
    let mut command = ServerCommand::new(binary(binary_name), id, addr)
        .env("RUST_LOG", "info")
        .stderr_to(&log)
        .env("RECSYS_BUNDLE", bundle.display().to_string())
        .env("RECSYS_ETCD", etcd.endpoint())
        .env("RECSYS_CLUSTER", CLUSTER)
        .env("RECSYS_LISTEN", addr.to_string())
        .env("RECSYS_METRICS_LISTEN", free_addr().to_string())
        .env("RECSYS_IO_THREADS", "1");
    if binary_name != "gateway" {
        command = command
            .env("RECSYS_ADVERTISE_ADDR", addr.to_string())
            .env("RECSYS_NODE_ID", id)
            .env("RECSYS_LEASE_TTL", "3")
            .env("RECSYS_DRAIN_GRACE_MS", "100");
    }
    for (key, value) in extra {
        command = command.env(key, value);
    }
    let mut process = command.spawn().unwrap_or_else(|e| panic!("{e}"));
    let node_log = log.clone();
    if let Err(error) = process.wait_serving(SETTLE).await {
        let text = std::fs::read_to_string(&node_log).unwrap_or_default();
        panic!("{id}: {error}\n{text}");
    }
    Node { process, addr, log }
}

async fn retrieval_client(addr: SocketAddr) -> RetrievalServiceClient<Channel> {
    RetrievalServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(16 << 20)
}

/// One replica's answer (ids and scores) once it has applied the log up to
/// `revision`.
async fn search(addr: SocketAddr, query: &[f32], k: u32, revision: u64) -> (Vec<u64>, Vec<f32>) {
    let mut request = tonic::Request::new(SearchRequest {
        query: query.to_vec(),
        k,
        exclude_item_ids: Vec::new(),
        exact: false,
        min_log_revision: revision,
        // The replica's primary version.
        bundle_version: String::new(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(10));
    let answer = retrieval_client(addr)
        .await
        .search(request)
        .await
        .unwrap_or_else(|status| panic!("{addr}: {status:?}"))
        .into_inner();
    (answer.item_ids, answer.scores)
}

/// A random direction scaled well past the catalog's norms: the item it is
/// given to is the nearest (by inner product) to its own vector.
fn new_vector(noise: &mut Noise) -> Vec<f32> {
    let raw: Vec<f32> = (0..DIMENSIONS)
        .map(|_| (noise.below(2_001) as f32 - 1_000.0) / 1_000.0)
        .collect();
    let norm = raw.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-3);
    raw.iter().map(|v| v / norm * 20.0).collect()
}

fn quality(value: u64) -> HashMap<String, FeatureValue> {
    [(
        "quality".to_string(),
        FeatureValue {
            kind: Some(Kind::StringValue((value % 10).to_string())),
        },
    )]
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_while_replicas_are_killed_leave_every_replica_alike() {
    let etcd = EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let bundle = synthetic_bundle(4_000, 50, DIMENSIONS, SHARDS, 71);
    let logs = tempfile::tempdir().unwrap();
    let (dir, logs_dir) = (bundle.path(), logs.path());
    let mut replicas: BTreeMap<(u32, char), Node> = BTreeMap::new();
    for shard in 0..SHARDS {
        for replica in ['a', 'b'] {
            let id = format!("s{shard}{replica}");
            let extra = [
                ("RECSYS_SHARD", shard.to_string()),
                ("RECSYS_SEARCH_THREADS", "1".to_string()),
            ];
            let node = start("retrieval-node", &id, dir, &etcd, logs_dir, &extra).await;
            replicas.insert((shard, replica), node);
        }
    }
    let extra = [("RECSYS_RANK_THREADS", "1".to_string())];
    let ranking = start("ranking-node", "rank", dir, &etcd, logs_dir, &extra).await;
    let gateway = start("gateway", "gateway", dir, &etcd, logs_dir, &[]).await;
    let mut recommend_client = gateway_client(gateway.addr).await;
    let catalog = CatalogServiceClient::connect(format!("http://{}", gateway.addr))
        .await
        .unwrap();

    // The truth: every id's last change (Some(vector) alive, None deleted).
    let base_ids: Vec<u64> = bundle.catalog.items.ids.clone();
    let mut truth: HashMap<u64, Option<Vec<f32>>> = HashMap::new();
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut noise = Noise(0x005e_ed17);
    let mut next_id = 10_000_000u64;
    let mut revision = 0;
    let batches = CHANGES / BATCH;
    for batch in 0..batches {
        // One replica of each shard dies a third of the way in, and comes back
        // (replaying the log from its bundle's revision) at two thirds.
        if batch == batches / 3 {
            for shard in 0..SHARDS {
                replicas.get_mut(&(shard, 'b')).unwrap().process.kill9();
            }
        }
        if batch == 2 * batches / 3 {
            for shard in 0..SHARDS {
                let extra = [
                    ("RECSYS_SHARD", shard.to_string()),
                    ("RECSYS_SEARCH_THREADS", "1".to_string()),
                ];
                let id = format!("s{shard}b");
                let node = start("retrieval-node", &id, dir, &etcd, logs_dir, &extra).await;
                replicas.insert((shard, 'b'), node);
            }
        }
        // Seven calls in ten upsert (new ids, or replacing a base or an earlier
        // id), three delete (base ids, or upserted ones).
        let known: Vec<u64> = truth.keys().copied().collect();
        let pick = |noise: &mut Noise| {
            if known.is_empty() || noise.below(2) == 0 {
                base_ids[noise.below(base_ids.len() as u64) as usize]
            } else {
                known[noise.below(known.len() as u64) as usize]
            }
        };
        let mut ids_in_batch = HashSet::new();
        if noise.below(10) < 7 {
            let mut items = Vec::with_capacity(BATCH);
            while items.len() < BATCH {
                let id = if noise.below(2) == 0 {
                    next_id += 1;
                    next_id
                } else {
                    pick(&mut noise)
                };
                if !ids_in_batch.insert(id) {
                    continue;
                }
                let vector = new_vector(&mut noise);
                let name = format!("item {id} v{batch}");
                truth.insert(id, Some(vector.clone()));
                names.insert(id, name.clone());
                items.push(ItemUpsert {
                    item_id: id,
                    embedding: vector,
                    name,
                    features: quality(id),
                });
            }
            // A restarted replica replaying the log may hold writes back
            // (`--max-apply-lag-ms`): send again, as a writer should.
            let answer = live_cluster::until_accepted(SETTLE, || {
                let (mut catalog, items) = (catalog.clone(), items.clone());
                async move { catalog.upsert_items(UpsertItemsRequest { items }).await }
            })
            .await;
            revision = answer.revision;
        } else {
            let mut item_ids = Vec::with_capacity(BATCH);
            while item_ids.len() < BATCH {
                let id = pick(&mut noise);
                if ids_in_batch.insert(id) {
                    truth.insert(id, None);
                    names.remove(&id);
                    item_ids.push(id);
                }
            }
            let answer = live_cluster::until_accepted(SETTLE, || {
                let (mut catalog, item_ids) = (catalog.clone(), item_ids.clone());
                async move { catalog.delete_items(DeleteItemsRequest { item_ids }).await }
            })
            .await;
            revision = answer.revision;
        }
    }
    let deleted: Vec<u64> = truth
        .iter()
        .filter(|(_, v)| v.is_none())
        .map(|(id, _)| *id)
        .collect();
    let upserted: Vec<(u64, Vec<f32>)> = truth
        .iter()
        .filter_map(|(id, v)| v.clone().map(|v| (*id, v)))
        .collect();
    assert!(deleted.len() > 1_000 && upserted.len() > 3_000);
    let deleted_set: HashSet<u64> = deleted.iter().copied().collect();

    // Every replica of a shard answers alike, and never with a deleted id.
    let mut queries: Vec<Vec<f32>> = (0..QUERIES / 2)
        .map(|i| bundle.catalog.items.row(i * 37).to_vec())
        .collect();
    queries.extend((0..QUERIES / 2).map(|_| new_vector(&mut noise)));
    for (i, query) in queries.iter().enumerate() {
        for shard in 0..SHARDS {
            let a = search(replicas[&(shard, 'a')].addr, query, K, revision).await;
            let b = search(replicas[&(shard, 'b')].addr, query, K, revision).await;
            assert_eq!(a, b, "query {i}: shard {shard}'s replicas differ");
            if let Some(id) = a.0.iter().find(|id| deleted_set.contains(id)) {
                panic!("query {i}: shard {shard} returned deleted item {id}");
            }
        }
    }
    // A deleted item is not found even by its own vector.
    for &id in deleted.iter().take(300) {
        let query = match base_ids.iter().position(|b| *b == id) {
            Some(row) => bundle.catalog.items.row(row).to_vec(),
            None => continue,
        };
        let shard = shard_of(id, SHARDS);
        for replica in ['a', 'b'] {
            let (ids, _) = search(replicas[&(shard, replica)].addr, &query, K, revision).await;
            assert!(
                !ids.contains(&id),
                "deleted {id} found on s{shard}{replica}"
            );
        }
    }
    // Every upserted item is found by its own vector, on every replica.
    for (id, vector) in upserted.iter().take(600) {
        let shard = shard_of(*id, SHARDS);
        for replica in ['a', 'b'] {
            let (ids, _) = search(replicas[&(shard, replica)].addr, vector, K, revision).await;
            assert!(
                ids.contains(id),
                "upserted {id} not found by its vector on s{shard}{replica}: {ids:?}"
            );
        }
    }
    // Through the gateway, ranked: new items are scored with their own
    // features (no degraded ranking) and named.
    for (id, vector) in upserted.iter().filter(|(id, _)| *id >= 10_000_000).take(20) {
        let request = RecommendRequest {
            query: Some(Query::QueryEmbedding(QueryEmbedding {
                values: vector.clone(),
            })),
            k: 10,
            retrieve_k: 10,
            min_revision: revision,
            ..Default::default()
        };
        let answer = recommend(&mut recommend_client, request, SETTLE)
            .await
            .unwrap_or_else(|status| panic!("{status:?}\n{}", ranking.tail()));
        assert!(full_coverage(&answer, SHARDS), "{answer:?}");
        assert!(answer.ranked, "{answer:?}\n{}", ranking.tail());
        let coverage = answer.coverage.as_ref().unwrap();
        assert!(coverage.reasons.is_empty(), "{coverage:?}");
        let item = answer
            .items
            .iter()
            .find(|item| item.item_id == *id)
            .unwrap_or_else(|| panic!("{id} missing from {answer:?}"));
        assert_eq!(item.name, names[id]);
        for item in &answer.items {
            assert!(!deleted_set.contains(&item.item_id), "{answer:?}");
            if let Some(name) = names.get(&item.item_id) {
                assert_eq!(&item.name, name);
            }
        }
    }
    drop(gateway);
    drop(ranking);
}
