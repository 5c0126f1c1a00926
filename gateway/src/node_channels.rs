//! gRPC channels to nodes (retrieval and ranking), one per address, created lazily
//! and reused; each node's in-flight calls and health; and the order in which the
//! replicas of a shard or the ranking pool are tried.
//!
//! Replica choice is the power of two choices on in-flight calls (Mitzenmacher;
//! what Finagle and linkerd do): two random replicas, the less busy first, the
//! other as the retry or hedge target. Nodes that failed a call at the transport
//! level or a health check are left out until a health check passes again
//! (`health_check`), unless every replica is out, in which case all are tried,
//! since a stale verdict must not cost an answer.
//!
//! With node TLS ([`NodeTls`]) each channel is mutual TLS and checks that the
//! node's certificate names the identity of its registration (`node_identity`);
//! a node that fails that check is left out even then.
//!
//! A node whose answer breaks what any honest node guarantees (`answer_check`:
//! duplicate or excluded ids, items of another shard, another bundle version)
//! is quarantined instead: left out of routing altogether for [`QUARANTINE`],
//! whatever its health checks say (a lying node answers them fine), or until it
//! leaves the membership and registers again (its handle is dropped and made anew).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use recsys_discovery::{NodeRecord, node_identity};
use rustc_hash::{FxHashMap, FxHashSet};
use tonic::transport::{Channel, Endpoint};

use crate::node_identity::{IdentityCheck, NodeTls};

/// HTTP/2 receive window per call on node channels. The protocol's default, 64 KiB,
/// is less than one shard answer at a large `retrieve_k` (10 000 hits take 70–140
/// KB: a varint id and a 4-byte score each): the node would stop part-way and wait
/// a round trip for a `WINDOW_UPDATE`.
const STREAM_WINDOW_BYTES: u32 = 1 << 20;

/// HTTP/2 receive window per node connection, shared by every concurrent call to
/// that node: at the 64 KiB default, a few large answers in flight at once would
/// wait on each other's flow control.
const CONNECTION_WINDOW_BYTES: u32 = 8 << 20;

/// How long a node whose answer broke the answer checks stays out of routing.
/// Long enough that a lying node costs little (a shard's other replicas take
/// its calls), short enough that a node fixed in place comes back on its own.
pub const QUARANTINE: Duration = Duration::from_secs(300);

/// What the gateway knows of one node address.
#[derive(Debug)]
pub struct NodeHandle {
    /// The node's `host:port`.
    pub addr: String,
    /// The shared channel.
    pub channel: Channel,
    in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// With node TLS: the identity its certificate must name, and the verdict.
    identity: Option<Arc<IdentityCheck>>,
    /// Until when the node is out of routing for a bad answer (`None`: never was).
    quarantined_until: Mutex<Option<Instant>>,
}

impl NodeHandle {
    /// Leaves the node out of routing for [`QUARANTINE`]: its answer broke a
    /// guarantee no input can excuse.
    pub fn quarantine(&self) {
        let until = Instant::now().checked_add(QUARANTINE);
        if let Ok(mut slot) = self.quarantined_until.lock() {
            *slot = until;
        }
        tracing::warn!(
            node = %self.addr,
            seconds = QUARANTINE.as_secs(),
            "node answered against the answer checks, left out of routing"
        );
    }

    /// Whether the node is quarantined now.
    pub fn is_quarantined(&self) -> bool {
        self.quarantined_until
            .lock()
            .map(|slot| slot.is_some_and(|until| Instant::now() < until))
            // A poisoned lock: a thread panicked while quarantining it.
            .unwrap_or(true)
    }

    /// Calls currently outstanding on this node.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Whether the last health verdict was good (nodes start healthy).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the node's certificate was refused (wrong identity, not from the
    /// cluster CA): such a node gets no traffic at all.
    pub fn is_rejected(&self) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|check| check.is_rejected())
    }

    /// The identity the node's certificate must name (node TLS only).
    pub fn expected_identity(&self) -> Option<&str> {
        self.identity.as_ref().map(|check| check.expected.as_str())
    }

    /// Records a health verdict; returns whether it changed.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Leaves the node out of routing after a transport failure, until a health
    /// check passes.
    pub fn mark_unhealthy(&self) {
        if self.set_healthy(false) {
            tracing::warn!(
                node = %self.addr,
                "node left out of routing until a health check passes"
            );
        }
    }

    /// Counts a call as in flight until the guard drops.
    pub fn start_call(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { node: self.clone() }
    }
}

