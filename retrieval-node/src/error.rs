//! Errors of the retrieval node and their one mapping to gRPC statuses.

use recsys_bundle::BundleError;
use recsys_server::exact_searches::ExactRefused;

/// What can go wrong while loading the shard or answering a search.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The request breaks a limit; the message names the field and the limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong and what the limit is.
        reason: String,
    },
    /// The shard is not loaded (yet, or ever: the message says which file failed).
    #[error("shard not ready: {0}")]
    NotReady(String),
    /// The request names a bundle version this node does not serve (a rollout
    /// under way): FAILED_PRECONDITION, so the caller asks another replica.
    #[error("{0}")]
    VersionNotServed(String),
    /// The bundle could not be loaded.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// usearch failed during a search.
    #[error("search failed: {0}")]
    Search(String),
    /// An exact search was refused: disabled, or too many running.
    #[error("exact: {0}")]
    ExactRefused(#[from] ExactRefused),
    /// The caller's deadline passed before the search could start.
    #[error("the deadline passed before the search started")]
    DeadlineExceeded,
    /// The shard has not applied the change log as far as the caller asked
    /// (`min_log_revision`) within the time it could wait.
    #[error(
        "min_log_revision: the shard has applied the item change log up to revision {applied}, not {wanted}"
    )]
    Behind {
        /// The last revision applied.
        applied: u64,
        /// The revision asked for.
        wanted: u64,
    },
    /// The search pool is gone (the node is shutting down).
    #[error("search pool closed")]
    PoolClosed,
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The server's router could not be built (TLS material, reflection).
    #[error(transparent)]
    Router(#[from] recsys_server::grpc::RouterError),
    /// The item change log could not be set up (a malformed etcd endpoint).
    #[error("item change log: {0}")]
    ChangeLog(#[from] recsys_catalog_log::LogError),
}

impl From<recsys_index::SearchError> for NodeError {
    fn from(error: recsys_index::SearchError) -> Self {
        match error {
            recsys_index::SearchError::Dimensions { .. } => {
                Self::invalid("query", error.to_string())
            }
            recsys_index::SearchError::Usearch(message) => Self::Search(message),
        }
    }
}

impl NodeError {
    /// An invalid request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<NodeError> for tonic::Status {
    fn from(error: NodeError) -> Self {
        let message = error.to_string();
        match error {
            NodeError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            NodeError::NotReady(_) | NodeError::PoolClosed => tonic::Status::unavailable(message),
            NodeError::Bundle(_) => tonic::Status::failed_precondition(message),
            NodeError::ExactRefused(ExactRefused::Busy(_)) => {
                tonic::Status::resource_exhausted(message)
            }
            NodeError::ExactRefused(ExactRefused::Disabled) => {
                tonic::Status::failed_precondition(message)
            }
            NodeError::DeadlineExceeded => tonic::Status::deadline_exceeded(message),
            NodeError::Behind { .. } | NodeError::VersionNotServed(_) => {
                tonic::Status::failed_precondition(message)
            }
            NodeError::Search(_)
            | NodeError::Transport(_)
            | NodeError::Router(_)
            | NodeError::ChangeLog(_) => tonic::Status::internal(message),
        }
    }
}
