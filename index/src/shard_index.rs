//! One shard's usearch index, opened from a bundle for serving, with HNSW and
//! exact search.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use recsys_bundle::{BundleError, IndexParams, Manifest, Metric, Quantization, SearchDepths};
use usearch::Index;

use crate::SearchError;
use crate::coded_graph::CodedGraph;
use crate::index_reads::{
    Hidden, Wanted, export_index, read_vector, search_one, search_past_hidden, sort_hits,
    stored_vector,
};
use crate::options::{metric_kind, scalar_kind, usearch_options};

/// A loaded shard.
pub struct ShardIndex {
    /// Declared before `memory` so it is dropped first: a view borrows it.
    index: Index,
    /// The file's bytes when copied into huge-page memory ([`LoadMode::HugePages`]).
    memory: Option<memmap2::MmapMut>,
    shard: u32,
    shard_count: u32,
    dimensions: usize,
    metric: Metric,
    quantization: Quantization,
    /// The manifest's index parameters, which a live shard's mutable part copies.
    params: IndexParams,
    items: u64,
    bundle_version: String,
    /// The beam of a search that names no recall target: the manifest's
    /// `expansion_search` until [`Self::set_expansion_search`]. usearch's own
    /// beam is 1 and every search asks for at least this many results, which
    /// sets the beam (usearch searches with the larger), so that concurrent
    /// searches can use different beams ([`Self::depth_for`]).
    ef: AtomicUsize,
    /// The beams measured per `k` and recall target, when the builder did.
    depths: Option<SearchDepths>,
    /// The base layer coded for a walk on 4-bit codes ([`Self::code_base_layer`]),
    /// which unfiltered searches then take. Reads `index`'s vectors in place:
    /// sound because `index` never changes once opened (a viewed index is
    /// immutable, and packing happens before coding, in `open_with`).
    coded: Option<CodedGraph>,
}

impl std::fmt::Debug for ShardIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardIndex")
            .field("shard", &self.shard)
            .field("items", &self.items)
            .field("dimensions", &self.dimensions)
            .finish_non_exhaustive()
    }
}

/// How a shard's file becomes an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "flags", derive(clap::ValueEnum))]
pub enum LoadMode {
    /// Memory-map the file: ready at once, pages fault in on first use.
    View,
    /// Read the whole file into memory: slower to start, no page faults afterwards.
    Load,
    /// Copy the file into anonymous memory backed by transparent huge pages and
    /// view it there: a search touches a few hundred random vectors and nodes
    /// across the whole file, and with 4 KiB pages most of those touches also miss
    /// the TLB: 10-15 % more searches per CPU-second than `view` on GloVe-50
    /// (docs/benchmarks.md) for a copy at start-up that takes tens of
    /// milliseconds; the memory is the node's own rather than shared page cache.
    #[cfg_attr(feature = "flags", value(name = "hugepages"))]
    HugePages,
    /// Memory-map the file, then copy each item's vector and base-layer links
    /// into one block per item in huge-page memory (hnswlib's layout; the
    /// vendored usearch's `pack_base_layer`): a search then finds an expanded
    /// node's links by arithmetic instead of through usearch's pointer table,
    /// beside the vector it measured. Costs about the size of the vectors plus
    /// the links on top of the page cache. The default: 6-9 % more searches per
    /// CPU-second than `hugepages` on GloVe-50 (docs/benchmarks.md); a
    /// 390k-item shard still reaches SERVING in 80-240 ms.
    #[default]
    Packed,
    /// `packed`, then the base layer coded for a walk on 4-bit codes with
    /// exact re-scoring of what it finds (ScaNN's lookup-table scoring on
    /// usearch's graph, `coded_graph.rs`), which unfiltered searches take.
    /// Costs about 1 KB more per item (M 32) and a coding pass at load.
    Coded,
}

/// The bytes of `path` in anonymous memory advised to use transparent huge pages
/// (the kernel's `madvise` mode, the common default, grants them only on request).
fn huge_page_copy(path: &Path, len: u64) -> Result<memmap2::MmapMut, BundleError> {
    use std::io::Read;
    let len = usize::try_from(len)
        .map_err(|_| BundleError::corrupt(path, "file does not fit in memory"))?;
    let mut memory = huge_page_memory(len).map_err(|e| BundleError::io(path, e))?;
    std::fs::File::open(path)
        .and_then(|mut file| file.read_exact(&mut memory[..len]))
        .map_err(|e| BundleError::io(path, e))?;
    Ok(memory)
}

