//! The order a shard's items are inserted in: a random skeleton, then the rest
//! with near vectors in near slots.
//!
//! usearch numbers members in the order they are added, and keeps vectors and
//! graph nodes in slot order. A search walks between near neighbours, so when
//! near vectors also sit near each other in memory a query touches fewer pages
//! and cache lines (graph reordering, Coleman et al. 2022, "Graph Reordering for
//! Cache-Efficient Near Neighbor Search"). The locality order here is a
//! random-projection tree's leaf order: split the rows at the median of their
//! projection on the line through two of them, recursively, down to small leaves.
//!
//! Inserted in that order alone, a graph is built region by region: a region's
//! first items link to whatever was inserted before them, the regions inserted
//! later never offer them links back, and on catalogs of millions of clustered
//! items some regions end up reachable only along long detours. Recall then
//! stops growing below the target however wide the beam (a 4M-item shard of the
//! scale benchmark's catalog topped out at recall@100 0.933 at any beam up to
//! 4,096). HNSW's analysis assumes items arrive in random order, so a small
//! random sample of the shard ([`SKELETON_PERMILLE`]) is inserted first: it
//! spans every region, every later item finds links across the whole catalog,
//! and the same shard then reaches 0.996 (docs/benchmarks.md, "Scale"). The
//! rest keeps the locality order, so searches keep their memory locality.

/// Thousandths of a shard's items inserted first, in random order.
pub const SKELETON_PERMILLE: u64 = 20;

/// `rows` (indices into `vectors`, `dim` wide) in the order a shard inserts
/// them: a random [`SKELETON_PERMILLE`] of them first, then the rest in
/// [`locality_order`]. Deterministic for a given input.
pub fn insertion_order(vectors: &[f32], dim: usize, rows: &[usize]) -> Vec<usize> {
    let (mut order, rest): (Vec<usize>, Vec<usize>) = locality_order(vectors, dim, rows)
        .into_iter()
        .partition(|&row| in_skeleton(row));
    // Sorted by the hash that picked them: a random order over the whole shard.
    order.sort_unstable_by_key(|&row| mix(row as u64));
    order.extend(rest);
    order
}

/// Whether `row` is one of the [`SKELETON_PERMILLE`] inserted first.
fn in_skeleton(row: usize) -> bool {
    mix(row as u64) % 1000 < SKELETON_PERMILLE
}

/// A 64-bit mix of `x` (splitmix64's finalizer): the skeleton's pick and order.
fn mix(x: u64) -> u64 {
    let mut x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Rows per leaf: below this, order no longer matters to memory locality.
const LEAF: usize = 32;

/// `rows` (indices into `vectors`, `dim` wide) reordered so that rows close in
/// the order are close in space. Deterministic for a given input.
pub fn locality_order(vectors: &[f32], dim: usize, rows: &[usize]) -> Vec<usize> {
    let mut order = rows.to_vec();
    if dim > 0 {
        split(vectors, dim, &mut order, 0x9E37_79B9_7F4A_7C15);
    }
    order
}

fn split(vectors: &[f32], dim: usize, rows: &mut [usize], seed: u64) {
    if rows.len() <= LEAF {
        return;
    }
    let row = |r: usize| &vectors[r * dim..(r + 1) * dim];
    // The line through two rows picked by the seed: it follows the data's spread,
    // as Annoy's splits do, without a pass to find the principal direction.
    let mut state = seed;
    let mut pick = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        rows[(state >> 33) as usize % rows.len()]
    };
    let (a, b) = (pick(), pick());
    let direction: Vec<f32> = row(a).iter().zip(row(b)).map(|(x, y)| x - y).collect();
    let mut keyed: Vec<(f32, usize)> = rows
        .iter()
        .map(|&r| {
            let projection: f32 = row(r).iter().zip(&direction).map(|(x, d)| x * d).sum();
            (projection, r)
        })
        .collect();
    let middle = keyed.len() / 2;
    keyed.select_nth_unstable_by(middle, |x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
    for (slot, (_, r)) in rows.iter_mut().zip(keyed) {
        *slot = r;
    }
    let (left, right) = rows.split_at_mut(middle);
    let (left_seed, right_seed) = (state ^ 0x5555, state.rotate_left(17) ^ 0xAAAA);
    if left.len() + right.len() > 16_384 {
        rayon::join(
            || split(vectors, dim, left, left_seed),
            || split(vectors, dim, right, right_seed),
        );
    } else {
        split(vectors, dim, left, left_seed);
        split(vectors, dim, right, right_seed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_a_permutation_and_groups_near_rows() {
        // Two far-apart clusters, interleaved in the input.
        let dim = 3;
        let rows = 1_000;
        let mut vectors = Vec::with_capacity(rows * dim);
        for r in 0..rows {
            let base = if r % 2 == 0 { 10.0 } else { -10.0 };
            vectors.extend([base + (r % 7) as f32 * 0.1, (r % 5) as f32 * 0.1, 0.0]);
        }
        let input: Vec<usize> = (0..rows).collect();
        let order = locality_order(&vectors, dim, &input);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, input);
        // The input alternates clusters at every row; the order only a few times.
        let changes = order.windows(2).filter(|w| w[0] % 2 != w[1] % 2).count();
        assert!(changes < 50, "{changes} cluster changes");
        assert_eq!(order, locality_order(&vectors, dim, &input));
    }

    #[test]
    fn inserts_a_random_skeleton_over_every_cluster_first() {
        // Ten far-apart clusters of 1,000 rows, in cluster order.
        let dim = 2;
        let (clusters, per_cluster) = (10, 1_000);
        let mut vectors = Vec::new();
        for c in 0..clusters {
            for r in 0..per_cluster {
                vectors.extend([
                    c as f32 * 100.0 + (r % 31) as f32 * 0.01,
                    (r % 17) as f32 * 0.01,
                ]);
            }
        }
        let input: Vec<usize> = (0..clusters * per_cluster).collect();
        let order = insertion_order(&vectors, dim, &input);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, input);
        assert_eq!(order, insertion_order(&vectors, dim, &input));

        // About 2 % of the rows come first, picked at random ...
        let skeleton: Vec<usize> = order
            .iter()
            .take_while(|&&row| in_skeleton(row))
            .copied()
            .collect();
        assert!(
            (150..250).contains(&skeleton.len()),
            "{} first",
            skeleton.len()
        );
        // ... spanning every cluster within their first half, where the
        // locality order's first rows come from one cluster ...
        let clusters_among = |rows: &[usize]| {
            let mut seen = vec![false; clusters];
            for &row in rows {
                seen[row / per_cluster] = true;
            }
            seen.iter().filter(|s| **s).count()
        };
        assert_eq!(clusters_among(&skeleton[..skeleton.len() / 2]), clusters);
        let locality = locality_order(&vectors, dim, &input);
        assert_eq!(clusters_among(&locality[..skeleton.len() / 2]), 1);
        // ... and the rest keeps the locality order.
        let rest: Vec<usize> = locality
            .into_iter()
            .filter(|row| !skeleton.contains(row))
            .collect();
        assert_eq!(order[skeleton.len()..], rest[..]);
    }
}
