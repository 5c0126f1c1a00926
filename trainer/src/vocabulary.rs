//! String vocabularies with an out-of-vocabulary row 0, as Keras's
//! `StringLookup(num_oov_indices=1, mask_token=None)`: value `i` of the sorted
//! list is row `i + 1`; anything else is row 0. (Keras orders an adapted
//! vocabulary by frequency; the TFRS tutorials pass `np.unique`'s sorted values,
//! which is what we do, so rows do not depend on the data's order.)
//!
//! Files hold one value per line, line `i` = row `i + 1`, like the ranker's
//! `vocab/{feature}.txt`.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Result, TrainerError};

/// Sorted unique strings, each mapped to a row ≥ 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    values: Vec<String>,
    rows: HashMap<String, u32>,
}

impl Vocabulary {
    /// Builds from any values; duplicates collapse.
    pub fn new<S: Into<String>>(values: impl IntoIterator<Item = S>) -> Self {
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.sort();
        values.dedup();
        Self::from_sorted(values)
    }

    fn from_sorted(values: Vec<String>) -> Self {
        let rows = values
            .iter()
            .enumerate()
            .map(|(i, v)| (v.clone(), i as u32 + 1))
            .collect();
        Self { values, rows }
    }

    /// The row of `value`; 0 when unknown.
    pub fn lookup(&self, value: &str) -> u32 {
        self.rows.get(value).copied().unwrap_or(0)
    }

    /// Embedding rows needed: the values plus the out-of-vocabulary row.
    pub fn rows(&self) -> usize {
        self.values.len() + 1
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

    /// Writes one value per line.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = String::new();
        for v in &self.values {
            text.push_str(v);
            text.push('\n');
        }
        std::fs::write(path, text).map_err(|e| TrainerError::io(path, e))
    }

    /// Reads what [`Vocabulary::write`] wrote; the order is kept as is.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainerError::io(path, e))?;
        let values: Vec<String> = text.lines().map(str::to_string).collect();
        let vocab = Self::from_sorted(values);
        if vocab.rows.len() != vocab.values.len() {
            return Err(TrainerError::ModelFile {
                path: path.to_path_buf(),
                reason: "the vocabulary repeats a value".into(),
            });
        }
        Ok(vocab)
    }
}

/// Lowercase words of a title, split on anything not alphanumeric: what Keras's
/// `TextVectorization` (lower and strip punctuation, split on whitespace) makes
/// of MovieLens titles, the year included ("Toy Story (1995)" → toy, story, 1995).
pub fn title_tokens(title: &str) -> Vec<String> {
    title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The bucket a year falls in: its first year, `width` years wide ("1990" for
/// 1990–1994 with width 5).
pub fn year_bucket(year: u16, width: u16) -> String {
    let width = width.max(1);
    (year / width * width).to_string()
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
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.txt");
        let v = Vocabulary::new(["x y", "Misérables", "1"]);
        v.write(&path).unwrap();
        assert_eq!(Vocabulary::read(&path).unwrap(), v);
    }

    #[test]
    fn tokens_and_buckets() {
        assert_eq!(title_tokens("Toy Story (1995)"), ["toy", "story", "1995"]);
        assert_eq!(
            title_tokens("Misérables, Les (1995)"),
            ["misérables", "les", "1995"]
        );
        assert_eq!(year_bucket(1994, 5), "1990");
        assert_eq!(year_bucket(1995, 5), "1995");
        assert_eq!(year_bucket(1995, 0), "1995");
    }
}
