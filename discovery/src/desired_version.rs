//! The cluster's desired bundle version in etcd, and where a server learns the
//! version it should serve.
//!
//! ```text
//! /recsys/{cluster}/desired_version           the version name, plain text (etcdctl-friendly)
//! /recsys/{cluster}/desired_version_history   JSON list of {version, action, unix_ms}
//! ```
//!
//! `recsys rollout` writes both in one transaction guarded by the desired key's
//! revision, so two operators cannot interleave; the history is append-only and
//! a rollback goes to the version before the current one in the stack that the
//! history's rollouts push and rollbacks pop. Nodes and gateways follow the key
//! with [`watch_desired`] (get, then watch from the next revision, again after
//! an outage or a compaction); [`poll_desired`] follows a bundle root's
//! `CURRENT` file the same way for servers without etcd, and [`or_else`] puts the
//! two together: etcd's value when the key is set, the root's otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::DiscoveryError;
use crate::EtcdAccess;
use crate::backoff::Backoff;
use crate::etcd::{connect, request};

/// History entries kept; older ones are dropped (rollbacks reach that far back).
pub const MAX_HISTORY: usize = 1000;

/// The key holding `cluster`'s desired version.
pub fn desired_key(cluster: &str) -> String {
    format!("/recsys/{cluster}/desired_version")
}

/// The key holding `cluster`'s rollout history.
pub fn history_key(cluster: &str) -> String {
    format!("/recsys/{cluster}/desired_version_history")
}

/// What an operator did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutAction {
    /// Asked for a version.
    Rollout,
    /// Went back to the one before.
    Rollback,
}

/// One step of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The version desired from then on.
    pub version: String,
    /// Rollout or rollback.
    pub action: RolloutAction,
    /// When, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// The desired version and how it came to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The version desired now; `None` before the first rollout.
    pub version: Option<String>,
    /// Every rollout and rollback, oldest first.
    pub history: Vec<HistoryEntry>,
    /// The desired key's modification revision (0: never written).
    mod_revision: i64,
}

impl Desired {
    /// The rollout stack the history describes: rollouts push, rollbacks pop.
    pub fn stack(&self) -> Vec<String> {
        let mut stack: Vec<String> = Vec::new();
        for entry in &self.history {
            match entry.action {
                RolloutAction::Rollout => stack.push(entry.version.clone()),
                RolloutAction::Rollback => {
                    stack.pop();
                }
            }
        }
        stack
    }

    /// The version a rollback goes to: the one below the top of the stack.
    pub fn previous(&self) -> Option<String> {
        let stack = self.stack();
        stack.len().checked_sub(2).map(|i| stack[i].clone())
    }
}

/// Reads `cluster`'s desired version and history.
pub async fn read(client: &mut Client, cluster: &str) -> Result<Desired, DiscoveryError> {
    let key = desired_key(cluster);
    let got = request("get", client.get(key.as_str(), None)).await?;
    let (version, mod_revision) = match got.kvs().first() {
        Some(kv) => (
            Some(String::from_utf8_lossy(kv.value()).trim().to_string()),
            kv.mod_revision(),
        ),
        None => (None, 0),
    };
    let history_key = history_key(cluster);
    let got = request("get", client.get(history_key.as_str(), None)).await?;
    let history = match got.kvs().first() {
        Some(kv) => {
            serde_json::from_slice(kv.value()).map_err(|error| DiscoveryError::BadHistory {
                key: history_key.clone(),
                reason: error.to_string(),
            })?
        }
        None => Vec::new(),
    };
    Ok(Desired {
        version,
        history,
        mod_revision,
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Writes `version` as desired with `action` appended to the history, if the
/// desired key is still as `seen` read it.
async fn write(
    client: &mut Client,
    cluster: &str,
    seen: &Desired,
    version: &str,
    action: RolloutAction,
) -> Result<Desired, DiscoveryError> {
    let mut history = seen.history.clone();
    history.push(HistoryEntry {
        version: version.to_string(),
        action,
        unix_ms: now_ms(),
    });
    if history.len() > MAX_HISTORY {
        history.drain(..history.len() - MAX_HISTORY);
    }
    let key = desired_key(cluster);
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            seen.mod_revision,
        )])
        .and_then([
            TxnOp::put(key.as_str(), version, None),
            TxnOp::put(history_key(cluster), serde_json::to_vec(&history)?, None),
        ]);
    let response = request("txn", client.txn(txn)).await?;
    if !response.succeeded() {
        return Err(DiscoveryError::ConcurrentRollout);
    }
    Ok(Desired {
        version: Some(version.to_string()),
        history,
        mod_revision: 0,
    })
}

