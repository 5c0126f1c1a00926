//! The bundle versions a gateway holds, and when it switches between them.
//!
//! Every version has its own [`BundleState`] (manifest, catalog, query model,
//! the ranker's request features), loaded beside the served one when the
//! desired version changes (etcd's `/recsys/{cluster}/desired_version`, or the
//! bundle root's `CURRENT`). The gateway switches, unlike its nodes, only once
//! the cluster can answer in the new version: every shard has a serving
//! replica of it, and, when the version has a ranker and the cluster ranks,
//! so does the ranking pool (`ClusterView::can_serve` on that version's view).
//! A request picks its version once, at its start (`VersionSet::get`), and uses
//! it for the query encoding, the fan-out (each `Search` names the version, so
//! a node holding two answers from the right one), ranking and the catalog's
//! names; the answer's `bundle_version` says which.

use std::sync::Arc;

use recsys_bundle::{BundleError, BundleSource};
use recsys_discovery::versions::drive;
use recsys_discovery::{Gate, VersionOptions, VersionSet};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::bundle_filter::{BundleId, VersionViews};
use crate::bundle_state::BundleState;
use crate::catalog_service::ItemLogOptions;

/// Starts following the desired version into `set`. `views` are the routing
/// views per held version (`bundle_filter`), `bundles` where the held versions
/// are published for it (primary first), `serving` whether the gateway has a
/// version to answer with. With `item_log`, each loaded version names the
/// items changed since it was built (`catalog_overlay`), following the log
/// from its own revision.
#[allow(clippy::too_many_arguments)]
pub async fn start(
    set: Arc<VersionSet<BundleState>>,
    source: BundleSource,
    item_log: Option<ItemLogOptions>,
    options: VersionOptions,
    views: watch::Receiver<Arc<VersionViews>>,
    bundles: watch::Sender<Vec<BundleId>>,
    serving: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let etcd = item_log
        .as_ref()
        .map(|log| (log.etcd.clone(), log.cluster.clone()));
    let polled = source.clone();
    let desired = set
        .follow_desired(
            move || polled.current_version(),
            || source.resolve(),
            etcd,
            options.poll,
            shutdown.clone(),
        )
        .await;
    let gate_set = set.clone();
    let switch_gate: Gate = Arc::new(move |version: &str| {
        let Some((_, next)) = gate_set
            .loaded()
            .into_iter()
            .find(|(held, _)| held == version)
        else {
            return false;
        };
        let views = views.borrow();
        // Ranking is needed of the new version if the cluster ranks now.
        let ranks_now = gate_set
            .primary_version()
            .is_some_and(|primary| !views.get(&primary).ranking.is_empty());
        let manifest = &next.manifest;
        views.get(version).can_serve(
            version,
            manifest.shard_count,
            manifest.ranker.is_some() && ranks_now,
        )
    });
    let retire_now: Gate = Arc::new(|_| true);
    let handle = tokio::runtime::Handle::current();
    let follow_shutdown = shutdown.clone();
    let load = move |version: &str| -> Result<BundleState, BundleError> {
        let located = source.locate(version)?;
        let mut state = BundleState::load(&located.dir)?;
        state.pin = located.pin;
        // With etcd the version also names the items changed since it was
        // built; the loader runs on the blocking pool, so the follower is
        // spawned on the gateway's runtime explicitly.
        if let Some(options) = &item_log {
            let _entered = handle.enter();
            crate::catalog_overlay::follow(
                options.clone(),
                &mut state,
                follow_shutdown.child_token(),
            );
        }
        tracing::info!(
            version = %state.manifest.version,
            shards = state.manifest.shard_count,
            users = state.query_model.as_ref().map_or(0, |m| m.known_users()),
            "gateway bundle ready"
        );
        Ok(state)
    };
    let changed = move |set: &VersionSet<BundleState>| {
        let primary = set.primary_version();
        serving.send_replace(primary.is_some());
        let mut held: Vec<BundleId> = set
            .loaded()
            .iter()
            .map(|(version, state)| BundleId {
                version: version.clone(),
                shard_count: state.manifest.shard_count,
                has_ranker: state.manifest.ranker.is_some(),
            })
            .collect();
        // Primary first: nodes that name no version are taken to serve it.
        held.sort_by_key(|bundle| Some(&bundle.version) != primary.as_ref());
        crate::metrics::bundle_versions(primary.as_deref(), held.len());
        bundles.send_replace(held);
    };
    drive(
        set,
        desired,
        load,
        options.driver(switch_gate, retire_now),
        changed,
        shutdown,
    );
}
