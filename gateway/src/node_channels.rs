//! gRPC channels to nodes (retrieval and ranking), one per address, created lazily and reused;
//! and the order in which the replicas of a shard or the ranking pool are tried.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use recsys_discovery::NodeRecord;
use rustc_hash::FxHashMap;
use tonic::transport::{Channel, Endpoint};

/// Channels by node address.
#[derive(Debug)]
pub struct NodeChannels {
    channels: Mutex<FxHashMap<String, Channel>>,
    next: AtomicUsize,
    connect_timeout: Duration,
}

impl NodeChannels {
    /// An empty pool whose connections give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        Self {
            channels: Mutex::new(FxHashMap::default()),
            next: AtomicUsize::new(0),
            connect_timeout,
        }
    }

    /// The channel to `addr` (`host:port`), created on first use. Connection
    /// happens on the first request, so a dead node fails that request quickly
    /// instead of blocking this call.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| "channel pool poisoned".to_string())?;
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad node address {addr:?}: {e}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// The replicas of one shard in the order to try them: rotated per request so
    /// load spreads, the second entry being the retry target.
    pub fn replica_order<'a>(&self, replicas: &'a [NodeRecord]) -> Vec<&'a NodeRecord> {
        if replicas.is_empty() {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % replicas.len();
        replicas[start..].iter().chain(&replicas[..start]).collect()
    }
}
