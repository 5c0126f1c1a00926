//! Membership from etcd: the registrations under `/recsys/{cluster}/nodes/`, kept
//! current by a list-then-watch loop.
//!
//! The loop is the informer pattern of Kubernetes' reflector and Milvus' session
//! watcher: GET the prefix and note the header revision, then WATCH it from that
//! revision + 1 with previous values, applying puts and deletes to the node map and
//! publishing a new [`ClusterView`] after each watch response that changed it. A
//! watch that etcd cancels, for instance because its start revision was compacted
//! away, and a broken connection both lead back to the GET: the fresh list replaces
//! the map in one step, so known nodes stay routable until then. While etcd is
//! away the last view stays published; retries back off up to [`EtcdOptions::max_backoff`].
//! Every (re)connect lists again rather than resuming the old watch, because an
//! etcd restarted on a wiped data dir counts revisions from 1 again and a watch from
//! the old revision would wait silently.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions, WatchResponse};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::etcd::{connect, nodes_prefix, request};
use crate::view::check_record;
use crate::{ClusterView, DiscoveryError, EtcdAccess, Membership, NodeRecord};

/// First retry delay after etcd failed.
const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// Where and what to watch.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// The etcd to watch, and how to reach it.
    pub etcd: EtcdAccess,
    /// The cluster name in `/recsys/{cluster}/nodes/`.
    pub cluster: String,
    /// Longest wait between attempts while etcd is away; short, so that the view
    /// catches up soon after etcd returns.
    pub max_backoff: Duration,
    /// Test hook: the watch waits for a permit after each list.
    watch_gate: Option<Arc<Semaphore>>,
}

impl EtcdOptions {
    /// Watches `cluster` on the etcd `etcd` names, retrying at most every second.
    pub fn new(etcd: impl Into<EtcdAccess>, cluster: impl Into<String>) -> Self {
        Self {
            etcd: etcd.into(),
            cluster: cluster.into(),
            max_backoff: Duration::from_secs(1),
            watch_gate: None,
        }
    }

    /// Makes every watch wait, after its list, for a permit of `gate`: a test can then
    /// compact etcd between the list and the watch, which is otherwise a narrow race.
    #[cfg(feature = "test-support")]
    pub fn with_watch_gate(mut self, gate: Arc<Semaphore>) -> Self {
        self.watch_gate = Some(gate);
        self
    }
}

/// Cluster membership read from etcd registrations, updated in the background.
///
/// The view starts empty and fills once etcd answers; [`connected`](Self::connected)
/// tells whether it is current. Dropping the value or calling [`stop`](Self::stop)
/// ends the background task; the view then stays as it was.
#[derive(Debug)]
pub struct EtcdMembership {
    view: watch::Sender<Arc<ClusterView>>,
    connected: watch::Receiver<bool>,
    cancel: CancellationToken,
}

impl EtcdMembership {
    /// Starts listing and watching in a task on the current tokio runtime. Never
    /// fails: an unreachable etcd is retried until it answers.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(options: EtcdOptions) -> Self {
        let (view, _) = watch::channel(Arc::new(ClusterView::default()));
        let (connected_tx, connected) = watch::channel(false);
        let cancel = CancellationToken::new();
        let watcher = Watcher {
            prefix: nodes_prefix(&options.cluster),
            options,
            view: view.clone(),
            connected: connected_tx,
            nodes: BTreeMap::new(),
        };
        tokio::spawn(watcher.run(cancel.clone()));
        Self {
            view,
            connected,
            cancel,
        }
    }

    /// Whether the view is current: true from a successful list while its watch
    /// runs, false before the first list and while etcd is away.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Ends the background task; the last view stays published.
    pub fn stop(&self) {
        self.cancel.cancel();
    }
}

