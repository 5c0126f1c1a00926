//! `catalog.tsv`: item id and display name, one item per line.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use crate::BundleError;

/// Item names by id.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    names: HashMap<u64, String>,
}

impl Catalog {
    /// A catalog from `(id, name)` pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u64, String)>) -> Self {
        Self {
            names: pairs.into_iter().collect(),
        }
    }

    /// The name of `id`, if the catalog has one.
    pub fn name(&self, id: u64) -> Option<&str> {
        self.names.get(&id).map(String::as_str)
    }

    /// Number of named items.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no item has a name.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Reads `id<TAB>name` lines.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
        let mut names = HashMap::new();
        for (number, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| BundleError::io(path, e))?;
            if line.is_empty() {
                continue;
            }
            let (id, name) = line.split_once('\t').ok_or_else(|| {
                BundleError::corrupt(path, format!("line {}: no tab after the id", number + 1))
            })?;
            let id: u64 = id.parse().map_err(|_| {
                BundleError::corrupt(
                    path,
                    format!("line {}: id {id:?} is not an unsigned integer", number + 1),
                )
            })?;
            names.insert(id, name.to_string());
        }
        Ok(Self { names })
    }

    /// Writes `id<TAB>name` lines for `ids` in the given order. Tabs and line breaks
    /// inside names become spaces so every line stays parseable.
    pub fn write(path: &Path, ids: &[u64], names: &[String]) -> Result<(), BundleError> {
        let file = std::fs::File::create(path).map_err(|e| BundleError::io(path, e))?;
        let mut out = BufWriter::new(file);
        for (id, name) in ids.iter().zip(names) {
            let clean: String = name
                .chars()
                .map(|c| {
                    if matches!(c, '\t' | '\n' | '\r') {
                        ' '
                    } else {
                        c
                    }
                })
                .collect();
            writeln!(out, "{id}\t{clean}").map_err(|e| BundleError::io(path, e))?;
        }
        out.flush().map_err(|e| BundleError::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sanitizes_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.tsv");
        Catalog::write(
            &path,
            &[7, 9],
            &["Toy Story (1995)".into(), "a\tb\nc".into()],
        )
        .unwrap();
        let catalog = Catalog::load(&path).unwrap();
        assert_eq!(catalog.name(7), Some("Toy Story (1995)"));
        assert_eq!(catalog.name(9), Some("a b c"));
        assert_eq!(catalog.name(8), None);
    }

    #[test]
    fn names_the_line_of_a_bad_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.tsv");
        std::fs::write(&path, "1\tok\nx\tbad\n").unwrap();
        let err = Catalog::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("catalog.tsv") && err.contains("line 2"),
            "{err}"
        );
    }
}
