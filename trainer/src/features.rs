//! From a [`Dataset`] to what the towers read: vocabularies for every id and
//! feature, and per-row feature tables for items and users.
//!
//! Multi-valued features (title tokens, genres) are stored padded to the longest
//! list with a weight per slot, `1 / len` for a value and 0 for padding, so that
//! pooling is one gather, one multiply and one sum: a mean, as Keras's
//! `GlobalAveragePooling1D` over a masked embedding. Row 0 of each table is the
//! out-of-vocabulary entity and has no features.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::vocabulary::{Vocabulary, title_tokens, year_bucket};

/// Which features the towers read beyond the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureChoice {
    /// User tower: every categorical user feature of the data set.
    pub user_features: bool,
    /// Item tower: title tokens, mean-pooled.
    pub title_tokens: bool,
    /// Item tower: genres, mean-pooled.
    pub genres: bool,
    /// Item tower: release year bucket.
    pub year: bool,
    /// Width of a year bucket in years.
    pub year_bucket_width: u16,
}

impl FeatureChoice {
    /// Ids only: TFRS's basic retrieval tutorial.
    pub const IDS_ONLY: Self = Self {
        user_features: false,
        title_tokens: false,
        genres: false,
        year: false,
        year_bucket_width: 5,
    };

    /// Every feature the loaders provide.
    pub const ALL: Self = Self {
        user_features: true,
        title_tokens: true,
        genres: true,
        year: true,
        year_bucket_width: 5,
    };
}

/// Every vocabulary a two-tower model uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Vocabularies {
    /// User ids.
    pub user_id: Vocabulary,
    /// Item ids (the candidates).
    pub item_id: Vocabulary,
    /// Title tokens.
    pub title_token: Vocabulary,
    /// Genres.
    pub genre: Vocabulary,
    /// Year buckets.
    pub year: Vocabulary,
    /// One per user feature, by name.
    pub user_features: BTreeMap<String, Vocabulary>,
}

impl Vocabularies {
    /// Ids from the user and item files and from every interaction (ids carry no
    /// label, so test interactions may name them, as the tutorials'
    /// `unique_user_ids` do); feature values from the user and item files.
    pub fn build(data: &Dataset, choice: &FeatureChoice) -> Self {
        let user_id = Vocabulary::new(
            data.users
                .iter()
                .map(|u| u.id.as_str())
                .chain(data.interactions.iter().map(|i| i.user.as_str())),
        );
        let item_id = Vocabulary::new(
            data.items
                .iter()
                .map(|i| i.id.as_str())
                .chain(data.interactions.iter().map(|i| i.item.as_str())),
        );
        let title_token = if choice.title_tokens {
            Vocabulary::new(
                data.items
                    .iter()
                    .filter_map(|i| i.title.as_deref())
                    .flat_map(title_tokens),
            )
        } else {
            Vocabulary::default()
        };
        let genre = if choice.genres {
            Vocabulary::new(data.items.iter().flat_map(|i| i.genres.iter().cloned()))
        } else {
            Vocabulary::default()
        };
        let year = if choice.year {
            Vocabulary::new(
                data.items
                    .iter()
                    .filter_map(|i| i.year)
                    .map(|y| year_bucket(y, choice.year_bucket_width)),
            )
        } else {
            Vocabulary::default()
        };
        let user_features = if choice.user_features {
            data.user_feature_names()
                .into_iter()
                .map(|name| {
                    let vocab = Vocabulary::new(
                        data.users
                            .iter()
                            .filter_map(|u| u.features.get(&name).cloned()),
                    );
                    (name, vocab)
                })
                .collect()
        } else {
            BTreeMap::new()
        };
        Self {
            user_id,
            item_id,
            title_token,
            genre,
            year,
            user_features,
        }
    }
}

/// Variable-length lists of rows, padded to one width, with pooling weights.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Padded {
    /// Slots per entity (at least 1).
    pub width: usize,
    /// `entities × width` rows; padding is row 0.
    pub rows: Vec<u32>,
    /// `entities × width` weights: `1 / len` for a value, 0 for padding.
    pub weights: Vec<f32>,
}

