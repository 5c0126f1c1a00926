//! The change log against a real etcd: order, partitions, following across
//! outages and compactions, size limits and truncation.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_catalog_log::limits::{MAX_ENTRY_BYTES, MAX_TXN_OPS};
use recsys_catalog_log::{ChangeLog, LogEntry, LogError};
use recsys_discovery::EtcdServer;
use recsys_proto::v1::{ItemChangeRecord, ItemUpsert, ShardChangeRecord, item_change_record};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous bound on waiting for a follower; a healthy run takes milliseconds.
const WAIT: Duration = Duration::from_secs(20);

fn deletes(shard: u32, ids: &[u64]) -> ShardChangeRecord {
    ShardChangeRecord {
        shard,
        shard_count: 4,
        bundle_version: "v1".into(),
        changes: ids
            .iter()
            .map(|id| ItemChangeRecord {
                change: Some(item_change_record::Change::DeleteItemId(*id)),
            })
            .collect(),
    }
}

fn deleted_ids(entry: &LogEntry) -> Vec<u64> {
    entry
        .record
        .changes
        .iter()
        .filter_map(|change| match change.change {
            Some(item_change_record::Change::DeleteItemId(id)) => Some(id),
            _ => None,
        })
        .collect()
}

async fn next(receiver: &mut mpsc::Receiver<LogEntry>) -> LogEntry {
    tokio::time::timeout(WAIT, receiver.recv())
        .await
        .expect("no entry in time")
        .expect("follower ended")
}

/// Entries come back per shard in the order they were appended, each with the
/// revision `append` answered; the parts of one entry share it.
#[tokio::test]
async fn entries_are_ordered_and_partitioned_by_shard() {
    let etcd = EtcdServer::start().await.unwrap();
    let log = ChangeLog::connect(&[etcd.endpoint()], "c").await.unwrap();
    let mut revisions = Vec::new();
    for round in 0..5u64 {
        let revision = log
            .append(&[deletes(0, &[round]), deletes(2, &[100 + round])])
            .await
            .unwrap();
        revisions.push(revision);
    }
    assert!(revisions.windows(2).all(|pair| pair[0] < pair[1]));
    let (shard0, listed_at) = log.read_after(0, 0).await.unwrap();
    assert!(listed_at >= revisions[4]);
    assert_eq!(
        shard0.iter().map(|e| e.revision).collect::<Vec<_>>(),
        revisions
    );
    assert_eq!(
        shard0.iter().flat_map(deleted_ids).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(log.read_after(1, 0).await.unwrap().0.is_empty());
    let (after, _) = log.read_after(2, revisions[2]).await.unwrap();
    assert_eq!(
        after.iter().flat_map(deleted_ids).collect::<Vec<_>>(),
        vec![103, 104]
    );
    let (all, _) = log.read_all_after(0).await.unwrap();
    assert_eq!(all.len(), 10);
    assert!(
        all.windows(2)
            .all(|pair| pair[0].revision <= pair[1].revision)
    );
}

/// An entry over the size limit is refused by name before anything is written;
/// one touching more shards than a transaction may write is split and complete.
#[tokio::test]
async fn limits_are_enforced_and_wide_entries_split() {
    let etcd = EtcdServer::start().await.unwrap();
    let log = ChangeLog::connect(&[etcd.endpoint()], "c").await.unwrap();
    let big = ShardChangeRecord {
        shard: 0,
        shard_count: 1,
        bundle_version: String::new(),
        changes: (0..(MAX_ENTRY_BYTES / 200 + 1) as u64)
            .map(|id| ItemChangeRecord {
                change: Some(item_change_record::Change::Upsert(ItemUpsert {
                    item_id: id,
                    embedding: vec![0.5; 50],
                    ..Default::default()
                })),
            })
            .collect(),
    };
    match log.append(&[big]).await {
        Err(LogError::TooLarge { limit, .. }) => assert_eq!(limit, MAX_ENTRY_BYTES),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(log.read_all_after(0).await.unwrap().0.is_empty());
    let shards = (MAX_TXN_OPS + 10) as u32;
    let wide: Vec<ShardChangeRecord> = (0..shards).map(|shard| deletes(shard, &[7])).collect();
    log.append(&wide).await.unwrap();
    let (all, _) = log.read_all_after(0).await.unwrap();
    let mut seen: Vec<u32> = all.iter().map(|e| e.record.shard).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..shards).collect::<Vec<_>>());
}

