//! A shard that takes item upserts and deletes while it serves: the bundle's
//! packed, read-only index plus a small mutable index searched beside it.
//!
//! The layout is the segment style of Lucene, Milvus and Qdrant: the base is the
//! immutable file of a bundle version (memory-mapped and packed, the fast path),
//! and every change since the version was built lives in a second, in-memory
//! usearch index (the *delta*). A delete or an upsert of a base item hides the
//! base copy with a filter that runs inside the base's HNSW traversal (usearch's
//! filtered search), so a hidden item never takes a slot of the k; an upserted
//! item is added to the delta, replacing any earlier delta copy. A search asks
//! both for k and merges the two lists. The next bundle version, compacted from
//! the base and the change log, folds the delta back into a packed base.
//!
//! Between batches of changes the delta is also kept as a packed, read-only copy
//! ([`LiveShard::pack_delta`]), searched instead of the delta while no change has
//! come since: the packed layout is what makes the base fast, and searched
//! beside the base, whose traversal evicts it from the cache on every query, an
//! unpacked delta cost about twice its time alone (docs/benchmarks-history.md, "Live
//! shard"). Once the mutable part is large, a node also folds it and the base
//! into one packed graph ([`LiveShard::fold`], `fold.rs`), searched alone,
//! at the packed-only rate, until the next change.
//!
//! Changes come stamped with the revision of the ordered log they were read from
//! (etcd's revision in the cluster); a shard applies each revision once and
//! remembers the last, so replaying the log after a restart or a reconnection is
//! harmless and every replica that has applied revision r holds the same items.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use recsys_bundle::sharding::shard_of;
use rustc_hash::FxHashMap;
use usearch::Index;

use crate::index_reads::{Hidden, Wanted, read_vector, search_one, sort_hits, stored_vector};
use crate::options::usearch_options;
use crate::shard_index::{huge_page_memory, view_copy};
use crate::{Hit, SearchError, ShardIndex};
use changes::replace_items;
pub(crate) use changes::usearch_error;
pub use changes::{Applied, ChangeError, ItemChange, LiveStats};
pub use filtered::{
    AttributeFilter, FilteredHits, POST_FILTER_SHARE, Route, SCAN_FACTOR, ShardAttributes,
    scan_instead,
};
use fold::{Folded, Tail};
pub(crate) use value_blocks::fast_score;
pub use value_blocks::{BLOCK_MAX_SHARE, BLOCK_MIN_ITEMS, ValueBlocks};

/// A packed, read-only copy of the delta as it was after change `generation`.
struct PackedDelta {
    /// Declared before `buffer`, so dropped first: it reads the buffer.
    index: Index,
    /// The delta as usearch saved it, in huge pages, which `index` views.
    #[expect(dead_code, reason = "read through the index's view, never by name")]
    buffer: memmap2::MmapMut,
    generation: u64,
}

/// The mutable part, behind one lock: searches read it, a batch of changes
/// writes it. Batches are short (one log entry's changes), so a search waits at
/// most for one batch.
struct Mutable {
    /// Its configured beam is 1: every search says how many results it wants,
    /// which sets the beam (usearch searches with the larger of the two), so
    /// that concurrent searches can use different beams.
    delta: Index,
    /// Base items deleted or replaced, left out of the base's search.
    hidden: Hidden,
    revision: u64,
    /// Counts the batches that changed `delta` (a failed one too), so that a
    /// packed copy made before a change is never searched after it.
    generation: u64,
    /// The delta packed, searched instead of it while `generation` matches.
    packed: Option<PackedDelta>,
    /// The base and the delta in one graph, searched instead of both while
    /// `generation` matches, or beside `tail` while that follows it.
    folded: Option<Folded>,
    /// The changes since `folded` was made.
    tail: Option<Tail>,
    /// The changes since the fold being made began, which become its tail.
    pending_tail: Option<Tail>,
}

impl Mutable {
    /// The index a search of the mutable part reads: the packed copy if it is
    /// current, else the delta itself.
    fn searched(&self) -> &Index {
        self.current_packed()
            .map_or(&self.delta, |packed| &packed.index)
    }

