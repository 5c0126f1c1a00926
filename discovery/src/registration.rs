//! A node's registration in etcd: its [`NodeRecord`] under
//! `/recsys/{cluster}/nodes/{role}/{node_id}` on a lease kept alive in the background.
//!
//! The task grants a lease of `lease_ttl`, puts the key on it, and sends a keepalive
//! every TTL/3 as etcd's own clients do. A lease that etcd no longer knows (it expired
//! during an outage, or etcd came back with a wiped data dir) or a broken keepalive
//! stream sends the task back to registering: it first tries to resume the old lease,
//! else grants a new one, and puts the record again, retrying with backoff. etcd
//! being away never fails the node: the registration only logs and retries, and
//! [`Registration::registered`] tells whether the key is in place.
//!
//! Every put, by the task or by [`Registration::set_state`], holds one async lock
//! and reads the record under it, so the last put always carries the latest state.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::{OnceCell, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::etcd::{REQUEST_TIMEOUT, connect, node_key, request};
use crate::{DiscoveryError, EtcdAccess, NodeRecord, NodeState};

/// Lease TTL when none is given: the issue's `--lease-ttl` default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// First and longest delay between registration attempts.
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What to register and where.
#[derive(Debug, Clone)]
pub struct RegistrationOptions {
    /// The etcd to register in, and how to reach it.
    pub etcd: EtcdAccess,
    /// The cluster name in `/recsys/{cluster}/nodes/`.
    pub cluster: String,
    /// The value to register; its role and id make the key.
    pub record: NodeRecord,
    /// Lease time to live: how long the key outlives a node that stops without
    /// deregistering. Whole seconds, at least one.
    pub lease_ttl: Duration,
}

impl RegistrationOptions {
    /// Registers `record` in `cluster` with the default lease TTL.
    pub fn new(
        etcd: impl Into<EtcdAccess>,
        cluster: impl Into<String>,
        record: NodeRecord,
    ) -> Self {
        Self {
            etcd: etcd.into(),
            cluster: cluster.into(),
            record,
            lease_ttl: DEFAULT_LEASE_TTL,
        }
    }
}

/// A node's live registration. Dropping it stops the keepalives, and the key goes
/// when its lease expires; [`deregister`](Self::deregister) removes it at once.
pub struct Registration {
    shared: Arc<Shared>,
    registered: watch::Receiver<bool>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// What the handle and the task both use.
struct Shared {
    etcd: EtcdAccess,
    key: String,
    /// The record to put; `set_state` changes it at once, even while etcd is away.
    record: Mutex<NodeRecord>,
    /// The lease the key is on, if any. Held across every put so puts are ordered.
    lease: tokio::sync::Mutex<Option<i64>>,
    client: OnceCell<Client>,
}

impl Registration {
    /// Starts registering in a task on the current tokio runtime. Never fails: an
    /// unreachable etcd is retried until it answers.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(options: RegistrationOptions) -> Self {
        let key = node_key(
            &options.cluster,
            options.record.role,
            &options.record.node_id,
        );
        let shared = Arc::new(Shared {
            etcd: options.etcd,
            key,
            record: Mutex::new(options.record),
            lease: tokio::sync::Mutex::new(None),
            client: OnceCell::new(),
        });
        let (registered_tx, registered) = watch::channel(false);
        let cancel = CancellationToken::new();
        // etcd grants whole seconds; TTL/3 keepalives need at least one.
        let ttl_secs = options.lease_ttl.as_secs().max(1);
        let keeper = Keeper {
            shared: shared.clone(),
            ttl: Duration::from_secs(ttl_secs),
            registered: registered_tx,
        };
        let task = tokio::spawn(keeper.run(cancel.clone()));
        Self {
            shared,
            registered,
            cancel,
            task,
        }
    }

    /// The etcd key of this node.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Whether the key is in etcd on a live lease, as far as the last keepalive knows.
    pub fn registered(&self) -> watch::Receiver<bool> {
        self.registered.clone()
    }

    /// Shorthand for the current value of [`registered`](Self::registered).
    pub fn is_registered(&self) -> bool {
        *self.registered.borrow()
    }

