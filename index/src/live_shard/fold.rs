//! Folding a live shard's changes into one packed graph, on the node itself.
//!
//! A live search runs two HNSW traversals, the base's and the mutable part's,
//! and the second costs about twice its time alone because the first evicts
//! it from the cache: with a tenth of a 390k-item GloVe shard changed, a live
//! shard searched at 0.74-0.79 of the packed-only rate even with the mutable
//! part packed (docs/benchmarks-history.md, "Live shard"). A fold is the node-local
//! form of `recsys bundle compact`: a copy of the base graph into which the
//! mutable part's items are inserted, packed as the base is, and searched
//! alone while no change has come since it was made. It is what Lucene's and
//! Milvus' segment merges do, without writing a file or waiting for a rollout.
//!
//! A replaced base item takes its new vector in its own slot of the copy. A
//! deleted one stays as it was, under an *alias* key that no item has: it
//! keeps routing the traversal, and a search drops it from its answer
//! afterwards instead of testing every candidate inside it (usearch's removal
//! would leave a removed member that every search tests for by a key read
//! from the node, the cache miss the packed layout exists to avoid).
//!
//! Changes that come after a fold go to its *tail*, a small mutable index of
//! the items upserted since and the set of ids changed since, searched beside
//! the fold (whose copies of those ids it drops) the way the mutable part is
//! searched beside the base, until the log is quiet again and a new fold takes
//! everything in. So the fold stays in use while changes keep coming, and a
//! search costs one large traversal and a small one.
//!
//! A fold is a pure function of the bundle's shard and the changes it holds:
//! it always starts from the bundle's base, hides in id order and inserts in id
//! order on one thread from a fresh index (whose level generator starts from
//! the same seed), so every replica that folds at the same revision builds the
//! same graph and answers alike.

use memmap2::MmapMut;
use rustc_hash::FxHashMap;
use usearch::Index;

use super::{
    ChangeError, ItemChange, LiveShard, empty_index, replace_items, save_to_huge_pages,
    usearch_error, view_packed,
};
use crate::index_reads::{Hidden, Wanted, export_index, search_one, search_past_hidden, sort_hits};
use crate::{Hit, SearchError};

/// The base and the mutable part as they were after change `generation`, in
/// one packed, read-only graph.
pub(super) struct Folded {
    /// Declared before `buffer`, so dropped first: it reads the buffer.
    index: Index,
    /// The folded graph as usearch saved it, in huge pages, which `index` views.
    #[expect(dead_code, reason = "read through the index's view, never by name")]
    buffer: MmapMut,
    /// The mutable part's generation the fold holds.
    pub(super) generation: u64,
    /// Keys standing for hidden base items: never returned.
    aliases: Hidden,
    /// Members of the graph, aliases included.
    members: usize,
}

/// The changes since a fold, searched beside it.
pub(super) struct Tail {
    /// The generation of the fold it follows.
    pub(super) since: u64,
    /// The items upserted since, as they are now; its beam is 1, as the
    /// delta's.
    pub(super) delta: Index,
    /// Every id upserted or deleted since: the fold's copies are out of date.
    pub(super) changed: Hidden,
}

impl Tail {
    /// An empty tail for a fold of generation `since` of `shard`.
    pub(super) fn new(shard: &LiveShard, since: u64) -> Result<Self, ChangeError> {
        let delta = empty_index(shard.base())?;
        Ok(Self {
            since,
            delta,
            changed: Hidden::default(),
        })
    }

    /// Takes one batch's last change per item.
    pub(super) fn record(&mut self, last: &FxHashMap<u64, &ItemChange>) -> Result<(), ChangeError> {
        self.changed.extend(last.keys().copied());
        replace_items(&self.delta, last)
    }
}

