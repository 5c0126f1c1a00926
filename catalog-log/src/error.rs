//! Errors of the change log.

use recsys_discovery::DiscoveryError;

/// What can go wrong appending to or reading the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An entry is larger than one etcd request may be.
    #[error("change of {bytes} bytes exceeds the change log's limit of {limit} bytes per call")]
    TooLarge {
        /// The entry's encoded size.
        bytes: usize,
        /// [`crate::limits::MAX_ENTRY_BYTES`].
        limit: usize,
    },
    /// etcd could not be reached or refused the call: nothing was written.
    #[error(transparent)]
    Etcd(#[from] DiscoveryError),
    /// A key in the log does not hold a shard change record; it is skipped.
    #[error("change log key {key} is malformed: {reason}")]
    Malformed {
        /// The etcd key.
        key: String,
        /// Why it was refused.
        reason: String,
    },
}

impl LogError {
    /// Whether the error means etcd is unavailable (a retry later may succeed),
    /// as opposed to a refused request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Etcd(error) if !error.is_refusal())
    }
}