/// Sets `cluster`'s desired version to `version`.
pub async fn rollout(
    client: &mut Client,
    cluster: &str,
    version: &str,
) -> Result<Desired, DiscoveryError> {
    let seen = read(client, cluster).await?;
    write(client, cluster, &seen, version, RolloutAction::Rollout).await
}

/// Sets `cluster`'s desired version back to the one before the current one.
pub async fn rollback(client: &mut Client, cluster: &str) -> Result<Desired, DiscoveryError> {
    let seen = read(client, cluster).await?;
    let previous = seen
        .previous()
        .ok_or_else(|| DiscoveryError::NoPreviousVersion {
            key: history_key(cluster),
            rollouts: seen.stack().len(),
        })?;
    write(client, cluster, &seen, &previous, RolloutAction::Rollback).await
}

/// Follows `cluster`'s desired version in etcd until `shutdown`: `None` while
/// the key is absent. Tries one read before returning (bounded by the etcd
/// request timeout), so a server that starts while etcd answers loads the
/// desired version first, not its fallback; then gets and watches in the
/// background, again after every outage or compaction, keeping the last value
/// while etcd is away.
pub async fn watch_desired(
    etcd: EtcdAccess,
    cluster: String,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<String>> {
    let key = desired_key(&cluster);
    let mut first = None;
    if let Ok(mut client) = connect(&etcd).await
        && let Ok(got) = request("get", client.get(key.as_str(), None)).await
    {
        first = got
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).trim().to_string());
    }
    let (sender, receiver) = watch::channel(first);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let error = tokio::select! {
                () = shutdown.cancelled() => return,
                error = follow_key(&etcd, &key, &sender, &mut backoff) => error,
            };
            if sender.is_closed() {
                return;
            }
            let delay = backoff.next_delay();
            if backoff.should_warn() {
                tracing::warn!(%key, %error, "cannot follow the desired version in etcd; keeping the last one");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    });
    receiver
}

/// Gets the key and watches it from the next revision; returns why it stopped.
async fn follow_key(
    etcd: &EtcdAccess,
    key: &str,
    sender: &watch::Sender<Option<String>>,
    backoff: &mut Backoff,
) -> DiscoveryError {
    let outcome: Result<std::convert::Infallible, DiscoveryError> = async {
        let mut client = connect(etcd).await?;
        let got = request("get", client.get(key, None)).await?;
        let revision = got
            .header()
            .ok_or(DiscoveryError::MissingHeader { operation: "get" })?
            .revision();
        let value = got
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).trim().to_string());
        sender.send_if_modified(|current| replace(current, value));
        let mut stream = request(
            "watch",
            client.watch(
                key,
                Some(WatchOptions::new().with_start_revision(revision + 1)),
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
                backoff.reset();
            }
            for event in response.events() {
                let value = match (event.event_type(), event.kv()) {
                    (EventType::Put, Some(kv)) => {
                        Some(String::from_utf8_lossy(kv.value()).trim().to_string())
                    }
                    _ => None,
                };
                sender.send_if_modified(|current| replace(current, value));
            }
        }
    }
    .await;
    match outcome {
        Err(error) => error,
        Ok(never) => match never {},
    }
}

fn replace(current: &mut Option<String>, value: Option<String>) -> bool {
    let value = value.filter(|v| !v.is_empty());
    if *current == value {
        return false;
    }
    if let Some(version) = &value {
        tracing::info!(%version, "desired bundle version");
    }
    *current = value;
    true
}

