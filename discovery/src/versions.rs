//! The bundle versions one server holds, and the task that loads, switches and
//! drops them as the desired version changes.
//!
//! TF Serving's `AspiredVersionsManager` in small: a server holds every version
//! it has loaded in a [`VersionSet`], one of them *primary* (the one that answers
//! requests naming no version). When the desired version changes ([`drive`]), the
//! new one is loaded on the blocking pool *beside* the served one, verified by the
//! caller's loader, and only then made primary, in one atomic pointer swap: a
//! request looks its version up once, at its start, and holds an `Arc` to it, so
//! it is answered by exactly one version even if the swap happens meanwhile. A
//! version that fails to load is recorded as failed (with the loader's reason) and
//! never made primary; the served one stays.
//!
//! The old version is dropped from the set once nothing has asked for it for
//! `retire_after` and the caller's retire gate agrees (a retrieval node with etcd
//! waits until every shard serves the new version, so that no gateway still
//! needs the old one); requests in flight keep it alive through their `Arc`
//! until they end, and then its memory goes.
//!
//! `--switch replace` ([`SwitchMode::Replace`]) drops every loaded version
//! before loading the new one: half the memory, at the price of the node being
//! out of service while it loads (its shard's other replicas answer).

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::{VersionPhase, VersionState};

/// How a server moves to a new version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "flags", derive(clap::ValueEnum))]
pub enum SwitchMode {
    /// Load the new version beside the served one, then switch: no gap in
    /// service, two versions in memory for a while.
    #[default]
    SideBySide,
    /// Drop the served version, then load the new one: one version in memory,
    /// and the node serves nothing while it loads. Only for shards with another
    /// replica to answer meanwhile.
    Replace,
}

/// How a server follows versions: what its flags set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionOptions {
    /// Side by side or in place.
    pub switch: SwitchMode,
    /// How long an old version must go unasked before it is dropped.
    pub retire_after: Duration,
    /// How often a bundle root's `CURRENT` is read (servers without etcd, or
    /// before a first rollout).
    pub poll: Duration,
}

impl Default for VersionOptions {
    fn default() -> Self {
        Self {
            switch: SwitchMode::SideBySide,
            retire_after: Duration::from_secs(5),
            poll: Duration::from_secs(1),
        }
    }
}

impl VersionOptions {
    /// The driver's options, with `switch_gate` and `retire_gate` (and the
    /// replace gate open: set [`DriverOptions::replace_gate`] to take turns).
    pub fn driver(&self, switch_gate: Gate, retire_gate: Gate) -> DriverOptions {
        DriverOptions {
            switch: self.switch,
            retire_after: self.retire_after,
            tick: Duration::from_millis(100),
            switch_gate,
            retire_gate,
            replace_gate: Arc::new(|_| true),
        }
    }
}

/// Why no version could answer a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// Nothing is loaded yet.
    #[error("the bundle is still loading")]
    Loading,
    /// Nothing is loaded, and the last load failed, for this reason.
    #[error("the bundle failed to load: {0}")]
    Failed(String),
    /// The request names a version this server does not hold.
    #[error("bundle version {wanted:?} is not served here (serving {serving:?})")]
    NotServed {
        /// The version asked for.
        wanted: String,
        /// The versions held.
        serving: Vec<String>,
    },
}

/// One loaded version and when a request last used it.
#[derive(Debug)]
struct Loaded<T> {
    value: Arc<T>,
    /// Milliseconds since the set's epoch.
    last_used_ms: AtomicU64,
}

/// What a set holds at one moment; replaced whole on every change.
#[derive(Debug)]
struct Snapshot<T> {
    primary: Option<String>,
    loaded: BTreeMap<String, Arc<Loaded<T>>>,
    /// Every version known: loaded ones, the one loading, failed ones.
    states: BTreeMap<String, VersionState>,
}

impl<T> Clone for Snapshot<T> {
    fn clone(&self) -> Self {
        Self {
            primary: self.primary.clone(),
            loaded: self.loaded.clone(),
            states: self.states.clone(),
        }
    }
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Self {
            primary: None,
            loaded: BTreeMap::new(),
            states: BTreeMap::new(),
        }
    }
}

/// The versions a server holds. Reads are lock-free (one `ArcSwap` load);
/// only [`drive`]'s task writes.
#[derive(Debug)]
pub struct VersionSet<T> {
    snapshot: ArcSwap<Snapshot<T>>,
    epoch: Instant,
}

impl<T> Default for VersionSet<T> {
    fn default() -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            epoch: Instant::now(),
        }
    }
}

