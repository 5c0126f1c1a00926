//! Push-back on item changes while retrieval replicas fall behind the log.
//!
//! The gateway accepts a change once etcd has committed it; each replica then
//! inserts it into its shard's HNSW graph, which is far slower than the append
//! (68,000 items/s accepted against ~2,800 inserted per replica on two vCPUs,
//! docs/benchmarks-history.md, "Item upserts through the gateway and etcd"). A
//! writer faster than the replicas would make "visible on every replica" later
//! without bound. As Milvus refuses writes once a node's time tick lags, the
//! gateway refuses `UpsertItems` and `DeleteItems` with `RESOURCE_EXHAUSTED`
//! when a serving replica of a shard the call touches has left a change this
//! gateway accepted unapplied for longer than `--max-apply-lag-ms`; writers back
//! off and retry, and the lag, so the time to visibility, stays near that bound.
//!
//! Each gateway watches its own appends: replicas apply a shard's entries in
//! revision order, so a replica that has applied this gateway's entry has
//! applied every earlier one of that shard, other gateways' too, and a flood
//! from another gateway shows here as this gateway's changes waiting behind it.
//! While changes are pending, the replicas of their shards are asked their
//! applied revision (`Info.log_revision`) every [`PROBE_INTERVAL`]; a replica
//! that does not answer is left out (the health checks route around it), and
//! with nothing pending nothing is asked.
//!
//! The age of the oldest waiting change alone lets a burst through: everything
//! offered within the bound is accepted and then takes (offered ÷ insertion
//! rate) times the bound to apply (measured: a background offering 8,000 items/s
//! against replicas applying ~1,000 made new items visible after 6 s with a 1 s
//! bound). So the gate also predicts: the changes waiting for a shard over the
//! rate its slowest replica has been seen applying them (measured between
//! probes while it had work; [`UNMEASURED_RATE`] until then), and refuses when
//! that exceeds the bound too.

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

/// The apply rate assumed for a shard before one is measured, in item changes
/// per second: a replica inserting into HNSW on a shared core (about 1,000 to
/// 2,800 on two vCPUs with four replicas, docs/benchmarks.md). A faster shard
/// is measured within a probe or two of having work.
const UNMEASURED_RATE: f64 = 1_000.0;

/// Weight of a new measurement in a shard's smoothed apply rate.
const RATE_WEIGHT: f64 = 0.3;

/// A shard of a bundle layout: (shard, shard count). Versions with another
/// shard count have other shards.
type ShardKey = (u32, u32);

/// One append's part for a shard: its revision, when, and how many changes.
#[derive(Debug, Clone, Copy)]
struct Appended {
    revision: u64,
    at: Instant,
    items: u64,
}

/// One shard's waiting changes and what the probes learnt of its replicas.
#[derive(Debug, Default)]
struct ShardLag {
    /// This gateway's appends not yet applied by every replica, oldest first.
    waiting: VecDeque<Appended>,
    /// The replica furthest behind at the last probe, and its revision.
    slowest: Option<(String, u64)>,
    /// When the last probe answered, and whether changes were waiting then.
    probed: Option<(Instant, bool)>,
    /// Item changes per second the slowest replica applies (smoothed), once seen.
    rate: Option<f64>,
}

impl ShardLag {
    fn waiting_items(&self) -> u64 {
        self.waiting.iter().map(|change| change.items).sum()
    }

