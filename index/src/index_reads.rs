//! Searches and reads on any one usearch index: a bundle's shard, a live
//! shard's mutable part, its packed copy, a fold and a fold's tail.

use recsys_bundle::Metric;
use usearch::Index;

use crate::options::score_from_distance;
use crate::{Hit, SearchError};

/// [`ShardIndex::search_past_hidden`] on any index of `items` members searched
/// with a beam of `ef`: the `k` best for which `hidden.0` is false (about
/// `hidden.1` members are hidden) from an unfiltered search for enough extra,
/// or `None` when too many of them were hidden.
pub(crate) fn search_past_hidden(
    index: &Index,
    metric: Metric,
    items: usize,
    query: &[f32],
    k: usize,
    hidden: (impl Fn(u64) -> bool, usize),
    ef: usize,
) -> Result<Option<Vec<Hit>>, SearchError> {
    let (is_hidden, hidden) = hidden;
    let visible = items.saturating_sub(hidden);
    let share = hidden as f64 / items.max(1) as f64;
    // The hidden ones expected among k' results, twice over, and a few more.
    let margin = (2.0 * share * k as f64).ceil() as usize + 8;
    let wanted = k.saturating_add(margin).max(ef).min(items);
    let matches = index
        .search(query, wanted)
        .map_err(|e| SearchError::Usearch(e.to_string()))?;
    let mut hits: Vec<Hit> = matches
        .keys
        .iter()
        .zip(&matches.distances)
        .filter(|(key, _)| !is_hidden(**key))
        .map(|(key, distance)| (*key, score_from_distance(metric, *distance)))
        .collect();
    if hits.len() < k.min(visible) {
        return Ok(None);
    }
    sort_hits(&mut hits);
    hits.truncate(k);
    Ok(Some(hits))
}

/// Every key of `index` (of `dimensions`) and its stored vector, keys in
/// ascending order: usearch has no key iterator, so an exact scan as wide as the
/// index lists them. Blocking CPU work, one pass over the index.
pub(crate) fn export_index(
    index: &Index,
    dimensions: usize,
) -> Result<(Vec<u64>, Vec<f32>), SearchError> {
    let size = index.size();
    if size == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    // Any finite query lists every key; a non-zero one keeps `cos` defined.
    let query = vec![1.0f32; dimensions];
    let matches = index
        .exact_search(&query, size)
        .map_err(|e| SearchError::Usearch(e.to_string()))?;
    let mut ids = matches.keys;
    ids.sort_unstable();
    let mut vectors = vec![0.0f32; ids.len() * dimensions];
    for (id, out) in ids.iter().zip(vectors.chunks_exact_mut(dimensions)) {
        let found = index
            .get(*id, out)
            .map_err(|e| SearchError::Usearch(e.to_string()))?;
        if found != 1 {
            return Err(SearchError::Usearch(format!(
                "item {id} listed by the scan has {found} stored vectors"
            )));
        }
    }
    if ids.len() != size {
        return Err(SearchError::Usearch(format!(
            "the scan listed {} of the index's {size} items",
            ids.len()
        )));
    }
    Ok((ids, vectors))
}

/// One usearch index's `k` best for `query` that `keep` accepts, unsorted:
/// exact when `scan` is given (scanning that many, since the brute-force scan
/// takes no filter), else HNSW, with `keep` inside the traversal when `filtered`
/// so that a refused item never takes a slot.
pub(crate) fn search_one(
    index: &Index,
    metric: Metric,
    query: &[f32],
    k: usize,
    scan: Option<usize>,
    filtered: bool,
    keep: impl Fn(u64) -> bool,
) -> Result<Vec<Hit>, SearchError> {
    let matches = match scan {
        Some(scan) => index.exact_search(query, scan),
        None if filtered => index.filtered_search(query, k, &keep),
        None => index.search(query, k),
    }
    .map_err(|e| SearchError::Usearch(e.to_string()))?;
    Ok(matches
        .keys
        .iter()
        .zip(&matches.distances)
        .filter(|(key, _)| keep(**key))
        .map(|(key, distance)| (*key, score_from_distance(metric, *distance)))
        .collect())
}

/// Reads item `id`'s vector as `index` stores it into `out` (of the index's
/// dimensions), as f32; false when the index does not hold it.
pub(crate) fn read_vector(index: &Index, id: u64, out: &mut [f32]) -> Result<bool, SearchError> {
    let found = index
        .get(id, out)
        .map_err(|e| SearchError::Usearch(e.to_string()))?;
    Ok(found == 1)
}

/// Item `id`'s vector as `index` (of `dimensions`) stores it, read back as f32;
/// `None` when the index does not hold it.
pub(crate) fn stored_vector(
    index: &Index,
    id: u64,
    dimensions: usize,
) -> Result<Option<Vec<f32>>, SearchError> {
    let mut vector = vec![0.0f32; dimensions];
    let found = index
        .get(id, &mut vector)
        .map_err(|e| SearchError::Usearch(e.to_string()))?;
    Ok((found == 1).then_some(vector))
}

/// What a search leaves out besides a live shard's hidden items: the caller's
/// exclusions and, with an attribute filter, the items it does not match.
#[derive(Clone, Copy)]
pub(crate) struct Wanted<'a> {
    /// Sorted ids never to return.
    pub(crate) excluded: &'a [u64],
    /// Whether an item matches the request's attribute filter, if it has one.
    pub(crate) matches: Option<&'a (dyn Fn(u64) -> bool + Sync)>,
}

impl<'a> Wanted<'a> {
    /// Every item but the `excluded` ones (sorted).
    pub(crate) fn excluding(excluded: &'a [u64]) -> Self {
        Self {
            excluded,
            matches: None,
        }
    }

    /// Whether a search may return `id`.
    pub(crate) fn keeps(&self, id: u64) -> bool {
        self.excluded.binary_search(&id).is_err() && self.matches.is_none_or(|matches| matches(id))
    }

    /// Whether every item is wanted (no predicate needed in the traversal).
    pub(crate) fn is_everything(&self) -> bool {
        self.excluded.is_empty() && self.matches.is_none()
    }
}

/// Item ids left out of a search, hashed with rustc's fast hash: the predicate
/// runs once per node the traversal visits.
pub(crate) type Hidden = rustc_hash::FxHashSet<u64>;

/// Orders hits best first, ties by the smaller id, so answers are deterministic.
pub(crate) fn sort_hits(hits: &mut [Hit]) {
    hits.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
}
