//! A deterministic synthetic catalog with planted structure.
//!
//! Items are drawn around `clusters` random centres; each synthetic user prefers
//! one cluster and its embedding points at that cluster's centre. A good retrieval
//! answer for a user is therefore dominated by items of the user's cluster, which
//! lets tests check that answers make sense, not only that they arrive.

use std::path::Path;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recsys_model::planted::{self, QUALITY_BUCKETS};

use recsys_bundle::{BundleError, Manifest, RankerSpec, UserEmbeddings};

use crate::{BuildEvent, BuildOptions, ItemVectors, build_bundle};

/// Shape of a synthetic catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticSpec {
    /// Items in the catalog.
    pub items: usize,
    /// Synthetic users.
    pub users: usize,
    /// Embedding dimensions.
    pub dimensions: usize,
    /// Item clusters (topics).
    pub clusters: usize,
    /// Seed; the same spec and seed give the same catalog, bit for bit.
    pub seed: u64,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        Self {
            items: 200_000,
            users: 1_000,
            dimensions: 32,
            clusters: 64,
            seed: 42,
        }
    }
}

/// A generated catalog and its ground truth.
#[derive(Debug, Clone)]
pub struct SyntheticCatalog {
    /// Item embeddings; ids are `0..items`, names say the cluster.
    pub items: ItemVectors,
    /// Cluster of each item, parallel to `items.ids`.
    pub item_cluster: Vec<u32>,
    /// Planted quality bucket of each item (`0..planted::QUALITY_BUCKETS`), which
    /// the ranker sees and the retrieval embeddings do not.
    pub item_quality: Vec<u8>,
    /// User embeddings; ids are `user-N`.
    pub users: UserEmbeddings,
    /// Preferred cluster of each user, parallel to `users.ids()`.
    pub user_cluster: Vec<u32>,
}

/// The catalog's random numbers, the same for a seed on every machine and every
/// release: every Kubernetes pod and compose job builds its own copy of the bundle
/// and they must agree bit for bit, as must the tests that recompute it.
///
/// `StdRng` may change algorithm in any `rand` release, and `rand`'s ranges and
/// `rand_distr`'s normal sampler may change theirs (and the sampler calls `exp`
/// and `ln`, whose last bit differs between libms). So: ChaCha8 from
/// `rand_chacha`, whose stream for a seed is fixed by the algorithm, and only
/// integer and exact float arithmetic on top of it.
struct Stream(ChaCha8Rng);

impl Stream {
    fn new(seed: u64) -> Self {
        Self(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in `0..n` by Lemire's multiply-shift: `⌊x·n / 2⁶⁴⌋`, biased by at
    /// most n/2⁶⁴, nothing at catalog sizes.
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.0.next_u64()) * n as u128) >> 64) as usize
    }

    /// Approximately standard normal: the Irwin–Hall sum of 12 uniforms minus 6
    /// (mean 0, variance 1, tails cut at ±6, which planted clusters never miss).
    /// Each uniform is a 32-bit integer over 2³², so the sum is exact in f64.
    fn gaussian(&mut self) -> f32 {
        let mut sum = 0.0f64;
        for _ in 0..6 {
            let x = self.0.next_u64();
            sum += (x >> 32) as f64 + (x & 0xffff_ffff) as f64;
        }
        (sum / 4_294_967_296.0 - 6.0) as f32
    }
}

/// How far items scatter around their centre, relative to the centre's norm of ~1.
const ITEM_SPREAD: f32 = 0.35;
/// How far a user's taste strays from its cluster's centre.
const USER_SPREAD: f32 = 0.15;

/// Generates the catalog for `spec`.
pub fn generate(spec: &SyntheticSpec) -> Result<SyntheticCatalog, BundleError> {
    if spec.items == 0 || spec.dimensions == 0 || spec.clusters == 0 {
        return Err(BundleError::invalid(
            "synthetic",
            "items, dimensions and clusters must be positive",
        ));
    }
    let mut rng = Stream::new(spec.seed);
    let dims = spec.dimensions;
    let scale = 1.0 / (dims as f32).sqrt();

    let centres: Vec<f32> = (0..spec.clusters * dims)
        .map(|_| rng.gaussian() * scale)
        .collect();

    let mut data = Vec::with_capacity(spec.items * dims);
    let mut item_cluster = Vec::with_capacity(spec.items);
    let mut item_quality = Vec::with_capacity(spec.items);
    let mut names = Vec::with_capacity(spec.items);
    for id in 0..spec.items {
        let cluster = rng.below(spec.clusters);
        let centre = &centres[cluster * dims..(cluster + 1) * dims];
        data.extend(
            centre
                .iter()
                .map(|c| c + rng.gaussian() * scale * ITEM_SPREAD),
        );
        let quality = rng.below(usize::from(QUALITY_BUCKETS)) as u8;
        item_cluster.push(cluster as u32);
        item_quality.push(quality);
        names.push(format!("item {id} (topic {cluster}, quality {quality})"));
    }

    let mut user_data = Vec::with_capacity(spec.users * dims);
    let mut user_cluster = Vec::with_capacity(spec.users);
    let mut user_ids = Vec::with_capacity(spec.users);
    for user in 0..spec.users {
        let cluster = user % spec.clusters;
        let centre = &centres[cluster * dims..(cluster + 1) * dims];
        user_data.extend(
            centre
                .iter()
                .map(|c| c + rng.gaussian() * scale * USER_SPREAD),
        );
        user_cluster.push(cluster as u32);
        user_ids.push(format!("user-{user}"));
    }

    let ids = (0..spec.items as u64).collect();
    let items = ItemVectors::new(
        std::path::Path::new("synthetic"),
        dims,
        data,
        Some(ids),
        Some(names),
    )?;
    let users = UserEmbeddings::new(user_ids, dims, user_data)?;
    Ok(SyntheticCatalog {
        items,
        item_cluster,
        item_quality,
        users,
        user_cluster,
    })
}