    /// Why a call of `adding` changes to this shard should wait, if it should:
    /// a change has waited past `max`, or those waiting and the call's would
    /// take longer than `max` to apply. With nothing waiting a call is always
    /// taken, however large, so that every writer makes progress.
    fn refusal(&self, shard: u32, adding: u64, max: Duration) -> Option<String> {
        let oldest = self.waiting.front()?;
        let waited = oldest.at.elapsed();
        if waited > max {
            let who = match &self.slowest {
                Some((addr, applied)) => {
                    format!("replica {addr} of shard {shard} has applied up to revision {applied}")
                }
                None => format!("no replica of shard {shard} has answered how far it applied"),
            };
            return Some(format!(
                "{who}, not revision {} accepted {:.1} s ago",
                oldest.revision,
                waited.as_secs_f64()
            ));
        }
        let items = self.waiting_items();
        let rate = self.rate.unwrap_or(UNMEASURED_RATE).max(1.0);
        let to_apply = (items + adding) as f64 / rate;
        (to_apply > max.as_secs_f64()).then(|| {
            format!(
                "{items} item changes wait for the replicas of shard {shard}, and with this \
                 call's {adding} about {to_apply:.1} s at the {rate:.0} items/s they {}",
                if self.rate.is_some() {
                    "have been applying"
                } else {
                    "are assumed to apply until measured"
                }
            )
        })
    }

    /// Takes off what the slowest replica, `addr`, has applied (`applied`) and
    /// updates the shard's rate: measured only over an interval that began with
    /// work waiting, since otherwise it would measure the writer, not the replicas.
    fn probed(&mut self, addr: String, applied: u64, now: Instant) {
        let mut drained = 0;
        while self
            .waiting
            .front()
            .is_some_and(|change| change.revision <= applied)
        {
            drained += self.waiting.pop_front().map_or(0, |change| change.items);
        }
        if let Some((before, true)) = self.probed {
            let seconds = now.duration_since(before).as_secs_f64();
            if seconds > 0.0 {
                let sample = drained as f64 / seconds;
                self.rate = Some(match self.rate {
                    Some(rate) => rate + RATE_WEIGHT * (sample - rate),
                    None => sample,
                });
            }
        }
        self.probed = Some((now, !self.waiting.is_empty()));
        self.slowest = Some((addr, applied));
    }
}

/// The gate; shared by the catalog service and its probing task.
#[derive(Debug)]
pub struct ApplyLag {
    /// `Duration::ZERO`: never refuse (nothing is recorded or probed).
    max: Duration,
    shards: Mutex<BTreeMap<ShardKey, ShardLag>>,
    wake: Notify,
}

