//! What every loader produces: interactions, an item catalog with features, and
//! users with features. Ids are strings, as TFRS's tutorials feed them to
//! `StringLookup`; the vocabularies turn them into rows.

use std::collections::{BTreeMap, HashMap};

/// One observed (user, item) event.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// The user's id.
    pub user: String,
    /// The item's id.
    pub item: String,
    /// The explicit rating, when the source has one.
    pub rating: Option<f32>,
    /// Seconds since the epoch, when the source has them.
    pub timestamp: Option<i64>,
}

/// A catalog entry and the features the item tower reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Item {
    /// The item's id.
    pub id: String,
    /// Display title, year included as MovieLens writes it ("Toy Story (1995)").
    pub title: Option<String>,
    /// Release year (from the title's "(1995)", else the release date).
    pub year: Option<u16>,
    /// Genre names.
    pub genres: Vec<String>,
}

/// A user and the categorical features the user tower reads.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct User {
    /// The user's id.
    pub id: String,
    /// Feature name → value (MovieLens: `age`, `gender`, `occupation`, `zip`).
    pub features: BTreeMap<String, String>,
}

/// A loaded data set.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Interactions in file order.
    pub interactions: Vec<Interaction>,
    /// The catalog; may be empty when the source has no item file.
    pub items: Vec<Item>,
    /// Users with features; may be empty when the source has no user file.
    pub users: Vec<User>,
}

impl Dataset {
    /// The same data keyed by title instead of item id, as TFRS's basic retrieval
    /// tutorial does (its candidates are `movie_title`). Items sharing a title
    /// merge into the first one; MovieLens 100K has 1682 ids but 1664 titles.
    /// Items without a title keep their id.
    pub fn keyed_by_title(&self) -> Dataset {
        let title_of: HashMap<&str, &str> = self
            .items
            .iter()
            .filter_map(|i| i.title.as_deref().map(|t| (i.id.as_str(), t)))
            .collect();
        let key = |id: &str| title_of.get(id).map_or(id, |t| t).to_string();
        let mut seen = std::collections::HashSet::new();
        let items = self
            .items
            .iter()
            .filter_map(|item| {
                let id = key(&item.id);
                seen.insert(id.clone()).then(|| Item { id, ..item.clone() })
            })
            .collect();
        let interactions = self
            .interactions
            .iter()
            .map(|i| Interaction {
                item: key(&i.item),
                ..i.clone()
            })
            .collect();
        Dataset {
            interactions,
            items,
            users: self.users.clone(),
        }
    }

    /// Names of the user features, sorted.
    pub fn user_feature_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .users
            .iter()
            .flat_map(|u| u.features.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// The year in a MovieLens title's trailing "(1995)", if any.
pub fn year_from_title(title: &str) -> Option<u16> {
    let open = title.trim_end().strip_suffix(')')?.rfind('(')?;
    let inner = &title.trim_end()[open + 1..title.trim_end().len() - 1];
    // Some titles end in "(1995/I)" or "(a.k.a. …)"; only four digits count.
    (inner.len() == 4 && inner.bytes().all(|b| b.is_ascii_digit()))
        .then(|| inner.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn year_from_the_title() {
        assert_eq!(year_from_title("Toy Story (1995)"), Some(1995));
        assert_eq!(year_from_title("Toy Story (1995) "), Some(1995));
        assert_eq!(
            year_from_title("City of Lost Children (Cité des enfants perdus, La) (1995)"),
            Some(1995)
        );
        assert_eq!(year_from_title("unknown"), None);
        assert_eq!(year_from_title("Paris (a.k.a. X)"), None);
    }

    #[test]
    fn keyed_by_title_merges_duplicate_titles() {
        let item = |id: &str, title: &str| Item {
            id: id.into(),
            title: Some(title.into()),
            ..Item::default()
        };
        let data = Dataset {
            interactions: vec![
                Interaction {
                    user: "u".into(),
                    item: "1".into(),
                    rating: None,
                    timestamp: None,
                },
                Interaction {
                    user: "u".into(),
                    item: "2".into(),
                    rating: None,
                    timestamp: None,
                },
            ],
            items: vec![item("1", "Chasers (1994)"), item("2", "Chasers (1994)")],
            users: vec![],
        };
        let by_title = data.keyed_by_title();
        assert_eq!(by_title.items.len(), 1);
        assert!(
            by_title
                .interactions
                .iter()
                .all(|i| i.item == "Chasers (1994)")
        );
    }
}
