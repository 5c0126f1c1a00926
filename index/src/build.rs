//! Builds one shard's HNSW index from vectors and writes it to its file.
//!
//! The caller (the bundle builder) decides which items go to the shard and in what
//! order; usearch numbers members in insertion order, so that order is the file's
//! slot order and a locality order makes near vectors near in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use recsys_bundle::{BundleError, IndexParams, SearchDepths};
use usearch::Index;

use crate::options::usearch_options;

/// How often (in items) a build reports progress.
const PROGRESS_EVERY: u64 = 4096;

/// What [`build_shard`] reports while it runs, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardProgress {
    /// This many more items are in the index.
    Added(u64),
    /// The search depths are being measured with this many held-out queries
    /// (seconds on a large shard).
    MeasuringDepths {
        /// Held-out queries, each searched at every beam tried.
        queries: u32,
    },
}

/// What [`build_shard`] measured on the shard it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltShard {
    /// The beams that reach each recall target ([`crate::depth`]); `None`
    /// for a shard too small to hold queries out of.
    pub search_depths: Option<SearchDepths>,
}

/// Inserts rows `order` of `vectors` (row-major, `dimensions` wide; row `r` has id
/// `ids[r]`) into a new index on `pool`'s threads, in that order, measures its
/// search depths, and saves it to `path` through a temporary file renamed into
/// place, so a reader never sees a half-written index. `progress` hears how many
/// items went in, every few thousand, and when the measuring starts.
///
/// The depths are measured with a few rows spread over `order` held out of the
/// graph as queries, then inserted last ([`crate::depth`] says why).
#[allow(clippy::too_many_arguments)]
pub fn build_shard(
    path: &Path,
    params: &IndexParams,
    dimensions: usize,
    vectors: &[f32],
    ids: &[u64],
    order: &[usize],
    pool: &rayon::ThreadPool,
    progress: &(dyn Fn(ShardProgress) + Sync),
) -> Result<BuiltShard, BundleError> {
    let index = Index::new(&usearch_options(params, dimensions))
        .map_err(|e| BundleError::index(path, e))?;
    index
        .reserve_capacity_and_threads(order.len().max(1), pool.current_num_threads())
        .map_err(|e| BundleError::index(path, e))?;
    let held = crate::depth::held_out_count(order.len());
    // The middle of each of `held` equal stretches of `order`: spread over
    // the shard, and never the first item (slot 0 stays the first in order).
    let held_positions: Vec<usize> = (0..held)
        .map(|i| (2 * i + 1) * order.len() / (2 * held))
        .collect();
    let (mut first, mut later) = (Vec::with_capacity(order.len()), Vec::with_capacity(held));
    for (position, &row) in order.iter().enumerate() {
        if held_positions.binary_search(&position).is_ok() {
            later.push(row);
        } else {
            first.push(row);
        }
    }
    let row_of = |row: usize| &vectors[row * dimensions..(row + 1) * dimensions];
    insert(&index, path, &first, ids, &row_of, pool, progress)?;
    let search_depths = if later.is_empty() {
        None
    } else {
        progress(ShardProgress::MeasuringDepths {
            queries: later.len() as u32,
        });
        let queries: Vec<&[f32]> = later.iter().map(|&row| row_of(row)).collect();
        let depths = crate::depth::measure_depths(&index, &queries, pool)
            .map_err(|e| BundleError::index(path, format!("measuring search depths: {e}")))?;
        index.change_expansion_search(params.expansion_search);
        insert(&index, path, &later, ids, &row_of, pool, progress)?;
        depths
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let tmp_str = tmp
        .to_str()
        .ok_or_else(|| BundleError::invalid("out", "bundle path is not valid UTF-8"))?;
    index
        .save(tmp_str)
        .map_err(|e| BundleError::index(path, e))?;
    std::fs::rename(&tmp, path).map_err(|e| BundleError::io(path, e))?;
    Ok(BuiltShard { search_depths })
}

/// Inserts `rows` into `index` on `pool`'s threads, telling `progress` every
/// [`PROGRESS_EVERY`] items.
fn insert<'a>(
    index: &Index,
    path: &Path,
    rows: &[usize],
    ids: &[u64],
    row_of: &(dyn Fn(usize) -> &'a [f32] + Sync),
    pool: &rayon::ThreadPool,
    progress: &(dyn Fn(ShardProgress) + Sync),
) -> Result<(), BundleError> {
    let pending = AtomicU64::new(0);
    pool.install(|| {
        rows.par_iter().try_for_each(|&row| {
            index
                .add(ids[row], row_of(row))
                .map_err(|e| BundleError::index(path, e))?;
            if pending.fetch_add(1, Ordering::Relaxed) + 1 >= PROGRESS_EVERY {
                let count = pending.swap(0, Ordering::Relaxed);
                if count > 0 {
                    progress(ShardProgress::Added(count));
                }
            }
            Ok::<(), BundleError>(())
        })
    })?;
    let rest = pending.swap(0, Ordering::Relaxed);
    if rest > 0 {
        progress(ShardProgress::Added(rest));
    }
    Ok(())
}
