//! String vocabularies with an out-of-vocabulary row 0, as Keras's
//! `StringLookup(num_oov_indices=1, mask_token=None)`: value `i` of the list is
//! row `i + 1`; anything else is row 0.
//!
//! One implementation for every table that maps strings to embedding rows: the
//! trainer builds them (sorted unique values, as the TFRS tutorials pass
//! `np.unique`'s output, so rows do not depend on the data's order), and the
//! query tower and the ranker read them back from `vocab/{feature}.txt` files,
//! line `i` = row `i + 1`, keeping the file's order.

use std::path::Path;

use rustc_hash::FxHashMap;

use crate::BundleError;
use crate::lines::{read_lines, write_lines};

/// Distinct strings, each mapped to a row ≥ 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    values: Vec<String>,
    rows: FxHashMap<String, u32>,
}

impl Vocabulary {
    /// Builds from any values, sorted; duplicates collapse.
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Self {
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.sort();
        values.dedup();
        Self::from_distinct(values)
    }

    /// Keeps `values` in their order; `Err` names the first value that repeats.
    pub fn from_ordered(values: Vec<String>) -> Result<Self, String> {
        let vocabulary = Self::from_distinct(values);
        if vocabulary.rows.len() != vocabulary.values.len() {
            let mut seen = rustc_hash::FxHashSet::default();
            let repeated = vocabulary
                .values
                .iter()
                .find(|v| !seen.insert(v.as_str()))
                .cloned()
                .unwrap_or_default();
            return Err(format!("the vocabulary repeats the value {repeated:?}"));
        }
        Ok(vocabulary)
    }

    fn from_distinct(values: Vec<String>) -> Self {
        let rows = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32 + 1))
            .collect();
        Self { values, rows }
    }

    /// The row of `value`; 0 when unknown.
    pub fn lookup(&self, value: &str) -> u32 {
        self.get(value).unwrap_or(0)
    }

    /// The row of `value`, `None` when unknown.
    pub fn get(&self, value: &str) -> Option<u32> {
        self.rows.get(value).copied()
    }

    /// Embedding rows needed: the values plus the out-of-vocabulary row.
    pub fn rows(&self) -> usize {
        self.values.len() + 1
    }

    /// Values (rows past the out-of-vocabulary one).
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when only the out-of-vocabulary row exists.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value of `row`; `None` for row 0 and rows past the end.
    pub fn value(&self, row: u32) -> Option<&str> {
        (row as usize)
            .checked_sub(1)
            .and_then(|i| self.values.get(i))
            .map(String::as_str)
    }

    /// The values in row order (row 1 first).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Writes one value per line, creating the parent directory.
    pub fn write(&self, path: &Path) -> Result<(), BundleError> {
        write_lines(path, &self.values)
    }

    /// Reads a vocabulary file, keeping its order; a repeated value is refused
    /// with the file's name, since two rows for one value mean the file and its
    /// embedding table no longer agree.
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        Self::from_ordered(read_lines(path)?).map_err(|why| BundleError::corrupt(path, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_zero_is_out_of_vocabulary() {
        let v = Vocabulary::new(["b", "a", "b"]);
        assert_eq!(v.rows(), 3);
        assert_eq!(v.lookup("a"), 1);
        assert_eq!(v.lookup("b"), 2);
        assert_eq!(v.lookup("zzz"), 0);
        assert_eq!(v.value(0), None);
        assert_eq!(v.value(2), Some("b"));
        assert_eq!(v.value(3), None);
    }

    #[test]
    fn write_then_read_keeps_the_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab/v.txt");
        let v = Vocabulary::new(["x y", "Misérables", "1"]);
        v.write(&path).unwrap();
        assert_eq!(Vocabulary::read(&path).unwrap(), v);
        std::fs::write(&path, "b\na\n").unwrap();
        let read = Vocabulary::read(&path).unwrap();
        assert_eq!((read.lookup("b"), read.lookup("a")), (1, 2));
    }

    #[test]
    fn a_repeated_value_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.txt");
        std::fs::write(&path, "a\nb\na\n").unwrap();
        let err = Vocabulary::read(&path).unwrap_err().to_string();
        assert!(err.contains("v.txt") && err.contains("\"a\""), "{err}");
    }
}
