//! Contiguous copies of the vectors of the items that hold one attribute
//! value (a genre, a category, a flag), so that a filter on that value is an
//! exact scan at memory speed rather than a walk through the graph.
//!
//! Why: a filter matching a few percent of a shard is where neither way of
//! the graph works well. Inside the traversal it measures about `1 / share`
//! times the nodes of an unfiltered search (a tenth matching: about a tenth
//! of the unfiltered rate on GloVe-50), and an exact scan reading each
//! matching item's vector where the graph keeps it pays a cache miss and a
//! key lookup per item. Read in a row from a block, the same scan streams
//! `share · items` vectors through the prefetcher (docs/benchmarks.md,
//! "Filtered search"). Milvus' partition keys buy the same by storing each
//! value's items apart.
//!
//! The cost is memory: a block per value held by [`BLOCK_MIN_ITEMS`] to
//! [`BLOCK_MAX_SHARE`] of the shard's items, largest first, until the blocks
//! hold as many vectors as the shard (so at most the shard's vectors again).
//! A block holds the bundle's vectors; items changed since are left out of
//! it and scored from the shard's mutable part by the scan.

use recsys_bundle::Metric;
use recsys_bundle::attributes::ItemAttributes;
use rustc_hash::FxHashMap;

use crate::{SearchError, ShardIndex};

/// Values held by more than this share of a shard's items get no block: a
/// filter that broad is cheaper in the graph.
pub const BLOCK_MAX_SHARE: f64 = 0.25;

/// Values held by fewer items get no block (a scan of that few vectors read
/// where the graph keeps them costs little, and tiny blocks cost their
/// bookkeeping).
pub const BLOCK_MIN_ITEMS: usize = 64;

/// The items holding one value: rows, ids and vectors in row order.
#[derive(Debug, Default)]
pub(crate) struct Block {
    pub(crate) rows: Vec<u32>,
    pub(crate) ids: Vec<u64>,
    pub(crate) vectors: Vec<f32>,
}

/// Every block of one shard, by (attribute column, value code).
#[derive(Debug, Default)]
pub struct ValueBlocks {
    blocks: FxHashMap<(usize, u32), Block>,
    items: usize,
}

impl ValueBlocks {
    /// Copies the vectors of `base` for the values of `attributes` that get a
    /// block (module docs). Blocking work, one vector read per copied item.
    pub fn build(attributes: &ItemAttributes, base: &ShardIndex) -> Result<Self, SearchError> {
        Self::build_from(attributes, base, BLOCK_MIN_ITEMS)
    }

    /// [`Self::build`] for values held by at least `min_items` items (the
    /// tests' shards are small).
    pub(crate) fn build_from(
        attributes: &ItemAttributes,
        base: &ShardIndex,
        min_items: usize,
    ) -> Result<Self, SearchError> {
        let items = usize::try_from(base.items()).unwrap_or(usize::MAX);
        let most = (items as f64 * BLOCK_MAX_SHARE) as usize;
        let mut values: Vec<((usize, u32), &[u32])> = attributes
            .value_postings()
            .filter(|(_, rows)| (min_items..=most).contains(&rows.len()))
            .collect();
        values.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let mut blocks = ValueBlocks::default();
        for (value, rows) in values {
            if blocks.items + rows.len() > items {
                continue;
            }
            let mut block = Block::default();
            for &row in rows {
                let id = attributes.id_of_row(row);
                if let Some(vector) = base.vector(id)? {
                    block.rows.push(row);
                    block.ids.push(id);
                    block.vectors.extend(vector);
                }
            }
            blocks.items += block.ids.len();
            blocks.blocks.insert(value, block);
        }
        Ok(blocks)
    }

    /// The block of a value, if it has one.
    pub(crate) fn get(&self, value: (usize, u32)) -> Option<&Block> {
        self.blocks.get(&value)
    }

    /// Vectors held in all blocks.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no value has a block.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// [`Metric::score`] of `query` and `item`, with eight independent sums so
/// the compiler keeps them in vector registers (a plain iterator sum is one
/// chain of dependent additions).
pub(crate) fn fast_score(metric: Metric, query: &[f32], item: &[f32]) -> f32 {
    match metric {
        Metric::Ip => dot(query, item),
        Metric::Cos => {
            let (q, i) = (dot(query, query).sqrt(), dot(item, item).sqrt());
            if q == 0.0 || i == 0.0 {
                0.0
            } else {
                dot(query, item) / (q * i)
            }
        }
        Metric::L2 => metric.score(query, item),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a8, a_rest) = a.split_at(a.len() - a.len() % 8);
    let (b8, b_rest) = b.split_at(a8.len().min(b.len()));
    for (x, y) in a8.chunks_exact(8).zip(b8.chunks_exact(8)) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_score_is_the_metric_s_score() {
        for len in [1usize, 7, 8, 9, 24, 50, 64, 100] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            for metric in [Metric::Ip, Metric::Cos, Metric::L2] {
                let (fast, plain) = (fast_score(metric, &a, &b), metric.score(&a, &b));
                assert!(
                    (fast - plain).abs() <= 1e-4 * plain.abs().max(1.0),
                    "{metric:?} {len}"
                );
            }
        }
    }
}
