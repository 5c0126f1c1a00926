//! Searches restricted to the items whose attributes match a filter (issue 19).
//!
//! Four ways, chosen per search from how many of the shard's items the filter
//! matches (estimated from the posting lists and sorted numbers kept with the
//! attributes, `recsys_bundle::attributes::row_filter`), as Qdrant does:
//!
//! - **after the graph** (at least [`POST_FILTER_SHARE`] match): an
//!   unfiltered search for about `k / share` items, the matching ones kept:
//!   the traversal runs without a predicate (no key read, no lookup per
//!   node), and a broad filter keeps k of a beam not much wider than usual.
//! - **a block scan** (the filter requires one value that has a block,
//!   `value_blocks.rs`): every item holding the value, scored from a
//!   contiguous copy of their vectors.
//! - **in the graph**: the filter is tested inside the HNSW traversal
//!   (usearch's filtered search, the same predicate the exclusions use), so a
//!   non-matching item routes the search but never takes one of the k slots.
//!   The traversal stops once its beam holds `ef` matching items, so it
//!   measures about `1 / share` times as many nodes as an unfiltered search.
//! - **an exact scan of the matching items**: listed from the posting lists,
//!   each scored against the query. Its cost follows the matching items, so it
//!   wins once they are few: the switch is at `matches² ≤ items · ef ·`
//!   [`SCAN_FACTOR`], where the graph's cost (about `ef · SCAN_FACTOR / share`
//!   distances) passes the scan's (`matches` distances).
//!
//! Every way returns k items whenever at least k items match: a search after
//! the graph that keeps too few is redone in the graph, and one in the graph
//! that comes back short (the estimate was high) is redone as a scan.

use recsys_bundle::attributes::{ItemAttributes, RowFilter};
use recsys_bundle::filter::{Filter, FilterError};

use super::LiveShard;
use super::value_blocks::{Block, ValueBlocks, fast_score};
use crate::index_reads::{Wanted, export_index, sort_hits, stored_vector};
use crate::{Hit, SearchError, ShardIndex};

/// About how many distances an unfiltered HNSW search of beam `ef` measures,
/// per unit of `ef` (the graph's degree, M 16 doubled at the base layer,
/// times the share of neighbours not yet visited). Sets where a filtered
/// search switches to the exact scan; measured on GloVe-50 at 390k items
/// (docs/benchmarks.md, "Filtered search").
pub const SCAN_FACTOR: f64 = 16.0;

/// Filters at least this share of a shard's items match are searched after
/// the graph (module docs).
pub const POST_FILTER_SHARE: f64 = 0.3;

/// The attributes of a shard's items, and the vector blocks of its values.
#[derive(Debug)]
pub struct ShardAttributes {
    attributes: ItemAttributes,
    blocks: ValueBlocks,
}

impl ShardAttributes {
    /// `attributes` (the shard's rows) with the blocks of `base`'s vectors
    /// built for its values. Blocking work: one vector read per copied item.
    pub fn new(attributes: ItemAttributes, base: &ShardIndex) -> Result<Self, SearchError> {
        let blocks = ValueBlocks::build(&attributes, base)?;
        Ok(Self { attributes, blocks })
    }

    /// [`Self::new`] with blocks for values of at least `min_items` items.
    #[cfg(test)]
    pub(crate) fn with_small_blocks(
        attributes: ItemAttributes,
        base: &ShardIndex,
        min_items: usize,
    ) -> Result<Self, SearchError> {
        let blocks = ValueBlocks::build_from(&attributes, base, min_items)?;
        Ok(Self { attributes, blocks })
    }

    /// The attributes alone, with no blocks (every scan reads the graph's
    /// copies of the vectors).
    pub fn without_blocks(attributes: ItemAttributes) -> Self {
        Self {
            attributes,
            blocks: ValueBlocks::default(),
        }
    }

    /// The items' attributes.
    pub fn attributes(&self) -> &ItemAttributes {
        &self.attributes
    }

    /// The vector blocks.
    pub fn blocks(&self) -> &ValueBlocks {
        &self.blocks
    }
}

