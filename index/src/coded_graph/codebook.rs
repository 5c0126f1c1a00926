//! 4-bit product quantization of a shard's vectors: every subspace ([`WIDTH`]
//! dimensions) is replaced by the nearest of 16 centroids, so a 50-d vector
//! becomes 50 codes of 4 bits. A query then turns into one 16-entry table per
//! subspace (its partial distance to every centroid), and a vector's approximate
//! distance is the sum of one entry per subspace: ScaNN's and FAISS' "fast scan",
//! whose tables fit a SIMD register (`fast_scan.rs`).

use std::borrow::Cow;

use recsys_bundle::Metric;

/// Centroids per subspace: what 4 bits address.
pub(crate) const CENTROIDS: usize = 16;
/// Dimensions a centroid can hold.
pub(crate) const SUB_DIMS: usize = 2;
/// Dimensions per subspace. 1 (every dimension its own 16 levels) keeps the
/// walk's recall that of the exact walk at every beam on GloVe-50; 2 (ScaNN's
/// setting) halves the codes' memory and loses about 0.005 of recall@100 at
/// the same beam (docs/benchmarks-history.md, "Retrieval against ScaNN").
const WIDTH: usize = 1;
/// Rows the centroids are trained on: enough for 16 points in 2-d (ScaNN
/// trains on a sample too), few enough that a shard's load stays short.
const TRAINING_ROWS: usize = 16_384;
/// Lloyd iterations: 2-d k-means with 16 centroids settles in a handful.
const ITERATIONS: usize = 12;

/// The centroids of every subspace, trained on a shard's vectors.
#[derive(Debug, Clone)]
pub(crate) struct Codebook {
    dims: usize,
    subspaces: usize,
    /// Dimensions per subspace: 1 or 2.
    width: usize,
    /// `centroids[s * CENTROIDS + j]`: centroid `j` of subspace `s` (the last
    /// subspace of an odd dimension count pads with a zero second coordinate).
    centroids: Vec<[f32; SUB_DIMS]>,
    /// Cosine shards are coded and searched on unit vectors.
    normalize: bool,
}

/// A query's table: for subspace pair `p`, bytes `p*32..p*32+16` hold subspace
/// `2p`'s 16 entries and `p*32+16..p*32+32` subspace `2p+1`'s, each a partial
/// distance scaled to `0..=255` after its subspace's minimum is taken off. A
/// vector's approximate distance is the sum over subspaces, which orders
/// vectors as the float sum does up to rounding (the minima are a constant).
pub(crate) struct Table {
    pub(crate) bytes: Vec<u8>,
    /// Units per distance: a table sum `u` stands for the float distance
    /// `offset + u / scale` (0 when every entry is equal).
    pub(crate) scale: f32,
    /// The sum of the subspaces' minima taken off.
    pub(crate) offset: f32,
}

impl Codebook {
    /// Trains the centroids on up to [`TRAINING_ROWS`] of the `rows` vectors
    /// (spread evenly over the shard; deterministic, so every replica codes a
    /// shard alike).
    pub(crate) fn train<'a>(
        rows: usize,
        dims: usize,
        metric: Metric,
        row: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> Self {
        let width = WIDTH;
        let subspaces = dims.div_ceil(width);
        let normalize = metric == Metric::Cos;
        let step = (rows / TRAINING_ROWS).max(1);
        let sample: Vec<Vec<f32>> = (0..rows)
            .step_by(step)
            .take(TRAINING_ROWS)
            .map(|i| prepared(row(i), normalize).into_owned())
            .collect();
        let centroids = {
            use rayon::prelude::*;
            (0..subspaces)
                .into_par_iter()
                .flat_map_iter(|s| {
                    let points: Vec<[f32; SUB_DIMS]> =
                        sample.iter().map(|v| sub_vector(v, s, width)).collect();
                    kmeans(&points, s as u64)
                })
                .collect()
        };
        Self {
            dims,
            subspaces,
            width,
            centroids,
            normalize,
        }
    }

    pub(crate) fn dims(&self) -> usize {
        self.dims
    }

    pub(crate) fn subspaces(&self) -> usize {
        self.subspaces
    }

