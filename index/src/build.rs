//! Builds one shard's HNSW index from vectors and writes it to its file.
//!
//! The caller (the bundle builder) decides which items go to the shard and in what
//! order; usearch numbers members in insertion order, so that order is the file's
//! slot order and a locality order makes near vectors near in memory.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use recsys_bundle::{BundleError, IndexParams};
use usearch::Index;

use crate::options::usearch_options;

/// How often (in items) a build reports progress.
const PROGRESS_EVERY: u64 = 4096;

/// Inserts rows `order` of `vectors` (row-major, `dimensions` wide; row `r` has id
/// `ids[r]`) into a new index on `pool`'s threads, in that order, and saves it to
/// `path` through a temporary file renamed into place, so a reader never sees a
/// half-written index. `added` is told how many items went in, every few thousand.
#[allow(clippy::too_many_arguments)]
pub fn build_shard(
    path: &Path,
    params: &IndexParams,
    dimensions: usize,
    vectors: &[f32],
    ids: &[u64],
    order: &[usize],
    pool: &rayon::ThreadPool,
    added: &(dyn Fn(u64) + Sync),
) -> Result<(), BundleError> {
    let index = Index::new(&usearch_options(params, dimensions))
        .map_err(|e| BundleError::index(path, e))?;
    index
        .reserve_capacity_and_threads(order.len().max(1), pool.current_num_threads())
        .map_err(|e| BundleError::index(path, e))?;
    let pending = AtomicU64::new(0);
    pool.install(|| {
        order.par_iter().try_for_each(|&row| {
            index
                .add(ids[row], &vectors[row * dimensions..(row + 1) * dimensions])
                .map_err(|e| BundleError::index(path, e))?;
            if pending.fetch_add(1, Ordering::Relaxed) + 1 >= PROGRESS_EVERY {
                let count = pending.swap(0, Ordering::Relaxed);
                if count > 0 {
                    added(count);
                }
            }
            Ok::<(), BundleError>(())
        })
    })?;
    let rest = pending.swap(0, Ordering::Relaxed);
    if rest > 0 {
        added(rest);
    }
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
    Ok(())
}
