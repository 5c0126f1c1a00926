//! Cluster membership: which node serves which shard or role.
//!
//! The gateway routes from a [`ClusterView`], a snapshot that a [`Membership`]
//! publishes on a `tokio::sync::watch` channel whenever it changes. Two
//! implementations share the trait: [`StaticMembership`], a fixed list that is the
//! embedded default for one machine, and [`EtcdMembership`], which lists and watches
//! the registrations under `/recsys/{cluster}/nodes/` ([`etcd`] holds the layout).
//! Nodes write those registrations with a [`Registration`]: a key on a lease kept
//! alive in the background, put again whenever the lease is lost; an [`Announcer`]
//! is how a node's `run` drives it (register when ready, drain on shutdown).
//!
//! The `test-support` feature adds `EtcdServer`, a throwaway real etcd for
//! integration tests.

pub mod announce;
pub mod backoff;
pub mod desired_version;
pub mod etcd;
pub mod etcd_access;
pub mod etcd_auth;
pub mod etcd_membership;
#[cfg(feature = "test-support")]
pub mod etcd_server;
#[cfg(feature = "flags")]
pub mod flags;
pub mod identity;
pub mod node;
pub mod registration;
pub mod static_membership;
pub mod version_state;
pub mod versions;
pub mod view;

pub use announce::{AnnounceOptions, Announcer, serve_and_drain};
pub use backoff::Backoff;
pub use etcd::{node_key, nodes_prefix};
pub use etcd_access::{EtcdAccess, EtcdCredentials, EtcdTls};
pub use etcd_membership::{EtcdMembership, EtcdOptions};
#[cfg(feature = "test-support")]
pub use etcd_server::{EtcdServer, EtcdServerTls};
pub use identity::{GATEWAY_IDENTITY, node_identity};
pub use node::{NodeRecord, NodeState, Role};
pub use registration::{DEFAULT_LEASE_TTL, Registration, RegistrationOptions};
pub use static_membership::{StaticMembership, StaticSpec};
pub use version_state::{VersionPhase, VersionState};
pub use versions::{
    DriverOptions, Gate, SwitchMode, Unavailable, VersionOptions, VersionSet, replace_turn,
};
pub use view::{ClusterView, InvalidRecord, MAX_SHARD_COUNT, check_record};

use std::sync::Arc;
use std::time::Duration;

/// Errors of reading membership, registering, and (tests) running etcd.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A static membership file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A membership description is malformed.
    #[error("invalid membership: {0}")]
    Invalid(String),
    /// An etcd call failed.
    #[error("etcd {operation} failed: {source}")]
    Etcd {
        /// The call, e.g. `get` or `lease grant`.
        operation: &'static str,
        /// The client's error.
        source: etcd_client::Error,
    },
    /// etcd refused a call for who the client is: auth is on and the user is
    /// unknown, its password wrong, or its role lacks the permission.
    #[error(
        "etcd refused {operation}: {message} (check --etcd-user, its password file and its role; see `recsys etcd-auth`)"
    )]
    Denied {
        /// The call.
        operation: &'static str,
        /// etcd's message, e.g. `etcdserver: permission denied`.
        message: String,
    },
    /// etcd's database reached its size quota (`--quota-backend-bytes`, 2 GiB
    /// unless set): it raised its NOSPACE alarm and takes no more writes until
    /// space is freed and the alarm disarmed. Reads go on.
    #[error(
        "etcd refused {operation}: its database is full ({message}); the limit is etcd's --quota-backend-bytes (2 GiB unless set): free space (recsys bundle compact, then recsys items truncate), then `etcdctl defrag` and `etcdctl alarm disarm`"
    )]
    SpaceExceeded {
        /// The call.
        operation: &'static str,
        /// etcd's message, `etcdserver: mvcc: database space exceeded`.
        message: String,
    },
    /// The etcd access options do not fit together.
    #[error("etcd access: {0}")]
    EtcdConfig(String),
    /// An etcd call did not answer in time.
    #[error("etcd {operation} timed out after {after:?}")]
    Timeout {
        /// The call.
        operation: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// etcd answered without the response header that carries the revision.
    #[error("etcd {operation} response has no header")]
    MissingHeader {
        /// The call.
        operation: &'static str,
    },
    /// etcd canceled a watch because the revisions it needs were compacted away.
    #[error("etcd compacted the watched revisions up to {revision}")]
    Compacted {
        /// The compaction revision etcd reported.
        revision: i64,
    },
    /// etcd canceled a watch for another reason.
    #[error("etcd canceled the watch: {reason}")]
    WatchCanceled {
        /// Why, as far as etcd told.
        reason: String,
    },
    /// etcd closed a watch or keepalive stream.
    #[error("etcd closed the {operation} stream")]
    StreamClosed {
        /// The stream's call.
        operation: &'static str,
    },
    /// A lease expired or was revoked, e.g. etcd lost its data.
    #[error("etcd lease {lease:x} is gone")]
    LeaseLost {
        /// The lease id.
        lease: i64,
    },
    /// The node holds no lease right now; its record is remembered and put on the
    /// next registration.
    #[error("not registered with etcd")]
    NotRegistered,
    /// Another rollout changed the desired version between our read and write.
    #[error(
        "another rollout changed the desired version meanwhile; look at --status and try again"
    )]
    ConcurrentRollout,
    /// A rollback with no earlier version in the history.
    #[error("no earlier version to roll back to: {key} holds {rollouts} rollout(s) in force")]
    NoPreviousVersion {
        /// The history key.
        key: String,
        /// Rollouts on the stack.
        rollouts: usize,
    },
    /// The rollout history in etcd is not one.
    #[error("{key} is not a rollout history: {reason}")]
    BadHistory {
        /// The history key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A record could not be encoded.
    #[error("node record encoding failed: {0}")]
    Encode(#[from] serde_json::Error),
    /// No etcd binary to start for tests.
    #[error(
        "etcd not found at /usr/bin/etcd nor on PATH; install it with `apt-get install etcd-server` or `make deps`"
    )]
    EtcdMissing,
    /// A test etcd did not become ready.
    #[error("etcd did not start after {attempts} attempts: {log}")]
    EtcdStart {
        /// Start attempts, each on fresh ports.
        attempts: u32,
        /// The reason and the tail of etcd's log.
        log: String,
    },
    /// A test etcd's process or data directory could not be handled.
    #[error("etcd test server {operation} failed: {source}")]
    EtcdProcess {
        /// What was being done.
        operation: &'static str,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl DiscoveryError {
    /// Whether etcd refused the call for who the client is, or the access
    /// options are wrong: a retry as the same user will not succeed.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Denied { .. } | Self::EtcdConfig(_))
    }
}

/// A source of cluster views.
pub trait Membership: Send + Sync + 'static {
    /// The latest view and a receiver that yields every later one.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ClusterView>>;
}