impl<T> VersionSet<T> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The version a request uses: `version` when it names one, else the
    /// primary. Call once per request and keep the answer for its whole life.
    pub fn get(&self, version: &str) -> Result<(String, Arc<T>), Unavailable> {
        let snapshot = self.snapshot.load();
        let name = if version.is_empty() {
            match &snapshot.primary {
                Some(primary) => primary.as_str(),
                None => return Err(Self::why_none(&snapshot)),
            }
        } else {
            version
        };
        match snapshot.loaded.get(name) {
            Some(loaded) => {
                loaded.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
                Ok((name.to_string(), loaded.value.clone()))
            }
            None if snapshot.loaded.is_empty() => Err(Self::why_none(&snapshot)),
            None => Err(Unavailable::NotServed {
                wanted: name.to_string(),
                serving: snapshot.loaded.keys().cloned().collect(),
            }),
        }
    }

    fn why_none(snapshot: &Snapshot<T>) -> Unavailable {
        let failed = snapshot
            .states
            .values()
            .rev()
            .find(|state| state.state == VersionPhase::Failed);
        match failed {
            Some(state) => Unavailable::Failed(state.error.clone()),
            None => Unavailable::Loading,
        }
    }

    /// The primary version and its value, if any.
    pub fn primary(&self) -> Option<(String, Arc<T>)> {
        self.get("").ok()
    }

    /// The primary version's name, if any.
    pub fn primary_version(&self) -> Option<String> {
        self.snapshot.load().primary.clone()
    }

    /// Every loaded version and its value, primary or not.
    pub fn loaded(&self) -> Vec<(String, Arc<T>)> {
        self.snapshot
            .load()
            .loaded
            .iter()
            .map(|(name, loaded)| (name.clone(), loaded.value.clone()))
            .collect()
    }

    /// Every version known, with its state: what a node registers and reports.
    pub fn states(&self) -> Vec<VersionState> {
        self.snapshot.load().states.values().cloned().collect()
    }

    fn update(&self, change: impl FnOnce(&mut Snapshot<T>)) {
        let mut next = Snapshot::clone(&self.snapshot.load());
        change(&mut next);
        self.snapshot.store(Arc::new(next));
    }

    /// Adds `value` as `version`, primary if there is none (a server's first
    /// version, or one loaded and served in one step outside [`drive`]).
    pub fn insert(&self, version: &str, value: T, state: VersionState) {
        let loaded = Arc::new(Loaded {
            value: Arc::new(value),
            last_used_ms: AtomicU64::new(self.now_ms()),
        });
        self.update(|snapshot| {
            snapshot.loaded.insert(version.to_string(), loaded);
            snapshot.states.insert(version.to_string(), state);
            snapshot.states.remove("");
            if snapshot.primary.is_none() {
                snapshot.primary = Some(version.to_string());
            }
        });
    }

    /// The version to serve, followed until `shutdown`
    /// ([`crate::desired_version::follow_desired`]: etcd's desired version when
    /// `etcd` is given, else what `current` answers, read every `poll`). When
    /// neither names one at start, `resolve`'s error is recorded with
    /// [`Self::fail_start`], so requests and `Info` say why nothing loads.
    pub async fn follow_desired<R, E: Display>(
        &self,
        current: impl Fn() -> Option<String> + Send + Sync + 'static,
        resolve: impl FnOnce() -> Result<R, E>,
        etcd: Option<(crate::EtcdAccess, String)>,
        poll: Duration,
        shutdown: CancellationToken,
    ) -> watch::Receiver<Option<String>> {
        let desired = crate::desired_version::follow_desired(current, etcd, poll, shutdown).await;
        if desired.borrow().is_none()
            && let Err(error) = resolve()
        {
            tracing::error!(%error, "no bundle version to serve");
            self.fail_start(error.to_string());
        }
        desired
    }

    /// Records that no version could even be named (say the bundle directory
    /// has no manifest), with `error` naming what is wrong: requests and `Info`
    /// then say so instead of "still loading". Cleared by the first version
    /// that loads.
    pub fn fail_start(&self, error: String) {
        self.set_state(VersionState {
            version: String::new(),
            state: VersionPhase::Failed,
            error,
            shard_count: None,
        });
    }

    fn set_state(&self, state: VersionState) {
        self.update(|snapshot| {
            snapshot.states.insert(state.version.clone(), state);
        });
    }

    fn remove(&self, version: &str) {
        self.update(|snapshot| {
            snapshot.loaded.remove(version);
            snapshot.states.remove(version);
            if snapshot.primary.as_deref() == Some(version) {
                snapshot.primary = None;
            }
        });
    }

    fn set_primary(&self, version: &str) {
        self.update(|snapshot| snapshot.primary = Some(version.to_string()));
    }

    /// How long since a request last asked for `version`, if it is loaded.
    pub fn idle_for(&self, version: &str) -> Option<Duration> {
        let snapshot = self.snapshot.load();
        let loaded = snapshot.loaded.get(version)?;
        let used = loaded.last_used_ms.load(Ordering::Relaxed);
        Some(Duration::from_millis(self.now_ms().saturating_sub(used)))
    }
}