impl Padded {
    /// Pads `lists` (one per entity).
    pub fn new(lists: &[Vec<u32>]) -> Self {
        let width = lists.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut rows = vec![0; lists.len() * width];
        let mut weights = vec![0.0; lists.len() * width];
        for (e, list) in lists.iter().enumerate() {
            for (s, &row) in list.iter().enumerate() {
                rows[e * width + s] = row;
                weights[e * width + s] = 1.0 / list.len() as f32;
            }
        }
        Self {
            width,
            rows,
            weights,
        }
    }

    /// Rows and weights of the given entities, concatenated.
    pub fn gather(&self, entities: &[u32]) -> (Vec<u32>, Vec<f32>) {
        let mut rows = Vec::with_capacity(entities.len() * self.width);
        let mut weights = Vec::with_capacity(entities.len() * self.width);
        for &e in entities {
            let at = e as usize * self.width;
            rows.extend_from_slice(&self.rows[at..at + self.width]);
            weights.extend_from_slice(&self.weights[at..at + self.width]);
        }
        (rows, weights)
    }
}

/// Item features by item row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemTable {
    /// Title token rows.
    pub title_tokens: Padded,
    /// Genre rows.
    pub genres: Padded,
    /// Year bucket row per item.
    pub year: Vec<u32>,
}

/// User features by user row: `users × features` rows, features in name order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UserFeatureRows {
    /// Feature names, in the order of the columns.
    pub names: Vec<String>,
    /// Row-major `users × names.len()`.
    pub rows: Vec<u32>,
}

impl UserFeatureRows {
    /// The feature rows of `users` for column `f`.
    pub fn column(&self, f: usize, users: &[u32]) -> Vec<u32> {
        let width = self.names.len();
        users
            .iter()
            .map(|&u| self.rows[u as usize * width + f])
            .collect()
    }
}

/// Builds the item and user tables for `vocab`'s rows.
pub fn build_tables(
    data: &Dataset,
    vocab: &Vocabularies,
    choice: &FeatureChoice,
) -> (ItemTable, UserFeatureRows) {
    let items: HashMap<&str, &crate::dataset::Item> =
        data.items.iter().map(|i| (i.id.as_str(), i)).collect();
    let item_rows = vocab.item_id.rows();
    let mut tokens = vec![Vec::new(); item_rows];
    let mut genres = vec![Vec::new(); item_rows];
    let mut year = vec![0; item_rows];
    for (r, id) in vocab.item_id.values().iter().enumerate() {
        let row = r + 1;
        let Some(item) = items.get(id.as_str()) else {
            continue;
        };
        if choice.title_tokens
            && let Some(title) = &item.title
        {
            tokens[row] = title_tokens(title)
                .iter()
                .map(|t| vocab.title_token.lookup(t))
                .collect();
        }
        if choice.genres {
            genres[row] = item.genres.iter().map(|g| vocab.genre.lookup(g)).collect();
        }
        if choice.year {
            year[row] = item.year.map_or(0, |y| {
                vocab.year.lookup(&year_bucket(y, choice.year_bucket_width))
            });
        }
    }
    let item_table = ItemTable {
        title_tokens: Padded::new(&tokens),
        genres: Padded::new(&genres),
        year,
    };

    let names: Vec<String> = vocab.user_features.keys().cloned().collect();
    let users: HashMap<&str, &crate::dataset::User> =
        data.users.iter().map(|u| (u.id.as_str(), u)).collect();
    let mut rows = vec![0; vocab.user_id.rows() * names.len()];
    for (r, id) in vocab.user_id.values().iter().enumerate() {
        let Some(user) = users.get(id.as_str()) else {
            continue;
        };
        for (f, name) in names.iter().enumerate() {
            rows[(r + 1) * names.len() + f] = user
                .features
                .get(name)
                .map_or(0, |v| vocab.user_features[name].lookup(v));
        }
    }
    (item_table, UserFeatureRows { names, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_weights_average() {
        let p = Padded::new(&[vec![], vec![3, 4], vec![5]]);
        assert_eq!(p.width, 2);
        assert_eq!(p.rows, [0, 0, 3, 4, 5, 0]);
        assert_eq!(p.weights, [0.0, 0.0, 0.5, 0.5, 1.0, 0.0]);
        assert_eq!(
            p.gather(&[2, 1]),
            (vec![5, 0, 3, 4], vec![1.0, 0.0, 0.5, 0.5])
        );
    }
}