    /// The packed copy, if no change came since it was made.
    fn current_packed(&self) -> Option<&PackedDelta> {
        self.packed
            .as_ref()
            .filter(|packed| packed.generation == self.generation)
    }

    /// The fold, if no change came since it was made.
    fn current_folded(&self) -> Option<&Folded> {
        self.folded
            .as_ref()
            .filter(|folded| folded.generation == self.generation)
    }

    /// The fold searches read, and the tail of changes since it, if any.
    fn fold_in_use(&self) -> Option<(&Folded, Option<&Tail>)> {
        let folded = self.folded.as_ref()?;
        if folded.generation == self.generation {
            return Some((folded, None));
        }
        let tail = self
            .tail
            .as_ref()
            .filter(|tail| tail.since == folded.generation)?;
        Some((folded, Some(tail)))
    }
}

/// A serving shard: a bundle's [`ShardIndex`] and the changes applied on top.
pub struct LiveShard {
    base: ShardIndex,
    mutable: RwLock<Mutable>,
}

impl std::fmt::Debug for LiveShard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveShard")
            .field("base", &self.base)
            .field("stats", &self.stats())
            .finish()
    }
}

impl LiveShard {
    /// Serves `base` as it is, with no changes yet; `revision` is the change-log
    /// revision the bundle version already contains (its manifest says which).
    pub fn new(base: ShardIndex, revision: u64) -> Result<Self, ChangeError> {
        let delta = empty_index(&base)?;
        Ok(Self {
            base,
            mutable: RwLock::new(Mutable {
                delta,
                hidden: Hidden::default(),
                revision,
                generation: 0,
                packed: None,
                folded: None,
                tail: None,
                pending_tail: None,
            }),
        })
    }

    /// The bundle's shard underneath.
    pub fn base(&self) -> &ShardIndex {
        &self.base
    }

    /// Overrides the search beam width (`ef`) of searches without a recall
    /// target, in the base and the mutable part alike
    /// ([`ShardIndex::set_expansion_search`]).
    pub fn set_expansion_search(&self, expansion: usize) {
        self.base.set_expansion_search(expansion);
    }

    /// The last change-log revision applied (or contained in the bundle).
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Whether searches read a packed copy of the mutable part now
    /// ([`Self::pack_delta`]).
    pub fn delta_packed(&self) -> bool {
        self.read().current_packed().is_some()
    }

    /// Whether searches read a fold of the base and the mutable part now
    /// ([`Self::fold`]), with or without a tail of later changes.
    pub fn folded(&self) -> bool {
        self.read().fold_in_use().is_some()
    }

    /// Counts for `Info` and metrics.
    pub fn stats(&self) -> LiveStats {
        let mutable = self.read();
        LiveStats {
            items: self.live_items(&mutable),
            hidden: mutable.hidden.len() as u64,
            delta: mutable.delta.size() as u64,
            revision: mutable.revision,
        }
    }

    /// Applies one log entry's changes, in order, as revision `revision`. A
    /// revision at or before the last applied one is skipped
    /// ([`Applied::Replayed`]): the log is read in order, so it was applied. A
    /// batch with a foreign item or a bad vector is refused before any change is
    /// made.
    pub fn apply(&self, revision: u64, changes: &[ItemChange]) -> Result<Applied, ChangeError> {
        let mut mutable = self.write();
        if revision <= mutable.revision {
            return Ok(Applied::Replayed);
        }
        self.check(changes)?;
        // From here the delta may change, even if a later step fails: the
        // packed copy is out of date (and dropped once the lock is released).
        mutable.generation += 1;
        let stale_packed = mutable.packed.take();
        // Only each item's last change in the batch counts.
        let mut last: FxHashMap<u64, &ItemChange> = FxHashMap::default();
        for change in changes {
            last.insert(change.id(), change);
        }
        // A fold (and one being made) stays in use with the changes since it
        // in its tail; a tail that cannot take them retires its fold.
        let mutable = &mut *mutable;
        for tail in [&mut mutable.tail, &mut mutable.pending_tail] {
            if let Some(kept) = tail.as_mut()
                && let Err(error) = kept.record(&last)
            {
                tracing::warn!(%error, "the fold's tail refused a change; searching without the fold");
                *tail = None;
            }
        }
        let stale_fold = match (&mutable.folded, &mutable.tail) {
            (Some(folded), Some(tail)) if tail.since == folded.generation => None,
            _ => mutable.folded.take(),
        };
        for id in last.keys() {
            if self.base.contains(*id) {
                mutable.hidden.insert(*id);
            }
        }
        replace_items(&mutable.delta, &last)?;
        mutable.revision = revision;
        drop(stale_packed);
        drop(stale_fold);
        Ok(Applied::Changed)
    }

