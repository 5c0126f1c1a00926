//! The ranker's input features and how each becomes its slice of x0.
//!
//! | kind | value | slice of x0 |
//! |---|---|---|
//! | `categorical` | one value (an id, a bucket, a string) | its embedding row; unknown values take row 0, as Keras `StringLookup(num_oov_indices=1)` |
//! | `multi_hot` | a list (genres, tags) | the mean (or sum) of its values' rows; an empty list is zeros, as masked pooling gives |
//! | `numeric` | a number | `(value - mean) / std`, one column; a missing value is the mean (0) |
//!
//! Values come from the request (user side) or from the bundle's item feature
//! table (item side), where a multi-hot cell lists its values separated by `|`.

use std::collections::HashMap;
use std::path::Path;

use recsys_bundle::Vocabulary;
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Which side of the request a feature comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// From the request (`user_id`, `user_features`).
    User,
    /// From the bundle's item feature table.
    Item,
}

/// How a feature's value turns into numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// One value, one embedding row.
    #[default]
    Categorical,
    /// A list of values whose rows are pooled.
    MultiHot,
    /// A standardized number, one column (`dim` must be 1).
    Numeric,
}

/// How a multi-hot feature combines its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The average (Keras `GlobalAveragePooling1D` over the masked list).
    #[default]
    Mean,
    /// The sum (`tf.reduce_sum` over the list, a bag of embeddings).
    Sum,
}

/// Standardization of a numeric feature: `(value - mean) / std`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Subtracted first.
    pub mean: f64,
    /// Divided by next; must be positive.
    pub std: f64,
}

/// One input feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Name: `user_id` is the request's user id; other user-side names are keys of
    /// the request's features; item-side names are columns of the item table.
    pub name: String,
    /// Where its value comes from.
    pub side: Side,
    /// What the value is (default categorical, the only kind before multi-hot and
    /// numeric features existed, so older configs still read).
    #[serde(default)]
    pub kind: FeatureKind,
    /// Vocabulary file, relative to the bundle (categorical and multi-hot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vocabulary: String,
    /// Width of its slice of x0.
    pub dim: usize,
    /// Multi-hot pooling (default mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
    /// Numeric standardization (default none: the value as it is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<Normalization>,
}

impl FeatureSpec {
    /// A categorical feature with an embedding of `dim` per vocabulary value.
    pub fn categorical(name: &str, side: Side, vocabulary: &str, dim: usize) -> Self {
        Self {
            name: name.into(),
            side,
            kind: FeatureKind::Categorical,
            vocabulary: vocabulary.into(),
            dim,
            pooling: None,
            normalization: None,
        }
    }

    /// Checks what the kind requires of the other fields.
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.dim == 0 {
            return Err(format!("feature {name}: dim must be positive"));
        }
        match self.kind {
            FeatureKind::Numeric => {
                if self.dim != 1 {
                    return Err(format!(
                        "feature {name}: numeric features are 1 wide, dim is {}",
                        self.dim
                    ));
                }
                if let Some(n) = self.normalization
                    && !(n.std > 0.0 && n.std.is_finite() && n.mean.is_finite())
                {
                    return Err(format!(
                        "feature {name}: normalization needs a finite mean and std > 0, got {} and {}",
                        n.mean, n.std
                    ));
                }
            }
            FeatureKind::Categorical | FeatureKind::MultiHot => {
                if self.vocabulary.is_empty() {
                    return Err(format!("feature {name}: a vocabulary file is required"));
                }
            }
        }
        if self.name == "user_id"
            && (self.side != Side::User || self.kind != FeatureKind::Categorical)
        {
            return Err("feature user_id: must be a categorical user-side feature".into());
        }
        Ok(())
    }
}

/// A feature value given with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureInput {
    /// One value.
    Value(String),
    /// A list of values.
    Values(Vec<String>),
    /// A number.
    Number(f64),
}

impl From<String> for FeatureInput {
    fn from(value: String) -> Self {
        Self::Value(value)
    }
}

impl From<&str> for FeatureInput {
    fn from(value: &str) -> Self {
        Self::Value(value.to_string())
    }
}

/// A loaded feature: its spec, vocabulary and embedding table.
#[derive(Debug)]
pub(crate) struct Feature {
    pub spec: FeatureSpec,
    /// Value → embedding row (rows start at 1; 0 is out of vocabulary); empty
    /// for numeric features.
    pub vocabulary: Vocabulary,
    /// `[vocabulary + 1, dim]`, row-major; empty for numeric features.
    pub table: Vec<f32>,
}

impl Feature {
    fn row(&self, row: u32) -> &[f32] {
        let start = row as usize * self.spec.dim;
        &self.table[start..start + self.spec.dim]
    }