/// Weight of planted quality against user-item affinity in the synthetic ranker.
pub const QUALITY_WEIGHT: f32 = 0.3;

/// Generates the catalog of `spec` and writes a complete bundle into `dir`: the
/// sharded index, the catalog, the user table as query model, and the planted
/// ranker (`recsys_model::planted`), whose scores are `u·i + Σu + 0.3·quality`.
pub fn build_synthetic(
    dir: &Path,
    spec: &SyntheticSpec,
    options: &BuildOptions,
    progress: &(dyn Fn(BuildEvent) + Sync),
) -> Result<(SyntheticCatalog, Manifest), BundleError> {
    let catalog = generate(spec)?;
    let mut manifest = build_bundle(dir, &catalog.items, Some(&catalog.users), options, progress)?;
    let inputs = planted::PlantedInputs {
        dim: spec.dimensions,
        user_ids: catalog.users.ids(),
        user_vectors: catalog.users.data(),
        item_ids: &catalog.items.ids,
        item_vectors: &catalog.items.data,
        item_quality: &catalog.item_quality,
        quality_weight: QUALITY_WEIGHT,
    };
    let version = format!("planted-{}", options.version);
    planted::write(dir, &inputs, &version)
        .map_err(|e| BundleError::invalid("ranker", e.to_string()))?;
    manifest.ranker = Some(RankerSpec::attached(false));
    crate::seal(dir, &mut manifest)?;
    Ok((catalog, manifest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_bundle::Metric;

    #[test]
    fn deterministic_for_a_seed() {
        let spec = SyntheticSpec {
            items: 500,
            users: 10,
            dimensions: 8,
            clusters: 4,
            seed: 7,
        };
        let a = generate(&spec).unwrap();
        let b = generate(&spec).unwrap();
        assert_eq!(a.items, b.items);
        assert_eq!(a.user_cluster, b.user_cluster);
        let c = generate(&SyntheticSpec { seed: 8, ..spec }).unwrap();
        assert_ne!(a.items.data, c.items.data);
    }

    /// FNV-1a, 64 bits: a hash whose value no library release can change.
    fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
        bytes.iter().fold(hash, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    }

    /// Every field of the catalog, in order.
    fn catalog_hash(catalog: &SyntheticCatalog) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325;
        for v in &catalog.items.data {
            h = fnv1a(h, &v.to_le_bytes());
        }
        for id in &catalog.items.ids {
            h = fnv1a(h, &id.to_le_bytes());
        }
        for name in catalog.items.names.iter().flatten() {
            h = fnv1a(h, name.as_bytes());
        }
        for c in catalog.item_cluster.iter().chain(&catalog.user_cluster) {
            h = fnv1a(h, &c.to_le_bytes());
        }
        h = fnv1a(h, &catalog.item_quality);
        for v in catalog.users.data() {
            h = fnv1a(h, &v.to_le_bytes());
        }
        for id in catalog.users.ids() {
            h = fnv1a(h, id.as_bytes());
        }
        h
    }

    /// The catalog of deploy/docker-compose.yml and deploy/k8s (`recsys bundle
    /// --synthetic --items=100000 --users=1000 --synthetic-dim=32 --clusters=32
    /// --seed=7`), pinned: every pod builds its own copy, and the compose tests
    /// recompute it to judge the answers. A change here changes what a deployed
    /// cluster serves; update the value only with that intent.
    #[test]
    fn the_deployed_catalog_is_pinned() {
        let spec = SyntheticSpec {
            items: 100_000,
            users: 1_000,
            dimensions: 32,
            clusters: 32,
            seed: 7,
        };
        let catalog = generate(&spec).unwrap();
        assert_eq!(
            catalog.items.data[..3],
            [0.18857598, -0.07265307, -0.10835591]
        );
        assert_eq!(catalog_hash(&catalog), 0xa79e_896e_d454_3ac4);
        let small = generate(&SyntheticSpec {
            items: 50,
            users: 4,
            dimensions: 4,
            clusters: 3,
            seed: 1,
        })
        .unwrap();
        assert_eq!(catalog_hash(&small), 0xdd3a_2f00_e6a1_08e0);
    }

    #[test]
    fn users_prefer_their_cluster() {
        let spec = SyntheticSpec {
            items: 4_000,
            users: 16,
            dimensions: 16,
            clusters: 8,
            seed: 1,
        };
        let catalog = generate(&spec).unwrap();
        // For each user, most of the 20 best items by inner product come from its cluster.
        let mut hits = 0;
        for (u, user_id) in catalog.users.ids().iter().enumerate() {
            let query = catalog.users.embedding(user_id).unwrap();
            let mut scored: Vec<(f32, usize)> = (0..catalog.items.len())
                .map(|row| (Metric::Ip.score(query, catalog.items.row(row)), row))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            hits += scored[..20]
                .iter()
                .filter(|(_, row)| catalog.item_cluster[*row] == catalog.user_cluster[u])
                .count();
        }
        assert!(
            hits as f64 / (16.0 * 20.0) > 0.9,
            "only {hits} of 320 in cluster"
        );
    }
}
