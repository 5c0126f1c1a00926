//! An insertion order that puts near vectors in near slots.
//!
//! usearch numbers members in the order they are added, and keeps vectors and
//! graph nodes in slot order. A search walks between near neighbours, so when
//! near vectors also sit near each other in memory a query touches fewer pages
//! and cache lines (graph reordering, Coleman et al. 2022, "Graph Reordering for
//! Cache-Efficient Near Neighbor Search"). The order here is a random-projection
//! tree's leaf order: split the rows at the median of their projection on the
//! line through two of them, recursively, down to small leaves.

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
}