/// A request's filter compiled against a shard's attributes, with its
/// estimated number of matching items.
#[derive(Debug)]
pub struct AttributeFilter<'a> {
    shard: &'a ShardAttributes,
    attributes: &'a ItemAttributes,
    compiled: RowFilter,
    matches: f64,
}

impl<'a> AttributeFilter<'a> {
    /// Checks `filter` against the shard's attributes (unknown attributes and
    /// type mismatches are refused by name) and estimates its matches.
    pub fn new(shard: &'a ShardAttributes, filter: &Filter) -> Result<Self, FilterError> {
        Ok(Self::compiled(shard, shard.attributes.compile(filter)?))
    }

    /// A filter `shard`'s attributes already compiled (and so checked), with
    /// its estimated matches.
    pub fn compiled(shard: &'a ShardAttributes, compiled: RowFilter) -> Self {
        let attributes = &shard.attributes;
        let matches = attributes.estimate(&compiled);
        Self {
            shard,
            attributes,
            compiled,
            matches,
        }
    }

    /// The block a scan of the matching items can read, if any.
    fn block(&self) -> Option<&'a Block> {
        if self.compiled.matches_missing() {
            return None;
        }
        self.shard.blocks.get(self.compiled.required_value()?)
    }

    /// About how many of the shard's items match.
    pub fn estimated_matches(&self) -> f64 {
        self.matches
    }

    /// Whether item `id` matches.
    pub fn matches(&self, id: u64) -> bool {
        self.attributes.matches_id(&self.compiled, id)
    }
}

/// A filtered search's answer and how it was found.
#[derive(Debug, Clone, PartialEq)]
pub struct FilteredHits {
    /// Best first, ties by the smaller id.
    pub hits: Vec<Hit>,
    /// The way taken: never [`Route::Choose`].
    pub route: Route,
}

impl FilteredHits {
    /// Whether the matching items were scanned exactly.
    pub fn scanned(&self) -> bool {
        self.route == Route::Scan
    }
}

/// Which way a filtered search goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By the estimated matches (module docs).
    Choose,
    /// An unfiltered search for about `k / share`, the matching kept.
    PostFilter,
    /// Inside the HNSW traversal, even if it comes back short.
    Graph,
    /// An exact scan of the matching items (a block's when there is one).
    Scan,
}

impl Route {
    /// The name metrics and the benchmark use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Choose => "choose",
            Self::PostFilter => "post_filter",
            Self::Graph => "graph",
            Self::Scan => "scan",
        }
    }
}

/// Whether a search of `items` items at beam `ef` should scan the `matches`
/// matching items rather than filter inside the graph.
pub fn scan_instead(matches: f64, items: u64, ef: usize) -> bool {
    matches * matches <= items as f64 * ef as f64 * SCAN_FACTOR
}

impl LiveShard {
    /// The `k` best items for `query` that match `filter`, none in `excluded`
    /// (sorted), best first: [`Self::search`] restricted to the matching
    /// items, in the graph or by an exact scan of them (module docs). `exact`
    /// always scans. Blocking CPU work: call from the search pool.
    pub fn search_filtered(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        exact: bool,
        filter: &AttributeFilter<'_>,
    ) -> Result<FilteredHits, SearchError> {
        let route = if exact { Route::Scan } else { Route::Choose };
        self.search_filtered_by(query, k, excluded, route, filter)
    }

