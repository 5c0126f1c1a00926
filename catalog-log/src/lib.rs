//! The cluster's change log of items: upserts and deletes made while the cluster
//! serves, in one total order, kept in etcd and partitioned by shard.
//!
//! A bundle version is immutable; what changed since it was built lives here.
//! The gateway's `CatalogService` appends one entry per call ([`ChangeLog::append`]):
//! one key per shard the call touches, written in one etcd transaction, so every
//! part of the entry carries the same etcd revision, and that revision is the
//! entry's place in the order. Each retrieval replica follows its shard's prefix
//! ([`ChangeLog::follow`]) from the revision its bundle version already contains
//! and applies entries in revision order; ranking nodes and gateways follow every
//! shard. `recsys bundle compact` folds the log into the next version, after which
//! [`ChangeLog::truncate`] deletes what that version contains.
//!
//! etcd is a small, replicated, ordered store, not a queue for bulk data: the
//! limits in [`limits`] keep every entry within its default request size and
//! transaction size, and say so by name when a call passes them. A catalog that
//! outgrows etcd would put a partitioned log such as Kafka behind the same calls.

mod error;
mod etcd_log;
mod key;
pub mod limits;
mod revisions;

pub use error::LogError;
pub use etcd_log::{CatchUp, ChangeLog, LogEntry};
pub use key::{catalog_prefix, shard_prefix};
pub use revisions::recv_ready;
