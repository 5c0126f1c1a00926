//! The API's limits and defaults, in one place for every server and client.
//!
//! The gateway accepts at most what every node accepts: a retrieval node's
//! `Search` takes up to [`MAX_RETRIEVE_K`] items per call and a ranking node's
//! `Rank` up to [`MAX_RETRIEVE_K`] candidates, and the gateway never asks a
//! shard for more than `retrieve_k` (itself at most [`MAX_RETRIEVE_K`]) nor sends
//! more candidates than it retrieved. Servers may be configured to accept more
//! than these, never less (their flags refuse it at start), so a request the
//! gateway takes is never refused by a node for its size.

use std::time::Duration;

/// Most items one `Recommend` answer holds (`k`).
pub const MAX_K: u32 = 1_000;

/// Most candidates one request retrieves (`retrieve_k`), which is also the most
/// items a shard is asked for and the most candidates a ranking node scores.
pub const MAX_RETRIEVE_K: u32 = 10_000;

/// Most `exclude_item_ids` one `Recommend` carries.
pub const MAX_EXCLUSIONS: usize = 10_000;

/// Longest user id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Most values in one list-valued user feature.
pub const MAX_LIST_VALUES: usize = 1024;

/// The deadline of a request that carries none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The default probability that a shard's `k'` holds every item of the global
/// top `retrieve_k` that lives on it (Vespa's top-k probability).
pub const DEFAULT_TOP_K_PROBABILITY: f64 = 0.9999;
