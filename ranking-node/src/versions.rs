//! The rankers of the bundle versions a ranking node serves, and how it moves
//! between them: the retrieval node's scheme (`recsys_discovery::versions`),
//! with a ranker per version. A `Rank` naming a version is scored by that
//! version's ranker; the batcher takes the ranker with each request, so two
//! versions share the scoring threads.
//!
//! Each loaded version is a [`ServingRanker`]: its ranker plus the item
//! features upserted since the revision that version's manifest records,
//! following the change log on its own (`item_overlay.rs`), so two versions
//! served side by side during a rollout each apply the log from their own
//! starting point, and a dropped version stops following.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use recsys_bundle::{BundleSource, Manifest};
use recsys_catalog_log::ChangeLog;
use recsys_discovery::versions::drive;
use recsys_discovery::{
    AnnounceOptions, Announcer, ClusterView, Gate, Role, VersionOptions, VersionSet,
};
use recsys_model::Ranker;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::RankerLoadError;
use crate::item_overlay::ServingRanker;

/// One version's ranker, as served.
#[derive(Debug)]
pub struct ServedRanker {
    /// The ranker with the item changes applied so far.
    pub ranker: Arc<ServingRanker>,
    /// The version's ranker variants by name (A/B arms beside `ranker`, the
    /// `default`), each with its own item changes applied.
    pub variants: BTreeMap<String, Arc<ServingRanker>>,
    /// Shards of the version's retrieval index (for the retire gate).
    pub shard_count: u32,
    /// Stops following the change log when the version is dropped.
    _follow: Option<DropGuard>,
    /// Keeps the version's files in the bundle cache (a root in an object
    /// store) while it is served; released when the version is retired.
    _pin: recsys_bundle::VersionPin,
}

/// The ranker, once its files pass their checksums, and the shard count of
/// its version. Item changes apply on top from the revision the version
/// contains (`manifest.log_revision`).
fn load(dir: &Path) -> Result<Loaded, RankerLoadError> {
    let manifest = Manifest::load(dir)?;
    // Every file of the ranker directories against its recorded checksum, before
    // candle or the feature readers see a byte: a corrupt file is named here.
    recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Ranker)?;
    let mut rankers = Vec::new();
    for variant in manifest.variant_names() {
        let files = manifest
            .variant_files(dir, variant)
            .ok_or_else(|| RankerLoadError::NoRanker(dir.join(recsys_bundle::MANIFEST_FILE)))?;
        let ranker = Ranker::load(&files)?;
        tracing::info!(
            variant,
            version = ranker.version(),
            bundle_version = %manifest.version,
            items = ranker.items(),
            log_revision = manifest.log_revision,
            "ranker ready"
        );
        let serving = ServingRanker::new(ranker, manifest.version.clone(), manifest.log_revision);
        rankers.push((variant.to_string(), serving));
    }
    if rankers.is_empty() {
        return Err(RankerLoadError::NoRanker(
            dir.join(recsys_bundle::MANIFEST_FILE),
        ));
    }
    let default = rankers.remove(0).1;
    Ok(Loaded {
        default,
        variants: rankers,
        shard_count: manifest.shard_count,
    })
}

/// A version's rankers as loaded, before they follow the change log.
struct Loaded {
    default: ServingRanker,
    variants: Vec<(String, ServingRanker)>,
    shard_count: u32,
}

/// Why a version could not be loaded: the bundle's own error or the ranker's.
#[derive(Debug, thiserror::Error)]
enum LocateOrLoad {
    #[error(transparent)]
    Bundle(#[from] recsys_bundle::BundleError),
    #[error(transparent)]
    Load(#[from] RankerLoadError),
}

/// Starts following the desired version into `set`; `serving` says whether
/// the node has a ranker to score with. With `change_log`, each loaded version
/// follows it from its own revision.
#[allow(clippy::too_many_arguments)] // One call site, each argument a different thing.
pub async fn start(
    set: Arc<VersionSet<ServedRanker>>,
    source: BundleSource,
    announce: Option<AnnounceOptions>,
    announcer: Arc<Announcer>,
    change_log: Option<ChangeLog>,
    options: VersionOptions,
    serving: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let etcd = announce
        .as_ref()
        .map(|a| (a.etcd.clone(), a.cluster.clone()));
    let polled = source.clone();
    let desired = set
        .follow_desired(
            move || polled.current_version(),
            || source.resolve(),
            etcd.clone(),
            options.poll,
            shutdown.clone(),
        )
        .await;
    let cluster: Option<watch::Receiver<Arc<ClusterView>>> = etcd.map(|(etcd, cluster)| {
        recsys_discovery::desired_version::cluster_view(etcd, cluster, shutdown.clone())
    });
    // `--switch replace`: the ranking nodes take turns.
    let replace_gate: Gate = match (&cluster, &announce) {
        (Some(view), Some(me)) => {
            let (view, me, turn_set) = (view.clone(), me.node_id.clone(), set.clone());
            let retire_after = options.retire_after;
            Arc::new(move |version: &str| {
                let view = view.borrow();
                let ready = view.can_serve(version, view.shard_count, true);
                let old_idle = turn_set
                    .primary_version()
                    .and_then(|old| turn_set.idle_for(&old))
                    .is_none_or(|idle| idle >= retire_after);
                recsys_discovery::replace_turn(&me, &view.ranking, version, ready, old_idle)
            })
        }
        _ => Arc::new(|_| true),
    };
    let gate_set = set.clone();
    let retire_gate: Gate = Arc::new(move |desired: &str| {
        let Some(view) = &cluster else {
            return true;
        };
        let loaded = gate_set.loaded();
        let Some((_, served)) = loaded.iter().find(|(version, _)| version == desired) else {
            return false;
        };
        view.borrow().can_serve(desired, served.shard_count, true)
    });
    let handle = tokio::runtime::Handle::current();
    let follow_shutdown = shutdown.clone();
    let load = move |version: &str| -> Result<ServedRanker, LocateOrLoad> {
        let located = source.locate(version)?;
        let loaded = load(&located.dir)?;
        let serving = Arc::new(loaded.default);
        let variants: BTreeMap<String, Arc<ServingRanker>> = loaded
            .variants
            .into_iter()
            .map(|(name, ranker)| (name, Arc::new(ranker)))
            .collect();
        // With etcd the version also applies upserted items' features, in
        // every variant; the loader runs on the blocking pool, so the
        // followers are spawned on the node's runtime explicitly.
        let follow = change_log.as_ref().map(|log| {
            let stop = follow_shutdown.child_token();
            let _entered = handle.enter();
            for ranker in std::iter::once(&serving).chain(variants.values()) {
                crate::item_overlay::follow(log.clone(), ranker.clone(), stop.clone());
            }
            stop.drop_guard()
        });
        Ok(ServedRanker {
            ranker: serving,
            variants,
            shard_count: loaded.shard_count,
            _follow: follow,
            _pin: located.pin,
        })
    };
    let registered = std::sync::atomic::AtomicBool::new(false);
    let changed = move |set: &VersionSet<ServedRanker>| {
        let primary = set.primary_version();
        serving.send_replace(primary.is_some());
        let primary = primary.unwrap_or_default();
        announcer.set_versions(&primary, set.states());
        if !primary.is_empty() && !registered.swap(true, std::sync::atomic::Ordering::Relaxed) {
            announcer.register(Role::Ranking, None, None, &primary);
        }
    };
    let switch_now: Gate = Arc::new(|_| true);
    let mut driver = options.driver(switch_now, retire_gate);
    driver.replace_gate = replace_gate;
    drive(set, desired, load, driver, changed, shutdown);
}
