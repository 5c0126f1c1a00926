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
//! change, about a tenth faster with a tenth of the shard changed. Once it has
//! been quiet for a second and the part is large, it also folds the part into
//! a copy of the base ([`LiveShard::fold`]), searched alone at the packed-only
//! rate until the next change (docs/benchmarks-history.md, "Live shard").

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
/// reached on `applied` (searches asking for a revision wait on it). Once the
/// log pauses it packs the mutable part, and once it has been quiet for
/// [`FOLD_QUIET`] folds it into the base when it holds at least
/// `fold_min_items` items (0: never).
pub fn follow(
    log: ChangeLog,
    live: Arc<LiveShard>,
    applied: watch::Sender<u64>,
    fold_min_items: usize,
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
        let mut pack = Upkeep::new("packed the mutable part", Duration::ZERO, |live| {
            live.pack_delta()
        });
        let mut fold = Upkeep::new(
            "folded the mutable part into the base",
            FOLD_QUIET,
            move |live| live.fold(fold_min_items),
        );
        let publish = |live: &LiveShard| {
            crate::metrics::delta_packed(shard, live.delta_packed());
            crate::metrics::folded(shard, live.folded());
        };
        loop {
            let pack_due = pack.due.filter(|_| pack.running.is_none());
            let fold_due = fold
                .due
                .filter(|_| fold.running.is_none() && fold_min_items > 0);
            tokio::select! {
                // Entries first: upkeep waits for the log to pause, and upkeep
                // running never holds up the entries after it.
                biased;
                entry = entries.recv() => {
                    let Some(entry) = entry else { break };
                    apply(&live, entry).await;
                    applied.send_replace(live.revision());
                    publish(&live);
                    pack.changed();
                    fold.changed();
                }
                finished = finished(pack.running.as_mut()), if pack.running.is_some() => {
                    pack.finished(shard, finished);
                    publish(&live);
                }
                finished = finished(fold.running.as_mut()), if fold.running.is_some() => {
                    fold.finished(shard, finished);
                    publish(&live);
                }
                () = due(pack_due), if pack_due.is_some() => pack.start(&live),
                () = due(fold_due), if fold_due.is_some() => fold.start(&live),
            }
        }
        for task in [pack.running.take(), fold.running.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    });
}

/// How much longer than a run of upkeep took the follower waits before the
/// next: upkeep then costs at most about a twentieth of a core while changes
/// keep coming (a pack of 39,000 GloVe-50 items took 15-36 ms, a fold of them
/// into the 351,000 others a few seconds).
const UPKEEP_SPACING: u32 = 20;

/// How long the log must be quiet before a fold starts: a fold takes seconds,
/// and a change that comes while it runs makes it stale.
pub const FOLD_QUIET: Duration = Duration::from_secs(1);

/// What an upkeep task gives back: when it started, how long it took, what it did.
type UpkeepOutcome = (
    tokio::time::Instant,
    Duration,
    Result<bool, recsys_index::ChangeError>,
);

/// The task's outcome, once it ends.
async fn finished(
    task: Option<&mut tokio::task::JoinHandle<UpkeepOutcome>>,
) -> Result<UpkeepOutcome, tokio::task::JoinError> {
    match task {
        Some(task) => task.await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`, never without one.
async fn due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What a run of upkeep does to the shard: whether it made something.
type UpkeepWork = dyn Fn(&LiveShard) -> Result<bool, recsys_index::ChangeError> + Send + Sync;

/// One kind of upkeep of the mutable part (packing it, folding it): when it
/// runs next, and the run in progress, if any.
struct Upkeep {
    done: &'static str,
    quiet: Duration,
    work: Arc<UpkeepWork>,
    /// Set once a change was applied since the last run: no sooner than this.
    due: Option<tokio::time::Instant>,
    /// The earliest time the next run may start.
    allowed: Option<tokio::time::Instant>,
    running: Option<tokio::task::JoinHandle<UpkeepOutcome>>,
}

impl Upkeep {
    fn new(
        done: &'static str,
        quiet: Duration,
        work: impl Fn(&LiveShard) -> Result<bool, recsys_index::ChangeError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            done,
            quiet,
            work: Arc::new(work),
            due: None,
            allowed: None,
            running: None,
        }
    }

    fn changed(&mut self) {
        let quiet = tokio::time::Instant::now() + self.quiet;
        self.due = Some(self.allowed.map_or(quiet, |allowed| allowed.max(quiet)));
    }

    /// Runs on the blocking pool; a change applied meanwhile makes the result
    /// stale and the work says so (`LiveShard::pack_delta`, `LiveShard::fold`).
    fn start(&mut self, live: &Arc<LiveShard>) {
        self.due = None;
        let (target, work) = (live.clone(), self.work.clone());
        self.running = Some(tokio::task::spawn_blocking(move || {
            let started = tokio::time::Instant::now();
            let outcome = work(&target);
            (started, started.elapsed(), outcome)
        }));
    }

    fn finished(&mut self, shard: u32, outcome: Result<UpkeepOutcome, tokio::task::JoinError>) {
        self.running = None;
        match outcome {
            Ok((started, took, done)) => {
                self.allowed = Some(started + took.max(Duration::from_millis(1)) * UPKEEP_SPACING);
                match done {
                    Ok(true) => {
                        tracing::debug!(shard, ms = took.as_secs_f64() * 1e3, "{}", self.done)
                    }
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(shard, %error, "{} failed; searching without it", self.done)
                    }
                }
            }
            Err(error) => tracing::error!(shard, %error, "{} failed", self.done),
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