impl ApplyLag {
    /// A gate refusing changes once one has waited longer than `max`, or the
    /// waiting ones would take longer to apply (zero: off).
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            shards: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
        }
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, BTreeMap<ShardKey, ShardLag>> {
        // Every update leaves the map whole, so a poisoned lock is consistent.
        self.shards.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Ok` unless, for one of `shards` (shard, changes the call adds to it; of
    /// `shard_count`), a change accepted here has waited longer than the bound
    /// for a replica, or the changes waiting and the call's would take longer
    /// than the bound to apply at the shard's rate: then `RESOURCE_EXHAUSTED`
    /// naming the shard, why, and the flag.
    pub fn check(&self, shards: &[(u32, u64)], shard_count: u32) -> Result<(), Status> {
        if self.max.is_zero() {
            return Ok(());
        }
        let lags = self.shards();
        for &(shard, adding) in shards {
            let Some(why) = lags
                .get(&(shard, shard_count))
                .and_then(|lag| lag.refusal(shard, adding, self.max))
            else {
                continue;
            };
            crate::metrics::apply_lag_refused();
            return Err(Status::resource_exhausted(format!(
                "item changes refused: {why} (--max-apply-lag-ms {}); retry once the replicas \
                 catch up",
                self.max.as_millis()
            )));
        }
        Ok(())
    }

    /// Records that `revision` holds `items` changes for each (shard, items)
    /// of `shards` (of `shard_count`).
    pub fn appended(&self, revision: u64, shards: &[(u32, u64)], shard_count: u32) {
        if self.max.is_zero() {
            return;
        }
        let at = Instant::now();
        let mut lags = self.shards();
        for &(shard, items) in shards {
            lags.entry((shard, shard_count))
                .or_default()
                .waiting
                .push_back(Appended {
                    revision,
                    at,
                    items,
                });
        }
        drop(lags);
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
                    let lags = gate.shards();
                    let waiting: Vec<(ShardKey, Instant)> = lags
                        .iter()
                        .filter_map(|(key, lag)| lag.waiting.front().map(|first| (*key, first.at)))
                        .collect();
                    let oldest = waiting
                        .iter()
                        .map(|(_, at)| at.elapsed())
                        .max()
                        .unwrap_or_default();
                    let shards: Vec<ShardKey> = waiting.into_iter().map(|(key, _)| key).collect();
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
        let now = Instant::now();
        self.shards()
            .entry(key)
            .or_default()
            .probed(addr, applied, now);
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
        gate.appended(40, &[(0, 10), (1, 10)], 2);
        gate.check(&[(0, 10), (1, 10)], 2).unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let refused = gate.check(&[(1, 10)], 2).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("no replica of shard 1")
                && refused.message().contains("--max-apply-lag-ms 2000"),
            "{}",
            refused.message()
        );
        // Another layout's shard 1 is another shard.
        gate.check(&[(1, 10)], 4).unwrap();
        gate.shards()
            .get_mut(&(1, 2))
            .unwrap()
            .probed("10.0.0.1:1".into(), 40, Instant::now());
        gate.check(&[(1, 10)], 2).unwrap();
        assert!(gate.check(&[(0, 10)], 2).is_err(), "shard 0 still waits");
    }

    /// Changes accepted within the bound are refused once applying what waits
    /// would take longer than the bound: at the assumed rate before a probe
    /// has measured one, at the measured one after.
    #[tokio::test(start_paused = true)]
    async fn a_backlog_that_would_outlast_the_bound_refuses_before_it_ages() {
        let gate = ApplyLag::new(Duration::from_secs(1));
        // Nothing waits: taken however large.
        gate.check(&[(0, 5_000)], 1).unwrap();
        gate.appended(1, &[(0, 600)], 1);
        gate.check(&[(0, 400)], 1).unwrap();
        gate.appended(2, &[(0, 600)], 1);
        // 1,200 waiting and 1 more at the assumed 1,000 a second: 1.2 s.
        let refused = gate.check(&[(0, 1)], 1).unwrap_err();
        assert!(
            refused.message().contains("1200 item changes wait")
                && refused.message().contains("assumed"),
            "{}",
            refused.message()
        );
        // A probe while both wait, and one 0.2 s later after the first was
        // applied: 3,000 a second measured, so 600 waiting is 0.2 s.
        let replica = || "10.0.0.1:1".to_string();
        gate.shards()
            .get_mut(&(0, 1))
            .unwrap()
            .probed(replica(), 0, Instant::now());
        tokio::time::advance(Duration::from_millis(200)).await;
        gate.shards()
            .get_mut(&(0, 1))
            .unwrap()
            .probed(replica(), 1, Instant::now());
        let rate = gate.shards()[&(0, 1)].rate.unwrap();
        assert!((rate - 3_000.0).abs() < 1.0, "{rate}");
        gate.check(&[(0, 600)], 1).unwrap();
        assert!(gate.check(&[(0, 3_000)], 1).is_err());
        // A probe interval that began with nothing waiting measures nothing.
        gate.shards()
            .get_mut(&(0, 1))
            .unwrap()
            .probed(replica(), 2, Instant::now());
        gate.appended(3, &[(0, 1)], 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        gate.shards()
            .get_mut(&(0, 1))
            .unwrap()
            .probed(replica(), 3, Instant::now());
        assert_eq!(gate.shards()[&(0, 1)].rate, Some(rate));
    }

    /// Off: nothing is recorded, nothing refused.
    #[tokio::test(start_paused = true)]
    async fn a_zero_bound_never_refuses() {
        let gate = ApplyLag::new(Duration::ZERO);
        gate.appended(1, &[(0, 1_000_000)], 1);
        tokio::time::advance(Duration::from_secs(3600)).await;
        gate.check(&[(0, 1_000_000)], 1).unwrap();
        assert!(gate.shards().is_empty());
    }
}
