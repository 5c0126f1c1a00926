//! The ranker's input features, from a [`Dataset`] to per-entity columns.
//!
//! Features are named as the TFRS DCN tutorial names them (`movie_id`,
//! `user_zip_code`, …), which are also the names a ranking node serves them
//! by. Each feature belongs to the user or the item side and is one of the
//! serving kinds of `recsys_model::features`: categorical (an embedding row),
//! multi-hot (rows mean-pooled) or numeric (standardized, one column).
//!
//! A column holds one value per entity row: users by user id, items by item id,
//! row 0 being the unknown entity (no values: out-of-vocabulary rows, the mean).
//! Rows of the ids' vocabularies are those of the `user_id` and `movie_id`
//! features themselves.

use std::collections::HashMap;

use recsys_model::{FeatureKind, Side};
use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, Item, User};
use crate::error::{Result, TrainerError};
use crate::features::Padded;
use crate::vocabulary::Vocabulary;

/// A feature the ranker can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankingFeature {
    /// The item id (MovieLens movie id), categorical.
    MovieId,
    /// The item's title, categorical: items sharing a title share a row (TFRS's
    /// basic ranking tutorial keys movies by title).
    MovieTitle,
    /// The item's genres, multi-hot, mean-pooled.
    MovieGenres,
    /// The item's release year, numeric, standardized over the catalog.
    MovieYear,
    /// The user id, categorical.
    UserId,
    /// The user's gender (`M`, `F`), categorical.
    UserGender,
    /// The user's zip code, categorical.
    UserZipCode,
    /// The user's occupation, categorical.
    UserOccupationText,
    /// The user's age in MovieLens 1M's buckets (1, 18, 25, 35, 45, 50, 56), categorical.
    BucketizedUserAge,
}

impl RankingFeature {
    /// The served name (a column of the ranker's feature tables).
    pub fn name(self) -> &'static str {
        match self {
            Self::MovieId => "movie_id",
            Self::MovieTitle => "movie_title",
            Self::MovieGenres => "movie_genres",
            Self::MovieYear => "movie_year",
            Self::UserId => "user_id",
            Self::UserGender => "user_gender",
            Self::UserZipCode => "user_zip_code",
            Self::UserOccupationText => "user_occupation_text",
            Self::BucketizedUserAge => "bucketized_user_age",
        }
    }

    /// The side it belongs to.
    pub fn side(self) -> Side {
        match self {
            Self::MovieId | Self::MovieTitle | Self::MovieGenres | Self::MovieYear => Side::Item,
            _ => Side::User,
        }
    }

    /// Its kind.
    pub fn kind(self) -> FeatureKind {
        match self {
            Self::MovieGenres => FeatureKind::MultiHot,
            Self::MovieYear => FeatureKind::Numeric,
            _ => FeatureKind::Categorical,
        }
    }

    /// The user-file field a user feature comes from.
    fn user_field(self) -> Option<&'static str> {
        match self {
            Self::UserGender => Some("gender"),
            Self::UserZipCode => Some("zip"),
            Self::UserOccupationText => Some("occupation"),
            Self::BucketizedUserAge => Some("age"),
            _ => None,
        }
    }

    /// This feature's values of one item (empty: missing).
    fn item_values(self, item: &Item) -> Vec<String> {
        match self {
            Self::MovieId => vec![item.id.clone()],
            Self::MovieTitle => item.title.iter().cloned().collect(),
            Self::MovieGenres => item.genres.clone(),
            Self::MovieYear => item.year.iter().map(u16::to_string).collect(),
            _ => Vec::new(),
        }
    }

    /// This feature's value of one user, if it has one.
    fn user_value(self, user: &User) -> Option<String> {
        if self == Self::UserId {
            return Some(user.id.clone());
        }
        let raw = user.features.get(self.user_field()?)?;
        if self == Self::BucketizedUserAge {
            return raw
                .parse::<u32>()
                .ok()
                .map(|age| age_bucket(age).to_string());
        }
        Some(raw.clone())
    }
}

/// MovieLens 1M's age groups, which TFDS's `bucketized_user_age` applies to
/// the 100K's ages too: under 18, 18–24, 25–34, 35–44, 45–49, 50–55, 56+.
pub fn age_bucket(age: u32) -> u32 {
    match age {
        0..18 => 1,
        18..25 => 18,
        25..35 => 25,
        35..45 => 35,
        45..50 => 45,
        50..56 => 50,
        _ => 56,
    }
}

/// One feature's values for every entity row of its side.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    /// Categorical: the vocabulary row per entity.
    Rows(Vec<u32>),
    /// Multi-hot: padded rows and mean weights per entity.
    Lists(Padded),
    /// Numeric: the standardized value per entity (0 when missing) and the raw one.
    Numbers {
        /// `(raw - mean) / std`, 0 for a missing value (the mean).
        standardized: Vec<f32>,
        /// The raw value, for the exported tables.
        raw: Vec<Option<f64>>,
        /// Mean over the catalog's known values.
        mean: f64,
        /// Standard deviation over them (1 when they do not vary).
        std: f64,
    },
}

