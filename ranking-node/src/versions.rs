//! The rankers of the bundle versions a ranking node serves, and how it moves
//! between them: the retrieval node's scheme (`recsys_discovery::versions`),
//! with a ranker per version. A `Rank` naming a version is scored by that
//! version's ranker; the batcher takes the ranker with each request, so two
//! versions share the scoring threads.

use std::path::Path;
use std::sync::Arc;

use recsys_bundle::{BundleSource, Manifest};
use recsys_discovery::versions::drive;
use recsys_discovery::{
    AnnounceOptions, Announcer, ClusterView, Gate, Role, VersionOptions, VersionSet,
};
use recsys_model::Ranker;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::error::RankerLoadError;

/// One version's ranker, as served.
#[derive(Debug)]
pub struct ServedRanker {
    /// The ranker.
    pub ranker: Arc<Ranker>,
    /// Shards of the version's retrieval index (for the retire gate).
    pub shard_count: u32,
}

/// The ranker, once its files pass their checksums.
fn load(dir: &Path) -> Result<ServedRanker, RankerLoadError> {
    let manifest = Manifest::load(dir)?;
    // Every file of the ranker directory against its recorded checksum, before
    // candle or the feature readers see a byte: a corrupt file is named here.
    recsys_bundle::verify_files(dir, &manifest, recsys_bundle::FileSet::Ranker)?;
    let files = manifest
        .ranker_files(dir)
        .ok_or_else(|| RankerLoadError::NoRanker(dir.join(recsys_bundle::MANIFEST_FILE)))?;
    let ranker = Ranker::load(&files)?;
    tracing::info!(
        version = ranker.version(),
        bundle_version = %manifest.version,
        items = ranker.items(),
        "ranker ready"
    );
    Ok(ServedRanker {
        ranker: Arc::new(ranker),
        shard_count: manifest.shard_count,
    })
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
/// the node has a ranker to score with.
pub async fn start(
    set: Arc<VersionSet<ServedRanker>>,
    source: BundleSource,
    announce: Option<AnnounceOptions>,
    announcer: Arc<Announcer>,
    options: VersionOptions,
    serving: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let etcd = announce
        .as_ref()
        .map(|a| (a.etcd.clone(), a.cluster.clone()));
    let polled = source.clone();
    let desired = recsys_discovery::desired_version::follow_desired(
        move || polled.current_version(),
        etcd.clone(),
        options.poll,
        shutdown.clone(),
    )
    .await;
    if desired.borrow().is_none()
        && let Err(error) = source.resolve()
    {
        tracing::error!(%error, "no bundle version to serve");
        set.fail_start(error.to_string());
    }
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
    let load = move |version: &str| -> Result<ServedRanker, LocateOrLoad> {
        let dir = source.locate(version)?;
        Ok(load(&dir)?)
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