    /// Makes a packed, read-only copy of the mutable part as it is now, which
    /// searches read instead of it until the next change. Returns whether it
    /// made one: not when the part is empty, its packed copy is current or a
    /// fold is in use ([`Self::fold`]), nor when a change came while copying.
    ///
    /// Blocking CPU work that grows with the mutable part (13-21 ms for 39,000
    /// GloVe-50 items), and a second copy of it in memory while one is current:
    /// the caller decides how often (a retrieval node packs once its change log
    /// pauses). Searches go on meanwhile; changes wait only for the copy of the
    /// delta into a buffer.
    pub fn pack_delta(&self) -> Result<bool, ChangeError> {
        let (buffer, generation) = {
            let mutable = self.read();
            // Searches read a fold instead while one is in use: no copy needed.
            if mutable.delta.size() == 0
                || mutable.current_packed().is_some()
                || mutable.fold_in_use().is_some()
            {
                return Ok(false);
            }
            let buffer = save_to_huge_pages(&mutable.delta, "the packed delta")?;
            (buffer, mutable.generation)
        };
        let index = view_packed(&self.base, &buffer)?;
        let packed = PackedDelta {
            index,
            buffer,
            generation,
        };
        let mut mutable = self.write();
        if mutable.generation != generation {
            return Ok(false);
        }
        let old = mutable.packed.replace(packed);
        drop(mutable);
        drop(old);
        Ok(true)
    }

    fn check(&self, changes: &[ItemChange]) -> Result<(), ChangeError> {
        let (shard, shard_count) = (self.base.shard(), self.base.shard_count());
        for change in changes {
            let id = change.id();
            let actual = shard_of(id, shard_count);
            if actual != shard {
                return Err(ChangeError::ForeignItem {
                    id,
                    expected: shard,
                    actual,
                });
            }
            if let ItemChange::Upsert { vector, .. } = change {
                if vector.len() != self.base.dimensions() {
                    return Err(ChangeError::Dimensions {
                        id,
                        expected: self.base.dimensions(),
                        actual: vector.len(),
                    });
                }
                if !vector.iter().all(|v| v.is_finite()) {
                    return Err(ChangeError::NonFinite { id });
                }
            }
        }
        Ok(())
    }

    /// Item `id`'s vector as the shard serves it: an upserted one's from the
    /// mutable part, a base one's unless a change hid it (deleted or replaced);
    /// `None` for an item the shard does not hold.
    pub fn vector(&self, id: u64) -> Result<Option<Vec<f32>>, SearchError> {
        self.served_vector(&self.read(), id)
    }

    /// [`Self::vector`] with the mutable part already read.
    fn served_vector(&self, mutable: &Mutable, id: u64) -> Result<Option<Vec<f32>>, SearchError> {
        if let Some(vector) = stored_vector(&mutable.delta, id, self.base.dimensions())? {
            return Ok(Some(vector));
        }
        if mutable.hidden.contains(&id) {
            return Ok(None);
        }
        self.base.vector(id)
    }

    /// The `k` best for `query` of the items `ids` that the shard holds (ids it
    /// does not hold, or that changes deleted, are skipped), best first (ties:
    /// smaller id first), scored exactly: the scan a filtered search falls back
    /// to when too few items match for the graph to find them (issue 19; as
    /// Qdrant does). Blocking CPU work, one vector read per id.
    pub fn search_among(
        &self,
        query: &[f32],
        k: usize,
        ids: &[u64],
    ) -> Result<Vec<Hit>, SearchError> {
        self.base.check_query(query)?;
        let metric = self.base.metric();
        let mut vector = vec![0.0f32; self.base.dimensions()];
        let mutable = self.read();
        let mut hits = Vec::with_capacity(ids.len());
        for &id in ids {
            // A changed base item is the mutable part's (or deleted); any
            // other the base's, else one added since the bundle.
            let found = if mutable.hidden.contains(&id) {
                read_vector(&mutable.delta, id, &mut vector)?
            } else {
                self.base.read_vector(id, &mut vector)?
                    || read_vector(&mutable.delta, id, &mut vector)?
            };
            if found {
                hits.push((id, fast_score(metric, query, &vector)));
            }
        }
        drop(mutable);
        hits.sort_unstable_by_key(|hit| hit.0);
        hits.dedup_by_key(|hit| hit.0);
        Ok(filtered::top_k(hits, k))
    }