/// A listing whose page boundary falls inside one entry's parts reads every
/// part once: 200 one-shard entries, then one entry over 128 shards, straddle the
/// first page of `LIST_PAGE` keys.
#[tokio::test]
async fn a_page_boundary_inside_an_entry_loses_and_repeats_nothing() {
    let etcd = EtcdServer::start().await.unwrap();
    let log = ChangeLog::connect(&[etcd.endpoint()], "c").await.unwrap();
    for id in 0..200 {
        log.append(&[deletes(0, &[id])]).await.unwrap();
    }
    let wide: Vec<ShardChangeRecord> = (1..=MAX_TXN_OPS as u32)
        .map(|shard| deletes(shard, &[7]))
        .collect();
    let revision = log.append(&wide).await.unwrap();
    let (all, _) = log.read_all_after(0).await.unwrap();
    assert_eq!(all.len(), 200 + MAX_TXN_OPS);
    let mut wide_shards: Vec<u32> = all
        .iter()
        .filter(|entry| entry.revision == revision)
        .map(|entry| entry.record.shard)
        .collect();
    wide_shards.sort_unstable();
    assert_eq!(wide_shards, (1..=MAX_TXN_OPS as u32).collect::<Vec<_>>());
}

/// A follower sends what the log holds, then new entries as they commit; it
/// survives etcd being killed and restarted and a compaction, and sends every
/// entry once, in order.
#[tokio::test]
async fn a_follower_survives_outages_and_compaction() {
    let mut etcd = EtcdServer::start().await.unwrap();
    let log = ChangeLog::connect(&[etcd.endpoint()], "c").await.unwrap();
    let first = log.append(&[deletes(1, &[1])]).await.unwrap();
    let cancel = CancellationToken::new();
    let mut follower = log.follow(1, 0, cancel.clone());
    assert_eq!(next(&mut follower).await.revision, first);
    log.append(&[deletes(1, &[2]), deletes(3, &[99])])
        .await
        .unwrap();
    assert_eq!(deleted_ids(&next(&mut follower).await), vec![2]);

    etcd.stop().await.unwrap();
    let refused = log.append(&[deletes(1, &[3])]).await.unwrap_err();
    assert!(refused.is_unavailable(), "{refused}");
    etcd.restart().await.unwrap();
    log.append(&[deletes(1, &[4])]).await.unwrap();
    assert_eq!(deleted_ids(&next(&mut follower).await), vec![4]);

    etcd.compact_to_latest().await.unwrap();
    log.append(&[deletes(1, &[5])]).await.unwrap();
    assert_eq!(deleted_ids(&next(&mut follower).await), vec![5]);
    // Nothing else was sent: the old entries were not repeated.
    assert!(follower.try_recv().is_err());

    // Truncating up to a revision removes exactly the entries at or before it.
    let (before, _) = log.read_after(1, 0).await.unwrap();
    let keep_from = before[1].revision;
    assert_eq!(log.truncate(keep_from - 1).await.unwrap(), 1);
    let (after, _) = log.read_after(1, 0).await.unwrap();
    assert_eq!(after.first().unwrap().revision, keep_from);
    cancel.cancel();
}

/// A value that is not a change record, written by someone bypassing the
/// gateway, is skipped; the entries around it still arrive.
#[tokio::test]
async fn garbage_in_the_log_is_skipped() {
    let etcd = EtcdServer::start().await.unwrap();
    let log = ChangeLog::connect(&[etcd.endpoint()], "c").await.unwrap();
    log.append(&[deletes(0, &[1])]).await.unwrap();
    let mut client = etcd.client().await.unwrap();
    client
        .put(
            format!("{}garbage", recsys_catalog_log::shard_prefix("c", 0)),
            vec![0xff, 0xff, 0xff],
            None,
        )
        .await
        .unwrap();
    log.append(&[deletes(0, &[2])]).await.unwrap();
    let (entries, _) = log.read_after(0, 0).await.unwrap();
    assert_eq!(
        entries.iter().flat_map(deleted_ids).collect::<Vec<_>>(),
        vec![1, 2]
    );
}
