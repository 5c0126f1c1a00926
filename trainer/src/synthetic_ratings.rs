//! Ratings from a planted rating function, for the ranker's tests.
//!
//! User `u{n}` has occupation `c{n % clusters}` (its taste), gender, zip code
//! and age; item `{m + 1}` (a u64 id, as served) has genre `g{m % clusters}`,
//! a year and a quality `m % 3`. The rating of a pair is
//!
//! ```text
//! 3 + 1.2 if the user's taste is the item's genre, else 3 - 0.6
//!   + 0.4 · (quality - 1)
//!   + noise uniform in ±noise
//! ```
//!
//! so a model that learned the taste × genre cross and the item quality gets an
//! RMSE near `noise / √3`, far below the labels' spread (≈ 0.9).

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::{Dataset, Interaction, Item, User};

/// The shape of a planted ratings data set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlantedRatings {
    /// Users.
    pub users: usize,
    /// Items.
    pub items: usize,
    /// Tastes and genres.
    pub clusters: usize,
    /// Ratings per user (uniform random items).
    pub ratings_per_user: usize,
    /// Half-width of the uniform noise.
    pub noise: f32,
    /// Seed of the draws.
    pub seed: u64,
}

impl PlantedRatings {
    /// The noise-free rating of user `u` for item `m` (0-based indices).
    pub fn rating(&self, u: usize, m: usize) -> f32 {
        let clusters = self.clusters.max(1);
        let taste = if u % clusters == m % clusters {
            1.2
        } else {
            -0.6
        };
        3.0 + taste + 0.4 * ((m % 3) as f32 - 1.0)
    }

    /// Draws the data set.
    pub fn draw(&self) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let clusters = self.clusters.max(1);
        let mut interactions = Vec::with_capacity(self.users * self.ratings_per_user);
        for u in 0..self.users {
            for t in 0..self.ratings_per_user {
                let m = rng.random_range(0..self.items);
                let noise = if self.noise > 0.0 {
                    rng.random_range(-self.noise..self.noise)
                } else {
                    0.0
                };
                interactions.push(Interaction {
                    user: format!("u{u}"),
                    item: (m + 1).to_string(),
                    rating: Some(self.rating(u, m) + noise),
                    timestamp: Some(t as i64),
                });
            }
        }
        let users = (0..self.users)
            .map(|u| User {
                id: format!("u{u}"),
                features: BTreeMap::from([
                    ("occupation".to_string(), format!("c{}", u % clusters)),
                    (
                        "gender".to_string(),
                        if u % 2 == 0 { "F" } else { "M" }.to_string(),
                    ),
                    ("zip".to_string(), format!("{:05}", u % 7)),
                    ("age".to_string(), (15 + u % 50).to_string()),
                ]),
            })
            .collect();
        let items = (0..self.items)
            .map(|m| Item {
                id: (m + 1).to_string(),
                title: Some(format!("movie {m} ({})", 1950 + m % 50)),
                year: Some(1950 + (m % 50) as u16),
                genres: vec![format!("g{}", m % clusters)],
            })
            .collect();
        Dataset {
            interactions,
            items,
            users,
        }
    }
}