    /// [`Self::search_filtered`] the way `route` says: the benchmark measures
    /// each way on its own.
    #[doc(hidden)]
    pub fn search_filtered_by(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        route: Route,
        filter: &AttributeFilter<'_>,
    ) -> Result<FilteredHits, SearchError> {
        let ef = self.base.expansion_search().max(k);
        let items = self.base.items();
        let share = filter.matches / items.max(1) as f64;
        let route = match route {
            Route::Choose if share >= POST_FILTER_SHARE => Route::PostFilter,
            Route::Choose if filter.block().is_some() => Route::Scan,
            Route::Choose if scan_instead(filter.matches, items, ef) => Route::Scan,
            Route::Choose => Route::Graph,
            forced => forced,
        };
        let matches = |id: u64| filter.matches(id);
        if route == Route::PostFilter {
            // The matching share of the best `wanted`, with room for the
            // estimate's error and the spread of a small sample.
            let wanted = ((k as f64 / share.max(0.01)) * 1.1).ceil() as usize + 16;
            let mut hits = self.search(query, wanted, excluded, false)?;
            hits.retain(|(id, _)| matches(*id));
            if hits.len() >= k {
                hits.truncate(k);
                return Ok(FilteredHits { hits, route });
            }
        }
        if matches!(route, Route::PostFilter | Route::Graph) {
            let wanted = Wanted {
                excluded,
                matches: Some(&matches),
            };
            let hits = self.search_wanted(query, k, wanted, false, ef)?;
            // Short of k: fewer matched than estimated, or the graph did not
            // reach them; the scan finds every one.
            if hits.len() >= k || route == Route::Graph {
                return Ok(FilteredHits {
                    hits,
                    route: Route::Graph,
                });
            }
        }
        let hits = match filter.block() {
            Some(block) => self.scan_block(query, k, excluded, filter, block)?,
            None => {
                let mut ids = filter.attributes.matching_ids(&filter.compiled);
                if filter.compiled.matches_missing() {
                    // Items added since the bundle have no attributes, and match.
                    let added = self.changed_ids()?;
                    ids.extend(added.into_iter().filter(|id| filter.matches(*id)));
                    ids.sort_unstable();
                    ids.dedup();
                }
                ids.retain(|id| excluded.binary_search(id).is_err());
                self.search_among(query, k, &ids)?
            }
        };
        Ok(FilteredHits {
            hits,
            route: Route::Scan,
        })
    }

    /// The `k` best of the items in `block` that match `filter` (not in
    /// `excluded`), as the shard serves them: a block item changed since the
    /// bundle is scored from the mutable part instead, a deleted one not at all.
    fn scan_block(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        filter: &AttributeFilter<'_>,
        block: &Block,
    ) -> Result<Vec<Hit>, SearchError> {
        self.base.check_query(query)?;
        let metric = self.base.metric();
        let dimensions = self.base.dimensions();
        let test_each = !filter.compiled.is_one_value();
        let mutable = self.read();
        let hidden = &mutable.hidden;
        let mut hits: Vec<Hit> = Vec::with_capacity(block.ids.len());
        for ((id, row), vector) in block
            .ids
            .iter()
            .zip(&block.rows)
            .zip(block.vectors.chunks_exact(dimensions))
        {
            if (!hidden.is_empty() && hidden.contains(id))
                || (test_each && !filter.attributes.matches_row_of(&filter.compiled, *row))
                || (!excluded.is_empty() && excluded.binary_search(id).is_ok())
            {
                continue;
            }
            hits.push((*id, fast_score(metric, query, vector)));
        }
        // Base items changed since the bundle: their vectors now, if not deleted.
        for id in hidden {
            if filter.matches(*id)
                && excluded.binary_search(id).is_err()
                && let Some(vector) = stored_vector(&mutable.delta, *id, dimensions)?
            {
                hits.push((*id, metric.score(query, &vector)));
            }
        }
        drop(mutable);
        Ok(top_k(hits, k))
    }

    /// The ids in the mutable part: every item upserted since the bundle.
    fn changed_ids(&self) -> Result<Vec<u64>, SearchError> {
        let mutable = self.read();
        Ok(export_index(&mutable.delta, self.base.dimensions())?.0)
    }
}

/// The `k` best of `hits`, best first (ties: smaller id first).
pub(crate) fn top_k(mut hits: Vec<Hit>, k: usize) -> Vec<Hit> {
    let order = |a: &Hit, b: &Hit| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if hits.len() > k && k > 0 {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    if k == 0 {
        hits.clear();
    }
    sort_hits(&mut hits);
    hits
}

#[cfg(test)]
mod tests;

/// The exact top-`k` of `ids` that match, for the tests of any filtered search.
#[cfg(test)]
pub(crate) fn exact_filtered(
    shard: &LiveShard,
    query: &[f32],
    k: usize,
    filter: &AttributeFilter<'_>,
    ids: &[u64],
) -> Vec<Hit> {
    let matching: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| filter.matches(*id))
        .collect();
    shard.search_among(query, k, &matching).unwrap_or_default()
}