    fn pool<'a>(&self, values: impl Iterator<Item = &'a str>, out: &mut Vec<f32>) {
        let start = out.len();
        out.resize(start + self.spec.dim, 0.0);
        let mut count = 0usize;
        for value in values {
            let row = self.vocabulary.lookup(value);
            for (sum, x) in out[start..].iter_mut().zip(self.row(row)) {
                *sum += x;
            }
            count += 1;
        }
        if count > 1 && self.spec.pooling.unwrap_or_default() == Pooling::Mean {
            let scale = 1.0 / count as f32;
            out[start..].iter_mut().for_each(|x| *x *= scale);
        }
    }

    /// Pushes the standardized number; a value that does not fit in f32 once
    /// standardized (1e300, say) is refused: it would turn every score into NaN.
    fn number(&self, value: Option<f64>, out: &mut Vec<f32>) -> Result<(), String> {
        let standardized = match (value, self.spec.normalization) {
            (None, _) => 0.0,
            (Some(v), Some(n)) => (v - n.mean) / n.std,
            (Some(v), None) => v,
        } as f32;
        if !standardized.is_finite() {
            return Err(format!(
                "{} is out of range: standardized it does not fit in f32",
                value.unwrap_or_default()
            ));
        }
        out.push(standardized);
        Ok(())
    }

    /// Appends this feature's slice for a request value; `Ok(true)` when a
    /// categorical value was out of vocabulary.
    pub fn encode_input(
        &self,
        input: Option<&FeatureInput>,
        out: &mut Vec<f32>,
    ) -> Result<bool, String> {
        let name = &self.spec.name;
        match (self.spec.kind, input) {
            (FeatureKind::Categorical, None) => {
                out.extend_from_slice(self.row(0));
                Ok(true)
            }
            (FeatureKind::Categorical, Some(FeatureInput::Value(v))) => {
                let row = self.vocabulary.lookup(v);
                out.extend_from_slice(self.row(row));
                Ok(row == 0)
            }
            (FeatureKind::Categorical, Some(other)) => Err(format!(
                "user_features[{name}]: {} given, the feature is categorical (one value)",
                describe(other)
            )),
            (FeatureKind::MultiHot, None) => {
                self.pool(std::iter::empty(), out);
                Ok(false)
            }
            (FeatureKind::MultiHot, Some(FeatureInput::Values(vs))) => {
                self.pool(vs.iter().map(String::as_str), out);
                Ok(false)
            }
            (FeatureKind::MultiHot, Some(FeatureInput::Value(v))) => {
                self.pool(std::iter::once(v.as_str()), out);
                Ok(false)
            }
            (FeatureKind::MultiHot, Some(other)) => Err(format!(
                "user_features[{name}]: {} given, the feature is a list of values",
                describe(other)
            )),
            (FeatureKind::Numeric, None) => {
                self.number(None, out)?;
                Ok(false)
            }
            (FeatureKind::Numeric, Some(FeatureInput::Number(x))) if x.is_finite() => {
                self.number(Some(*x), out)
                    .map_err(|why| format!("user_features[{name}]: {why}"))?;
                Ok(false)
            }
            (FeatureKind::Numeric, Some(FeatureInput::Value(v))) => match v.parse::<f64>() {
                Ok(x) if x.is_finite() => {
                    self.number(Some(x), out)
                        .map_err(|why| format!("user_features[{name}]: {why}"))?;
                    Ok(false)
                }
                _ => Err(format!(
                    "user_features[{name}]: {v:?} is not a finite number, the feature is numeric"
                )),
            },
            (FeatureKind::Numeric, Some(other)) => Err(format!(
                "user_features[{name}]: {} given, the feature needs a finite number",
                describe(other)
            )),
        }
    }

    /// Appends this feature's slice for an item table cell (`None`: an item the
    /// table does not have).
    fn encode_cell(&self, cell: Option<&str>, out: &mut Vec<f32>) -> Result<(), String> {
        match self.spec.kind {
            FeatureKind::Categorical => {
                let row = cell.map_or(0, |v| self.vocabulary.lookup(v));
                out.extend_from_slice(self.row(row));
            }
            FeatureKind::MultiHot => {
                let values = cell.unwrap_or("").split('|').filter(|v| !v.is_empty());
                self.pool(values, out);
            }
            FeatureKind::Numeric => {
                let value = match cell.filter(|c| !c.is_empty()) {
                    None => None,
                    Some(text) => match text.parse::<f64>() {
                        Ok(x) if x.is_finite() => Some(x),
                        _ => {
                            return Err(format!(
                                "{}: {text:?} is not a finite number",
                                self.spec.name
                            ));
                        }
                    },
                };
                self.number(value, out)
                    .map_err(|why| format!("{}: {why}", self.spec.name))?;
            }
        }
        Ok(())
    }
}