/// A feature's vocabulary and column.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// The feature.
    pub feature: RankingFeature,
    /// Its values (empty for numeric features).
    pub vocabulary: Vocabulary,
    /// Per entity row.
    pub values: ColumnValues,
}

impl Column {
    /// The raw cell of entity row `entity`, as the ranker's TSV tables write it
    /// (multi-hot values joined by `|`; empty when missing).
    pub fn cell(&self, entity: usize) -> String {
        match &self.values {
            ColumnValues::Rows(rows) => self
                .vocabulary
                .value(rows[entity])
                .unwrap_or_default()
                .to_string(),
            ColumnValues::Lists(padded) => {
                let (rows, weights) = padded.gather(&[entity as u32]);
                rows.iter()
                    .zip(&weights)
                    .filter(|(_, w)| **w > 0.0)
                    .filter_map(|(&r, _)| self.vocabulary.value(r))
                    .collect::<Vec<_>>()
                    .join("|")
            }
            ColumnValues::Numbers { raw, .. } => {
                raw[entity].map(|x| x.to_string()).unwrap_or_default()
            }
        }
    }
}

/// Every column of the chosen features, with the entity vocabularies.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureTables {
    /// User ids: entity rows of user-side columns.
    pub users: Vocabulary,
    /// Item ids: entity rows of item-side columns.
    pub items: Vocabulary,
    /// One per feature, in the order given.
    pub columns: Vec<Column>,
}

impl FeatureTables {
    /// Builds the columns of `features` from `data`'s user and item files (and
    /// the ids of its interactions). A feature that no user or item has is an
    /// error naming it and the field it needs; single missing values are
    /// allowed and read as unknown.
    pub fn build(data: &Dataset, features: &[RankingFeature]) -> Result<Self> {
        let users = Vocabulary::new(
            data.users
                .iter()
                .map(|u| u.id.as_str())
                .chain(data.interactions.iter().map(|i| i.user.as_str())),
        );
        let items = Vocabulary::new(
            data.items
                .iter()
                .map(|i| i.id.as_str())
                .chain(data.interactions.iter().map(|i| i.item.as_str())),
        );
        let user_of: HashMap<&str, &User> = data.users.iter().map(|u| (u.id.as_str(), u)).collect();
        let item_of: HashMap<&str, &Item> = data.items.iter().map(|i| (i.id.as_str(), i)).collect();
        let mut columns = Vec::with_capacity(features.len());
        for (index, &feature) in features.iter().enumerate() {
            if features[..index].contains(&feature) {
                return Err(TrainerError::InvalidConfig {
                    field: "features",
                    reason: format!("{} is listed twice", feature.name()),
                });
            }
            // Per entity row (row 0 first): the feature's values.
            let values: Vec<Vec<String>> = match feature.side() {
                Side::User => std::iter::once(Vec::new())
                    .chain(users.values().iter().map(|id| {
                        match feature {
                            RankingFeature::UserId => vec![id.clone()],
                            _ => user_of
                                .get(id.as_str())
                                .and_then(|u| feature.user_value(u))
                                .into_iter()
                                .collect(),
                        }
                    }))
                    .collect(),
                Side::Item => std::iter::once(Vec::new())
                    .chain(items.values().iter().map(|id| {
                        match feature {
                            RankingFeature::MovieId => vec![id.clone()],
                            _ => item_of
                                .get(id.as_str())
                                .map(|i| feature.item_values(i))
                                .unwrap_or_default(),
                        }
                    }))
                    .collect(),
            };
            if values.iter().all(Vec::is_empty) {
                return Err(missing(feature, data));
            }
            columns.push(column(feature, &values)?);
        }
        Ok(Self {
            users,
            items,
            columns,
        })
    }

    /// The column of `feature`, if chosen.
    pub fn column(&self, feature: RankingFeature) -> Option<&Column> {
        self.columns.iter().find(|c| c.feature == feature)
    }
}

fn missing(feature: RankingFeature, data: &Dataset) -> TrainerError {
    let reason = match (feature.side(), feature.user_field()) {
        (Side::User, Some(field)) if data.users.is_empty() => {
            format!("needs the user field {field} and the data set has no user file")
        }
        (Side::User, Some(field)) => {
            format!("needs the user field {field} and no user in the user file has it")
        }
        (Side::Item, _) if data.items.is_empty() => {
            "needs the item file and the data set has none".to_string()
        }
        _ => {
            let field = match feature {
                RankingFeature::MovieTitle => "title",
                RankingFeature::MovieGenres => "genres",
                _ => "year",
            };
            format!("needs the item field {field} and no item in the item file has it")
        }
    };
    TrainerError::MissingFeature {
        feature: feature.name(),
        reason,
    }
}

