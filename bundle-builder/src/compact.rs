//! Compaction: a new bundle version made of an existing one plus the item
//! changes made since (the cluster's change log, read by the caller).
//!
//! Every shard's items are read back from its index ([`ShardIndex::export`]),
//! the changes applied in log order (an upsert replaces an item's vector, name
//! and ranker features whole, as the serving nodes' overlays do; a delete
//! removes the item), and the shards re-indexed from scratch in locality order,
//! so the new version has no mutable part and no hidden items to filter. The
//! catalog and the ranker's item feature table are rewritten the same way;
//! every other file (query model, ranker weights and vocabularies) is copied
//! unchanged. The manifest records the log revision the changes went up to, so
//! nodes loading the version apply only what came after it.
//!
//! Vectors are re-indexed as the shard stores them: exact for `f32` shards; an
//! `f16` or `i8` shard's items are rebuilt from their quantized values (which is
//! what it searched anyway).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use recsys_bundle::{BundleError, Catalog, MANIFEST_FILE, Manifest};
use recsys_index::{LoadMode, ShardIndex};

use crate::builder::build_shards;
use crate::{BuildEvent, BuildOptions, ItemVectors};

/// One change to one item, in log order.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemEdit {
    /// Adds the item, or replaces it whole.
    Upsert {
        /// Item id.
        id: u64,
        /// Its embedding.
        vector: Vec<f32>,
        /// Its name (empty: none).
        name: String,
        /// Its ranker item features as table cells (multi-hot values joined by
        /// `|`); a feature left out is missing, an `item_id` feature defaults
        /// to the id.
        features: BTreeMap<String, String>,
    },
    /// Withdraws the item (unknown ids are ignored).
    Delete {
        /// Item id.
        id: u64,
    },
}

impl ItemEdit {
    /// The item the edit is about.
    pub fn id(&self) -> u64 {
        match self {
            Self::Upsert { id, .. } | Self::Delete { id } => *id,
        }
    }
}

/// What to compact into.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// The new version's name.
    pub version: String,
    /// The change-log revision the edits go up to: the new manifest's
    /// `log_revision`.
    pub log_revision: u64,
    /// Threads for index construction; 0 means all cores.
    pub threads: usize,
}

/// What a compaction did.
#[derive(Debug, Clone, PartialEq)]
pub struct Compacted {
    /// The new version's manifest.
    pub manifest: Manifest,
    /// Items upserted (counting each id once).
    pub upserted: usize,
    /// Items of the base that were deleted.
    pub deleted: usize,
}

/// The items of a version being compacted: vectors by id, in a stable order.
struct Items {
    dimensions: usize,
    ids: Vec<u64>,
    data: Vec<f32>,
    alive: Vec<bool>,
    row_of: HashMap<u64, usize>,
}

impl Items {
    fn upsert(&mut self, id: u64, vector: &[f32]) -> bool {
        match self.row_of.get(&id) {
            Some(&row) => {
                let start = row * self.dimensions;
                self.data[start..start + self.dimensions].copy_from_slice(vector);
                let revived = !self.alive[row];
                self.alive[row] = true;
                revived
            }
            None => {
                self.row_of.insert(id, self.ids.len());
                self.ids.push(id);
                self.data.extend_from_slice(vector);
                self.alive.push(true);
                true
            }
        }
    }

    fn delete(&mut self, id: u64) -> bool {
        match self.row_of.get(&id) {
            Some(&row) if self.alive[row] => {
                self.alive[row] = false;
                true
            }
            _ => false,
        }
    }
}

