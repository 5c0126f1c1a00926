//! A deterministic synthetic catalog with planted structure.
//!
//! Items are drawn around `clusters` random centres; each synthetic user prefers
//! one cluster and its embedding points at that cluster's centre. A good retrieval
//! answer for a user is therefore dominated by items of the user's cluster, which
//! lets tests check that answers make sense, not only that they arrive.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};
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
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let dims = spec.dimensions;
    let scale = 1.0 / (dims as f32).sqrt();
    let gaussian = |rng: &mut StdRng| -> f32 { StandardNormal.sample(rng) };

    let centres: Vec<f32> = (0..spec.clusters * dims)
        .map(|_| gaussian(&mut rng) * scale)
        .collect();

    let mut data = Vec::with_capacity(spec.items * dims);
    let mut item_cluster = Vec::with_capacity(spec.items);
    let mut item_quality = Vec::with_capacity(spec.items);
    let mut names = Vec::with_capacity(spec.items);
    for id in 0..spec.items {
        let cluster = rng.random_range(0..spec.clusters);
        let centre = &centres[cluster * dims..(cluster + 1) * dims];
        data.extend(
            centre
                .iter()
                .map(|c| c + gaussian(&mut rng) * scale * ITEM_SPREAD),
        );
        let quality = rng.random_range(0..QUALITY_BUCKETS);
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
                .map(|c| c + gaussian(&mut rng) * scale * USER_SPREAD),
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
    manifest.save(dir)?;
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