fn column(feature: RankingFeature, values: &[Vec<String>]) -> Result<Column> {
    let column = match feature.kind() {
        FeatureKind::Categorical => {
            let vocabulary = Vocabulary::new(values.iter().flatten().cloned());
            let rows = values
                .iter()
                .map(|v| v.first().map_or(0, |x| vocabulary.lookup(x)))
                .collect();
            Column {
                feature,
                vocabulary,
                values: ColumnValues::Rows(rows),
            }
        }
        FeatureKind::MultiHot => {
            let vocabulary = Vocabulary::new(values.iter().flatten().cloned());
            let lists: Vec<Vec<u32>> = values
                .iter()
                .map(|v| v.iter().map(|x| vocabulary.lookup(x)).collect())
                .collect();
            Column {
                feature,
                vocabulary,
                values: ColumnValues::Lists(Padded::new(&lists)),
            }
        }
        FeatureKind::Numeric => {
            let raw: Vec<Option<f64>> = values
                .iter()
                .map(|v| v.first().and_then(|x| x.parse::<f64>().ok()))
                .collect();
            let known: Vec<f64> = raw.iter().flatten().copied().collect();
            let mean = known.iter().sum::<f64>() / known.len().max(1) as f64;
            let variance =
                known.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / known.len().max(1) as f64;
            let std = if variance > 0.0 { variance.sqrt() } else { 1.0 };
            let standardized = raw
                .iter()
                .map(|x| x.map_or(0.0, |x| ((x - mean) / std) as f32))
                .collect();
            Column {
                feature,
                vocabulary: Vocabulary::default(),
                values: ColumnValues::Numbers {
                    standardized,
                    raw,
                    mean,
                    std,
                },
            }
        }
    };
    Ok(column)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dataset::Interaction;

    fn data() -> Dataset {
        let user = |id: &str, age: &str, gender: &str| User {
            id: id.into(),
            features: BTreeMap::from([
                ("age".to_string(), age.to_string()),
                ("gender".to_string(), gender.to_string()),
            ]),
        };
        let item = |id: &str, genres: &[&str], year: Option<u16>| Item {
            id: id.into(),
            title: Some(format!("movie {id}")),
            year,
            genres: genres.iter().map(|g| g.to_string()).collect(),
        };
        Dataset {
            interactions: vec![Interaction {
                user: "7".into(),
                item: "2".into(),
                rating: Some(4.0),
                timestamp: None,
            }],
            items: vec![
                item("1", &["Drama"], Some(1990)),
                item("2", &["Comedy", "Drama"], None),
                item("3", &[], Some(2000)),
            ],
            users: vec![user("7", "17", "F"), user("9", "56", "M")],
        }
    }

    #[test]
    fn columns_hold_each_entity_value_and_row_zero_is_unknown() {
        use RankingFeature::*;
        let tables = FeatureTables::build(
            &data(),
            &[MovieId, UserId, BucketizedUserAge, MovieGenres, MovieYear],
        )
        .unwrap();
        assert_eq!(tables.users.values(), ["7", "9"]);
        let age = tables.column(BucketizedUserAge).unwrap();
        assert_eq!(age.vocabulary.values(), ["1", "56"]);
        assert_eq!(
            (age.cell(0), age.cell(1), age.cell(2)),
            ("".into(), "1".into(), "56".into())
        );
        let genres = tables.column(MovieGenres).unwrap();
        assert_eq!(genres.cell(2), "Comedy|Drama");
        assert_eq!(genres.cell(3), "");
        let year = tables.column(MovieYear).unwrap();
        let ColumnValues::Numbers {
            standardized,
            mean,
            std,
            ..
        } = &year.values
        else {
            panic!("year is numeric");
        };
        assert_eq!((*mean, *std), (1995.0, 5.0));
        assert_eq!(standardized, &[0.0, -1.0, 0.0, 1.0]);
        assert_eq!(year.cell(2), "");
        assert_eq!(tables.column(MovieId).unwrap().cell(3), "3");
    }

    #[test]
    fn an_absent_feature_is_named_with_what_it_needs() {
        let mut data = data();
        for user in &mut data.users {
            user.features.remove("gender");
        }
        let error = FeatureTables::build(&data, &[RankingFeature::UserGender])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "feature user_gender: needs the user field gender and no user in the user file has it"
        );
        data.users.clear();
        let error = FeatureTables::build(&data, &[RankingFeature::UserZipCode])
            .unwrap_err()
            .to_string();
        assert!(error.contains("no user file"), "{error}");
        let error = FeatureTables::build(&data, &[RankingFeature::UserId, RankingFeature::UserId])
            .unwrap_err()
            .to_string();
        assert!(error.contains("user_id is listed twice"), "{error}");
    }

    #[test]
    fn ages_fall_in_movielens_buckets() {
        let buckets: Vec<u32> = [7, 18, 24, 25, 44, 45, 50, 55, 56, 80]
            .into_iter()
            .map(age_bucket)
            .collect();
        assert_eq!(buckets, [1, 18, 18, 25, 35, 45, 50, 50, 56, 56]);
    }
}
