//! How to start a local cluster: the bundle, replicas, discovery, TLS and the
//! gateway's tunables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use recsys_discovery::etcd_auth::ClusterUser;
use recsys_discovery::{AnnounceOptions, EtcdAccess};
use recsys_gateway::RequestPolicy;
use recsys_retrieval_node::LoadMode;
use tokio::net::TcpListener;

use crate::ClusterTls;

/// How to start a local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterOptions {
    /// The bundle every node loads: a version directory, or a bundle root whose
    /// versions every server follows.
    pub bundle_dir: PathBuf,
    /// How servers move between versions of a bundle root.
    pub versions: recsys_discovery::VersionOptions,
    /// Replicas per shard.
    pub replicas: usize,
    /// Searches at once per retrieval node (0 = one per core).
    pub search_threads: usize,
    /// Ranking nodes; `None` starts one when the bundle has a ranker.
    pub ranking_nodes: Option<usize>,
    /// Where the gateway listens; port 0 picks a free one.
    pub gateway_addr: SocketAddr,
    /// Gateway request tunables.
    pub policy: RequestPolicy,
    /// How long to wait for every server to report SERVING.
    pub ready_timeout: Duration,
    /// Discover through etcd instead of a static list: nodes register under
    /// this cluster name and the gateway watches it.
    pub etcd: Option<EtcdCluster>,
    /// TLS everywhere, mutual inside and on the gateway, with these certificates.
    pub tls: Option<ClusterTls>,
    /// The gateway's ranker shares file (`--ranker-shares`), re-read while it runs.
    pub ranker_shares: Option<PathBuf>,
    /// The gateway's impression log (`--impression-log`).
    pub impression_log: Option<recsys_gateway::impression_log::ImpressionLogOptions>,
    /// How every retrieval node opens its shard (`--load-mode`).
    pub load_mode: LoadMode,
}

/// An etcd to register in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdCluster {
    /// The etcd and how to reach it (URLs, TLS; credentials come from `users`).
    pub etcd: EtcdAccess,
    /// The cluster name in `/recsys/{cluster}/nodes/`.
    pub cluster: String,
    /// Lease TTL of the nodes' registrations.
    pub lease_ttl: Duration,
    /// With etcd auth on: the directory of the password files
    /// `recsys_discovery::etcd_auth::setup` wrote; every server logs in as the
    /// user of its kind.
    pub users: Option<PathBuf>,
}

impl EtcdCluster {
    /// How a server of `kind` reaches etcd: as its own user when auth is on.
    pub fn access_for(&self, kind: ClusterUser) -> EtcdAccess {
        let credentials = self
            .users
            .as_ref()
            .map(|dir| kind.credentials(&self.cluster, dir));
        self.etcd.clone().with_credentials(credentials)
    }
}

impl LocalClusterOptions {
    /// How a node listening on `listener` announces itself, if the cluster uses etcd.
    pub(crate) fn announce(
        &self,
        role: &str,
        kind: ClusterUser,
        listener: &TcpListener,
    ) -> Option<AnnounceOptions> {
        let etcd = self.etcd.as_ref()?;
        let addr = listener.local_addr().ok()?;
        let mut options = AnnounceOptions::new(
            etcd.access_for(kind),
            etcd.cluster.clone(),
            format!("{role}@{addr}"),
            addr.to_string(),
        );
        options.lease_ttl = etcd.lease_ttl;
        Some(options)
    }
}

impl LocalClusterOptions {
    /// One replica per shard, gateway on a free loopback port.
    pub fn new(bundle_dir: impl Into<PathBuf>) -> Self {
        Self {
            bundle_dir: bundle_dir.into(),
            versions: Default::default(),
            replicas: 1,
            search_threads: 0,
            ranking_nodes: None,
            gateway_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            policy: RequestPolicy::default(),
            ready_timeout: Duration::from_secs(60),
            etcd: None,
            tls: None,
            ranker_shares: None,
            impression_log: None,
            load_mode: LoadMode::default(),
        }
    }
}
