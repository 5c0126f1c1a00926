//! Where the log lives in etcd: `/recsys/{cluster}/catalog/shard-{NNNNN}/{entry}`.
//!
//! One prefix per shard, so a replica watches only its own shard's changes. The
//! entry name only has to be unique (a random 64-bit value and a per-process
//! counter); order comes from the key's etcd revision, never from the name.

use std::sync::atomic::{AtomicU64, Ordering};

/// The prefix of every shard's log of `cluster`.
pub fn catalog_prefix(cluster: &str) -> String {
    format!("/recsys/{cluster}/catalog/")
}

/// The prefix of shard `shard`'s log; zero-padded so the shards list in order.
pub fn shard_prefix(cluster: &str, shard: u32) -> String {
    format!("{}shard-{shard:05}/", catalog_prefix(cluster))
}

/// A fresh entry key under `shard`'s prefix.
pub(crate) fn entry_key(cluster: &str, shard: u32) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}{:016x}-{sequence:08x}",
        shard_prefix(cluster, shard),
        rand::random::<u64>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_are_unique_and_under_their_shard() {
        let first = entry_key("c", 7);
        let second = entry_key("c", 7);
        assert_ne!(first, second);
        assert!(first.starts_with("/recsys/c/catalog/shard-00007/"));
        // Shard 1's prefix is not a prefix of shard 10's.
        assert!(!shard_prefix("c", 10).starts_with(&shard_prefix("c", 1)));
    }
}