    /// Sets the node's state, e.g. [`NodeState::Draining`] before a graceful stop.
    /// The state is remembered for every later registration at once; the put on the
    /// current lease can fail (etcd away, not registered), which the caller may log
    /// and otherwise ignore.
    pub async fn set_state(&self, state: NodeState) -> Result<(), DiscoveryError> {
        self.update(|record| record.state = state).await
    }

    /// Changes the record (say, the versions the node serves) and puts it, like
    /// [`set_state`](Self::set_state): remembered at once, put when registered.
    pub async fn update(&self, change: impl FnOnce(&mut NodeRecord)) -> Result<(), DiscoveryError> {
        self.shared.update_record(change);
        let put = async {
            let lease = self.shared.lease.lock().await;
            let lease = (*lease).ok_or(DiscoveryError::NotRegistered)?;
            self.shared.put(lease).await
        };
        tokio::time::timeout(REQUEST_TIMEOUT, put)
            .await
            .unwrap_or(Err(DiscoveryError::Timeout {
                operation: "put",
                after: REQUEST_TIMEOUT,
            }))
    }

    /// Stops the keepalives and revokes the lease, which deletes the key; waits at
    /// most about [`REQUEST_TIMEOUT`]. If etcd is away the key expires with its lease.
    pub async fn deregister(mut self) {
        self.cancel.cancel();
        // The task ends at its next await; after this no registration can race us.
        if let Err(error) = (&mut self.task).await {
            warn!(%error, "etcd registration task failed");
        }
        let Some(lease) = self.shared.lease.lock().await.take() else {
            debug!(key = %self.shared.key, "deregistering without a lease");
            return;
        };
        let revoke = async {
            let mut client = self.shared.client().await?;
            request("lease revoke", client.lease_revoke(lease)).await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, revoke).await {
            Ok(Ok(_)) => info!(key = %self.shared.key, lease, "deregistered from etcd"),
            Ok(Err(error)) => {
                warn!(key = %self.shared.key, lease, %error, "etcd lease revoke failed, the key expires with its lease");
            }
            Err(_) => {
                warn!(key = %self.shared.key, lease, "etcd lease revoke timed out, the key expires with its lease");
            }
        }
    }
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("key", &self.shared.key)
            .field("registered", &self.is_registered())
            .finish_non_exhaustive()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Shared {
    /// The client, connected on first use. Connecting is lazy and fails only on a
    /// malformed endpoint.
    async fn client(&self) -> Result<Client, DiscoveryError> {
        self.client
            .get_or_try_init(|| connect(&self.etcd))
            .await
            .cloned()
    }

    fn update_record(&self, change: impl FnOnce(&mut NodeRecord)) {
        change(&mut self.record.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn record_json(&self) -> Result<String, DiscoveryError> {
        let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(serde_json::to_string(&*record)?)
    }

    /// Puts the current record on `lease`. Call with the `lease` lock held.
    async fn put(&self, lease: i64) -> Result<(), DiscoveryError> {
        let value = self.record_json()?;
        let mut client = self.client().await?;
        let options = PutOptions::new().with_lease(lease);
        request("put", client.put(self.key.as_str(), value, Some(options))).await?;
        Ok(())
    }
}

/// The background task: registers, keeps the lease alive, registers again.
struct Keeper {
    shared: Arc<Shared>,
    ttl: Duration,
    registered: watch::Sender<bool>,
}

/// A lease with its keepalive stream.
struct LiveLease {
    id: i64,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Keeper {
    async fn run(self, cancel: CancellationToken) {
        self.register_and_keep_alive(&cancel).await;
        self.registered.send_replace(false);
    }

    /// Loops until `cancel` fires.
    async fn register_and_keep_alive(&self, cancel: &CancellationToken) {
        let mut backoff = Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF);
        let mut previous: Option<i64> = None;
        loop {
            let registering = tokio::select! {
                () = cancel.cancelled() => return,
                registering = self.register(previous) => registering,
            };
            let lease = match registering {
                Ok(lease) => lease,
                Err(error) => {
                    let delay = backoff.next_delay();
                    if backoff.should_warn() {
                        warn!(key = %self.shared.key, %error, failures = backoff.failures(), "etcd registration failed, retrying");
                    } else {
                        debug!(key = %self.shared.key, %error, failures = backoff.failures(), "etcd registration still failing");
                    }
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            backoff.reset();
            previous = Some(lease.id);
            info!(key = %self.shared.key, lease = lease.id, "registered in etcd");
            self.registered.send_replace(true);
            let lost = tokio::select! {
                () = cancel.cancelled() => return,
                lost = self.keep_alive(lease) => lost,
            };
            self.registered.send_replace(false);
            if let DiscoveryError::LeaseLost { .. } = lost {
                previous = None;
            }
            warn!(key = %self.shared.key, error = %lost, "etcd lease keepalive ended, registering again");
        }
    }

    /// Puts the record on a live lease: `previous` if etcd still has it, else a new
    /// one. Holds the lease lock throughout so no `set_state` put interleaves.
    async fn register(&self, previous: Option<i64>) -> Result<LiveLease, DiscoveryError> {
        let mut slot = self.shared.lease.lock().await;
        *slot = None;
        let mut client = self.shared.client().await?;
        let resumed = match previous {
            Some(id) => match request("lease keepalive", client.lease_keep_alive(id)).await {
                Ok((keeper, stream)) => Some((id, keeper, stream)),
                // etcd answers an unknown lease with TTL 0, which the client reports
                // as this error; any other failure means etcd is unreachable.
                Err(DiscoveryError::Etcd {
                    source: etcd_client::Error::LeaseKeepAliveError(reason),
                    ..
                }) => {
                    debug!(lease = id, reason, "previous etcd lease is gone");
                    None
                }
                Err(error) => return Err(error),
            },
            None => None,
        };
        let (id, keeper, stream) = match resumed {
            Some(resumed) => resumed,
            None => {
                let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX);
                let granted = request("lease grant", client.lease_grant(ttl, None)).await?;
                // Remember it before the put: a deregister racing us still revokes it.
                *slot = Some(granted.id());
                let (keeper, stream) =
                    request("lease keepalive", client.lease_keep_alive(granted.id())).await?;
                (granted.id(), keeper, stream)
            }
        };
        *slot = Some(id);
        self.shared.put(id).await?;
        Ok(LiveLease { id, keeper, stream })
    }

    /// Sends a keepalive every TTL/3 until the lease is lost or the stream fails;
    /// returns why.
    async fn keep_alive(&self, mut lease: LiveLease) -> DiscoveryError {
        let period = self.ttl / 3;
        let mut ticks = tokio::time::interval_at(after(period), period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The keepalive handshake just renewed the lease.
        let mut expires = after(self.ttl);
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    if let Err(source) = lease.keeper.keep_alive().await {
                        return DiscoveryError::Etcd { operation: "lease keepalive", source };
                    }
                }
                answer = lease.stream.message() => match answer {
                    Ok(Some(answer)) if answer.ttl() > 0 => {
                        // etcd's answer, not ours: a TTL of 2^63 s must not overflow.
                        expires = after(Duration::from_secs(answer.ttl().unsigned_abs()));
                    }
                    Ok(Some(_)) => return DiscoveryError::LeaseLost { lease: lease.id },
                    Ok(None) => return DiscoveryError::StreamClosed { operation: "lease keepalive" },
                    Err(source) => {
                        return DiscoveryError::Etcd { operation: "lease keepalive", source };
                    }
                },
                // No answer for a whole TTL: etcd has dropped the lease by now.
                () = tokio::time::sleep_until(expires) => {
                    return DiscoveryError::LeaseLost { lease: lease.id };
                }
            }
        }
    }
}

/// `Instant::now() + duration`, saturating at a year from now: a TTL read from
/// etcd or a flag can be anything, and `Instant + Duration` panics on overflow.
fn after(duration: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    let now = Instant::now();
    now.checked_add(duration.min(YEAR)).unwrap_or(now)
}

#[cfg(test)]
mod after_tests {
    use super::*;

    #[test]
    fn a_huge_ttl_does_not_overflow() {
        let far = after(Duration::from_secs(u64::MAX));
        assert!(far > Instant::now());
        assert!(after(Duration::from_secs(i64::MAX.unsigned_abs())) > Instant::now());
    }
}
