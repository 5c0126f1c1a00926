//! The names of items changed since the gateway's bundle version was built.
//!
//! The bundle's catalog names the items it was built with. With etcd, the
//! gateway follows every shard's part of the cluster's item change log
//! (`recsys-catalog-log`) from the revision its version contains
//! (`manifest.log_revision`) and keeps an overlay on the catalog: the name of
//! each upserted item, and deleted items' names withdrawn. It lives in
//! [`crate::bundle_state::BundleState`], so each bundle version the gateway
//! serves has its own, started from its own revision.
//!
//! An answer holds items up to the highest revision its shards had applied
//! (`SearchResponse.log_revision`); before naming them the gateway waits, within
//! the request's budget, until its overlay is there too, so a new item in an
//! answer has its name.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use recsys_bundle::Catalog;
use recsys_catalog_log::{ChangeLog, LogEntry, recv_ready};
use recsys_proto::v1::item_change_record::Change;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bundle_state::BundleState;
use crate::catalog_service::ItemLogOptions;

/// Longest a request waits for the overlay to reach its answer's revision.
const MAX_REVISION_WAIT: Duration = Duration::from_secs(1);

/// Item names changed after the bundle version was built; `None` marks a
/// deleted item, whose catalog name no longer applies.
#[derive(Debug)]
pub struct CatalogOverlay {
    names: RwLock<HashMap<u64, Option<String>>>,
    /// The last change-log revision applied (the version's own at first).
    applied: watch::Sender<u64>,
    /// Whether a follower applies the log: without one, nothing is waited for.
    following: AtomicBool,
}

impl CatalogOverlay {
    /// An empty overlay on a version containing the log up to `log_revision`.
    pub fn new(log_revision: u64) -> Self {
        Self {
            names: RwLock::new(HashMap::new()),
            applied: watch::Sender::new(log_revision),
            following: AtomicBool::new(false),
        }
    }

    /// The last change-log revision applied.
    pub fn revision(&self) -> u64 {
        *self.applied.borrow()
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<u64, Option<String>>> {
        // Writers only insert whole entries, so a poisoned lock is still consistent.
        self.names.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Names on top of `catalog`, for one answer.
    pub fn names<'a>(&'a self, catalog: &'a Catalog) -> Names<'a> {
        Names {
            catalog,
            overlay: Some(self.read()),
        }
    }

    /// Applies `entries` (in revision order) and publishes the last revision.
    pub fn apply(&self, entries: &[LogEntry]) {
        let applied = self.revision();
        let Some(last) = entries.iter().map(|e| e.revision).max() else {
            return;
        };
        if last <= applied {
            return;
        }
        {
            let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries.iter().filter(|e| e.revision > applied) {
                for change in &entry.record.changes {
                    match &change.change {
                        Some(Change::Upsert(item)) => {
                            names.insert(item.item_id, Some(item.name.clone()));
                        }
                        Some(Change::DeleteItemId(id)) => {
                            names.insert(*id, None);
                        }
                        None => {}
                    }
                }
            }
        }
        self.applied.send_replace(last);
        crate::metrics::log_revision(last);
    }

    /// Waits until the overlay holds every change up to `wanted`, at most until
    /// `deadline` or [`MAX_REVISION_WAIT`]; answers whether it got there. An
    /// overlay that did not still names what it has.
    pub async fn wait_for(&self, wanted: u64, deadline: Instant) -> bool {
        if self.revision() >= wanted {
            return true;
        }
        if !self.following.load(Ordering::Relaxed) {
            return false;
        }
        let until = deadline.min(Instant::now() + MAX_REVISION_WAIT);
        let mut applied = self.applied.subscribe();
        matches!(
            tokio::time::timeout_at(until, applied.wait_for(|revision| *revision >= wanted)).await,
            Ok(Ok(_))
        )
    }
}

/// The catalog and the overlay read together for one answer.
pub struct Names<'a> {
    catalog: &'a Catalog,
    overlay: Option<RwLockReadGuard<'a, HashMap<u64, Option<String>>>>,
}

impl<'a> Names<'a> {
    /// The catalog alone (no change log).
    pub fn of_catalog(catalog: &'a Catalog) -> Self {
        Self {
            catalog,
            overlay: None,
        }
    }

