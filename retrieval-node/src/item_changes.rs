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
//!
//! Once the log pauses, the follower packs the shard's mutable part
//! ([`LiveShard::pack_delta`]): searches read the packed copy until the next
//! change, about a tenth faster with a tenth of the shard changed
//! (docs/benchmarks.md, "Live shard").

use std::sync::Arc;
use std::time::Duration;

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
        let mut packer = Packer::default();
        loop {
            let due = packer.due.filter(|_| packer.running.is_none());
            tokio::select! {
                // Entries first: a pack waits for the log to pause, and a pack
                // running never holds up the entries after it.
                biased;
                entry = entries.recv() => {
                    let Some(entry) = entry else { break };
                    apply(&live, entry).await;
                    applied.send_replace(live.revision());
                    crate::metrics::delta_packed(shard, live.delta_packed());
                    packer.changed();
                }
                finished = async {
                    match packer.running.as_mut() {
                        Some(task) => task.await,
                        None => std::future::pending().await,
                    }
                }, if packer.running.is_some() => {
                    packer.running = None;
                    packer.finished(shard, finished);
                    crate::metrics::delta_packed(shard, live.delta_packed());
                }
                () = async {
                    match due {
                        Some(due) => tokio::time::sleep_until(due).await,
                        None => std::future::pending().await,
                    }
                }, if due.is_some() => {
                    packer.start(&live);
                }
            }
        }
        if let Some(task) = packer.running.take() {
            task.abort();
        }
    });
}

/// How much longer than a pack took the follower waits before the next one:
/// packing then costs at most about a twentieth of a core while changes keep
/// coming (a pack of 39,000 GloVe-50 items took 15-36 ms).
const PACK_SPACING: u32 = 20;

/// What a pack task gives back: when it started, how long it took, what it did.
type PackOutcome = (
    tokio::time::Instant,
    Duration,
    Result<bool, recsys_index::ChangeError>,
);

/// When to pack the mutable part next, and the pack running, if any.
#[derive(Default)]
struct Packer {
    /// Set once a change was applied since the last pack: no sooner than this.
    due: Option<tokio::time::Instant>,
    /// The earliest time the next pack may start.
    allowed: Option<tokio::time::Instant>,
    running: Option<tokio::task::JoinHandle<PackOutcome>>,
}

impl Packer {
    fn changed(&mut self) {
        let now = tokio::time::Instant::now();
        self.due = Some(self.allowed.map_or(now, |allowed| allowed.max(now)));
    }

    /// Packs on the blocking pool; a change applied meanwhile makes the copy
    /// stale and the pack says so ([`LiveShard::pack_delta`]).
    fn start(&mut self, live: &Arc<LiveShard>) {
        self.due = None;
        let target = live.clone();
        self.running = Some(tokio::task::spawn_blocking(move || {
            let started = tokio::time::Instant::now();
            let packed = target.pack_delta();
            (started, started.elapsed(), packed)
        }));
    }

    fn finished(&mut self, shard: u32, outcome: Result<PackOutcome, tokio::task::JoinError>) {
        match outcome {
            Ok((started, took, packed)) => {
                self.allowed = Some(started + took.max(Duration::from_millis(1)) * PACK_SPACING);
                match packed {
                    Ok(true) => tracing::debug!(
                        shard,
                        ms = took.as_secs_f64() * 1e3,
                        "packed the mutable part"
                    ),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(shard, %error, "packing the mutable part failed; searching it unpacked")
                    }
                }
            }
            Err(error) => tracing::error!(shard, %error, "packing the mutable part failed"),
        }
    }
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