/// `len` bytes (at least one) of zeroed anonymous memory advised to use
/// transparent huge pages: a search reads a few hundred random places of an
/// index, and with 4 KiB pages most of them also miss the TLB.
pub(crate) fn huge_page_memory(len: usize) -> std::io::Result<memmap2::MmapMut> {
    let memory = memmap2::MmapMut::map_anon(len.max(1))?;
    #[cfg(target_os = "linux")]
    if let Err(error) = memory.advise(memmap2::Advice::HugePage) {
        // Still correct, only slower.
        tracing::debug!(%error, len, "no transparent huge pages");
    }
    Ok(memory)
}

/// Views `index` over `copy`, which the caller keeps alive, unwritten, for as long
/// as the index ([`ShardIndex`] and the live shard's packed delta hold both and
/// drop the index first).
#[allow(unsafe_code)]
pub(crate) fn view_copy(index: &Index, copy: &[u8]) -> Result<(), String> {
    // SAFETY: usearch reads the buffer for the index's lifetime; the caller's
    // contract above keeps the buffer valid and immutable for that long.
    unsafe { index.view_from_buffer(copy) }.map_err(|e| e.to_string())
}

/// One result: item id and score (higher is better).
pub type Hit = (u64, f32);

impl ShardIndex {
    /// Opens shard `shard` of the bundle in `dir`, checking the file against the
    /// manifest so a mismatched or truncated file is refused with its name.
    pub fn open(dir: &Path, shard: u32) -> Result<Self, BundleError> {
        Self::open_with(dir, shard, LoadMode::default())
    }