/// Whether node `me` may drop its version now to load `version` in place
/// (`--switch replace`), given `peers`, the other registered replicas of its
/// shard (or the other ranking nodes), so that the shard always keeps a
/// replica answering the version gateways use:
///
/// - a peer already serves `version`: wait until the whole cluster can serve
///   it (`cluster_ready`, so gateways switch) and this node's old version has
///   gone unasked (`old_idle`);
/// - no peer serves it yet: go first only if another peer is serving, and this
///   node's id is the smallest of the replicas still to move;
/// - no peer at all: nobody else could answer, so never (the node stays on its
///   version; use side-by-side for a shard without replicas).
pub fn replace_turn(
    me: &str,
    peers: &[crate::NodeRecord],
    version: &str,
    cluster_ready: bool,
    old_idle: bool,
) -> bool {
    let peers: Vec<&crate::NodeRecord> = peers.iter().filter(|p| p.node_id != me).collect();
    if peers.iter().any(|peer| peer.serves_version(version)) {
        return cluster_ready && old_idle;
    }
    let someone_serves = peers.iter().any(|peer| {
        peer.state == crate::NodeState::Serving
            && (peer.versions.is_empty()
                || peer
                    .versions
                    .iter()
                    .any(|v| v.state == VersionPhase::Serving))
    });
    someone_serves && peers.iter().all(|peer| me < peer.node_id.as_str())
}

/// A test the driver asks before it acts, with the version concerned.
pub type Gate = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// How [`drive`] moves between versions.
#[derive(Clone)]
pub struct DriverOptions {
    /// Side by side or in place.
    pub switch: SwitchMode,
    /// How long a version that is neither primary nor desired must go unasked
    /// before it is dropped.
    pub retire_after: Duration,
    /// How often the gates and idle times are looked at again.
    pub tick: Duration,
    /// May the set switch to this (loaded, desired) version now? A gateway waits
    /// until its nodes serve it; nodes switch at once. Not asked for a set's
    /// first version.
    pub switch_gate: Gate,
    /// May versions other than this desired one be dropped now?
    pub retire_gate: Gate,
    /// `--switch replace`: may the served version be dropped now to load this
    /// desired one? Replicas of a shard take turns, so the shard always has one
    /// serving (`replace_turn`).
    pub replace_gate: Gate,
}

impl std::fmt::Debug for DriverOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriverOptions")
            .field("switch", &self.switch)
            .field("retire_after", &self.retire_after)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl Default for DriverOptions {
    fn default() -> Self {
        Self {
            switch: SwitchMode::SideBySide,
            retire_after: Duration::from_secs(5),
            tick: Duration::from_millis(200),
            switch_gate: Arc::new(|_| true),
            retire_gate: Arc::new(|_| true),
            replace_gate: Arc::new(|_| true),
        }
    }
}

