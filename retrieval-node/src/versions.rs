//! The bundle versions a retrieval node serves, and how it moves between them.
//!
//! Each loaded version is a [`ServedShard`]: its own [`LiveShard`] (the version's
//! packed shard plus the item changes since the revision that version's manifest
//! records), following the change log on its own, so two versions served side
//! by side during a rollout each apply the log from their own starting point.
//! The node's desired version comes from etcd (`recsys rollout`) or its bundle
//! root's `CURRENT` (`recsys_discovery::desired_version::follow_desired`), and
//! `recsys_discovery::versions::drive` loads, switches and drops versions.
//! With etcd, an old version is dropped only once every shard of the cluster
//! serves the new one (so no gateway can still need it) and nothing has asked
//! for it for `retire_after`.

use std::path::Path;
use std::sync::Arc;

use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::sharding::shard_of;
use recsys_bundle::{BundleError, BundleSource, Manifest};
use recsys_catalog_log::ChangeLog;
use recsys_discovery::versions::drive;
use recsys_discovery::{
    AnnounceOptions, Announcer, ClusterView, Role, VersionOptions, VersionSet, VersionState,
};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{LiveShard, LoadMode, ShardIndex};
use recsys_index::ShardAttributes;

/// One version of the shard, as served.
#[derive(Debug)]
pub struct ServedShard {
    /// The shard with the item changes applied so far.
    pub live: Arc<LiveShard>,
    /// The last change-log revision applied to it.
    pub applied: watch::Receiver<u64>,
    /// Whether the version has a ranker (a gateway then needs ranking nodes of
    /// it too before it switches).
    pub has_ranker: bool,
    /// The attributes of the shard's items, when the bundle has them: what
    /// filtered searches test, with the vector blocks of their values.
    pub attributes: Option<Arc<ShardAttributes>>,
    /// Stops following the change log when the version is dropped.
    _follow: Option<DropGuard>,
    /// Keeps the version's files in the bundle cache (a root in an object
    /// store) while it is served; released when the version is retired.
    _pin: recsys_bundle::VersionPin,
}

/// Checks the shard's file against the manifest's size and checksum, then opens
/// it: a torn, truncated or flipped file is refused here, naming the file, before
/// usearch maps a byte of it. Reading the file through also brings it into the
/// page cache that `view` and `packed` then map.
fn open_verified(dir: &Path, shard: u32, mode: LoadMode) -> Result<Opened, BundleError> {
    let manifest = recsys_bundle::Manifest::load(dir)?;
    let report = recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Shard(shard))?;
    tracing::info!(
        shard,
        version = %manifest.version,
        bytes = report.bytes,
        verify_ms = report.elapsed.as_millis() as u64,
        "shard file verified"
    );
    let index = ShardIndex::open_with(dir, shard, mode)?;
    log_depths(&index);
    // Changes applied on top start after the revision the version contains.
    let live = LiveShard::new(index, manifest.log_revision)
        .map_err(|e| BundleError::index(dir.join(recsys_bundle::shard_file(shard)), e))?;
    // The whole file is checked; only this shard's rows are kept.
    let shard_count = manifest.shard_count;
    let attributes = match &manifest.attributes {
        Some(file) => {
            let path = Manifest::resolve(dir, file);
            let rows = ItemAttributes::load_where(&path, |id| shard_of(id, shard_count) == shard)?;
            let started = std::time::Instant::now();
            let attributes = ShardAttributes::new(rows, live.base())
                .map_err(|e| BundleError::index(&path, e))?;
            tracing::info!(
                shard,
                blocks = attributes.blocks().len(),
                block_items = attributes.blocks().items(),
                ms = started.elapsed().as_millis() as u64,
                "attribute value blocks built"
            );
            Some(Arc::new(attributes))
        }
        None => None,
    };
    Ok(Opened {
        live,
        has_ranker: manifest.ranker.is_some(),
        attributes,
    })
}

/// Says at load what the shard's measured search depths promise: the beam
/// for 100 results at 0.95, and any `k` whose recall tops out below a target
/// (a graph that needs more links, `--connectivity`), once per shard.
fn log_depths(index: &ShardIndex) {
    let Some(depths) = index.search_depths() else {
        tracing::info!(
            shard = index.shard(),
            "no measured search depths (a bundle built before them): every search uses the bundle's beam"
        );
        return;
    };
    tracing::info!(
        shard = index.shard(),
        queries = depths.queries,
        beam_k100_r095 = index.depth_for(100, Some(0.95)),
        fixed_beam = index.expansion_search(),
        "search depths measured by the builder"
    );
    // Below the default target is worth a warning; below 0.99 only a note.
    let topping_out = |below: u16| -> Vec<String> {
        depths
            .rows
            .iter()
            .filter(|row| row.best_permille > 0 && row.best_permille < below)
            .map(|row| format!("k {}: {:.3}", row.k, f64::from(row.best_permille) / 1000.0))
            .collect()
    };
    let default_target = (recsys_proto::limits::DEFAULT_RECALL_TARGET * 1000.0).round() as u16;
    let short = topping_out(default_target);
    let below_highest = topping_out(990);
    if !short.is_empty() {
        tracing::warn!(
            shard = index.shard(),
            best_recall = %short.join(", "),
            "recall stops growing below the default target at these k on this shard's graph; searches aiming higher use the beam where it stopped (a bundle built before the builder inserted a random skeleton first gets a better connected graph when rebuilt; else try a larger --connectivity)"
        );
    } else if !below_highest.is_empty() {
        tracing::info!(
            shard = index.shard(),
            best_recall = %below_highest.join(", "),
            "recall stops growing below 0.99 at these k on this shard's graph"
        );
    }
}