    /// The `k` best items for `query` among the base's visible items and the
    /// mutable part's, best first (ties: smaller id first), none in `excluded`
    /// (sorted). Blocking CPU work: call from the search pool.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        exact: bool,
    ) -> Result<Vec<Hit>, SearchError> {
        self.search_at(query, k, excluded, exact, self.base.expansion_search())
    }

    /// [`Self::search`] with a beam of `ef` in every part of the shard (what
    /// [`ShardIndex::depth_for`] says a recall target needs) instead of the
    /// default; exact searches ignore it.
    pub fn search_at(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        exact: bool,
        ef: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        self.search_wanted(query, k, Wanted::excluding(excluded), exact, ef.max(1))
    }

    /// [`Self::search`] of the items `wanted` keeps (exact: its exclusions
    /// only, see [`ShardIndex::search_hiding`]) with a beam of `ef`.
    fn search_wanted(
        &self,
        query: &[f32],
        k: usize,
        wanted: Wanted<'_>,
        exact: bool,
        ef: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let mutable = self.read();
        let live = self.live_items(&mutable);
        if !exact && let Some((folded, tail)) = mutable.fold_in_use() {
            let changed = tail.map(|tail| &tail.changed);
            let hits = folded.search(self, query, k, wanted, ef, changed)?;
            return match tail {
                Some(tail) => self.beside(hits, &tail.delta, live, ef, query, k, wanted, false),
                None => Ok(hits),
            };
        }
        let base = self
            .base
            .search_hiding(query, k, wanted, &mutable.hidden, exact, ef)?;
        self.beside(base, mutable.searched(), live, ef, query, k, wanted, exact)
    }

    /// `hits`, the best of a graph the changes in `part` are not in, merged
    /// with `part`'s own best: the `k` best of the shard's `live` items.
    #[expect(clippy::too_many_arguments, reason = "one search's parameters")]
    fn beside(
        &self,
        hits: Vec<Hit>,
        part: &Index,
        live: u64,
        part_ef: usize,
        query: &[f32],
        k: usize,
        wanted: Wanted<'_>,
        exact: bool,
    ) -> Result<Vec<Hit>, SearchError> {
        if part.size() == 0 || k == 0 {
            return Ok(hits);
        }
        let search_part = |count: usize| {
            search_one(
                part,
                self.base.metric(),
                query,
                count,
                exact.then_some((k + wanted.excluded.len()).min(part.size())),
                !wanted.is_everything(),
                |key| wanted.keeps(key),
            )
        };
        let merge = |part_hits: Vec<Hit>| {
            let mut merged = hits.clone();
            merged.extend(part_hits);
            sort_hits(&mut merged);
            merged
        };
        let (narrow, full) = delta_beams(k, part.size(), live, part_ef);
        let first = search_part(narrow)?;
        let returned = first.len();
        let worst = first.iter().map(|hit| hit.1).fold(f32::INFINITY, f32::min);
        let mut merged = merge(first);
        // If the part's worst hit still made the k best, the part may hold
        // more of them (new items alike, near this query): search it fully.
        if !exact && narrow < full && returned >= narrow {
            let kth = merged.get(k - 1).map_or(f32::NEG_INFINITY, |hit| hit.1);
            if worst >= kth {
                merged = merge(search_part(full)?);
            }
        }
        merged.truncate(k);
        Ok(merged)
    }

    /// The two halves of [`Self::search`] on their own, for the benchmark that
    /// says where a live shard's time goes: the base with the hidden items left
    /// out, and the mutable part.
    #[doc(hidden)]
    pub fn search_halves(&self, query: &[f32], k: usize, base: bool) -> Result<usize, SearchError> {
        let mutable = self.read();
        if base {
            let ef = self.base.expansion_search();
            Ok(self
                .base
                .search_hiding(query, k, Wanted::excluding(&[]), &mutable.hidden, false, ef)?
                .len())
        } else {
            let (narrow, _) = self.delta_beams(&mutable, k);
            Ok(mutable
                .searched()
                .search(query, narrow)
                .map_err(|e| SearchError::Usearch(e.to_string()))?
                .keys
                .len())
        }
    }

    /// Items a search can return: the base's not hidden, and the delta's.
    fn live_items(&self, mutable: &Mutable) -> u64 {
        self.base
            .items()
            .saturating_sub(mutable.hidden.len() as u64)
            + mutable.delta.size() as u64
    }

    /// [`delta_beams`] for a search of `k` over this shard as it is now.
    fn delta_beams(&self, mutable: &Mutable, k: usize) -> (usize, usize) {
        delta_beams(
            k,
            mutable.delta.size(),
            self.live_items(mutable),
            self.base.expansion_search(),
        )
    }

    fn read(&self) -> RwLockReadGuard<'_, Mutable> {
        // A panic while applying leaves at worst a half-applied batch whose
        // revision was not recorded; the log replays it, so the data is usable.
        self.mutable.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Mutable> {
        self.mutable.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An empty in-memory index of `base`'s kind whose own beam is 1: every
/// search says how many results it wants, which sets the beam (usearch
/// searches with the larger of the two), so that concurrent searches can use
/// different beams. The delta, a fold's tail and a fold in the making.
pub(crate) fn empty_index(base: &ShardIndex) -> Result<Index, ChangeError> {
    let index =
        Index::new(&usearch_options(base.params(), base.dimensions())).map_err(usearch_error)?;
    index.change_expansion_search(1);
    Ok(index)
}

/// `index` as usearch saves it, in huge-page memory; `what` names it in errors.
pub(crate) fn save_to_huge_pages(
    index: &Index,
    what: &str,
) -> Result<memmap2::MmapMut, ChangeError> {
    let len = index.serialized_length();
    let mut buffer = huge_page_memory(len)
        .map_err(|e| ChangeError::Usearch(format!("{len} bytes for {what}: {e}")))?;
    index
        .save_to_buffer(&mut buffer[..len])
        .map_err(usearch_error)?;
    Ok(buffer)
}

/// A read-only index of `base`'s kind over `buffer` ([`save_to_huge_pages`]),
/// packed as the base is, its own beam 1 as [`empty_index`]'s. The caller
/// keeps `buffer` alive, unwritten, for as long as the index.
pub(crate) fn view_packed(
    base: &ShardIndex,
    buffer: &memmap2::MmapMut,
) -> Result<Index, ChangeError> {
    let mut index = empty_index(base)?;
    view_copy(&index, buffer).map_err(usearch_error)?;
    index.pack_base_layer().map_err(usearch_error)?;
    // A view takes the file's settings: the beam again.
    index.change_expansion_search(1);
    Ok(index)
}

/// How many results to ask of a delta of `delta` items, out of `live` items
/// in the shard, for a search of `k` at a full beam of `ef`: a narrow first
/// search, and the full one when the narrow one may have missed some.
///
/// The delta holds a share p of the items, so about k·p of the k best with
/// items spread at random; the narrow search asks for that plus four standard
/// deviations and a few more, and at least a quarter of the full beam (a beam much
/// narrower than the base's would lose recall inside the delta). Both are at
/// most the delta's size.
fn delta_beams(k: usize, delta: usize, live: u64, ef: usize) -> (usize, usize) {
    let full = k.max(ef).min(delta);
    let p = (delta as f64 / live.max(1) as f64).clamp(0.0, 1.0);
    let mean = k as f64 * p;
    let expected = (mean + 4.0 * (mean * (1.0 - p)).sqrt()).ceil() as usize + 4;
    let narrow = expected.max(ef / 4).min(full);
    (narrow, full)
}

mod changes;
mod filtered;
mod fold;
#[cfg(test)]
mod tests;
mod value_blocks;