fn describe(input: &FeatureInput) -> &'static str {
    match input {
        FeatureInput::Value(_) => "a single value",
        FeatureInput::Values(_) => "a list",
        FeatureInput::Number(x) if x.is_finite() => "a number",
        FeatureInput::Number(_) => "a non-finite number",
    }
}

/// The item side of x0 for every item, computed once at load: one row of the
/// item-side features' slices (in x0 order) per item.
#[derive(Debug)]
pub(crate) struct ItemTable {
    index: HashMap<u64, u32>,
    width: usize,
    values: Vec<f32>,
    /// The row of an item the table lacks (every value out of vocabulary or missing).
    unknown: Vec<f32>,
}

impl ItemTable {
    /// Reads `item_id<TAB>feature...`; the header must name the item-side features
    /// in x0 order.
    pub fn load(path: &Path, features: &[Feature]) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ModelError::Weights(format!("{}: {e}", path.display())))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let item_features: Vec<&Feature> = features
            .iter()
            .filter(|f| f.spec.side == Side::Item)
            .collect();
        let expected: Vec<&str> = std::iter::once("item_id")
            .chain(item_features.iter().map(|f| f.spec.name.as_str()))
            .collect();
        if header != expected {
            return Err(ModelError::Weights(format!(
                "{}: header is {header:?}, the config needs {expected:?}",
                path.display()
            )));
        }
        let width: usize = item_features.iter().map(|f| f.spec.dim).sum();
        let mut unknown = Vec::with_capacity(width);
        for feature in &item_features {
            feature
                .encode_cell(None, &mut unknown)
                .map_err(ModelError::Weights)?;
        }
        let mut index = HashMap::new();
        let mut values = Vec::new();
        for (number, line) in lines.enumerate() {
            let bad = |why: &str| {
                ModelError::Weights(format!("{}: line {}: {why}", path.display(), number + 2))
            };
            let fields: Vec<&str> = line.split('\t').collect();
            if fields.len() != expected.len() {
                return Err(bad(&format!(
                    "{} fields, expected {}",
                    fields.len(),
                    expected.len()
                )));
            }
            let id: u64 = fields[0]
                .parse()
                .map_err(|_| bad("item_id is not an unsigned integer"))?;
            let row = u32::try_from(index.len()).map_err(|_| bad("more than 2^32 items"))?;
            if index.insert(id, row).is_some() {
                return Err(bad(&format!("item_id {id} appears twice")));
            }
            for (feature, cell) in item_features.iter().zip(&fields[1..]) {
                feature
                    .encode_cell(Some(cell), &mut values)
                    .map_err(|why| bad(&why))?;
            }
        }
        Ok(Self {
            index,
            width,
            values,
            unknown,
        })
    }

    /// Items in the table.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// The item's row number, `None` when the table lacks it.
    pub fn position(&self, item_id: u64) -> Option<usize> {
        self.index.get(&item_id).map(|&row| row as usize)
    }

    /// Row `position`'s values.
    pub fn row(&self, position: usize) -> &[f32] {
        let start = position * self.width;
        &self.values[start..start + self.width]
    }

    /// Every row, row-major: `[len, width]`.
    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The item side's width.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The row used for items the table lacks.
    pub fn unknown(&self) -> &[f32] {
        &self.unknown
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn feature(kind: FeatureKind, dim: usize, pooling: Option<Pooling>) -> Feature {
        let mut spec = FeatureSpec::categorical("f", Side::Item, "vocab/f.txt", dim);
        spec.kind = kind;
        spec.pooling = pooling;
        let vocabulary = Vocabulary::new(["a", "b"]);
        // Row r holds r + column / 10.
        let table = (0..3)
            .flat_map(|r| (0..dim).map(move |c| r as f32 + c as f32 / 10.0))
            .collect();
        Feature {
            spec,
            vocabulary,
            table,
        }
    }

    fn close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn multi_hot_pools_rows_and_empty_lists_are_zero() {
        let mean = feature(FeatureKind::MultiHot, 2, None);
        let mut out = Vec::new();
        mean.encode_cell(Some("a|b"), &mut out).unwrap();
        close(&out, &[1.5, 1.6]);
        out.clear();
        mean.encode_cell(Some(""), &mut out).unwrap();
        close(&out, &[0.0, 0.0]);
        out.clear();
        // An unknown value pools the out-of-vocabulary row, as StringLookup maps it.
        mean.encode_cell(Some("b|zzz"), &mut out).unwrap();
        close(&out, &[1.0, 1.1]);
        let sum = feature(FeatureKind::MultiHot, 2, Some(Pooling::Sum));
        out.clear();
        sum.encode_input(
            Some(&FeatureInput::Values(vec!["a".into(), "b".into()])),
            &mut out,
        )
        .unwrap();
        close(&out, &[3.0, 3.2]);
    }

    #[test]
    fn numeric_is_standardized_and_missing_is_the_mean() {
        let mut f = feature(FeatureKind::Numeric, 1, None);
        f.spec.normalization = Some(Normalization {
            mean: 10.0,
            std: 4.0,
        });
        let mut out = Vec::new();
        f.encode_input(Some(&FeatureInput::Number(18.0)), &mut out)
            .unwrap();
        f.encode_input(Some(&"6".into()), &mut out).unwrap();
        f.encode_input(None, &mut out).unwrap();
        f.encode_cell(Some(""), &mut out).unwrap();
        assert_eq!(out, [2.0, -1.0, 0.0, 0.0]);
        let error = f
            .encode_input(Some(&FeatureInput::Number(f64::NAN)), &mut out)
            .unwrap_err();
        assert!(error.contains("user_features[f]"), "{error}");
        assert!(f.encode_cell(Some("x"), &mut out).is_err());
    }

    #[test]
    fn a_value_of_the_wrong_shape_is_named() {
        let f = feature(FeatureKind::Categorical, 2, None);
        let error = f
            .encode_input(
                Some(&FeatureInput::Values(vec!["a".into()])),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert_eq!(
            error,
            "user_features[f]: a list given, the feature is categorical (one value)"
        );
    }

    fn any_input() -> impl Strategy<Value = FeatureInput> {
        prop_oneof![
            ".{0,12}".prop_map(FeatureInput::Value),
            proptest::collection::vec("[a-c|]{0,3}", 0..5).prop_map(FeatureInput::Values),
            any::<f64>().prop_map(FeatureInput::Number),
        ]
    }

    fn any_kind() -> impl Strategy<Value = (FeatureKind, usize)> {
        prop_oneof![
            (1usize..4).prop_map(|dim| (FeatureKind::Categorical, dim)),
            (1usize..4).prop_map(|dim| (FeatureKind::MultiHot, dim)),
            Just((FeatureKind::Numeric, 1)),
        ]
    }

    proptest! {
        /// Whatever a request sends, encoding never panics, adds exactly the
        /// feature's width on success and nothing on failure, and never yields a
        /// non-finite value.
        #[test]
        fn request_values_encode_whole_or_not_at_all(
            (kind, dim) in any_kind(),
            input in proptest::option::of(any_input()),
        ) {
            let f = feature(kind, dim, None);
            let mut out = vec![7.0];
            match f.encode_input(input.as_ref(), &mut out) {
                Ok(_) => {
                    prop_assert_eq!(out.len(), 1 + dim);
                    prop_assert!(out.iter().all(|x| x.is_finite()));
                }
                Err(message) => {
                    prop_assert_eq!(out.len(), 1);
                    prop_assert!(message.starts_with("user_features[f]: "), "{}", message);
                }
            }
        }

        /// Item table lines of any content load or fail with the file and line,
        /// never panic; loaded rows are as wide as the item features.
        #[test]
        fn item_tables_load_or_name_the_line(
            lines in proptest::collection::vec("[0-9a-c|\t.e-]{0,16}", 0..6),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("items.tsv");
            let mut numeric = feature(FeatureKind::Numeric, 1, None);
            numeric.spec.name = "n".into();
            let features = [feature(FeatureKind::MultiHot, 2, None), numeric];
            std::fs::write(&path, format!("item_id\tf\tn\n{}", lines.join("\n"))).unwrap();
            match ItemTable::load(&path, &features) {
                Ok(table) => {
                    prop_assert_eq!(table.values().len(), table.len() * 3);
                    prop_assert!(table.values().iter().all(|x| x.is_finite()));
                }
                Err(error) => {
                    let text = error.to_string();
                    prop_assert!(text.contains("items.tsv: line "), "{}", text);
                }
            }
        }
    }

    #[test]
    fn specs_check_their_kind() {
        let mut spec = FeatureSpec::categorical("age", Side::User, "", 2);
        spec.kind = FeatureKind::Numeric;
        assert!(spec.validate().unwrap_err().contains("1 wide"));
        spec.dim = 1;
        spec.validate().unwrap();
        spec.normalization = Some(Normalization {
            mean: 0.0,
            std: 0.0,
        });
        assert!(spec.validate().unwrap_err().contains("std > 0"));
        let genres = FeatureSpec {
            kind: FeatureKind::MultiHot,
            ..FeatureSpec::categorical("genres", Side::Item, "", 4)
        };
        assert!(genres.validate().unwrap_err().contains("vocabulary"));
        // Configs written before feature kinds existed read as categorical.
        let old: FeatureSpec = serde_json::from_str(
            r#"{"name":"user_id","side":"user","vocabulary":"v.txt","dim":8}"#,
        )
        .unwrap();
        assert_eq!(
            old,
            FeatureSpec::categorical("user_id", Side::User, "v.txt", 8)
        );
    }
}