impl Folded {
    /// The `k` best items for `query`, best first, none in `excluded`
    /// (sorted) nor in `changed` (the tail's), with a beam of `ef`.
    pub(super) fn search(
        &self,
        shard: &LiveShard,
        query: &[f32],
        k: usize,
        wanted: Wanted<'_>,
        ef: usize,
        changed: Option<&Hidden>,
    ) -> Result<Vec<Hit>, SearchError> {
        let base = shard.base();
        base.check_query(query)?;
        if k == 0 || self.members == 0 {
            return Ok(Vec::new());
        }
        let hidden = |key: u64| {
            self.aliases.contains(&key) || changed.is_some_and(|changed| changed.contains(&key))
        };
        let hidden_count = self.aliases.len() + changed.map_or(0, |changed| changed.len());
        if wanted.is_everything()
            && let Some(hits) = search_past_hidden(
                &self.index,
                base.metric(),
                self.members,
                query,
                k,
                (hidden, hidden_count),
                ef,
            )?
        {
            return Ok(hits);
        }
        let keep = |key: u64| wanted.keeps(key) && !hidden(key);
        // The index's own beam is 1: asking for `ef` results sets the beam.
        let mut hits = search_one(
            &self.index,
            base.metric(),
            query,
            k.max(ef),
            None,
            true,
            keep,
        )?;
        sort_hits(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }
}

impl LiveShard {
    /// Folds the base and the mutable part as they are now into one packed
    /// graph, which searches read instead of both, beside a tail of the
    /// changes that come after it began, until the next fold. Returns whether
    /// it made one: not when the mutable part holds fewer than `min_items`
    /// items (or none), nor when the current fold is up to date, nor when
    /// another fold began meanwhile.
    ///
    /// Blocking CPU work that grows with the mutable part (each of its items is
    /// an HNSW insertion into the base's graph) and about twice the shard's
    /// size in memory while it runs, once the shard's size while the fold is
    /// held: the caller decides how often (a retrieval node folds once the
    /// change log has been quiet for a while). Searches and changes go on
    /// meanwhile; changes wait only for a copy of the mutable part.
    pub fn fold(&self, min_items: usize) -> Result<bool, ChangeError> {
        let (delta_bytes, hidden, generation) = {
            let mut mutable = self.write();
            let size = mutable.delta.size();
            if size == 0 || size < min_items || mutable.current_folded().is_some() {
                return Ok(false);
            }
            let mut bytes = vec![0u8; mutable.delta.serialized_length()];
            mutable
                .delta
                .save_to_buffer(&mut bytes)
                .map_err(usearch_error)?;
            let hidden: Vec<u64> = mutable.hidden.iter().copied().collect();
            // Changes from here on are the new fold's tail.
            mutable.pending_tail = Some(Tail::new(self, mutable.generation)?);
            (bytes, hidden, mutable.generation)
        };
        let built = self.build_fold(&delta_bytes, hidden, generation);
        let mut mutable = self.write();
        let tail = match mutable.pending_tail.take() {
            Some(tail) if tail.since == generation => tail,
            // Another fold began since: it owns the pending tail.
            other => {
                mutable.pending_tail = other;
                return built.map(|_| false);
            }
        };
        let folded = built?;
        let old = (mutable.folded.replace(folded), mutable.tail.replace(tail));
        drop(mutable);
        drop(old);
        Ok(true)
    }

    /// The fold of the base and the delta saved in `delta_bytes`, with the
    /// base items in `hidden` deleted or replaced, as of `generation`.
    fn build_fold(
        &self,
        delta_bytes: &[u8],
        mut hidden: Vec<u64>,
        generation: u64,
    ) -> Result<Folded, ChangeError> {
        let dimensions = self.base.dimensions();
        let delta = empty_index(&self.base)?;
        delta.load_from_buffer(delta_bytes).map_err(usearch_error)?;
        let (ids, vectors) = export_index(&delta, dimensions).map_err(usearch_error)?;
        drop(delta);

        let merged = empty_index(&self.base)?;
        merged
            .load_from_buffer(&self.base.serialized().map_err(usearch_error)?)
            .map_err(usearch_error)?;
        merged
            .reserve(merged.size() + ids.len())
            .map_err(usearch_error)?;
        // A replaced base item takes its new vector in its own slot (usearch
        // reuses the slot just freed), so the graph keeps one member for it and
        // no removed member that every search would have to test for. A deleted
        // one keeps its place under a key no item has (counting down from the
        // largest usearch allows). Both in id order.
        hidden.sort_unstable();
        let mut aliases = Hidden::default();
        let mut added = vec![false; ids.len()];
        let mut next = u64::MAX - 1;
        for id in hidden {
            if let Ok(row) = ids.binary_search(&id) {
                let removed = merged.remove(id).map_err(usearch_error)?;
                if removed != 1 {
                    return Err(usearch_error(format!(
                        "replaced base item {id}: removed {removed} members"
                    )));
                }
                merged
                    .add(id, &vectors[row * dimensions..(row + 1) * dimensions])
                    .map_err(usearch_error)?;
                added[row] = true;
                continue;
            }
            let alias = loop {
                let candidate = next;
                next = next
                    .checked_sub(1)
                    .ok_or_else(|| usearch_error("no key left for an alias"))?;
                if !merged.contains(candidate) && ids.binary_search(&candidate).is_err() {
                    break candidate;
                }
            };
            let renamed = merged.rename(id, alias).map_err(usearch_error)?;
            if renamed != 1 {
                return Err(usearch_error(format!(
                    "deleted base item {id}: renamed {renamed} members"
                )));
            }
            aliases.insert(alias);
        }
        for ((id, vector), added) in ids.iter().zip(vectors.chunks_exact(dimensions)).zip(added) {
            if !added {
                merged.add(*id, vector).map_err(usearch_error)?;
            }
        }
        drop(vectors);

        let buffer = save_to_huge_pages(&merged, "the folded shard")?;
        drop(merged);
        let index = view_packed(&self.base, &buffer)?;
        Ok(Folded {
            members: index.size(),
            index,
            buffer,
            generation,
            aliases,
        })
    }
}
