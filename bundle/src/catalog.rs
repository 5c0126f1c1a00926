//! `catalog.tsv`: item id and display name, one item per line.
//!
//! The gateway names every item it returns, so a look-up is on the serving path:
//! with a 200 000-item catalog each one was a SipHash probe, a pointer chase to a
//! separately allocated `String` and a read of its bytes, all cache misses
//! (docs/benchmarks-history.md, "Gateway overhead"). Names therefore live in one text
//! arena addressed by offsets, and ids that are dense (synthetic catalogs, MovieLens
//! ids) index a table directly; sparse ids (hashed keys) go through FxHash.

use std::io::{BufRead, BufWriter, Write};
use std::path::Path;

use rustc_hash::FxHashMap;

use crate::BundleError;

/// Marks an id inside the dense range that has no name.
const NO_NAME: u32 = u32::MAX;

/// Item names by id.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    index: IdIndex,
    /// Name `i` is `text[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    text: String,
    /// Distinct ids (a repeated id keeps its last name).
    named: usize,
}

/// Where an id's name is: its position in `offsets`.
#[derive(Debug, Clone)]
enum IdIndex {
    /// Ids `first..first + slots.len()`: `slots[id - first]` (or [`NO_NAME`]).
    Dense { first: u64, slots: Vec<u32> },
    /// Any other ids.
    Sparse(FxHashMap<u64, u32>),
}

impl Default for IdIndex {
    fn default() -> Self {
        Self::Dense {
            first: 0,
            slots: Vec::new(),
        }
    }
}

impl Catalog {
    /// A catalog from `(id, name)` pairs; a repeated id keeps its last name.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u64, String)>) -> Self {
        let mut builder = CatalogBuilder::default();
        for (id, name) in pairs {
            builder.push(id, &name);
        }
        builder.finish()
    }

    /// The name of `id`, if the catalog has one.
    pub fn name(&self, id: u64) -> Option<&str> {
        let position = match &self.index {
            IdIndex::Dense { first, slots } => {
                let slot = *slots.get(usize::try_from(id.checked_sub(*first)?).ok()?)?;
                (slot != NO_NAME).then_some(slot)?
            }
            IdIndex::Sparse(map) => *map.get(&id)?,
        } as usize;
        let start = self.offsets[position] as usize;
        let end = self.offsets[position + 1] as usize;
        self.text.get(start..end)
    }

    /// Number of named items.
    pub fn len(&self) -> usize {
        self.named
    }

    /// True when no item has a name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `id<TAB>name` lines.
    pub fn load(path: &Path) -> Result<Self, BundleError> {
        let file = std::fs::File::open(path).map_err(|e| BundleError::io(path, e))?;
        let mut builder = CatalogBuilder::default();
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
            builder.push(id, name);
        }
        if builder.text.len() > u32::MAX as usize {
            return Err(BundleError::corrupt(
                path,
                "names take more than 4 GiB; the catalog addresses them with 32-bit offsets",
            ));
        }
        Ok(builder.finish())
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

/// Collects names into the arena, then picks the id index.
#[derive(Default)]
struct CatalogBuilder {
    ids: Vec<u64>,
    offsets: Vec<u32>,
    text: String,
}

impl CatalogBuilder {
    fn push(&mut self, id: u64, name: &str) {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        self.ids.push(id);
        self.text.push_str(name);
        // Offsets past 4 GiB wrap; `Catalog::load` refuses such a file first.
        self.offsets.push(self.text.len() as u32);
    }

    fn finish(self) -> Catalog {
        let Self { ids, offsets, text } = self;
        let (Some(&low), Some(&high)) = (ids.iter().min(), ids.iter().max()) else {
            return Catalog::default();
        };
        // A direct table when it costs at most four slots (16 bytes) per name.
        let span = high - low;
        let (index, named) =
            if span < (ids.len() as u64).saturating_mul(4) && ids.len() < NO_NAME as usize {
                let mut slots = vec![NO_NAME; span as usize + 1];
                for (position, id) in ids.iter().enumerate() {
                    slots[(id - low) as usize] = position as u32;
                }
                let named = slots.iter().filter(|&&slot| slot != NO_NAME).count();
                (IdIndex::Dense { first: low, slots }, named)
            } else {
                let mut map = FxHashMap::with_capacity_and_hasher(ids.len(), Default::default());
                for (position, id) in ids.iter().enumerate() {
                    map.insert(*id, position as u32);
                }
                let named = map.len();
                (IdIndex::Sparse(map), named)
            };
        Catalog {
            index,
            offsets,
            text,
            named,
        }
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

    /// Dense and sparse ids, gaps, repeats and ids at the ends of u64 all name right.
    #[test]
    fn dense_and_sparse_ids_find_their_names() {
        let dense = Catalog::from_pairs([(10, "ten".into()), (12, "twelve".into())]);
        assert_eq!(dense.name(10), Some("ten"));
        assert_eq!(dense.name(11), None);
        assert_eq!(dense.name(12), Some("twelve"));
        assert_eq!(dense.name(9), None);
        assert_eq!(dense.name(13), None);
        assert_eq!(dense.len(), 2);
        let sparse = Catalog::from_pairs([(u64::MAX, "max".into()), (0, "zero".into())]);
        assert_eq!(sparse.name(u64::MAX), Some("max"));
        assert_eq!(sparse.name(0), Some("zero"));
        assert_eq!(sparse.name(1), None);
        let repeated = Catalog::from_pairs([(5, "old".into()), (5, "new".into())]);
        assert_eq!(repeated.name(5), Some("new"));
        assert_eq!(repeated.len(), 1);
        assert!(Catalog::from_pairs([]).is_empty());
        assert_eq!(Catalog::default().name(0), None);
    }

    proptest::proptest! {
        /// Whatever the ids, every look-up agrees with a plain map of the same pairs.
        #[test]
        fn agrees_with_a_map(pairs in proptest::collection::vec((0u64..2_000, "[a-z]{0,6}"), 0..60),
                             wide in proptest::bool::ANY,
                             probes in proptest::collection::vec(0u64..2_100, 0..40)) {
            let spread = |id: u64| if wide { id.wrapping_mul(0x9E37_79B9_7F4A_7C15) } else { id };
            let pairs: Vec<(u64, String)> = pairs.into_iter().map(|(id, name)| (spread(id), name)).collect();
            let catalog = Catalog::from_pairs(pairs.clone());
            let truth: std::collections::HashMap<u64, String> = pairs.into_iter().collect();
            for id in probes.into_iter().map(spread).chain(truth.keys().copied()) {
                proptest::prop_assert_eq!(catalog.name(id), truth.get(&id).map(String::as_str));
            }
        }
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