impl Drop for EtcdMembership {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Membership for EtcdMembership {
    fn subscribe(&self) -> watch::Receiver<Arc<ClusterView>> {
        self.view.subscribe()
    }
}

/// The background task's state: the node map by etcd key, and where to publish.
struct Watcher {
    options: EtcdOptions,
    prefix: String,
    view: watch::Sender<Arc<ClusterView>>,
    connected: watch::Sender<bool>,
    nodes: BTreeMap<String, NodeRecord>,
}

impl Watcher {
    async fn run(mut self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, self.options.max_backoff);
        loop {
            let Err(error) = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = self.list_and_watch(&mut backoff) => outcome,
            };
            self.connected.send_replace(false);
            if let DiscoveryError::Compacted { revision } = error {
                // The listed revision is gone: list again at once. Other cancels (auth,
                // a bad request) back off below, so they cannot spin.
                info!(cluster = %self.options.cluster, revision, "etcd watch fell behind a compaction, listing again");
                continue;
            }
            let delay = backoff.next_delay();
            if backoff.should_warn() {
                warn!(
                    cluster = %self.options.cluster,
                    %error,
                    failures = backoff.failures(),
                    nodes = self.nodes.len(),
                    "etcd membership unavailable, keeping the last view",
                );
            } else {
                debug!(cluster = %self.options.cluster, %error, failures = backoff.failures(), "etcd membership still unavailable");
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Lists the prefix, publishes it, and applies watch events until the watch fails
    /// or etcd cancels it; only returns the reason.
    async fn list_and_watch(
        &mut self,
        backoff: &mut Backoff,
    ) -> Result<Infallible, DiscoveryError> {
        let mut client = connect(&self.options.etcd).await?;
        let listed = request(
            "get",
            client.get(self.prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = listed
            .header()
            .ok_or(DiscoveryError::MissingHeader { operation: "get" })?
            .revision();
        // The list replaces the map in one step: no gap in which known nodes vanish.
        self.nodes = listed
            .kvs()
            .iter()
            .filter_map(|kv| parse(kv).map(|node| (key_of(kv), node)))
            .collect();
        debug!(
            revision,
            nodes = self.nodes.len(),
            "listed etcd registrations"
        );
        self.publish();

        if let Some(gate) = &self.options.watch_gate {
            // The permit goes back at once: a gate, once opened, stays open.
            let _permit = gate.acquire().await;
        }
        let mut stream = request(
            "watch",
            client.watch(
                self.prefix.as_str(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_prev_key()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        loop {
            let response = stream
                .message()
                .await
                .map_err(|source| DiscoveryError::Etcd {
                    operation: "watch",
                    source,
                })?
                .ok_or(DiscoveryError::StreamClosed { operation: "watch" })?;
            // A start revision below the compaction point arrives as `created` first,
            // then as `canceled` with `compact_revision` set and an empty reason.
            if response.compact_revision() > 0 {
                return Err(DiscoveryError::Compacted {
                    revision: response.compact_revision(),
                });
            }
            if response.canceled() {
                return Err(DiscoveryError::WatchCanceled {
                    reason: response.cancel_reason().to_string(),
                });
            }
            if response.created() {
                // A live watch from the listed revision: the view is current.
                self.connected.send_replace(true);
                backoff.reset();
            }
            if self.apply(&response) {
                self.publish();
            }
        }
    }

    /// Applies a watch response's events to the node map; true if it changed.
    fn apply(&mut self, response: &WatchResponse) -> bool {
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let key = key_of(kv);
            let node = match event.event_type() {
                EventType::Put => parse(kv),
                EventType::Delete => None,
            };
            match node {
                Some(node) => {
                    if !self.nodes.contains_key(&key) {
                        info!(key, node_id = %node.node_id, addr = %node.addr, "node registered");
                    }
                    changed |= self.nodes.get(&key) != Some(&node);
                    self.nodes.insert(key, node);
                }
                // A delete, or garbage over a registration: the node is unknown now.
                None => {
                    if let Some(gone) = self.nodes.remove(&key) {
                        // The lease it was on (from `prev_kv`), to match the node's own logs.
                        let lease = event.prev_kv().map(KeyValue::lease).filter(|&id| id != 0);
                        info!(key, node_id = %gone.node_id, addr = %gone.addr, ?lease, "node deregistered");
                        changed = true;
                    }
                }
            }
        }
        changed
    }

    /// Publishes the view of the node map if it differs from the last one.
    fn publish(&self) {
        let view = ClusterView::from_nodes(self.nodes.values().cloned());
        self.view.send_if_modified(|current| {
            if **current == view {
                return false;
            }
            *current = Arc::new(view);
            true
        });
    }
}

/// The record stored at `kv`, or `None` (logged) when it is not one or names
/// shards no cluster can route by ([`check_record`]): either is ignored, like a
/// key that is not there.
fn parse(kv: &KeyValue) -> Option<NodeRecord> {
    match serde_json::from_slice::<NodeRecord>(kv.value()) {
        Ok(node) => match check_record(&node) {
            Ok(()) => Some(node),
            Err(reason) => {
                warn!(
                    key = %String::from_utf8_lossy(kv.key()),
                    node_id = %node.node_id,
                    shard = ?node.shard,
                    shard_count = ?node.shard_count,
                    %reason,
                    "ignoring node registration",
                );
                None
            }
        },
        Err(error) => {
            warn!(
                key = %String::from_utf8_lossy(kv.key()),
                %error,
                "skipping malformed node registration",
            );
            None
        }
    }
}

/// The key of `kv` as text; registration keys are ASCII.
fn key_of(kv: &KeyValue) -> String {
    String::from_utf8_lossy(kv.key()).into_owned()
}