    /// Opens shard `shard` of the bundle in `dir`, mapping or copying the file.
    pub fn open_with(dir: &Path, shard: u32, mode: LoadMode) -> Result<Self, BundleError> {
        let manifest = Manifest::load(dir)?;
        let entry = manifest.shard(shard).ok_or_else(|| {
            BundleError::invalid(
                "shard",
                format!(
                    "bundle {} has shards 0..{}, not {shard}",
                    dir.display(),
                    manifest.shard_count
                ),
            )
        })?;
        let path = Manifest::resolve(dir, &entry.file);
        let path_str = path
            .to_str()
            .ok_or_else(|| BundleError::invalid("bundle", "path is not valid UTF-8"))?;
        let file_len = std::fs::metadata(&path)
            .map_err(|e| BundleError::io(&path, e))?
            .len();
        let meta = Index::metadata(path_str)
            .map_err(|e| BundleError::corrupt(&path, format!("not a usearch index: {e}")))?;
        let params = manifest.index;
        if meta.dimensions as usize != manifest.dimensions {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index has {} dimensions, the manifest says {}",
                    meta.dimensions, manifest.dimensions
                ),
            ));
        }
        if meta.metric != metric_kind(params.metric) {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index metric differs from the manifest's {}",
                    params.metric.as_str()
                ),
            ));
        }
        if meta.quantization != scalar_kind(params.quantization) {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index quantization differs from the manifest's {}",
                    params.quantization.as_str()
                ),
            ));
        }
        if meta.count_present != entry.items {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index holds {} items, the manifest says {}",
                    meta.count_present, entry.items
                ),
            ));
        }
        // A lower bound on the size of a valid file: every vector must be in it.
        // usearch's view trusts the header, so a truncated file would fault on access.
        let bytes_per_scalar: u64 = match params.quantization {
            Quantization::F32 => 4,
            Quantization::F16 => 2,
            Quantization::I8 => 1,
        };
        // Checked: the manifest is a file anyone may have written, and an
        // overflow would wrap to a small bound (or panic in a debug build).
        let minimum = entry
            .items
            .checked_mul(manifest.dimensions as u64)
            .and_then(|scalars| scalars.checked_mul(bytes_per_scalar));
        if minimum.is_none_or(|minimum| file_len < minimum) {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "file is {file_len} bytes, too short for {} vectors",
                    entry.items
                ),
            ));
        }
        let mut index = Index::new(&usearch_options(&params, manifest.dimensions))
            .map_err(|e| BundleError::index(&path, e))?;
        let mut memory = None;
        match mode {
            LoadMode::View | LoadMode::Packed | LoadMode::Coded => {
                index.view(path_str).map_err(|e| e.to_string())
            }
            LoadMode::Load => index.load(path_str).map_err(|e| e.to_string()),
            LoadMode::HugePages => {
                view_copy(&index, &memory.insert(huge_page_copy(&path, file_len)?)[..])
            }
        }
        .map_err(|e| BundleError::corrupt(&path, format!("cannot open the index: {e}")))?;
        if index.size() as u64 != entry.items {
            return Err(BundleError::corrupt(
                &path,
                format!(
                    "index maps {} items, the manifest says {}",
                    index.size(),
                    entry.items
                ),
            ));
        }
        if matches!(mode, LoadMode::Packed | LoadMode::Coded) {
            // The file is fine by now; what can fail here is memory, not the bundle.
            index
                .pack_base_layer()
                .map_err(|e| BundleError::index(&path, format!("packing the base layer: {e}")))?;
        }
        index.change_expansion_search(1);
        let mut opened = Self {
            ef: AtomicUsize::new(params.expansion_search.max(1)),
            depths: entry.search_depths.clone(),
            coded: None,
            index,
            memory,
            shard,
            shard_count: manifest.shard_count,
            dimensions: manifest.dimensions,
            metric: params.metric,
            quantization: params.quantization,
            params,
            items: entry.items,
            bundle_version: manifest.version,
        };
        // An empty shard has nothing to code, and no search reaches a walk.
        if mode == LoadMode::Coded && opened.items > 0 {
            let started = std::time::Instant::now();
            let bytes = opened.code_base_layer()?;
            tracing::info!(
                shard,
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "base layer coded for the 4-bit walk"
            );
        }
        Ok(opened)
    }

    /// Overrides the HNSW search beam width (`ef`) the manifest set for searches
    /// without a recall target; searches use at least `k` whatever this is.
    pub fn set_expansion_search(&self, expansion: usize) {
        self.ef.store(expansion.max(1), Ordering::Relaxed);
    }

    /// The beam for `k` results: the smallest the builder measured to reach
    /// recall `target` at that `k` on this shard ([`SearchDepths::ef_for`]),
    /// or, without a target or a measured table (bundles built before), the
    /// default beam. Never below `k`.
    pub fn depth_for(&self, k: usize, target: Option<f32>) -> usize {
        target
            .and_then(|target| self.depths.as_ref()?.ef_for(k, target))
            .unwrap_or_else(|| self.expansion_search())
            .max(k)
    }

    /// The beams measured on this shard, when the builder measured them.
    pub fn search_depths(&self) -> Option<&SearchDepths> {
        self.depths.as_ref()
    }

    /// usearch's description of the SIMD kernels in use, for benchmark reports.
    pub fn hardware_acceleration(&self) -> String {
        self.index.hardware_acceleration()
    }

    /// Whether the index lives in a huge-page copy of its file.
    pub fn copied_to_huge_pages(&self) -> bool {
        self.memory.is_some()
    }

    /// The shard number.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Shards in the bundle.
    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Embedding dimensions.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Items in the shard.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// The stored scalar type.
    pub fn quantization(&self) -> Quantization {
        self.quantization
    }

    /// The index parameters the shard was built with.
    pub fn params(&self) -> &IndexParams {
        &self.params
    }

    /// Version of the bundle the shard came from.
    pub fn bundle_version(&self) -> &str {
        &self.bundle_version
    }

    /// The `k` best items for `query`, best first (ties: smaller id first), none of
    /// them in `excluded` (which must be sorted). Blocking CPU work: call from the
    /// search pool.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u64],
        exact: bool,
    ) -> Result<Vec<Hit>, SearchError> {
        self.search_hiding(
            query,
            k,
            Wanted::excluding(excluded),
            &Hidden::default(),
            exact,
            self.expansion_search(),
        )
    }

    /// [`Self::search`] that also leaves out the items in `hidden`: the base items
    /// a [`crate::LiveShard`] has deleted or replaced since the bundle was built.
    /// An exact search honours `wanted`'s exclusions, not its filter (a
    /// filtered exact search scans the matching items instead).
    pub(crate) fn search_hiding(
        &self,
        query: &[f32],
        k: usize,
        wanted: Wanted<'_>,
        hidden: &Hidden,
        exact: bool,
        ef: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        self.check_query(query)?;
        if k == 0 || self.items == 0 {
            return Ok(Vec::new());
        }
        if !exact
            && wanted.is_everything()
            && !hidden.is_empty()
            && let Some(hits) = self.search_past_hidden(query, k, hidden, ef)?
        {
            return Ok(hits);
        }
        if !exact
            && wanted.is_everything()
            && hidden.is_empty()
            && let Some(coded) = &self.coded
        {
            return coded.search(&self.index, query, k, ef);
        }
        let keep = |key: u64| wanted.keeps(key) && !hidden.contains(&key);
        // usearch's brute-force scan takes no filter: ask for enough extra items
        // that k survive the exclusions, then drop the excluded ones.
        let scan = (k + wanted.excluded.len() + hidden.len()).min(self.items as usize);
        let filtered = !(wanted.is_everything() && hidden.is_empty());
        // Asking for `ef` results sets the beam (the index's own is 1).
        let mut hits = search_one(
            &self.index,
            self.metric,
            query,
            k.max(ef),
            exact.then_some(scan),
            filtered,
            keep,
        )?;
        sort_hits(&mut hits);
        hits.truncate(k);
        Ok(hits)
    }

    /// Refuses a query of another length than the shard's vectors.
    pub(crate) fn check_query(&self, query: &[f32]) -> Result<(), SearchError> {
        if query.len() != self.dimensions {
            return Err(SearchError::Dimensions {
                expected: self.dimensions,
                actual: query.len(),
            });
        }
        Ok(())
    }

    /// Item `id`'s stored vector (read back as f32: exact for `f32` shards, the
    /// quantized values for `f16` and `i8`), if the shard holds it: the query
    /// of a "similar to this item" request.
    pub fn vector(&self, id: u64) -> Result<Option<Vec<f32>>, SearchError> {
        stored_vector(&self.index, id, self.dimensions)
    }

    /// [`Self::vector`] into `out`: false when the shard does not hold `id`.
    pub(crate) fn read_vector(&self, id: u64, out: &mut [f32]) -> Result<bool, SearchError> {
        read_vector(&self.index, id, out)
    }

    /// Every item's id and stored vector (read back as f32: exact for `f32`
    /// shards, the quantized values for `f16` and `i8`), ids ascending: what
    /// `recsys bundle compact` rebuilds a shard from ([`export_index`]).
    pub fn export(&self) -> Result<(Vec<u64>, Vec<f32>), SearchError> {
        export_index(&self.index, self.dimensions)
    }

    /// The index as usearch saves it: what a live shard's fold loads into a
    /// copy it can insert into ([`crate::LiveShard::fold`]).
    pub(crate) fn serialized(&self) -> Result<Vec<u8>, SearchError> {
        let mut bytes = vec![0u8; self.index.serialized_length()];
        self.index
            .save_to_buffer(&mut bytes)
            .map_err(|e| SearchError::Usearch(e.to_string()))?;
        Ok(bytes)
    }

    /// Codes the base layer for a walk on 4-bit codes with exact re-scoring
    /// (`coded_graph.rs`), which every later unfiltered search with nothing
    /// hidden takes instead of usearch's own walk; returns the bytes it holds.
    /// Needs a viewed or packed `f32` shard; an error says why another is not.
    pub fn code_base_layer(&mut self) -> Result<usize, BundleError> {
        let graph = CodedGraph::build(&self.index, self.metric).map_err(|e| {
            BundleError::invalid("search", format!("cannot code the base layer: {e}"))
        })?;
        let bytes = graph.memory_bytes();
        self.coded = Some(graph);
        Ok(bytes)
    }

    /// Whether searches walk the coded base layer ([`Self::code_base_layer`]).
    pub fn coded(&self) -> bool {
        self.coded.is_some()
    }

    /// The bytes the coded base layer holds beyond usearch's index (0 uncoded).
    pub fn coded_bytes(&self) -> usize {
        self.coded.as_ref().map_or(0, CodedGraph::memory_bytes)
    }

    /// The search beam width (`ef`) of searches without a recall target.
    pub fn expansion_search(&self) -> usize {
        self.ef.load(Ordering::Relaxed)
    }

    /// The `k` best items not in `hidden` from an unfiltered search that asks for
    /// enough extra items to drop the hidden ones afterwards, or `None` when too
    /// many of them were hidden and the filtered traversal must run.
    ///
    /// Why: a filtered traversal tests every candidate it measures, and reading a
    /// candidate's key is a cache miss the packed base layer otherwise avoids (a
    /// tenth of the items hidden cost a quarter of the search rate,
    /// docs/benchmarks-history.md "Live shard"). The beam holds `ef` candidates anyway,
    /// so asking for up to `ef` results costs nothing more, and with a small
    /// share hidden at least `k` of them survive.
    fn search_past_hidden(
        &self,
        query: &[f32],
        k: usize,
        hidden: &Hidden,
        ef: usize,
    ) -> Result<Option<Vec<Hit>>, SearchError> {
        let items = usize::try_from(self.items).unwrap_or(usize::MAX);
        search_past_hidden(
            &self.index,
            self.metric,
            items,
            query,
            k,
            (|key| hidden.contains(&key), hidden.len()),
            ef,
        )
    }

    /// Whether the bundle's shard holds `id`.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.index.contains(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_bundle::{DIM, bundle, unit_vectors};

    /// The vendored usearch addresses a viewed file's vectors (memory-mapped or
    /// copied to huge pages) by arithmetic and a loaded one's through its pointer
    /// table: all must give the same answers, with scores that are the exact inner
    /// products and a recall close to the exact scan's.
    #[test]
    fn viewed_copied_and_loaded_shards_answer_alike_with_exact_scores() {
        let dir = tempfile::tempdir().unwrap();
        let data = bundle(dir.path());
        let viewed = ShardIndex::open_with(dir.path(), 0, LoadMode::View).unwrap();
        let loaded = ShardIndex::open_with(dir.path(), 0, LoadMode::Load).unwrap();
        let copied = ShardIndex::open_with(dir.path(), 0, LoadMode::HugePages).unwrap();
        let packed = ShardIndex::open_with(dir.path(), 0, LoadMode::Packed).unwrap();
        assert!(copied.copied_to_huge_pages() && !viewed.copied_to_huge_pages());
        let (mut found, mut wanted) = (0usize, 0usize);
        for query in unit_vectors(40, 11).chunks(DIM) {
            let from_view = viewed.search(query, 20, &[], false).unwrap();
            let from_load = loaded.search(query, 20, &[], false).unwrap();
            assert_eq!(from_view, from_load);
            assert_eq!(from_view, copied.search(query, 20, &[], false).unwrap());
            assert_eq!(from_view, packed.search(query, 20, &[], false).unwrap());
            assert_eq!(
                viewed.search(query, 20, &[1, 2, 3], false).unwrap(),
                packed.search(query, 20, &[1, 2, 3], false).unwrap()
            );
            for (id, score) in &from_view {
                let row = &data[*id as usize * DIM..(*id as usize + 1) * DIM];
                let exact = Metric::Ip.score(query, row);
                assert!(
                    (score - exact).abs() < 1e-4,
                    "item {id}: {score} vs {exact}"
                );
            }
            let truth = viewed.search(query, 20, &[], true).unwrap();
            found += from_view
                .iter()
                .filter(|hit| truth.iter().any(|t| t.0 == hit.0))
                .count();
            wanted += truth.len();
        }
        assert!(found as f64 >= 0.9 * wanted as f64, "{found} of {wanted}");
    }

    /// Packing copies links out of a read-only view; an index that can still change
    /// (built or loaded into the heap) must refuse, or its copy would go stale.
    #[test]
    fn only_a_viewed_index_is_packed() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let mut loaded = ShardIndex::open_with(dir.path(), 0, LoadMode::Load).unwrap();
        let refused = loaded.index.pack_base_layer().unwrap_err();
        assert!(
            refused.what().contains("Only a viewed index"),
            "{}",
            refused.what()
        );
        let mut viewed = ShardIndex::open_with(dir.path(), 0, LoadMode::View).unwrap();
        viewed.index.pack_base_layer().unwrap();
        // Packing twice keeps the first copy.
        viewed.index.pack_base_layer().unwrap();
    }

    /// An excluded item never comes back, on the path that keeps usearch's predicate.
    #[test]
    fn exclusions_hold_on_a_viewed_shard() {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path());
        let viewed = ShardIndex::open(dir.path(), 0).unwrap();
        let query = unit_vectors(1, 3);
        let first = viewed.search(&query, 10, &[], false).unwrap();
        let mut excluded: Vec<u64> = first.iter().take(5).map(|hit| hit.0).collect();
        excluded.sort_unstable();
        let second = viewed.search(&query, 10, &excluded, false).unwrap();
        assert_eq!(second.len(), 10);
        assert!(
            second
                .iter()
                .all(|hit| excluded.binary_search(&hit.0).is_err())
        );
    }
}
