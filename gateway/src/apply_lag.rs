//! Push-back on item changes while retrieval replicas fall behind the log.
//!
//! The gateway accepts a change once etcd has committed it; each replica then
//! inserts it into its shard's HNSW graph, which is far slower than the append
//! (68,000 items/s accepted against ~2,800 inserted per replica on two vCPUs,
//! docs/benchmarks.md "Item updates"). A writer faster than the replicas would
//! make "visible on every replica" later without bound. As Milvus refuses writes
//! once a node's time tick lags, the gateway refuses `UpsertItems` and
//! `DeleteItems` with `RESOURCE_EXHAUSTED` when a serving replica of a shard the
//! call touches has left a change this gateway accepted unapplied for longer
//! than `--max-apply-lag-ms`; writers back off and retry, and the lag, so the time
//! to visibility, stays near that bound.
//!
//! Each gateway watches its own appends: replicas apply a shard's entries in
//! revision order, so a replica that has applied this gateway's entry has
//! applied every earlier one of that shard, other gateways' too, and a flood
//! from another gateway shows here as this gateway's changes waiting behind it.
//! While changes are pending, the replicas of their shards are asked their
//! applied revision (`Info.log_revision`) every [`PROBE_INTERVAL`]; a replica
//! that does not answer is left out (the health checks route around it), and
//! with nothing pending nothing is asked.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_discovery::{ClusterView, NodeRecord};
use recsys_proto::v1::InfoRequest;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::node_channels::NodeChannels;

/// How often the replicas of shards with pending changes are asked how far
/// they have applied the log.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// The longest an `Info` probe waits for a replica.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A shard of a bundle layout: (shard, shard count). Versions with another
/// shard count have other shards.
type ShardKey = (u32, u32);

/// This gateway's changes not yet applied everywhere, and who is slowest.
#[derive(Debug, Default)]
struct Pending {
    /// Per shard, the revisions appended and when, oldest first.
    changes: BTreeMap<ShardKey, VecDeque<(u64, Instant)>>,
    /// Per shard, the replica furthest behind at the last probe and its revision.
    slowest: BTreeMap<ShardKey, (String, u64)>,
}

/// The gate; shared by the catalog service and its probing task.
#[derive(Debug)]
pub struct ApplyLag {
    /// `Duration::ZERO`: never refuse (nothing is recorded or probed).
    max: Duration,
    pending: Mutex<Pending>,
    wake: Notify,
}

