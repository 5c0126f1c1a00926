//! Cluster membership: which node serves which shard or role.
//!
//! The gateway routes from a [`ClusterView`], a snapshot that a [`Membership`]
//! publishes on a `tokio::sync::watch` channel whenever it changes. Two
//! implementations share the trait: [`StaticMembership`], a fixed list that is the
//! embedded default for one machine, and etcd (the discovery issue), where nodes
//! register under `/recsys/{cluster}/nodes/{role}/{node_id}`.

pub mod node;
pub mod static_membership;
pub mod view;

pub use node::{NodeRecord, NodeState, Role};
pub use static_membership::{StaticMembership, StaticSpec};
pub use view::ClusterView;

use std::sync::Arc;

/// Errors of reading membership.
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
}

/// A source of cluster views.
pub trait Membership: Send + Sync + 'static {
    /// The latest view and a receiver that yields every later one.
    fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<ClusterView>>;
}
