//! What one change-log entry may hold, from etcd's defaults.

/// Largest encoded size of one entry, all shards' parts together. etcd refuses
/// requests over its `--max-request-bytes` (1.5 MiB by default); this leaves room
/// for keys and the transaction's framing. 1 MiB holds about 4,000 upserts of
/// 64-dimensional items with short names.
pub const MAX_ENTRY_BYTES: usize = 1 << 20;

/// Most keys one etcd transaction may write (etcd's `--max-txn-ops`, 128 by
/// default): an entry touching more shards than this is written as several
/// transactions, in order, and answers with the revision of the last.
pub const MAX_TXN_OPS: usize = 128;

/// Keys read per page when listing the log, so a long log is never read in one
/// response (etcd's server refuses to send a gRPC message over 2 GiB, and memory
/// matters long before). Larger than [`MAX_TXN_OPS`], so that every page ends
/// past at least one whole revision and listing always makes progress.
pub const LIST_PAGE: i64 = 256;
