//! `recsys bundle compact` and `recsys items truncate` (issue 17): a version
//! built from a base version plus the change log in a real etcd holds the
//! upserted items (vectors, names, ranker features) and not the deleted ones,
//! records the log revision it contains, and serves exactly what a node of the
//! base version serves after applying the log; truncating the log then leaves
//! only the changes after it, which nodes of the new version still apply.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use recsys_bundle::{BundleRoot, Catalog, Manifest, shard_of};
use recsys_bundle_builder::synthetic::{SyntheticSpec, build_synthetic};
use recsys_bundle_builder::{BuildOptions, Staging};
use recsys_catalog_log::ChangeLog;
use recsys_discovery::EtcdServer;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{
    FeatureValue, ItemChangeRecord, ItemUpsert, SearchRequest, ShardChangeRecord,
    item_change_record::Change,
};
use recsys_retrieval_node::{LoadMode, ShardIndex};
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 2;
const DIMENSIONS: usize = 16;
const CLUSTER: &str = "compact";
const WAIT: Duration = Duration::from_secs(30);

fn upsert(id: u64, vector: &[f32], name: &str, quality: &str) -> ItemChangeRecord {
    let features = [(
        "quality".to_string(),
        FeatureValue {
            kind: Some(Kind::StringValue(quality.into())),
        },
    )]
    .into_iter()
    .collect();
    ItemChangeRecord {
        change: Some(Change::Upsert(ItemUpsert {
            item_id: id,
            embedding: vector.to_vec(),
            name: name.into(),
            features,
        })),
    }
}

fn delete(id: u64) -> ItemChangeRecord {
    ItemChangeRecord {
        change: Some(Change::DeleteItemId(id)),
    }
}

/// One log entry's records, grouped by shard.
fn entry(changes: Vec<(u64, ItemChangeRecord)>) -> Vec<ShardChangeRecord> {
    let mut by_shard: HashMap<u32, Vec<ItemChangeRecord>> = HashMap::new();
    for (id, change) in changes {
        by_shard
            .entry(shard_of(id, SHARDS))
            .or_default()
            .push(change);
    }
    let mut records: Vec<ShardChangeRecord> = by_shard
        .into_iter()
        .map(|(shard, changes)| ShardChangeRecord {
            shard,
            shard_count: SHARDS,
            bundle_version: "v1".into(),
            changes,
        })
        .collect();
    records.sort_by_key(|r| r.shard);
    records
}

/// An in-process retrieval node of `shard` serving `dir` and following the log.
async fn node(
    dir: &Path,
    shard: u32,
    id: &str,
    etcd: &EtcdServer,
    token: &CancellationToken,
) -> SocketAddr {
    recsys_tests::live_cluster::retrieval_node(dir, shard, id, etcd, CLUSTER, token).await
}

