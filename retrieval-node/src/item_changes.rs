//! Applying the cluster's item change log to the shard this node serves.
//!
//! With etcd, a retrieval node follows its shard's part of the change log
//! (`recsys-catalog-log`) from the revision its bundle version already contains,
//! and applies each entry to its [`LiveShard`] in revision order, on the blocking
//! pool (an upsert is an HNSW insertion). The follower resumes after etcd outages
//! on its own; an entry the shard refuses (a foreign item, a wrong dimension, a
//! non-finite value: nothing the gateway would have written) is logged and
//! counted and the follower goes on, so one bad write cannot stop the shard
//! taking the ones after it.

use std::sync::Arc;

use recsys_catalog_log::{ChangeLog, LogEntry};
use recsys_index::{ItemChange, LiveShard};
use recsys_proto::v1::{ShardChangeRecord, item_change_record};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The shard's changes in one log entry, in the order they were made.
fn changes_of(record: &ShardChangeRecord) -> Vec<ItemChange> {
    record
        .changes
        .iter()
        .filter_map(|change| match change.change.as_ref()? {
            item_change_record::Change::Upsert(upsert) => Some(ItemChange::Upsert {
                id: upsert.item_id,
                vector: upsert.embedding.clone(),
            }),
            item_change_record::Change::DeleteItemId(id) => Some(ItemChange::Delete { id: *id }),
        })
        .collect()
}

/// Follows the shard's part of `log` and applies every entry
/// after the shard's revision, until `shutdown`, publishing each revision
/// reached on `applied` (searches asking for a revision wait on it).
pub fn follow(
    log: ChangeLog,
    live: Arc<LiveShard>,
    applied: watch::Sender<u64>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let shard = live.base().shard();
        let mut entries = log.follow(shard, live.revision(), shutdown.clone());
        tracing::info!(
            shard,
            after = live.revision(),
            "following the item change log"
        );
        crate::metrics::log_revision(shard, live.revision());
        while let Some(entry) = entries.recv().await {
            apply(&live, entry).await;
            applied.send_replace(live.revision());
        }
    });
}

async fn apply(live: &Arc<LiveShard>, entry: LogEntry) {
    let shard = live.base().shard();
    let revision = entry.revision;
    let changes = changes_of(&entry.record);
    let target = live.clone();
    let applied = tokio::task::spawn_blocking(move || target.apply(revision, &changes)).await;
    match applied {
        Ok(Ok(_)) => crate::metrics::log_revision(shard, live.revision()),
        Ok(Err(error)) => {
            crate::metrics::refused_change(shard);
            tracing::warn!(shard, revision, %error, "item change refused");
        }
        Err(error) => {
            crate::metrics::refused_change(shard);
            tracing::error!(shard, revision, %error, "applying an item change failed");
        }
    }
}