/// Builds, in `dir` (an empty staging directory), the version `from` plus
/// `edits`, and seals it.
pub fn compact_bundle(
    from: &Path,
    dir: &Path,
    edits: &[ItemEdit],
    options: &CompactOptions,
    progress: &(dyn Fn(BuildEvent) + Sync),
) -> Result<Compacted, BundleError> {
    // The base's files against their checksums before anything is read.
    let (base, _) = recsys_bundle::verify_bundle(from)?;
    let dimensions = base.dimensions;
    let mut items = Items {
        dimensions,
        ids: Vec::new(),
        data: Vec::new(),
        alive: Vec::new(),
        row_of: HashMap::new(),
    };
    for entry in &base.shards {
        let index = ShardIndex::open_with(from, entry.shard, LoadMode::View)?;
        let (ids, vectors) = index
            .export()
            .map_err(|e| BundleError::index(from.join(&entry.file), e))?;
        for (id, vector) in ids.iter().zip(vectors.chunks_exact(dimensions)) {
            items.upsert(*id, vector);
        }
    }
    let base_items = items.ids.len();

    let mut names: HashMap<u64, String> = match &base.catalog {
        Some(file) => {
            let catalog = Catalog::load(&Manifest::resolve(from, file))?;
            items
                .ids
                .iter()
                .filter_map(|id| catalog.name(*id).map(|name| (*id, name.to_string())))
                .collect()
        }
        None => HashMap::new(),
    };
    let mut features: HashMap<u64, BTreeMap<String, String>> = HashMap::new();
    let mut deleted_features: HashSet<u64> = HashSet::new();
    let (mut upserted, mut deleted) = (HashSet::new(), 0usize);
    for edit in edits {
        let id = edit.id();
        match edit {
            ItemEdit::Upsert {
                vector,
                name,
                features: cells,
                ..
            } => {
                if vector.len() != dimensions || vector.iter().any(|v| !v.is_finite()) {
                    return Err(BundleError::invalid(
                        "edits",
                        format!(
                            "item {id}: a vector of {} values, not {dimensions} finite ones",
                            vector.len()
                        ),
                    ));
                }
                items.upsert(id, vector);
                upserted.insert(id);
                if name.is_empty() {
                    names.remove(&id);
                } else {
                    names.insert(id, name.clone());
                }
                features.insert(id, cells.clone());
                deleted_features.remove(&id);
            }
            ItemEdit::Delete { .. } => {
                if items.delete(id) && id_in_base(&items, id, base_items) {
                    deleted += 1;
                }
                upserted.remove(&id);
                names.remove(&id);
                features.remove(&id);
                deleted_features.insert(id);
            }
        }
    }

    std::fs::create_dir_all(dir.join("shards")).map_err(|e| BundleError::io(dir, e))?;
    let manifest_path = dir.join(MANIFEST_FILE);
    if manifest_path.exists() {
        std::fs::remove_file(&manifest_path).map_err(|e| BundleError::io(&manifest_path, e))?;
    }
    // Alive items in id order: the same input gives the same bundle.
    let mut order: Vec<usize> = (0..items.ids.len()).filter(|&r| items.alive[r]).collect();
    order.sort_unstable_by_key(|&r| items.ids[r]);
    let ids: Vec<u64> = order.iter().map(|&r| items.ids[r]).collect();
    let mut data = Vec::with_capacity(ids.len() * dimensions);
    for &row in &order {
        data.extend_from_slice(&items.data[row * dimensions..(row + 1) * dimensions]);
    }
    let with_names = base.catalog.is_some() || !names.is_empty();
    let vectors = ItemVectors {
        dimensions,
        names: with_names.then(|| {
            ids.iter()
                .map(|id| names.get(id).cloned().unwrap_or_default())
                .collect()
        }),
        ids,
        data,
    };
    let build = BuildOptions {
        params: base.index,
        shard_count: base.shard_count,
        version: options.version.clone(),
        source: format!(
            "{} + change log to revision {}",
            base.version, options.log_revision
        ),
        threads: options.threads,
    };
    let shards = build_shards(dir, &vectors, &build, progress)?;

    // Files carried over unchanged: everything but the shards, the catalog and
    // the ranker's item features, which are written anew.
    let catalog = with_names.then(|| "catalog.tsv".to_string());
    // Every ranker's: the default's and each variant's.
    let item_features: Vec<String> = base
        .ranker
        .iter()
        .chain(base.ranker_variants.values())
        .map(|r| r.item_features.clone())
        .collect();
    for path in base.files.keys() {
        let rewritten = base.shards.iter().any(|s| &s.file == path)
            || base.catalog.as_ref() == Some(path)
            || item_features.contains(path);
        if rewritten {
            continue;
        }
        let (source, target) = (from.join(path), dir.join(path));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
        }
        std::fs::copy(&source, &target).map_err(|e| BundleError::io(&source, e))?;
    }
    if let (Some(file), Some(names)) = (&catalog, &vectors.names) {
        Catalog::write(&dir.join(file), &vectors.ids, names)?;
    }
    for path in &item_features {
        rewrite_item_features(
            &from.join(path),
            &dir.join(path),
            &features,
            &deleted_features,
        )?;
    }

    let mut manifest = Manifest {
        version: options.version.clone(),
        shards,
        items: vectors.ids.len() as u64,
        catalog,
        source: build.source.clone(),
        files: Default::default(),
        log_revision: options.log_revision,
        ..base
    };
    crate::seal(dir, &mut manifest)?;
    tracing::info!(
        dir = %dir.display(),
        items = manifest.items,
        upserted = upserted.len(),
        deleted,
        log_revision = options.log_revision,
        "bundle compacted"
    );
    Ok(Compacted {
        manifest,
        upserted: upserted.len(),
        deleted,
    })
}

