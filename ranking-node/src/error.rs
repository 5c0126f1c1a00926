//! Errors of the ranking node and their one mapping to gRPC statuses.

use std::path::PathBuf;

use recsys_bundle::BundleError;
use recsys_model::{ModelError, RankError};

use crate::batcher::QueueError;

/// What can go wrong while running the node or answering `Rank`.
#[derive(Debug, thiserror::Error)]
pub enum RankingError {
    /// The request breaks a limit; the message names the field and the limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: String,
        /// What is wrong and what the limit is.
        reason: String,
    },
    /// The ranker is not loaded (yet, or ever: the message says which file failed).
    #[error("{0}")]
    NotReady(String),
    /// The request names a bundle version this node does not serve (a rollout
    /// under way): FAILED_PRECONDITION, so the caller asks another node.
    #[error("{0}")]
    VersionNotServed(String),
    /// The request names a ranker variant its bundle version does not carry.
    #[error("{0}")]
    VariantNotServed(String),
    /// The scoring queue refused the request.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The ranker could not score the request.
    #[error(transparent)]
    Rank(#[from] RankError),
    /// The caller's deadline passed while the request waited for a scoring thread.
    #[error(transparent)]
    DeadlineExceeded(#[from] crate::batcher::Expired),
    /// The scoring pass ended without an answer (it panicked; the thread lives on).
    #[error("scoring pass failed without an answer")]
    NoAnswer,
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The scoring threads could not be started.
    #[error("scoring threads: {0}")]
    Threads(std::io::Error),
    /// The server's router could not be built (TLS material, reflection).
    #[error(transparent)]
    Router(#[from] recsys_server::grpc::RouterError),
    /// The item change log could not be set up (a malformed etcd endpoint).
    #[error("item change log: {0}")]
    ChangeLog(recsys_catalog_log::LogError),
}

/// Why the node's ranker could not be loaded; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RankerLoadError {
    /// The bundle's manifest could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The bundle has no ranker.
    #[error("{}: the bundle has no ranker", .0.display())]
    NoRanker(PathBuf),
    /// The ranker's files do not load (the message names the file and tensor).
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl RankingError {
    /// An invalid request field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A full queue is back-pressure the gateway answers by falling back to retrieval
/// order (and does not count against the node's health); a closed one, or a
/// ranker not loaded, means this node cannot answer now, which the gateway
/// retries elsewhere; input the ranker refuses is the caller's to fix.
impl From<RankingError> for tonic::Status {
    fn from(error: RankingError) -> Self {
        let message = error.to_string();
        match error {
            RankingError::InvalidArgument { .. }
            | RankingError::Rank(
                RankError::UnknownItems(_) | RankError::BadFeature(_) | RankError::HeadWeights(_),
            ) => tonic::Status::invalid_argument(message),
            RankingError::Queue(QueueError::Full { .. }) => {
                tonic::Status::resource_exhausted(message)
            }
            RankingError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            RankingError::Queue(QueueError::Closed) | RankingError::NotReady(_) => {
                tonic::Status::unavailable(message)
            }
            RankingError::VersionNotServed(_) | RankingError::VariantNotServed(_) => {
                tonic::Status::failed_precondition(message)
            }
            RankingError::Rank(_)
            | RankingError::NoAnswer
            | RankingError::Transport(_)
            | RankingError::Threads(_)
            | RankingError::Router(_)
            | RankingError::ChangeLog(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn a_full_queue_is_resource_exhausted_and_a_closed_one_unavailable() {
        let full = Status::from(RankingError::from(QueueError::Full {
            requests: 4,
            candidates: 10,
            max_requests: 4,
            max_candidates: 100,
        }));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert!(
            full.message()
                .starts_with("ranking queue full: 4 requests with 10 candidates waiting"),
            "{}",
            full.message()
        );
        let expired = Status::from(RankingError::from(crate::batcher::Expired));
        assert_eq!(expired.code(), Code::DeadlineExceeded);
        let closed = Status::from(RankingError::from(QueueError::Closed));
        assert_eq!(closed.code(), Code::Unavailable);
    }

    #[test]
    fn refused_input_is_invalid_and_a_model_failure_internal() {
        let unknown = Status::from(RankingError::from(RankError::UnknownItems(vec![7])));
        assert_eq!(unknown.code(), Code::InvalidArgument);
        let bad = Status::from(RankingError::invalid(
            "user_id",
            "is 2000 bytes, the limit is 1024",
        ));
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert_eq!(bad.message(), "user_id: is 2000 bytes, the limit is 1024");
        let model = RankError::Model(recsys_model::ModelError::Config("x".into()));
        assert_eq!(
            Status::from(RankingError::from(model)).code(),
            Code::Internal
        );
        assert_eq!(Status::from(RankingError::NoAnswer).code(), Code::Internal);
        let loading = Status::from(RankingError::NotReady("ranker still loading".into()));
        assert_eq!(loading.code(), Code::Unavailable);
        let weights = RankError::HeadWeights("head_weights[x]: no such head".into());
        let weights = Status::from(RankingError::from(weights));
        assert_eq!(weights.code(), Code::InvalidArgument);
        assert_eq!(weights.message(), "head_weights[x]: no such head");
    }

    /// The model's head limits are the API's, which the gateway checks first.
    #[test]
    fn head_limits_are_the_apis() {
        assert_eq!(
            recsys_model::MAX_HEAD_WEIGHT,
            recsys_proto::limits::MAX_HEAD_WEIGHT
        );
        assert_eq!(recsys_model::MAX_HEADS, recsys_proto::limits::MAX_HEADS);
    }
}
