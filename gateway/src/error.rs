//! Errors of the gateway and their one mapping to gRPC statuses.

use recsys_bundle::BundleError;
use recsys_server::exact_searches::ExactRefused;

/// What can stop the gateway from answering.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request breaks a limit; the message names the field and the limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field.
        field: &'static str,
        /// What is wrong and what the limit is.
        reason: String,
    },
    /// The user id is not in the query model's vocabulary and the request has no
    /// user feature the model reads.
    #[error(
        "user_id {0:?} is not known to the bundle's query model; send user_features or a query_embedding instead"
    )]
    UnknownUser(String),
    /// `similar_to_item_id` names an item its shard does not hold.
    #[error(
        "similar_to_item_id: item {item} is not in bundle version {version:?} (never was, or a change deleted it)"
    )]
    UnknownItem {
        /// The item asked about.
        item: u64,
        /// The version the request was answered from.
        version: String,
    },
    /// The bundle has no query model, so only embeddings are accepted.
    #[error("user_id: the bundle has no query model; send a query_embedding instead")]
    NoQueryModel,
    /// The gateway has not loaded its bundle.
    #[error("gateway not ready: {0}")]
    NotReady(String),
    /// Not one shard answered, so there is no partial answer to give.
    #[error("no shard answered: {0}")]
    NoShardAnswered(String),
    /// Not one shard answered because every replica asked refused the search
    /// under its admission limit: answered `RESOURCE_EXHAUSTED`, as the nodes
    /// did, so that clients back off instead of failing over to another gateway
    /// that fans out to the same overloaded shards.
    #[error("the shards are overloaded: {0}")]
    ShardsOverloaded(String),
    /// Not one shard answered in the time the request left for retrieval: the
    /// caller's deadline, not the cluster, is what fell short.
    #[error("deadline exceeded before any shard answered: {0}")]
    DeadlineExceeded(String),
    /// An exact search was refused: disabled, or too many running.
    #[error("options.exact: {0}")]
    ExactRefused(#[from] recsys_server::exact_searches::ExactRefused),
    /// Loading the bundle failed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The membership description is unusable.
    #[error(transparent)]
    Discovery(#[from] recsys_discovery::DiscoveryError),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] recsys_server::grpc::ReflectionError),
    /// The server's router could not be built (TLS material, reflection).
    #[error(transparent)]
    Router(#[from] recsys_server::grpc::RouterError),
    /// The TLS material toward the nodes is unusable.
    #[error("node tls: {0}")]
    NodeTls(#[from] recsys_server::tls::TlsError),
    /// The API key file is unusable at start.
    #[error("api keys {}: {reason}", path.display())]
    ApiKeys {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the line.
        reason: String,
    },
    /// The session key file is unusable at start.
    #[error("session keys {}: {reason}", path.display())]
    SessionKeys {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong, with the line.
        reason: String,
    },
    /// The impression log's directory is unusable at start.
    #[error("impression log {}: {reason}", path.display())]
    ImpressionLog {
        /// The directory.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The ranker shares file is unusable at start.
    #[error("ranker shares {}: {reason}", path.display())]
    RankerShares {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl GatewayError {
    /// An invalid request field.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<GatewayError> for tonic::Status {
    fn from(error: GatewayError) -> Self {
        let message = error.to_string();
        match error {
            GatewayError::InvalidArgument { .. } => tonic::Status::invalid_argument(message),
            GatewayError::UnknownUser(_) | GatewayError::UnknownItem { .. } => {
                tonic::Status::not_found(message)
            }
            GatewayError::NoQueryModel => tonic::Status::failed_precondition(message),
            GatewayError::NotReady(_) | GatewayError::NoShardAnswered(_) => {
                tonic::Status::unavailable(message)
            }
            GatewayError::DeadlineExceeded(_) => tonic::Status::deadline_exceeded(message),
            GatewayError::ShardsOverloaded(_) => tonic::Status::resource_exhausted(message),
            GatewayError::ExactRefused(ExactRefused::Busy(_)) => {
                tonic::Status::resource_exhausted(message)
            }
            GatewayError::ExactRefused(ExactRefused::Disabled) => {
                tonic::Status::failed_precondition(message)
            }
            GatewayError::Bundle(_)
            | GatewayError::Discovery(_)
            | GatewayError::Transport(_)
            | GatewayError::Reflection(_)
            | GatewayError::Router(_)
            | GatewayError::NodeTls(_)
            | GatewayError::ApiKeys { .. }
            | GatewayError::SessionKeys { .. }
            | GatewayError::RankerShares { .. }
            | GatewayError::ImpressionLog { .. } => tonic::Status::internal(message),
        }
    }
}