/// Whether `id` was one of the base version's items (rows are appended after them).
fn id_in_base(items: &Items, id: u64, base_items: usize) -> bool {
    items.row_of.get(&id).is_some_and(|&row| row < base_items)
}

/// Writes the ranker's item feature table with upserted items' rows replaced
/// or added and deleted items' rows gone.
fn rewrite_item_features(
    source: &Path,
    target: &Path,
    upserts: &HashMap<u64, BTreeMap<String, String>>,
    deletes: &HashSet<u64>,
) -> Result<(), BundleError> {
    let text = std::fs::read_to_string(source).map_err(|e| BundleError::io(source, e))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let columns: Vec<&str> = header.split('\t').skip(1).collect();
    let mut out = String::with_capacity(text.len());
    out.push_str(header);
    out.push('\n');
    let row = |id: u64, cells: &BTreeMap<String, String>| -> String {
        let mut line = id.to_string();
        for column in &columns {
            line.push('\t');
            let cell = match cells.get(*column) {
                Some(cell) => cell.clone(),
                None if *column == "item_id" => id.to_string(),
                None => String::new(),
            };
            // A tab or line break would split the table's row.
            line.extend(cell.chars().map(|c| {
                if matches!(c, '\t' | '\n' | '\r') {
                    ' '
                } else {
                    c
                }
            }));
        }
        line
    };
    let mut written = HashSet::new();
    for (number, line) in lines.enumerate() {
        let id_text = line.split('\t').next().unwrap_or_default();
        let id: u64 = id_text.parse().map_err(|_| {
            BundleError::corrupt(
                source,
                format!("line {}: item_id {id_text:?} is not an integer", number + 2),
            )
        })?;
        if let Some(cells) = upserts.get(&id) {
            out.push_str(&row(id, cells));
            written.insert(id);
        } else if deletes.contains(&id) {
            continue;
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let mut added: Vec<(&u64, &BTreeMap<String, String>)> = upserts
        .iter()
        .filter(|(id, _)| !written.contains(*id))
        .collect();
    added.sort_unstable_by_key(|(id, _)| **id);
    for (id, cells) in added {
        out.push_str(&row(*id, cells));
        out.push('\n');
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| BundleError::io(parent, e))?;
    }
    std::fs::write(target, out).map_err(|e| BundleError::io(target, e))
}
