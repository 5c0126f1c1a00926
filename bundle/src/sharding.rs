//! Which shard an item lives in: `shard = hash(item_id) % shards`.
//!
//! The hash must never change between releases (bundles and gateways built by
//! different versions have to agree), so it is spelled out here instead of using
//! `std`'s hasher, whose output is unspecified. It is the SplitMix64 finalizer
//! (Steele et al., "Fast splittable pseudorandom number generators", 2014), which
//! spreads sequential ids evenly.

/// Mixes the bits of `x` so that consecutive ids land on unrelated shards.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The shard that holds `item_id` in a bundle of `shard_count` shards.
///
/// `shard_count` must be at least 1.
pub fn shard_of(item_id: u64, shard_count: u32) -> u32 {
    debug_assert!(shard_count > 0, "shard_count must be positive");
    (mix64(item_id) % u64::from(shard_count.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_stable_across_releases() {
        // Pinned values: changing the hash would silently split old bundles wrongly.
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(shard_of(42, 4), (mix64(42) % 4) as u32);
    }

    #[test]
    fn sequential_ids_spread_evenly() {
        let shards = 4;
        let mut counts = [0usize; 4];
        for id in 0..100_000u64 {
            counts[shard_of(id, shards) as usize] += 1;
        }
        for count in counts {
            assert!((24_000..26_000).contains(&count), "uneven: {counts:?}");
        }
    }
}