    /// Whether the change log deleted the item since the version was built.
    pub fn deleted(&self, item_id: u64) -> bool {
        self.overlay
            .as_ref()
            .is_some_and(|overlay| matches!(overlay.get(&item_id), Some(None)))
    }

    /// The item's name (empty when it has none, or was deleted).
    pub fn name(&self, item_id: u64) -> &str {
        if let Some(overlay) = &self.overlay
            && let Some(changed) = overlay.get(&item_id)
        {
            return changed.as_deref().unwrap_or_default();
        }
        self.catalog.name(item_id).unwrap_or_default()
    }
}

/// Follows every shard's part of the log `options` names after the version's
/// revision and applies it to `bundle`'s overlay, until `shutdown`, which the
/// bundle's own guard cancels when the version is dropped. Spawns on the
/// current runtime.
pub fn follow(options: ItemLogOptions, bundle: &mut BundleState, shutdown: CancellationToken) {
    let overlay = bundle.overlay.clone();
    let after = overlay.revision();
    overlay.following.store(true, Ordering::Relaxed);
    bundle.follow = Some(shutdown.clone().drop_guard());
    let overlay = Arc::downgrade(&overlay);
    tokio::spawn(async move {
        let log = match ChangeLog::connect(options.etcd, &options.cluster).await {
            Ok(log) => log,
            Err(error) => {
                tracing::error!(%error, "cannot follow the item change log: items changed since the bundle keep no names");
                return;
            }
        };
        tracing::info!(after, "following the item change log");
        let mut entries = log.follow_all(after, shutdown);
        while let Some(batch) = recv_ready(&mut entries).await {
            // A version no longer served stops following.
            let Some(overlay) = overlay.upgrade() else {
                return;
            };
            overlay.apply(&batch);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_proto::v1::{ItemChangeRecord, ItemUpsert, ShardChangeRecord};

    fn entry(revision: u64, changes: Vec<Change>) -> LogEntry {
        LogEntry {
            revision,
            record: ShardChangeRecord {
                changes: changes
                    .into_iter()
                    .map(|change| ItemChangeRecord {
                        change: Some(change),
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    fn upsert(id: u64, name: &str) -> Change {
        Change::Upsert(ItemUpsert {
            item_id: id,
            name: name.into(),
            ..Default::default()
        })
    }

    const SETTLE: Duration = Duration::from_secs(600);

    #[tokio::test]
    async fn upserts_name_deletes_unname_and_old_revisions_are_skipped() {
        let catalog = Catalog::from_pairs([(1, "one".to_string()), (2, "two".to_string())]);
        let overlay = CatalogOverlay::new(10);
        overlay.apply(&[entry(9, vec![upsert(1, "stale")])]);
        assert_eq!(overlay.names(&catalog).name(1), "one");
        overlay.apply(&[
            entry(11, vec![upsert(7, "seven"), Change::DeleteItemId(2)]),
            entry(12, vec![upsert(1, "uno")]),
        ]);
        assert_eq!(overlay.revision(), 12);
        let names = overlay.names(&catalog);
        assert_eq!(
            [names.name(1), names.name(2), names.name(7), names.name(8)],
            ["uno", "", "seven", ""]
        );
        drop(names);
        assert!(overlay.wait_for(12, Instant::now()).await);
        // Without a follower nothing is waited for.
        assert!(!overlay.wait_for(13, Instant::now() + SETTLE).await);
        overlay.following.store(true, Ordering::Relaxed);
        assert!(
            !overlay
                .wait_for(13, Instant::now() + Duration::from_millis(5))
                .await
        );
    }
}