impl ApplyLag {
    /// A gate refusing changes once one has waited longer than `max` (zero: off).
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Every update leaves the maps whole, so a poisoned lock is consistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Ok` unless a replica of one of `shards` (of `shard_count`) has left a
    /// change accepted here unapplied for longer than the bound: then
    /// `RESOURCE_EXHAUSTED` naming the shard, the replica, how long, and the flag.
    pub fn check(&self, shards: &[u32], shard_count: u32) -> Result<(), Status> {
        if self.max.is_zero() {
            return Ok(());
        }
        let pending = self.pending();
        for &shard in shards {
            let key = (shard, shard_count);
            let Some(&(revision, at)) = pending.changes.get(&key).and_then(VecDeque::front) else {
                continue;
            };
            let waited = at.elapsed();
            if waited > self.max {
                crate::metrics::apply_lag_refused();
                let who = match pending.slowest.get(&key) {
                    Some((addr, applied)) => {
                        format!(
                            "replica {addr} of shard {shard} has applied up to revision {applied}"
                        )
                    }
                    None => format!("no replica of shard {shard} has answered how far it applied"),
                };
                return Err(Status::resource_exhausted(format!(
                    "item changes refused: {who}, not revision {revision} accepted {:.1} s ago \
                     (--max-apply-lag-ms {}); retry once the replicas catch up",
                    waited.as_secs_f64(),
                    self.max.as_millis()
                )));
            }
        }
        Ok(())
    }

    /// Records that `revision` holds changes to `shards` (of `shard_count`).
    pub fn appended(&self, revision: u64, shards: &[u32], shard_count: u32) {
        if self.max.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut pending = self.pending();
        for &shard in shards {
            pending
                .changes
                .entry((shard, shard_count))
                .or_default()
                .push_back((revision, now));
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Probes the replicas of shards with pending changes until `shutdown`,
    /// taking off what every replica that answered has applied.
    pub fn spawn_probes(
        self: &Arc<Self>,
        view: watch::Receiver<Arc<ClusterView>>,
        clients: Arc<NodeChannels>,
        shutdown: CancellationToken,
    ) {
        if self.max.is_zero() {
            return;
        }
        let gate = self.clone();
        tokio::spawn(async move {
            loop {
                let (shards, oldest) = {
                    let mut pending = gate.pending();
                    pending.changes.retain(|_, changes| !changes.is_empty());
                    let oldest = pending
                        .changes
                        .values()
                        .filter_map(|changes| changes.front())
                        .map(|(_, at)| at.elapsed())
                        .max()
                        .unwrap_or_default();
                    let shards: Vec<ShardKey> = pending.changes.keys().copied().collect();
                    (shards, oldest)
                };
                crate::metrics::apply_lag(oldest.as_secs_f64());
                if shards.is_empty() {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = gate.wake.notified() => continue,
                    }
                }
                let view = view.borrow().clone();
                for key in shards {
                    gate.probe(key, &view, &clients).await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(PROBE_INTERVAL) => {}
                }
            }
        });
    }

    /// Asks every serving replica of `key`'s shard its applied revision and
    /// takes off the changes all that answered have applied.
    async fn probe(&self, key: ShardKey, view: &ClusterView, clients: &NodeChannels) {
        let (shard, shard_count) = key;
        let replicas = view
            .shards
            .get(shard as usize)
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|node| node.shard_count == Some(shard_count));
        let mut asks: FuturesUnordered<_> = replicas
            .map(|node| async move { (node.addr.clone(), applied_revision(clients, node).await) })
            .collect();
        let mut slowest: Option<(String, u64)> = None;
        while let Some((addr, applied)) = asks.next().await {
            if let Some(applied) = applied
                && slowest.as_ref().is_none_or(|(_, least)| applied < *least)
            {
                slowest = Some((addr, applied));
            }
        }
        let Some((addr, applied)) = slowest else {
            return;
        };
        let mut pending = self.pending();
        if let Some(changes) = pending.changes.get_mut(&key) {
            while changes
                .front()
                .is_some_and(|(revision, _)| *revision <= applied)
            {
                changes.pop_front();
            }
        }
        pending.slowest.insert(key, (addr, applied));
    }
}

/// The change-log revision `node` has applied, or `None` when it did not answer.
async fn applied_revision(clients: &NodeChannels, node: &NodeRecord) -> Option<u64> {
    let handle = clients.node(node).ok()?;
    let mut request = tonic::Request::new(InfoRequest {});
    request.set_timeout(PROBE_TIMEOUT);
    let answer = tokio::time::timeout(
        PROBE_TIMEOUT,
        RetrievalServiceClient::new(handle.channel.clone()).info(request),
    )
    .await;
    Some(answer.ok()?.ok()?.into_inner().log_revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change waits; past the bound the next call touching its shard is
    /// refused by name, a call touching only another shard is not, and once
    /// the replicas have applied it (what a probe records) calls pass again.
    #[tokio::test(start_paused = true)]
    async fn a_change_left_unapplied_past_the_bound_refuses_its_shards_writes() {
        let gate = ApplyLag::new(Duration::from_secs(2));
        gate.appended(40, &[0, 1], 2);
        gate.check(&[0, 1], 2).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let refused = gate.check(&[1], 2).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("shard 1")
                && refused.message().contains("--max-apply-lag-ms"),
            "{}",
            refused.message()
        );
        // Another layout's shard 1 is another shard.
        gate.check(&[1], 4).unwrap();
        {
            let mut pending = gate.pending();
            pending.changes.get_mut(&(1, 2)).unwrap().clear();
        }
        gate.check(&[1], 2).unwrap();
        assert!(gate.check(&[0], 2).is_err(), "shard 0 still waits");
    }

    /// Off: nothing is recorded, nothing refused.
    #[tokio::test(start_paused = true)]
    async fn a_zero_bound_never_refuses() {
        let gate = ApplyLag::new(Duration::ZERO);
        gate.appended(1, &[0], 1);
        tokio::time::advance(Duration::from_secs(3600)).await;
        gate.check(&[0], 1).unwrap();
        assert!(gate.pending().changes.is_empty());
    }
}