/// Follows what `resolve` answers, asked every `every` until `shutdown`: a
/// bundle root's `CURRENT`, for servers without etcd. An answer of `None` (the
/// pointer unreadable for a moment) keeps the last version. `resolve` reads a
/// file or an object store, so the polls after the first run on the blocking
/// pool, never on an async worker.
pub fn poll_desired<F>(
    every: Duration,
    resolve: F,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<String>>
where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    let (sender, receiver) = watch::channel(resolve());
    let resolve = std::sync::Arc::new(resolve);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                _ = tick.tick() => {}
            }
            let polled = resolve.clone();
            let answer = tokio::task::spawn_blocking(move || polled())
                .await
                .ok()
                .flatten();
            if let Some(version) = answer {
                sender.send_if_modified(|current| replace(current, Some(version)));
            }
        }
    });
    receiver
}

/// `first`'s value when it has one, else `fallback`'s, kept current until
/// `shutdown`: the desired version in etcd before the root's own pointer.
pub fn or_else(
    mut first: watch::Receiver<Option<String>>,
    mut fallback: watch::Receiver<Option<String>>,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<String>> {
    let pick = |first: &watch::Receiver<Option<String>>,
                fallback: &watch::Receiver<Option<String>>| {
        first.borrow().clone().or_else(|| fallback.borrow().clone())
    };
    let (sender, receiver) = watch::channel(pick(&first, &fallback));
    tokio::spawn(async move {
        let (mut first_open, mut fallback_open) = (true, true);
        while first_open || fallback_open {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = sender.closed() => return,
                changed = first.changed(), if first_open => first_open = changed.is_ok(),
                changed = fallback.changed(), if fallback_open => fallback_open = changed.is_ok(),
            }
            let value = pick(&first, &fallback);
            sender.send_if_modified(|current| {
                let changed = *current != value;
                *current = value;
                changed
            });
        }
    });
    receiver
}

/// The version a server should serve, kept current until `shutdown`: with
/// etcd (`etcd` and `cluster`), the cluster's desired version once one was
/// rolled out; otherwise, and before the first rollout, what `current` answers
/// (a bundle root's `CURRENT`), read every `poll`.
pub async fn follow_desired<F>(
    current: F,
    etcd: Option<(EtcdAccess, String)>,
    poll: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<String>>
where
    F: Fn() -> Option<String> + Send + Sync + 'static,
{
    let local = poll_desired(poll, current, shutdown.clone());
    match etcd {
        Some((etcd, cluster)) => {
            let cluster_desired = watch_desired(etcd, cluster, shutdown.clone()).await;
            or_else(cluster_desired, local, shutdown)
        }
        None => local,
    }
}

/// The cluster's registrations, followed until `shutdown`, for a node that
/// must know whether every shard serves a version before it drops the old one.
pub fn cluster_view(
    etcd: EtcdAccess,
    cluster: String,
    shutdown: CancellationToken,
) -> watch::Receiver<std::sync::Arc<crate::ClusterView>> {
    use crate::Membership;
    let membership = crate::EtcdMembership::start(crate::EtcdOptions::new(etcd, cluster));
    let view = membership.subscribe();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        drop(membership);
    });
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: &str, action: RolloutAction) -> HistoryEntry {
        HistoryEntry {
            version: version.into(),
            action,
            unix_ms: 0,
        }
    }

    #[test]
    fn rollbacks_walk_the_stack_back() {
        let mut desired = Desired::default();
        assert_eq!(desired.previous(), None);
        desired.history = vec![
            entry("v1", RolloutAction::Rollout),
            entry("v2", RolloutAction::Rollout),
            entry("v3", RolloutAction::Rollout),
        ];
        assert_eq!(desired.previous().as_deref(), Some("v2"));
        desired.history.push(entry("v2", RolloutAction::Rollback));
        assert_eq!(desired.stack(), ["v1", "v2"]);
        assert_eq!(desired.previous().as_deref(), Some("v1"));
        desired.history.push(entry("v1", RolloutAction::Rollback));
        assert_eq!(desired.previous(), None);
    }

    #[test]
    fn keys_live_under_the_cluster() {
        assert_eq!(desired_key("prod"), "/recsys/prod/desired_version");
        assert!(history_key("prod").starts_with("/recsys/prod/"));
        // Not under the nodes' prefix, which membership lists.
        assert!(!desired_key("prod").starts_with(&crate::nodes_prefix("prod")));
    }
}
