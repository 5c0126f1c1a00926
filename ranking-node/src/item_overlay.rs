//! The ranker of one bundle version and the items changed since that version
//! was built: what a ranking node scores with.
//!
//! A bundle's ranker knows the item features of the items the bundle was built
//! with. Items upserted through the gateway's `CatalogService` arrive through the
//! cluster's change log (`recsys-catalog-log`): with etcd, the node follows every
//! shard's part of it from the revision its bundle version already contains
//! (`manifest.log_revision`) and keeps each upserted item's item-side row in an
//! overlay that wins over the bundle's table, so a new item is scored with its
//! own features rather than refused as unknown. Everything that belongs to one
//! version (ranker, overlay, applied revision) lives in [`ServingRanker`], so a
//! node serving two versions side by side keeps one of each.
//!
//! Deletes are not applied here: retrieval filters deleted items, and a replica
//! that has not applied a delete yet may still return the item once; scoring it
//! with the features it had keeps that answer complete instead of failing the
//! whole ranking stage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use recsys_catalog_log::{ChangeLog, LogEntry, recv_ready};
use recsys_model::{Ranker, UserContext};
use recsys_proto::v1::item_change_record::Change;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::batcher::{BatchScorer, Outcome};

/// Longest a `Rank` waits for the overlay to reach the revision it asks for.
const MAX_REVISION_WAIT: Duration = Duration::from_secs(1);

/// One bundle version's ranker, with the item changes applied on top of it.
#[derive(Debug)]
pub struct ServingRanker {
    ranker: Ranker,
    /// The bundle version the ranker came in (what the node registers as).
    bundle_version: String,
    /// Item-side rows of items upserted after the version was built.
    overlay: RwLock<HashMap<u64, Vec<f32>>>,
    /// The last change-log revision applied (the version's own at first).
    applied: watch::Sender<u64>,
    /// Whether a follower applies the log: without one, nothing is waited for.
    following: AtomicBool,
}

impl ServingRanker {
    /// `ranker` of `bundle_version`, which contains the log up to `log_revision`.
    pub fn new(ranker: Ranker, bundle_version: String, log_revision: u64) -> Self {
        Self {
            ranker,
            bundle_version,
            overlay: RwLock::new(HashMap::new()),
            applied: watch::Sender::new(log_revision),
            following: AtomicBool::new(false),
        }
    }

    /// The bundle's ranker.
    pub fn ranker(&self) -> &Ranker {
        &self.ranker
    }

    /// The bundle version.
    pub fn bundle_version(&self) -> &str {
        &self.bundle_version
    }

    /// The last change-log revision applied.
    pub fn revision(&self) -> u64 {
        *self.applied.borrow()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Vec<f32>>> {
        // Writers only insert whole rows, so a poisoned lock is still consistent.
        self.overlay.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the upserts of `entries` (in revision order) and publishes the
    /// last revision. An upsert whose features the ranker refuses is logged and
    /// skipped, keeping any row the item had; the others still apply.
    pub fn apply(&self, entries: &[LogEntry]) {
        let Some(last) = entries.iter().map(|e| e.revision).max() else {
            return;
        };
        if last <= self.revision() {
            return;
        }
        let mut rows = Vec::new();
        for entry in entries.iter().filter(|e| e.revision > self.revision()) {
            for change in &entry.record.changes {
                let Some(Change::Upsert(item)) = &change.change else {
                    continue;
                };
                let features = crate::service::feature_inputs(&item.features);
                match self.ranker.item_row(item.item_id, &features) {
                    Ok(row) => rows.push((item.item_id, row)),
                    Err(error) => {
                        crate::metrics::refused_change();
                        tracing::warn!(revision = entry.revision, %error, "item features refused");
                    }
                }
            }
        }
        let upserts = rows.len();
        let items = {
            let mut overlay = self.overlay.write().unwrap_or_else(|e| e.into_inner());
            overlay.extend(rows);
            overlay.len()
        };
        self.applied.send_replace(last);
        crate::metrics::log_revision(last);
        tracing::debug!(revision = last, upserts, items, "item changes applied");
    }

    /// Waits until the overlay holds every change up to `wanted` (the revision
    /// the retrieval replicas answered from), at most until `deadline` or
    /// [`MAX_REVISION_WAIT`]. Answers whether it got there; a node that did not
    /// still scores, and items it does not know are refused by name.
    pub async fn wait_for(&self, wanted: u64, deadline: Option<Instant>) -> bool {
        if self.revision() >= wanted {
            return true;
        }
        if !self.following.load(Ordering::Relaxed) {
            return false;
        }
        let limit = Instant::now() + MAX_REVISION_WAIT;
        let until = deadline.map_or(limit, |deadline| deadline.min(limit));
        let mut applied = self.applied.subscribe();
        matches!(
            tokio::time::timeout_at(
                until.into(),
                applied.wait_for(|revision| *revision >= wanted)
            )
            .await,
            Ok(Ok(_))
        )
    }
}

impl BatchScorer for ServingRanker {
    fn score_batch(
        &self,
        requests: &[(&UserContext, &[u64])],
        allow_unknown_items: bool,
    ) -> Vec<Outcome> {
        let overlay = self.read();
        self.ranker
            .score_batch_with(requests, allow_unknown_items, &overlay)
    }
}

/// Follows every shard's part of `log` after the version's revision and
/// applies it to `serving`, until `shutdown` (or the version is dropped).
pub fn follow(log: ChangeLog, serving: Arc<ServingRanker>, shutdown: CancellationToken) {
    let after = serving.revision();
    serving.following.store(true, Ordering::Relaxed);
    let mut entries = log.follow_all(after, shutdown);
    let serving = Arc::downgrade(&serving);
    tracing::info!(after, "following the item change log");
    crate::metrics::log_revision(after);
    tokio::spawn(async move {
        while let Some(batch) = recv_ready(&mut entries).await {
            // A version no longer served stops following.
            let Some(serving) = serving.upgrade() else {
                return;
            };
            // Encoding a row is a few table look-ups per feature: cheap enough
            // for a runtime worker even for the largest entry.
            serving.apply(&batch);
        }
    });
}