    /// Pairs of subspaces, the unit of the fast-scan layout.
    pub(crate) fn pairs(&self) -> usize {
        self.subspaces.div_ceil(2)
    }

    /// `vector`'s codes, one per subspace (`0..16`), into `out`; returns the
    /// squared distance between the (prepared) vector and its coded form.
    pub(crate) fn encode(&self, vector: &[f32], out: &mut [u8]) -> f32 {
        let vector = prepared(vector, self.normalize);
        let mut error = 0.0;
        for (s, code) in out.iter_mut().enumerate().take(self.subspaces) {
            let point = sub_vector(&vector, s, self.width);
            let centroids = &self.centroids[s * CENTROIDS..(s + 1) * CENTROIDS];
            let j = nearest(centroids, point);
            error += squared(centroids[j], point);
            *code = j as u8;
        }
        error
    }

    /// `query`'s table under `metric`; see [`Table`].
    pub(crate) fn table(&self, query: &[f32], metric: Metric) -> Table {
        debug_assert_eq!(query.len(), self.dims);
        let query = prepared(query, self.normalize);
        let mut partial = vec![0f32; self.subspaces * CENTROIDS];
        for s in 0..self.subspaces {
            let q = sub_vector(&query, s, self.width);
            for j in 0..CENTROIDS {
                let c = self.centroids[s * CENTROIDS + j];
                partial[s * CENTROIDS + j] = match metric {
                    // usearch's distances: 1 - dot for ip and cos, the squared
                    // difference for l2; the constant 1 drops out.
                    Metric::Ip | Metric::Cos => -(q[0] * c[0] + q[1] * c[1]),
                    Metric::L2 => (q[0] - c[0]).powi(2) + (q[1] - c[1]).powi(2),
                };
            }
        }
        let mut widest = 0f32;
        let mut offset = 0f32;
        for s in 0..self.subspaces {
            let row = &mut partial[s * CENTROIDS..(s + 1) * CENTROIDS];
            let min = row.iter().copied().fold(f32::INFINITY, f32::min);
            offset += min;
            for v in row.iter_mut() {
                *v -= min;
                widest = widest.max(*v);
            }
        }
        let scale = if widest > 0.0 { 255.0 / widest } else { 0.0 };
        let mut bytes = vec![0u8; self.pairs() * 32];
        for s in 0..self.subspaces {
            let at = (s / 2) * 32 + (s % 2) * 16;
            for j in 0..CENTROIDS {
                bytes[at + j] = (partial[s * CENTROIDS + j] * scale).round() as u8;
            }
        }
        Table {
            bytes,
            scale,
            offset,
        }
    }
}

/// Cosine shards are coded on unit vectors; the others as stored.
fn prepared(vector: &[f32], normalize: bool) -> Cow<'_, [f32]> {
    if !normalize {
        return Cow::Borrowed(vector);
    }
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        Cow::Owned(vector.iter().map(|v| v / norm).collect())
    } else {
        Cow::Borrowed(vector)
    }
}

fn sub_vector(vector: &[f32], s: usize, width: usize) -> [f32; SUB_DIMS] {
    let at = s * width;
    let second = if width == 2 {
        vector.get(at + 1).copied().unwrap_or(0.0)
    } else {
        0.0
    };
    [vector[at], second]
}

fn squared(a: [f32; SUB_DIMS], b: [f32; SUB_DIMS]) -> f32 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
}

fn nearest(centroids: &[[f32; SUB_DIMS]], point: [f32; SUB_DIMS]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (j, c) in centroids.iter().enumerate() {
        let d = squared(*c, point);
        if d < best.0 {
            best = (d, j);
        }
    }
    best.1
}

