//! Why a node call gave no usable answer: the value that retry rules match on
//! and that coverage reports, instead of a string decided at the failure site.

use tonic::Code;

/// Why asking a shard's or the ranking pool's replicas gave no usable answer.
/// The display is the lowercase coverage reason clients see.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeFailure {
    /// Membership lists no replica (or none is routable).
    #[error("no replica available")]
    NoReplica,
    /// The call's share of the request deadline ran out.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The call could not be made (a replica's address is unusable).
    #[error("{0}")]
    Setup(String),
    /// The node, or the transport to it, answered with an error status.
    #[error("{}: {message}", code_name(*code))]
    Status {
        /// The gRPC code.
        code: Code,
        /// The node's message.
        message: String,
    },
    /// The answer's parts disagree (ids against scores, scores against candidates).
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// A shard answered with an item of another shard: the node serves another
    /// shard or bundle.
    #[error(
        "answer holds item {item}, which belongs to shard {belongs_to} of {shard_count}: the node serves another shard or bundle"
    )]
    ForeignItem {
        /// The stray item.
        item: u64,
        /// Its shard.
        belongs_to: u32,
        /// Shards in the bundle.
        shard_count: u32,
    },
    /// A shard answered with the same item twice.
    #[error("answer holds item {0} twice")]
    DuplicateItem(u64),
    /// A shard answered with an item the request excluded.
    #[error("answer holds item {0}, which the request excluded")]
    ExcludedItem(u64),
    /// A shard answered from another bundle version than the gateway serves.
    #[error("answer is of bundle version {answered:?}, the gateway serves {serving:?}")]
    WrongVersion {
        /// The answer's version (its first 64 characters).
        answered: String,
        /// The gateway's.
        serving: String,
    },
    /// A shard answered with a NaN or infinite score.
    #[error("answer holds a non-finite score: item {item} scored {score}")]
    NonFiniteScore {
        /// The item.
        item: u64,
        /// Its score.
        score: f32,
    },
    /// The ranker scored a candidate NaN or infinite.
    #[error("ranking answer holds a non-finite score: candidate {position} scored {score}")]
    NonFiniteRankScore {
        /// The candidate's position in the request.
        position: usize,
        /// Its score.
        score: f32,
    },
}

impl NodeFailure {
    /// The answer broke a guarantee every honest node keeps whatever it is
    /// asked (see `answer_check`): the node is quarantined.
    pub fn breaks_guarantee(&self) -> bool {
        matches!(
            self,
            Self::Malformed(_)
                | Self::ForeignItem { .. }
                | Self::DuplicateItem(_)
                | Self::ExcludedItem(_)
                | Self::WrongVersion { .. }
        )
    }

    /// The answer check this answer failed, as a metric label (`None`: the
    /// failure is not about an answer's content).
    pub fn refused_answer(&self) -> Option<&'static str> {
        Some(match self {
            Self::Malformed(_) => "malformed",
            Self::ForeignItem { .. } => "foreign_item",
            Self::DuplicateItem(_) => "duplicate_item",
            Self::ExcludedItem(_) => "excluded_item",
            Self::WrongVersion { .. } => "wrong_version",
            Self::NonFiniteScore { .. } | Self::NonFiniteRankScore { .. } => "non_finite_score",
            Self::NoReplica | Self::DeadlineExceeded | Self::Setup(_) | Self::Status { .. } => {
                return None;
            }
        })
    }

    /// The node refused the call under its admission limit
    /// (`RESOURCE_EXHAUSTED`): it is alive but overloaded, and a client should
    /// back off rather than fail over.
    pub fn is_overloaded(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: Code::ResourceExhausted,
                ..
            }
        )
    }

    /// The call ran out of time (ours, or the node's view of the deadline).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::DeadlineExceeded
                | Self::Status {
                    code: Code::DeadlineExceeded,
                    ..
                }
        )
    }
}

impl From<tonic::Status> for NodeFailure {
    fn from(status: tonic::Status) -> Self {
        Self::Status {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// Lowercase gRPC code names for coverage reasons.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