/// A version's shard as [`open_verified`] opened it.
struct Opened {
    live: LiveShard,
    has_ranker: bool,
    attributes: Option<Arc<ShardAttributes>>,
}

/// What [`start`] needs.
pub struct VersionsSetup {
    /// Where versions are found.
    pub source: BundleSource,
    /// The shard served.
    pub shard: u32,
    /// How shard files are opened.
    pub mode: LoadMode,
    /// Registration in etcd, when the node has one.
    pub announce: Option<AnnounceOptions>,
    /// The node's announcer.
    pub announcer: Arc<Announcer>,
    /// The change log, with etcd.
    pub change_log: Option<ChangeLog>,
    /// Switch mode, retirement, polling.
    pub options: VersionOptions,
    /// [`crate::NodeConfig::fold_min_items`].
    pub fold_min_items: usize,
}

/// Starts following the desired version into `set`; `serving` says whether the
/// node has a version to answer from (its health).
pub async fn start(
    set: Arc<VersionSet<ServedShard>>,
    setup: VersionsSetup,
    serving: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let VersionsSetup {
        source,
        shard,
        mode,
        announce,
        announcer,
        change_log,
        options,
        fold_min_items,
    } = setup;
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

    // With etcd, the cluster's registrations say when every shard serves the
    // new version; without, the node can only go by the requests it gets.
    let cluster: Option<watch::Receiver<Arc<ClusterView>>> = etcd.map(|(etcd, cluster)| {
        recsys_discovery::desired_version::cluster_view(etcd, cluster, shutdown.clone())
    });
    let replace_view = cluster.clone();
    let gate_set = set.clone();
    let retire_gate: recsys_discovery::Gate = Arc::new(move |desired: &str| {
        let Some(view) = &cluster else {
            return true;
        };
        let loaded = gate_set.loaded();
        let Some((_, served)) = loaded.iter().find(|(version, _)| version == desired) else {
            return false;
        };
        let base = served.live.base();
        view.borrow()
            .can_serve(desired, base.shard_count(), served.has_ranker)
    });

    // `--switch replace`: the replicas of the shard take turns.
    let replace_gate: recsys_discovery::Gate = match (&replace_view, &announce) {
        (Some(view), Some(me)) => {
            let (view, me, turn_set) = (view.clone(), me.node_id.clone(), set.clone());
            let retire_after = options.retire_after;
            Arc::new(move |version: &str| {
                let view = view.borrow();
                let peers = view.shards.get(shard as usize).cloned().unwrap_or_default();
                let shard_count = peers
                    .iter()
                    .filter(|peer| peer.serves_version(version))
                    .find_map(|peer| peer.shard_count_of(version))
                    .unwrap_or(view.shard_count);
                let ready = view.can_serve(version, shard_count, !view.ranking.is_empty());
                let old_idle = turn_set
                    .primary_version()
                    .and_then(|old| turn_set.idle_for(&old))
                    .is_none_or(|idle| idle >= retire_after);
                recsys_discovery::versions::replace_turn(&me, &peers, version, ready, old_idle)
            })
        }
        _ => Arc::new(|_| true),
    };
    let handle = tokio::runtime::Handle::current();
    let follow_shutdown = shutdown.clone();
    let load = move |version: &str| -> Result<ServedShard, BundleError> {
        let located = source.locate(version)?;
        let Opened {
            live,
            has_ranker,
            attributes,
        } = open_verified(&located.dir, shard, mode)?;
        let live = Arc::new(live);
        let (applied, applied_now) = watch::channel(live.revision());
        let follow = change_log.as_ref().map(|log| {
            let stop = follow_shutdown.child_token();
            let _entered = handle.enter();
            crate::item_changes::follow(
                log.clone(),
                live.clone(),
                applied,
                fold_min_items,
                stop.clone(),
            );
            stop.drop_guard()
        });
        Ok(ServedShard {
            live,
            applied: applied_now,
            has_ranker,
            attributes,
            _follow: follow,
            _pin: located.pin,
        })
    };

    let registered = std::sync::atomic::AtomicBool::new(false);
    let changed = move |set: &VersionSet<ServedShard>| {
        let primary = set.primary();
        serving.send_replace(primary.is_some());
        let states = registration_states(set);
        let primary_name = primary.as_ref().map(|(v, _)| v.clone()).unwrap_or_default();
        if let Some((version, served)) = &primary {
            let base = served.live.base();
            crate::metrics::log_revision(shard, served.live.revision());
            if !registered.swap(true, std::sync::atomic::Ordering::Relaxed) {
                announcer.set_versions(version, states.clone());
                announcer.register(
                    Role::Retrieval,
                    Some(base.shard()),
                    Some(base.shard_count()),
                    version,
                );
                return;
            }
        }
        announcer.set_versions(&primary_name, states);
    };
    let switch_now: recsys_discovery::Gate = Arc::new(|_| true);
    let mut driver = options.driver(switch_now, retire_gate);
    driver.replace_gate = replace_gate;
    drive(set, desired, load, driver, changed, shutdown);
}

/// The versions to register: each with its shard count when loaded.
pub fn registration_states(set: &VersionSet<ServedShard>) -> Vec<VersionState> {
    let loaded = set.loaded();
    set.states()
        .into_iter()
        .map(|mut state| {
            if let Some((_, served)) = loaded.iter().find(|(v, _)| *v == state.version) {
                state.shard_count = Some(served.live.base().shard_count());
            }
            state
        })
        .collect()
}