/// k-means++ seeding, then Lloyd's iterations; a centroid left without points
/// keeps its place. Always returns [`CENTROIDS`] centroids (repeated points
/// when there are fewer distinct ones).
fn kmeans(points: &[[f32; SUB_DIMS]], seed: u64) -> Vec<[f32; SUB_DIMS]> {
    if points.is_empty() {
        return vec![[0.0; SUB_DIMS]; CENTROIDS];
    }
    let mut rng = SplitMix(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut centroids = vec![points[(rng.next() % points.len() as u64) as usize]];
    let mut closest: Vec<f32> = points.iter().map(|p| squared(*p, centroids[0])).collect();
    while centroids.len() < CENTROIDS {
        let total: f64 = closest.iter().map(|&d| f64::from(d)).sum();
        let pick = if total > 0.0 {
            let mut target = rng.unit() * total;
            let mut chosen = points.len() - 1;
            for (i, &d) in closest.iter().enumerate() {
                target -= f64::from(d);
                if target <= 0.0 {
                    chosen = i;
                    break;
                }
            }
            chosen
        } else {
            (rng.next() % points.len() as u64) as usize
        };
        let c = points[pick];
        centroids.push(c);
        for (d, p) in closest.iter_mut().zip(points) {
            *d = d.min(squared(*p, c));
        }
    }
    for _ in 0..ITERATIONS {
        let mut sums = [[0f64; SUB_DIMS + 1]; CENTROIDS];
        for p in points {
            let j = nearest(&centroids, *p);
            sums[j][0] += f64::from(p[0]);
            sums[j][1] += f64::from(p[1]);
            sums[j][2] += 1.0;
        }
        for (c, sum) in centroids.iter_mut().zip(&sums) {
            if sum[2] > 0.0 {
                *c = [(sum[0] / sum[2]) as f32, (sum[1] / sum[2]) as f32];
            }
        }
    }
    centroids
}

/// A small deterministic generator for the seeding (SplitMix64): the codes
/// must not depend on a process's random state.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: usize, dims: usize) -> Vec<Vec<f32>> {
        let mut rng = SplitMix(7);
        (0..n)
            .map(|_| (0..dims).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect())
            .collect()
    }

    #[test]
    fn codes_are_the_nearest_centroids_and_tables_sum_like_the_float_distance() {
        let data = rows(2_000, 7);
        let book = Codebook::train(data.len(), 7, Metric::L2, |i| &data[i]);
        let subspaces = 7usize.div_ceil(WIDTH);
        assert_eq!(book.subspaces(), subspaces);
        assert_eq!(book.pairs(), subspaces.div_ceil(2));
        let query = &data[5];
        let table = book.table(query, Metric::L2);
        let coded = |v: &[f32]| {
            let mut codes = vec![0u8; subspaces];
            book.encode(v, &mut codes);
            codes
        };
        let float_sum = |codes: &[u8]| -> f32 {
            (0..subspaces)
                .map(|s| {
                    let centroid = book.centroids[s * CENTROIDS + codes[s] as usize];
                    squared(sub_vector(query, s, book.width), centroid)
                })
                .sum()
        };
        // The table's sums order coded vectors as their float distances do, up
        // to the rounding of half a unit per subspace, and stand for them
        // through `offset` and `scale`.
        let mut pairs: Vec<(u32, f32)> = data
            .iter()
            .map(|v| {
                let codes = coded(v);
                let units: u32 = (0..subspaces)
                    .map(|s| {
                        u32::from(table.bytes[(s / 2) * 32 + (s % 2) * 16 + codes[s] as usize])
                    })
                    .sum();
                let exact = float_sum(&codes);
                let restored = table.offset + units as f32 / table.scale;
                let slack = subspaces as f32 * 0.5 / table.scale + 1e-4;
                assert!(
                    (restored - exact).abs() <= slack,
                    "{restored} against {exact}"
                );
                (units, exact)
            })
            .collect();
        pairs.sort_by(|a, b| a.1.total_cmp(&b.1));
        let slack = subspaces as u32 / 2 + 1;
        let inversions = pairs.windows(2).filter(|w| w[0].0 > w[1].0 + slack).count();
        assert_eq!(inversions, 0);
        // Coding keeps most of a vector, and says how much it lost.
        let mut codes = vec![0u8; subspaces];
        let error = book.encode(query, &mut codes);
        assert!((error - float_sum(&codes)).abs() < 1e-5);
        assert!(error < 0.1, "coding error {error}");
    }

    #[test]
    fn training_is_deterministic() {
        let data = rows(500, 4);
        let a = Codebook::train(data.len(), 4, Metric::Ip, |i| &data[i]);
        let b = Codebook::train(data.len(), 4, Metric::Ip, |i| &data[i]);
        assert_eq!(a.centroids, b.centroids);
    }
}