/// Keeps `set` on the version `desired` names until `shutdown`: loads it with
/// `load` (on the blocking pool) beside what is served, switches when the
/// switch gate agrees, drops versions no longer used, and calls `changed` after
/// every change (health, registration, metrics). A failed load is recorded and
/// not retried until the desired version changes.
pub fn drive<T, E, L, C>(
    set: Arc<VersionSet<T>>,
    mut desired: watch::Receiver<Option<String>>,
    load: L,
    options: DriverOptions,
    changed: C,
    shutdown: CancellationToken,
) where
    T: Send + Sync + 'static,
    E: Display + Send + 'static,
    L: Fn(&str) -> Result<T, E> + Send + Sync + 'static,
    C: Fn(&VersionSet<T>) + Send + Sync + 'static,
{
    let load = Arc::new(load);
    tokio::spawn(async move {
        let (done_tx, mut done_rx) = mpsc::channel::<(String, Result<T, String>)>(2);
        let mut loading: Option<String> = None;
        let mut desired_open = true;
        let mut last_wanted: Option<String> = None;
        let mut tick = tokio::time::interval(options.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                result = desired.changed(), if desired_open => desired_open = result.is_ok(),
                Some((version, outcome)) = done_rx.recv() => {
                    loading = None;
                    match outcome {
                        Ok(value) => {
                            tracing::info!(%version, "bundle version loaded");
                            let state = VersionState {
                                version: version.clone(),
                                state: VersionPhase::Serving,
                                error: String::new(),
                                shard_count: None,
                            };
                            set.insert(&version, value, state);
                        }
                        Err(error) => {
                            tracing::error!(%version, %error, "bundle version failed to load; not switching to it");
                            set.set_state(VersionState {
                                version,
                                state: VersionPhase::Failed,
                                error,
                                shard_count: None,
                            });
                        }
                    }
                    changed(&set);
                }
                _ = tick.tick() => {}
            }
            let wanted = desired.borrow().clone();
            if wanted != last_wanted {
                // A version asked for again is tried again, even if it failed.
                if let Some(version) = &wanted
                    && set.snapshot.load().states.get(version).map(|s| s.state)
                        == Some(VersionPhase::Failed)
                {
                    set.remove(version);
                }
                last_wanted = wanted.clone();
            }
            if let Some(version) = &wanted {
                let snapshot = set.snapshot.load_full();
                let known = snapshot.states.contains_key(version);
                let replace = options.switch == SwitchMode::Replace && !snapshot.loaded.is_empty();
                if !snapshot.loaded.contains_key(version)
                    && !known
                    && loading.is_none()
                    && (!replace || (options.replace_gate)(version))
                {
                    if replace {
                        for old in snapshot.loaded.keys() {
                            tracing::info!(version = %old, "dropping the served version before loading the next (--switch replace)");
                            set.remove(old);
                        }
                    }
                    set.set_state(VersionState {
                        version: version.clone(),
                        state: VersionPhase::Loading,
                        error: String::new(),
                        shard_count: None,
                    });
                    changed(&set);
                    tracing::info!(%version, "loading bundle version beside the served one");
                    loading = Some(version.clone());
                    let (load, done, version) = (load.clone(), done_tx.clone(), version.clone());
                    tokio::spawn(async move {
                        let name = version.clone();
                        let outcome = tokio::task::spawn_blocking(move || {
                            load(&name).map_err(|error| error.to_string())
                        })
                        .await
                        .unwrap_or_else(|join| Err(format!("the loader panicked: {join}")));
                        let _ = done.send((version, outcome)).await;
                    });
                }
                let snapshot = set.snapshot.load_full();
                if snapshot.loaded.contains_key(version)
                    && snapshot.primary.as_deref() != Some(version)
                    && (snapshot.primary.is_none() || (options.switch_gate)(version))
                {
                    tracing::info!(from = ?snapshot.primary, to = %version, "switched bundle version");
                    set.set_primary(version);
                    changed(&set);
                }
            }
            // Drop what is neither primary nor desired once unused for a while.
            let snapshot = set.snapshot.load_full();
            let gate_version = wanted.as_deref().or(snapshot.primary.as_deref());
            for old in snapshot.loaded.keys() {
                let keep = snapshot.primary.as_deref() == Some(old.as_str())
                    || wanted.as_deref() == Some(old.as_str());
                if keep {
                    continue;
                }
                let idle = set.idle_for(old).unwrap_or_default();
                if idle >= options.retire_after
                    && gate_version.is_none_or(|v| (options.retire_gate)(v))
                {
                    tracing::info!(version = %old, idle_ms = idle.as_millis() as u64, "dropping the old bundle version; its memory goes when the last request using it ends");
                    set.remove(old);
                    changed(&set);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    type Check = Box<dyn Fn(&VersionSet<String>) -> bool>;

    #[tokio::test]
    async fn loads_beside_switches_and_retires() {
        let set = Arc::new(VersionSet::<String>::new());
        let (desired_tx, desired) = watch::channel(Some("v1".to_string()));
        let changes = Arc::new(AtomicU64::new(0));
        let counted = changes.clone();
        let options = DriverOptions {
            retire_after: Duration::from_millis(50),
            tick: Duration::from_millis(10),
            ..DriverOptions::default()
        };
        let shutdown = CancellationToken::new();
        drive(
            set.clone(),
            desired,
            |version: &str| {
                if version == "bad" {
                    Err("shards/shard-0.usearch: checksum mismatch".to_string())
                } else {
                    Ok(format!("items of {version}"))
                }
            },
            options,
            move |_set| {
                counted.fetch_add(1, Ordering::Relaxed);
            },
            shutdown.clone(),
        );
        let until = |set: Arc<VersionSet<String>>, check: Check| async move {
            tokio::time::timeout(Duration::from_secs(10), async {
                while !check(&set) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .expect("condition never held");
        };
        until(
            set.clone(),
            Box::new(|s| s.primary_version().as_deref() == Some("v1")),
        )
        .await;
        let (version, held) = set.get("").unwrap();
        assert_eq!((version.as_str(), held.as_str()), ("v1", "items of v1"));

        desired_tx.send_replace(Some("bad".into()));
        until(
            set.clone(),
            Box::new(|s| {
                s.states()
                    .iter()
                    .any(|state| state.version == "bad" && state.state == VersionPhase::Failed)
            }),
        )
        .await;
        assert_eq!(set.primary_version().as_deref(), Some("v1"));
        let failed = set
            .states()
            .into_iter()
            .find(|s| s.version == "bad")
            .unwrap();
        assert!(failed.error.contains("shard-0.usearch"), "{failed:?}");
        assert!(matches!(set.get("bad"), Err(Unavailable::NotServed { .. })));

        desired_tx.send_replace(Some("v2".into()));
        until(
            set.clone(),
            Box::new(|s| s.primary_version().as_deref() == Some("v2")),
        )
        .await;
        // The request that started on v1 still holds it.
        assert_eq!(held.as_str(), "items of v1");
        // (`loaded`, not `get`: asking for v1 would keep it in use.)
        until(
            set.clone(),
            Box::new(|s| s.loaded().iter().all(|(version, _)| version != "v1")),
        )
        .await;
        assert_eq!(set.loaded().len(), 1);
        assert!(changes.load(Ordering::Relaxed) >= 5);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn replace_drops_the_served_version_before_loading() {
        let set = Arc::new(VersionSet::<String>::new());
        let (desired_tx, desired) = watch::channel(Some("v1".to_string()));
        let options = DriverOptions {
            switch: SwitchMode::Replace,
            // Side by side, v1 would stay for an hour.
            retire_after: Duration::from_secs(3600),
            tick: Duration::from_millis(10),
            ..DriverOptions::default()
        };
        let shutdown = CancellationToken::new();
        let held_while_loading = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (observed, watched) = (held_while_loading.clone(), set.clone());
        drive(
            set.clone(),
            desired,
            move |version: &str| {
                if let Ok(mut seen) = observed.lock() {
                    seen.push(watched.loaded().len());
                }
                Ok::<_, String>(version.to_string())
            },
            options,
            |_| {},
            shutdown.clone(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while set.primary_version().as_deref() != Some("v1") {
            assert!(Instant::now() < deadline, "v1 never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        desired_tx.send_replace(Some("v2".into()));
        while set.primary_version().as_deref() != Some("v2") {
            assert!(Instant::now() < deadline, "v2 never served");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(set.loaded().len(), 1);
        // Nothing was held while v2 loaded.
        assert_eq!(*held_while_loading.lock().unwrap(), vec![0, 0]);
        shutdown.cancel();
    }

    fn replica(id: &str, versions: &[(&str, VersionPhase)]) -> crate::NodeRecord {
        crate::NodeRecord {
            node_id: id.into(),
            addr: format!("{id}:1"),
            role: crate::Role::Retrieval,
            shard: Some(0),
            shard_count: Some(1),
            bundle_version: versions
                .first()
                .map(|v| v.0.to_string())
                .unwrap_or_default(),
            state: crate::NodeState::Serving,
            versions: versions
                .iter()
                .map(|(version, state)| VersionState {
                    version: version.to_string(),
                    state: *state,
                    error: String::new(),
                    shard_count: Some(1),
                })
                .collect(),
        }
    }

    #[test]
    fn replicas_replace_in_turns() {
        use VersionPhase::{Loading, Serving};
        let on_v1 = |id| replica(id, &[("v1", Serving)]);
        // Nobody has v2: the smallest id goes first, while another serves.
        let peers = [on_v1("a"), on_v1("b"), on_v1("c")];
        assert!(replace_turn("a", &peers, "v2", false, true));
        assert!(!replace_turn("b", &peers, "v2", false, true));
        // a is loading v2 and serves nothing: b waits for it.
        let peers = [replica("a", &[("v2", Loading)]), on_v1("b"), on_v1("c")];
        assert!(!replace_turn("b", &peers, "v2", false, true));
        // a serves v2: b goes once the cluster can switch and its v1 is unused.
        let peers = [replica("a", &[("v2", Serving)]), on_v1("b"), on_v1("c")];
        assert!(!replace_turn("b", &peers, "v2", false, true));
        assert!(!replace_turn("b", &peers, "v2", true, false));
        assert!(replace_turn("b", &peers, "v2", true, true));
        // Alone, a node never drops what it serves.
        assert!(!replace_turn("a", &[on_v1("a")], "v2", true, true));
    }
}