/// An outstanding call; dropping it (answer, error or cancellation) ends it.
#[derive(Debug)]
pub struct InFlight {
    node: Arc<NodeHandle>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.node.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Channels and per-node state by node address.
#[derive(Debug)]
pub struct NodeChannels {
    nodes: Mutex<FxHashMap<String, Arc<NodeHandle>>>,
    seed: AtomicUsize,
    connect_timeout: Duration,
    tls: Option<Arc<NodeTls>>,
}

impl NodeChannels {
    /// An empty pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            nodes: Mutex::new(FxHashMap::default()),
            seed: AtomicUsize::new(0x9e37_79b9),
            connect_timeout,
            tls: None,
        }
    }

    /// Mutual TLS toward every node, checking each node's certificate against its
    /// registration; `None` keeps plaintext.
    pub fn with_tls(mut self, tls: Option<Arc<NodeTls>>) -> Self {
        self.tls = tls;
        self
    }

    /// The node `record` registers, its channel created on first use.
    /// Connection happens on the first request, so a dead node fails that request
    /// quickly instead of blocking this call.
    pub fn node(&self, record: &NodeRecord) -> Result<Arc<NodeHandle>, String> {
        let mut nodes = self.lock()?;
        self.lookup(&mut nodes, record)
    }

    fn lock(&self) -> Result<MutexGuard<'_, FxHashMap<String, Arc<NodeHandle>>>, String> {
        self.nodes
            .lock()
            .map_err(|_| "channel pool poisoned".to_string())
    }

    fn lookup(
        &self,
        nodes: &mut FxHashMap<String, Arc<NodeHandle>>,
        record: &NodeRecord,
    ) -> Result<Arc<NodeHandle>, String> {
        let addr = record.addr.as_str();
        let expected = match &self.tls {
            Some(_) => Some(node_identity(record.role, record.shard).ok_or_else(|| {
                format!("node {addr} registers no shard, so no identity to check")
            })?),
            None => None,
        };
        if let Some(node) = nodes.get(addr) {
            // The same address registered as another role or shard needs another
            // check, hence another channel.
            if node.expected_identity() == expected.as_deref() {
                return Ok(node.clone());
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad node address {addr:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .initial_stream_window_size(STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let (endpoint, identity) = match (&self.tls, expected) {
            (Some(tls), Some(expected)) => {
                let check = Arc::new(IdentityCheck::new(addr, expected));
                (tls.secure(endpoint, check.clone())?, Some(check))
            }
            _ => (endpoint, None),
        };
        let node = Arc::new(NodeHandle {
            addr: addr.to_string(),
            // TCP with Nagle's algorithm off and one write per message (the
            // endpoint's own TCP settings are for tonic's connector, unused).
            channel: endpoint
                .connect_with_connector_lazy(recsys_server::coalesced_writes::Connector::default()),
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            identity,
            quarantined_until: Mutex::new(None),
        });
        nodes.insert(addr.to_string(), node.clone());
        Ok(node)
    }

    /// Drops the channels of addresses no longer in the cluster, so churn does not
    /// leak connections.
    pub fn retain(&self, live: &FxHashSet<&str>) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.retain(|addr, _| live.contains(addr.as_str()));
        }
    }

    /// A cheap per-call pseudo-random number (splitmix64 over a counter): replica
    /// choice needs spread, not quality, and no lock.
    fn random(&self) -> usize {
        let mut z = (self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15_u64 as usize, Ordering::Relaxed)
            as u64)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as usize
    }

    /// The replicas of one shard (or the ranking pool) in the order to try them,
    /// with their handles (one lock for all of them): the less busy of two random
    /// healthy replicas first, the other second (the retry or hedge target), then
    /// the rest. Unhealthy replicas, and those whose address is unusable, come
    /// last and only matter when no healthy one is left. Nodes whose certificate
    /// was refused and quarantined replicas are not listed at all.
    pub fn replica_order(&self, replicas: &[NodeRecord]) -> Vec<Result<Arc<NodeHandle>, String>> {
        let mut healthy = Vec::with_capacity(replicas.len());
        let mut unhealthy = Vec::new();
        match self.lock() {
            Ok(mut nodes) => {
                for replica in replicas {
                    match self.lookup(&mut nodes, replica) {
                        Ok(node) if node.is_rejected() || node.is_quarantined() => {}
                        Ok(node) if node.is_healthy() => healthy.push(node),
                        other => unhealthy.push(other),
                    }
                }
            }
            Err(poisoned) => unhealthy.extend(replicas.iter().map(|_| Err(poisoned.clone()))),
        }
        if healthy.len() >= 2 {
            let n = healthy.len();
            let a = self.random() % n;
            let b = (a + 1 + self.random() % (n - 1)) % n;
            let (first, second) = if healthy[b].in_flight() < healthy[a].in_flight() {
                (b, a)
            } else {
                (a, b)
            };
            let rest = (0..n).filter(|&i| i != first && i != second);
            healthy = [first, second]
                .into_iter()
                .chain(rest)
                .map(|i| healthy[i].clone())
                .collect();
        }
        healthy.into_iter().map(Ok).chain(unhealthy).collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use recsys_discovery::{NodeState, Role};

    /// A serving retrieval replica of shard 0 of 1 at `addr` (the fan-out tests use it too).
    pub(crate) fn replica(addr: &str) -> NodeRecord {
        NodeRecord {
            node_id: addr.into(),
            addr: addr.into(),
            role: Role::Retrieval,
            shard: Some(0),
            shard_count: Some(1),
            bundle_version: String::new(),
            state: NodeState::Serving,
            versions: Vec::new(),
        }
    }

    fn addrs(pool: &NodeChannels, replicas: &[NodeRecord]) -> Vec<String> {
        pool.replica_order(replicas)
            .into_iter()
            .map(|node| node.unwrap().addr.clone())
            .collect()
    }

    #[tokio::test]
    async fn the_less_busy_of_two_goes_first_and_unhealthy_last() {
        let pool = NodeChannels::new(Duration::from_secs(1));
        let replicas = [replica("127.0.0.1:1"), replica("127.0.0.1:2")];
        let busy = pool.node(&replicas[0]).unwrap();
        let _calls: Vec<_> = (0..3).map(|_| busy.start_call()).collect();
        for _ in 0..20 {
            let order = addrs(&pool, &replicas);
            assert_eq!(order[0], "127.0.0.1:2");
            assert_eq!(order.len(), 2);
        }
        drop(_calls);
        assert_eq!(busy.in_flight(), 0);
        // Quarantined: not listed, even as a last resort.
        busy.quarantine();
        assert_eq!(addrs(&pool, &replicas), ["127.0.0.1:2"]);
        *busy.quarantined_until.lock().unwrap() = None;
        pool.node(&replicas[1]).unwrap().mark_unhealthy();
        for _ in 0..20 {
            let order = addrs(&pool, &replicas);
            assert_eq!(order[0], "127.0.0.1:1");
            assert_eq!(order[1], "127.0.0.1:2");
        }
    }

    #[tokio::test]
    async fn every_replica_is_listed_once_and_load_spreads() {
        let pool = NodeChannels::new(Duration::from_secs(1));
        let replicas: Vec<_> = (1..=4)
            .map(|i| replica(&format!("127.0.0.1:{i}")))
            .collect();
        let mut firsts = FxHashMap::default();
        for _ in 0..400 {
            let mut addrs = addrs(&pool, &replicas);
            *firsts.entry(addrs[0].clone()).or_insert(0) += 1;
            addrs.sort();
            addrs.dedup();
            assert_eq!(addrs.len(), 4);
        }
        assert_eq!(firsts.len(), 4, "{firsts:?}");
        assert!(firsts.values().all(|&n| n > 40), "{firsts:?}");
    }
}