/// The node's exact top `k` once it has applied the log up to `revision`.
async fn exact_top(addr: SocketAddr, query: &[f32], k: u32, revision: u64) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(mut client) = RetrievalServiceClient::connect(format!("http://{addr}")).await {
            let request = SearchRequest {
                query: query.to_vec(),
                k,
                exclude_item_ids: Vec::new(),
                exact: true,
                min_log_revision: revision,
                bundle_version: String::new(),
                ..Default::default()
            };
            if let Ok(answer) = client.search(request).await {
                return answer.into_inner().item_ids;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn run_recsys(args: &[&str]) -> String {
    let output = std::process::Command::new(recsys_tests::processes::binary("recsys"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "recsys {args:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_folds_the_log_into_a_version_that_serves_alike() {
    let etcd = EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}"));
    let root_dir = tempfile::tempdir().unwrap();
    let root = BundleRoot::new(root_dir.path());
    let spec = SyntheticSpec {
        items: 2_000,
        users: 20,
        dimensions: DIMENSIONS,
        clusters: 16,
        seed: 41,
    };
    let options = BuildOptions {
        params: Default::default(),
        shard_count: SHARDS,
        version: "v1".into(),
        source: "synthetic".into(),
        threads: 1,
    };
    let staging = Staging::version(root.dir(), "v1").unwrap();
    let (catalog, _) = build_synthetic(staging.path(), &spec, &options, &|_| {}).unwrap();
    let v1 = staging.commit().unwrap();
    root.set_current("v1").unwrap();
    let items = &catalog.items;

    // Changes: new items (named, with a quality), a base item moved and
    // renamed, base items deleted, and a new item added then deleted.
    let log = ChangeLog::connect(&[etcd.endpoint()], CLUSTER)
        .await
        .unwrap();
    let far = |row: usize| -> Vec<f32> { items.row(row).iter().map(|v| v * 5.0).collect() };
    let new_ids: Vec<u64> = (0..6).map(|i| 9_000_000 + i).collect();
    let mut changes: Vec<(u64, ItemChangeRecord)> = new_ids
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            (
                id,
                upsert(id, &far(100 + i * 50), &format!("new {id}"), "7"),
            )
        })
        .collect();
    let moved = items.ids[10];
    changes.push((moved, upsert(moved, &far(900), "moved", "2")));
    log.append(&entry(changes)).await.unwrap();
    let deleted: Vec<u64> = vec![items.ids[20], items.ids[21], items.ids[22], new_ids[5]];
    log.append(&entry(deleted.iter().map(|&id| (id, delete(id))).collect()))
        .await
        .unwrap();

    let endpoint = etcd.endpoint();
    let printed = run_recsys(&[
        "bundle",
        "compact",
        "--root",
        &root_dir.path().display().to_string(),
        "--from",
        "v1",
        "--version",
        "v2",
        "--etcd",
        &endpoint,
        "--cluster",
        CLUSTER,
    ]);
    assert!(printed.contains("bundle v2"), "{printed}");
    assert_eq!(root.current().unwrap(), "v2");
    let v2 = root.complete("v2").unwrap();
    let (manifest, _) = recsys_bundle::verify_bundle(&v2).unwrap();
    let compacted_at = manifest.log_revision;
    assert!(compacted_at > 0);
    assert_eq!(manifest.items, 2_000 + 5 - 3);
    assert_eq!(Manifest::load(&v1).unwrap().log_revision, 0);
    // Names and ranker features of the new version.
    let names = Catalog::load(&v2.join(manifest.catalog.as_ref().unwrap())).unwrap();
    assert_eq!(names.name(new_ids[0]), Some("new 9000000"));
    assert_eq!(names.name(moved), Some("moved"));
    assert_eq!(names.name(new_ids[5]), None);
    assert_eq!(names.name(items.ids[20]), None);
    let ranker = manifest.ranker.as_ref().unwrap();
    let table = std::fs::read_to_string(v2.join(&ranker.item_features)).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l == format!("{0}\t{0}\t7", new_ids[0])),
        "{table}"
    );
    assert!(table.lines().any(|l| l == format!("{moved}\t{moved}\t2")));
    assert!(
        !table
            .lines()
            .any(|l| l.starts_with(&format!("{}\t", items.ids[20])))
    );
    let model = recsys_model::Ranker::load(&ranker.files(&v2)).unwrap();
    assert!(model.knows_item(new_ids[0]) && !model.knows_item(items.ids[21]));
    // The shards: new items where their vectors are, deleted ones gone.
    for (i, &id) in new_ids[..5].iter().enumerate() {
        let shard = ShardIndex::open_with(&v2, shard_of(id, SHARDS), LoadMode::View).unwrap();
        let hits = shard.search(&far(100 + i * 50), 1, &[], true).unwrap();
        assert_eq!(hits[0].0, id);
    }
    for &id in &deleted[..3] {
        let shard = ShardIndex::open_with(&v2, shard_of(id, SHARDS), LoadMode::View).unwrap();
        let row = items.ids.iter().position(|x| *x == id).unwrap();
        let hits = shard.search(items.row(row), 50, &[], true).unwrap();
        assert!(hits.iter().all(|(hit, _)| *hit != id));
    }

    // A node of v1 applies the whole log; then a change after the compaction,
    // and the log up to the version goes.
    let token = CancellationToken::new();
    let late = 9_100_000u64;
    let shard = shard_of(late, SHARDS);
    let old = node(&v1, shard, "old", &etcd, &token).await;
    exact_top(old, &far(0), 1, compacted_at).await;
    let late_revision = log
        .append(&entry(vec![(late, upsert(late, &far(1_500), "late", "1"))]))
        .await
        .unwrap();
    let (before, _) = log.read_all_after(0).await.unwrap();
    let contained = before.iter().filter(|e| e.revision <= compacted_at).count();
    assert!(contained >= 2);
    let printed = run_recsys(&[
        "items",
        "truncate",
        "--up-to",
        &compacted_at.to_string(),
        "--etcd",
        &endpoint,
        "--cluster",
        CLUSTER,
    ]);
    assert!(
        printed.contains(&format!("deleted {contained} change log keys")),
        "{printed}"
    );
    let (left, _) = log.read_all_after(0).await.unwrap();
    assert_eq!(
        left.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [late_revision]
    );

    // A node of v2 needs only the late change: it answers exactly as the node
    // of v1 that applied everything.
    let new = node(&v2, shard, "new", &etcd, &token).await;
    assert_eq!(exact_top(new, &far(1_500), 1, late_revision).await, [late]);
    assert_eq!(exact_top(old, &far(1_500), 1, late_revision).await, [late]);
    for i in 0..30 {
        let query = items.row(i * 61);
        let from_new = exact_top(new, query, 20, late_revision).await;
        assert!(from_new.iter().all(|id| !deleted.contains(id)));
        assert_eq!(from_new, exact_top(old, query, 20, late_revision).await);
    }
    token.cancel();
}
