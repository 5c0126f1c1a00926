//! A node's life in etcd, as its `run` function sees it: register once its data is
//! loaded, and on shutdown drain before it stops.
//!
//! The drain follows Milvus' session stop and Kubernetes' pod termination: put
//! `state: draining` (gateways stop routing new calls within a watch round trip),
//! wait a short grace so that calls already on their way arrive, let the gRPC server
//! finish what is in flight (bounded), then revoke the lease so the key goes at once
//! rather than at the end of its TTL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::registration::{Registration, RegistrationOptions};
use crate::{EtcdAccess, NodeRecord, NodeState, Role, VersionState};

/// Where and how a node registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceOptions {
    /// The etcd to register in, and how to reach it.
    pub etcd: EtcdAccess,
    /// The cluster name in `/recsys/{cluster}/nodes/`.
    pub cluster: String,
    /// The node's id; unique in the cluster.
    pub node_id: String,
    /// The address other nodes reach it at (`host:port`).
    pub advertise_addr: String,
    /// Lease time to live.
    pub lease_ttl: Duration,
    /// Time between announcing `draining` and refusing new calls.
    pub drain_grace: Duration,
    /// Longest wait for in-flight calls once the server stops taking new ones.
    pub drain_timeout: Duration,
}

impl AnnounceOptions {
    /// Options with the default lease (10 s), grace (500 ms) and drain bound (10 s).
    pub fn new(
        etcd: impl Into<EtcdAccess>,
        cluster: impl Into<String>,
        node_id: impl Into<String>,
        advertise_addr: impl Into<String>,
    ) -> Self {
        Self {
            etcd: etcd.into(),
            cluster: cluster.into(),
            node_id: node_id.into(),
            advertise_addr: advertise_addr.into(),
            lease_ttl: crate::registration::DEFAULT_LEASE_TTL,
            drain_grace: Duration::from_millis(500),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// A node's registration, if it has one; shared between its loader (which
/// registers) and its shutdown path (which drains and deregisters).
#[derive(Debug, Default)]
pub struct Announcer {
    options: Option<AnnounceOptions>,
    registration: Mutex<Option<Arc<Registration>>>,
    /// The versions the node holds, put with every registration.
    versions: Mutex<Vec<VersionState>>,
}

impl Announcer {
    /// An announcer for a node with (`Some`) or without etcd.
    pub fn new(options: Option<AnnounceOptions>) -> Arc<Self> {
        Arc::new(Self {
            options,
            registration: Mutex::new(None),
            versions: Mutex::new(Vec::new()),
        })
    }

    /// Registers the node as serving `shard` of `shard_count` (retrieval) or as a
    /// ranking node; does nothing without etcd. Call when the node is ready.
    pub fn register(
        &self,
        role: Role,
        shard: Option<u32>,
        shard_count: Option<u32>,
        bundle_version: &str,
    ) {
        let Some(options) = &self.options else {
            return;
        };
        let record = NodeRecord {
            node_id: options.node_id.clone(),
            addr: options.advertise_addr.clone(),
            role,
            shard,
            shard_count,
            bundle_version: bundle_version.to_string(),
            state: NodeState::Serving,
            versions: self
                .versions
                .lock()
                .map(|versions| versions.clone())
                .unwrap_or_default(),
        };
        let mut registration_options =
            RegistrationOptions::new(options.etcd.clone(), options.cluster.clone(), record);
        registration_options.lease_ttl = options.lease_ttl;
        let registration = Arc::new(Registration::start(registration_options));
        tracing::info!(key = registration.key(), "registering in etcd");
        if let Ok(mut slot) = self.registration.lock() {
            *slot = Some(registration);
        }
    }

    /// Records the versions the node holds and its primary one, and puts them
    /// in its registration if it has one (in the background: etcd being away
    /// never holds up a switch). Without etcd it does nothing.
    pub fn set_versions(&self, primary: &str, versions: Vec<VersionState>) {
        if self.options.is_none() {
            return;
        }
        if let Ok(mut slot) = self.versions.lock() {
            slot.clone_from(&versions);
        }
        let Some(registration) = self.current() else {
            return;
        };
        let primary = primary.to_string();
        tokio::spawn(async move {
            let update = registration.update(|record| {
                if !primary.is_empty() {
                    record.bundle_version = primary;
                }
                record.versions = versions;
            });
            if let Err(error) = update.await {
                tracing::debug!(%error, "versions not put in etcd yet; the next registration carries them");
            }
        });
    }

    fn current(&self) -> Option<Arc<Registration>> {
        self.registration.lock().ok().and_then(|slot| slot.clone())
    }

    /// The token that stops the gRPC server: cancelled when `shutdown` is, after the
    /// node announced `draining` and waited the grace (at once without etcd).
    pub fn server_stop(self: &Arc<Self>, shutdown: CancellationToken) -> CancellationToken {
        let stop = CancellationToken::new();
        let (announcer, trigger) = (self.clone(), stop.clone());
        tokio::spawn(async move {
            shutdown.cancelled().await;
            if let (Some(registration), Some(options)) = (announcer.current(), &announcer.options) {
                match registration.set_state(NodeState::Draining).await {
                    Ok(()) => tracing::info!("announced draining"),
                    Err(error) => tracing::warn!(%error, "could not announce draining"),
                }
                tokio::time::sleep(options.drain_grace).await;
            }
            trigger.cancel();
        });
        stop
    }

    /// How long the server may take to finish in-flight calls once stopped.
    pub fn drain_timeout(&self) -> Duration {
        self.options
            .as_ref()
            .map_or(Duration::from_secs(10), |o| o.drain_timeout)
    }

    /// Revokes the lease so the node leaves etcd at once. Call after the server stopped.
    pub async fn deregister(&self) {
        let registration = self.registration.lock().ok().and_then(|mut s| s.take());
        if let Some(registration) = registration {
            match Arc::try_unwrap(registration) {
                Ok(registration) => registration.deregister().await,
                Err(_) => tracing::warn!("registration still shared, its lease will expire"),
            }
        }
    }
}

/// Runs `serve` until it returns, but no longer than the announcer's drain bound
/// after `stop` is cancelled: a client that keeps a stream open must not keep a
/// stopping node alive. Then deregisters.
pub async fn serve_and_drain<F, E>(
    announcer: &Announcer,
    stop: &CancellationToken,
    serve: F,
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let bound = announcer.drain_timeout();
    let outcome = tokio::select! {
        outcome = serve => outcome,
        () = async {
            stop.cancelled().await;
            tokio::time::sleep(bound).await;
        } => {
            tracing::warn!(after_s = bound.as_secs_f64(), "in-flight calls outlived the drain bound, stopping anyway");
            Ok(())
        }
    };
    announcer.deregister().await;
    outcome
}
