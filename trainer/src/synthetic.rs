//! Interactions with planted preferences, for tests and smoke runs.
//!
//! Users and items each belong to one of `clusters` clusters (`u{i}` and `i{j}`
//! to cluster `i % clusters` and `j % clusters`). Each interaction of a user is,
//! with probability `in_cluster`, a uniform item of the user's cluster, else a
//! uniform item of the whole catalog. A model that learned the clusters ranks a
//! user's cluster first: of its top `items / clusters` items, a fraction near 1
//! should be in the user's cluster (1 / clusters by chance).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::{Dataset, Interaction, Item, User};

/// The shape of a planted data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlantedSpec {
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Clusters of users and items.
    pub clusters: usize,
    /// Interactions per user.
    pub interactions_per_user: usize,
    /// Probability that an interaction is within the user's cluster.
    pub in_cluster: f64,
    /// Seed of the draws.
    pub seed: u64,
}

impl PlantedSpec {
    /// The cluster of the user or item with this id (`u7`, `i12`).
    pub fn cluster_of(&self, id: &str) -> Option<usize> {
        id.get(1..)?
            .parse::<usize>()
            .ok()
            .map(|n| n % self.clusters)
    }
}

/// Draws the data set; timestamps count up per user so temporal splits work.
pub fn planted(spec: &PlantedSpec) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let clusters = spec.clusters.max(1);
    let per_cluster = spec.items.div_ceil(clusters);
    let mut interactions = Vec::with_capacity(spec.users * spec.interactions_per_user);
    for u in 0..spec.users {
        let cluster = u % clusters;
        for t in 0..spec.interactions_per_user {
            let item = if rng.random_bool(spec.in_cluster) {
                // Items of cluster c are c, c + clusters, c + 2·clusters, …
                loop {
                    let j = cluster + clusters * rng.random_range(0..per_cluster);
                    if j < spec.items {
                        break j;
                    }
                }
            } else {
                rng.random_range(0..spec.items)
            };
            interactions.push(Interaction {
                user: format!("u{u}"),
                item: format!("i{item}"),
                rating: None,
                timestamp: Some(t as i64),
            });
        }
    }
    Dataset {
        interactions,
        items: (0..spec.items)
            .map(|j| Item {
                id: format!("i{j}"),
                ..Item::default()
            })
            .collect(),
        users: (0..spec.users)
            .map(|u| User {
                id: format!("u{u}"),
                ..User::default()
            })
            .collect(),
    }
}
