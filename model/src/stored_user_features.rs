//! Stored user-side feature values: `ranker/user_features.tsv`.
//!
//! A ranker trained on user features (gender, zip code, age, …) needs them at
//! serving time, but a request usually carries only the user id. The trainer
//! therefore writes each training user's values to a table with the same cell
//! syntax as `item_features.tsv` (header `user_id<TAB>feature...`, multi-hot
//! cells list values separated by `|`, an empty cell is a missing value). The
//! stored values are defaults: a value the request gives for the same feature
//! wins. A user the table does not have gets nothing from it, so its features
//! fall back to out-of-vocabulary rows (or the mean, for numbers) as before.

use std::collections::HashMap;
use std::path::Path;

use crate::ModelError;
use crate::features::{FeatureInput, FeatureKind, FeatureSpec, Side};

/// The stored user-side values, by user id.
#[derive(Debug, Default)]
pub(crate) struct StoredUserFeatures {
    /// Feature name → column.
    columns: HashMap<String, usize>,
    /// User id → one value per column (`None`: the cell was empty).
    users: HashMap<String, Vec<Option<FeatureInput>>>,
}

impl StoredUserFeatures {
    /// Reads `user_id<TAB>feature...`; every column must be a user-side feature of
    /// `specs` other than `user_id` itself, each at most once.
    pub fn load(path: &Path, specs: &[FeatureSpec]) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        let fail = |why: String| ModelError::Weights(format!("{}: {why}", path.display()));
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        if header.first() != Some(&"user_id") {
            return Err(fail(format!(
                "header is {header:?}, its first column must be user_id"
            )));
        }
        let mut kinds = Vec::with_capacity(header.len() - 1);
        let mut columns = HashMap::new();
        for (column, name) in header[1..].iter().enumerate() {
            let spec = specs
                .iter()
                .find(|s| s.name == *name && s.side == Side::User && s.name != "user_id")
                .ok_or_else(|| {
                    fail(format!(
                        "column {name} is not a user-side feature of the config"
                    ))
                })?;
            if columns.insert(name.to_string(), column).is_some() {
                return Err(fail(format!("column {name} appears twice")));
            }
            kinds.push(spec.kind);
        }
        let mut users = HashMap::new();
        for (number, line) in lines.enumerate() {
            let bad = |why: String| fail(format!("line {}: {why}", number + 2));
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != header.len() {
                return Err(bad(format!(
                    "{} fields, expected {}",
                    fields.len(),
                    header.len()
                )));
            }
            let values = kinds
                .iter()
                .zip(&fields[1..])
                .zip(&header[1..])
                .map(|((kind, cell), name)| {
                    parse_cell(*kind, cell).map_err(|why| bad(format!("{name}: {why}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if users.insert(fields[0].to_string(), values).is_some() {
                return Err(bad(format!("user_id {} appears twice", fields[0])));
            }
        }
        Ok(Self { columns, users })
    }

    /// The stored value of `feature` for `user_id`, if any.
    pub fn get(&self, user_id: &str, feature: &str) -> Option<&FeatureInput> {
        let column = *self.columns.get(feature)?;
        self.users.get(user_id)?.get(column)?.as_ref()
    }

    /// Users in the table.
    pub fn len(&self) -> usize {
        self.users.len()
    }
}

fn parse_cell(kind: FeatureKind, cell: &str) -> Result<Option<FeatureInput>, String> {
    if cell.is_empty() {
        return Ok(None);
    }
    Ok(Some(match kind {
        FeatureKind::Categorical => FeatureInput::Value(cell.to_string()),
        FeatureKind::MultiHot => FeatureInput::Values(
            cell.split('|')
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect(),
        ),
        FeatureKind::Numeric => match cell.parse::<f64>() {
            Ok(x) if x.is_finite() => FeatureInput::Number(x),
            _ => return Err(format!("{cell:?} is not a finite number")),
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs() -> Vec<FeatureSpec> {
        let mut age = FeatureSpec::categorical("age", Side::User, "", 1);
        age.kind = FeatureKind::Numeric;
        vec![
            FeatureSpec::categorical("user_id", Side::User, "v/u.txt", 2),
            FeatureSpec::categorical("zip", Side::User, "v/z.txt", 2),
            age,
            FeatureSpec::categorical("movie_id", Side::Item, "v/m.txt", 2),
        ]
    }

    fn load(text: &str) -> Result<StoredUserFeatures, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("user_features.tsv");
        std::fs::write(&path, text).unwrap();
        StoredUserFeatures::load(&path, &specs())
    }

    #[test]
    fn reads_cells_by_kind_and_empty_is_missing() {
        let table = load("user_id\tage\tzip\nu1\t31\t02139\nu2\t\t\n").unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(table.get("u1", "age"), Some(&FeatureInput::Number(31.0)));
        assert_eq!(table.get("u1", "zip"), Some(&FeatureInput::from("02139")));
        assert_eq!(table.get("u2", "zip"), None);
        assert_eq!(table.get("nobody", "zip"), None);
        assert_eq!(table.get("u1", "movie_id"), None);
    }

    #[test]
    fn refuses_what_the_config_does_not_take() {
        let error = load("user_id\tmovie_id\nu1\t3\n").unwrap_err().to_string();
        assert!(
            error.contains("column movie_id is not a user-side feature"),
            "{error}"
        );
        let error = load("uid\tzip\n").unwrap_err().to_string();
        assert!(error.contains("first column must be user_id"), "{error}");
        let error = load("user_id\tzip\nu1\t1\nu1\t2\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 3: user_id u1 appears twice"),
            "{error}"
        );
        let error = load("user_id\tage\nu1\told\n").unwrap_err().to_string();
        assert!(
            error.contains("line 2: age: \"old\" is not a finite number"),
            "{error}"
        );
    }
}
