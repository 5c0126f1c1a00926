//! A walk of a shard's HNSW base layer that measures only the neighbours its
//! 4-bit codes say may enter the beam: ScaNN's speed trick (4-bit product
//! quantization scored from SIMD lookup tables, exact distances for the few
//! that matter) carried over to usearch's graph, as NGT's quantized graph does.
//!
//! Why: perf puts most of a base-layer search on loading each neighbour's
//! vector, one random cache miss per distance, and most of those neighbours
//! turn out too far to enter the beam. Here every node keeps its neighbours'
//! codes beside it (`fast_scan.rs`'s layout), so expanding a node reads one
//! sequential run of bytes and scores all its neighbours with a few shuffles;
//! only those whose coded distance lies within a margin of the beam's worst
//! are looked up in the visited set and measured exactly (on GloVe-50 about
//! one in five of the neighbours usearch's walk measures). The beam holds
//! exact distances, so the order and the scores are exact and the codes only
//! decide what is skipped: the walk answers as usearch's own does on the same
//! graph (recall equal to 0.0002 on GloVe-50, pinned by the tests below).
//!
//! The graph itself is usearch's (the upper levels are searched by usearch
//! too, [`usearch::Index::base_layer_entry`]); this copies its base-layer links
//! beside the codes, in groups of 32 (on GloVe-50 with M 32, 1.56 KB per
//! item on top of the index). Built at load from a viewed `f32` index, whose
//! vectors stay where usearch mapped them.

mod codebook;
mod fast_scan;

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

use recsys_bundle::Metric;
use usearch::Index;

use self::codebook::{Codebook, Table};
use self::fast_scan::{GROUP, group_bytes, pack_group, scan};
use crate::SearchError;
use crate::live_shard::fast_score;
use crate::shard_index::Hit;

/// The codes and links of a shard's base layer; see the module.
pub(crate) struct CodedGraph {
    codebook: Codebook,
    metric: Metric,
    /// Slot `s`'s first group (each [`GROUP`] links) and neighbour count, in
    /// one word so that an expansion reads one place: `first << 16 | count`.
    nodes: Vec<u64>,
    /// Every group's block, `stride` bytes each: its codes
    /// (`group_bytes(pairs)` bytes), then its [`GROUP`] links (slots as native
    /// `u32`, `u32::MAX` as padding). In huge-page memory: a walk reads a few
    /// hundred blocks at random over hundreds of MB, and with 4 KiB pages each
    /// would also miss the TLB.
    blocks: memmap2::MmapMut,
    stride: usize,
    /// Slot to item id.
    keys: Vec<u64>,
    /// usearch's vector matrix: slot `s` at `address + s * stride`.
    vectors: Matrix,
    /// The mean squared distance between a vector and its coded form.
    coding_error: f32,
}

/// How many standard deviations of coding error a neighbour's coded
/// distance may lie beyond the beam's worst and still be measured: on GloVe-50 (1-d subspaces) 0.6 to 3 all
/// keep the exact walk's recall@100 to 0.0002 and measure within noise of one
/// another (docs/benchmarks-history.md, "Retrieval against ScaNN").
pub(crate) const MARGIN_SIGMAS: f32 = 1.0;

/// Where usearch keeps a viewed index's vectors.
#[derive(Debug, Clone, Copy)]
struct Matrix {
    address: usize,
    stride: usize,
    rows: usize,
    dims: usize,
}

impl Matrix {
    /// Starts loading slot `slot`'s vector.
    #[allow(unsafe_code)]
    fn prefetch(&self, slot: usize) {
        #[cfg(target_arch = "x86_64")]
        if slot < self.rows {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let first = self.address + slot * self.stride;
            // Every cache line the vector touches, the first one included
            // when the vector does not start on a line (a viewed file's rows).
            for line in (first & !63..first + self.dims * 4).step_by(64) {
                // SAFETY: a prefetch never faults; the address is inside the matrix.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(line as *const i8) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }

    /// Slot `slot`'s vector.
    ///
    /// Sound while the index the matrix came from is alive and unchanged: the
    /// [`crate::ShardIndex`] that owns both never changes its index after the
    /// graph is built (a viewed index is immutable) and drops them together.
    #[allow(unsafe_code)]
    fn row(&self, slot: usize) -> &[f32] {
        assert!(slot < self.rows);
        // SAFETY: usearch's `vectors_matrix` guarantees `rows` vectors of
        // `dims` f32 at `stride` from `address` (an f32 index, checked when the
        // graph is built), valid as long as the index (see above).
        unsafe {
            std::slice::from_raw_parts((self.address + slot * self.stride) as *const f32, self.dims)
        }
    }
}

/// Slots whose links one thread copies at load.
const LINK_CHUNK: usize = 4096;

/// A run of slots' keys, neighbour counts and links padded to whole groups.
struct Links {
    keys: Vec<u64>,
    counts: Vec<u16>,
    links: Vec<u32>,
}

impl Links {
    /// Copies `slots` of `index` (of `rows` slots), checking every link.
    fn copy(index: &Index, slots: std::ops::Range<usize>, rows: usize) -> Result<Self, String> {
        let mut out = Self {
            keys: Vec::with_capacity(slots.len()),
            counts: Vec::with_capacity(slots.len()),
            links: Vec::new(),
        };
        let mut neighbours = vec![0u32; index.connectivity() * 2 + 1];
        for slot in slots {
            out.keys
                .push(index.slot_key(slot).map_err(|e| e.to_string())?);
            let count = index.base_neighbors(slot, &mut neighbours);
            if count > neighbours.len() {
                neighbours.resize(count, 0);
                index.base_neighbors(slot, &mut neighbours);
            }
            if let Some(bad) = neighbours[..count].iter().find(|&&n| n as usize >= rows) {
                return Err(format!("slot {slot} links to slot {bad} of {rows}"));
            }
            let count16 =
                u16::try_from(count).map_err(|_| format!("slot {slot} has {count} links"))?;
            out.counts.push(count16);
            out.links.extend_from_slice(&neighbours[..count]);
            let padded = out.links.len() + count.div_ceil(GROUP) * GROUP - count;
            out.links.resize(padded, u32::MAX);
        }
        Ok(out)
    }
}

/// Per-thread buffers, kept between searches.
#[derive(Default)]
struct Scratch {
    visited: Vec<u64>,
    touched: Vec<u32>,
    candidates: BinaryHeap<Reverse<u64>>,
    beam: BinaryHeap<u64>,
    survivors: Vec<u32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `(distance, slot)` in one integer, so a heap orders by distance then slot:
/// the distance's bits mapped so that integer order is float order.
fn entry(distance: f32, slot: u32) -> u64 {
    let bits = distance.to_bits();
    let ordered = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    };
    (u64::from(ordered) << 32) | u64::from(slot)
}

fn distance_of(entry: u64) -> f32 {
    let ordered = (entry >> 32) as u32;
    f32::from_bits(if ordered >> 31 == 1 {
        ordered & !(1 << 31)
    } else {
        !ordered
    })
}

fn slot_of(entry: u64) -> u32 {
    entry as u32
}

impl CodedGraph {
    /// Codes `index`'s vectors and copies its base-layer links. The index must
    /// be a viewed (or packed) `f32` index; an error says why another is not.
    pub(crate) fn build(index: &Index, metric: Metric) -> Result<Self, String> {
        let (address, stride, rows) = index.vectors_matrix().map_err(|e| e.to_string())?;
        let dims = index.dimensions();
        if rows == 0 || rows != index.size() {
            return Err("the coded walk needs a viewed index".into());
        }
        if index.scalar_kind() != usearch::ScalarKind::F32 || stride < dims * 4 {
            return Err("the coded walk needs an f32 index".into());
        }
        if rows >= u32::MAX as usize {
            return Err(format!("{rows} items is too many for 32-bit slots"));
        }
        let vectors = Matrix {
            address,
            stride,
            rows,
            dims,
        };
        let codebook = Codebook::train(rows, dims, metric, |slot| vectors.row(slot));
        let subspaces = codebook.subspaces();
        let pairs = codebook.pairs();
        let mut own = vec![0u8; rows * subspaces];
        let total_error: f64 = {
            use rayon::prelude::*;
            own.par_chunks_mut(subspaces)
                .enumerate()
                .map(|(slot, out)| f64::from(codebook.encode(vectors.row(slot), out)))
                .sum()
        };
        // Each chunk of slots copies its keys and padded links on its own
        // thread; the chunks are then laid end to end.
        let chunks: Vec<Result<Links, String>> = {
            use rayon::prelude::*;
            (0..rows.div_ceil(LINK_CHUNK))
                .into_par_iter()
                .map(|chunk| {
                    let slots = chunk * LINK_CHUNK..((chunk + 1) * LINK_CHUNK).min(rows);
                    Links::copy(index, slots, rows)
                })
                .collect()
        };
        let mut keys = Vec::with_capacity(rows);
        let mut nodes = Vec::with_capacity(rows);
        let mut links: Vec<u32> = Vec::new();
        let mut total = 0usize;
        for chunk in chunks {
            let chunk = chunk?;
            keys.extend_from_slice(&chunk.keys);
            for &count in &chunk.counts {
                nodes.push(((total as u64) << 16) | u64::from(count));
                total += usize::from(count).div_ceil(GROUP);
            }
            links.extend_from_slice(&chunk.links);
        }
        let codes_len = group_bytes(pairs);
        let stride = (codes_len + GROUP * 4).div_ceil(64) * 64;
        let mut blocks = crate::shard_index::huge_page_memory(total * stride)
            .map_err(|e| format!("memory for the coded base layer: {e}"))?;
        {
            use rayon::prelude::*;
            blocks[..total * stride]
                .par_chunks_mut(stride)
                .enumerate()
                .for_each(|(group, out)| {
                    let members = &links[group * GROUP..(group + 1) * GROUP];
                    pack_group(
                        pairs,
                        |i| {
                            let slot = members[i];
                            (slot != u32::MAX)
                                .then(|| &own[slot as usize * subspaces..][..subspaces])
                        },
                        &mut out[..codes_len],
                    );
                    for (i, slot) in members.iter().enumerate() {
                        out[codes_len + i * 4..][..4].copy_from_slice(&slot.to_ne_bytes());
                    }
                });
        }
        Ok(Self {
            codebook,
            metric,
            nodes,
            blocks,
            stride,
            keys,
            vectors,
            coding_error: (total_error / rows as f64) as f32,
        })
    }

    /// Bytes held beyond usearch's own: what the node's memory grows by.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.nodes.len() * 8 + self.blocks.len() + self.keys.len() * 8
    }

    /// The `k` best items for `query`, best first with exact scores: usearch's
    /// base-layer walk with a beam of `ef`, except that a neighbour is measured
    /// (its vector read) only when its coded distance says it may enter the
    /// beam: within [`MARGIN_SIGMAS`] standard deviations of the coding error of
    /// the beam's worst. The beam holds exact distances, so the codes only
    /// decide what is skipped, never the order.
    pub(crate) fn search(
        &self,
        index: &Index,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<Hit>, SearchError> {
        let start = index
            .base_layer_entry(query)
            .map_err(|e| SearchError::Usearch(e.to_string()))?;
        let table = self.codebook.table(query, self.metric);
        let pairs = self.codebook.pairs();
        let ef = ef.max(k).max(1);
        // The beam orders by distance, here the negated score: for ip and cos
        // what the codes' table sums stand for, for l2 the squared distance.
        let distance = |slot: u32| -fast_score(self.metric, query, self.vectors.row(slot as usize));
        let limit_for = self.limits(&table, query);
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            let words = self.keys.len().div_ceil(64);
            if scratch.visited.len() < words {
                scratch.visited.resize(words, 0);
            }
            scratch.candidates.clear();
            scratch.beam.clear();
            let visited = &mut scratch.visited;
            let touched = &mut scratch.touched;
            let mut visit = |slot: u32| {
                let (word, bit) = (slot as usize / 64, 1u64 << (slot % 64));
                let seen = visited[word] & bit != 0;
                if !seen {
                    visited[word] |= bit;
                    touched.push(slot);
                }
                !seen
            };
            let start = start as u32;
            let first = entry(distance(start), start);
            visit(start);
            scratch.candidates.push(Reverse(first));
            scratch.beam.push(first);
            // Until the beam is full every neighbour may enter it.
            let mut worst = f32::INFINITY;
            let mut limit = u16::MAX;
            let mut coded = [0u16; GROUP];

            while let Some(Reverse(candidate)) = scratch.candidates.pop() {
                if scratch.beam.len() >= ef && distance_of(candidate) > worst {
                    break;
                }
                // The next candidate is the heap's root, the one after most
                // likely one of its children: start loading all three blocks.
                for Reverse(next) in scratch.candidates.as_slice().iter().take(3) {
                    self.prefetch(slot_of(*next) as usize);
                }
                let slot = slot_of(candidate) as usize;
                let (first_group, count) = self.node(slot);
                let codes_len = group_bytes(pairs);
                // Every neighbour that may enter the beam, its vector's load
                // started; measured after all groups are scanned, so that the
                // loads overlap the scanning.
                let mut kept = 0;
                let survivors = &mut scratch.survivors;
                if survivors.len() < count {
                    survivors.resize(count, 0);
                }
                for g in 0..count.div_ceil(GROUP) {
                    let block = &self.blocks[(first_group + g) * self.stride..][..self.stride];
                    scan(&block[..codes_len], &table.bytes, pairs, &mut coded);
                    for (i, &units) in coded.iter().enumerate().take(count - g * GROUP) {
                        if units > limit {
                            continue;
                        }
                        let at = codes_len + i * 4;
                        let neighbour = u32::from_ne_bytes([
                            block[at],
                            block[at + 1],
                            block[at + 2],
                            block[at + 3],
                        ]);
                        if visit(neighbour) {
                            survivors[kept] = neighbour;
                            self.vectors.prefetch(neighbour as usize);
                            kept += 1;
                        }
                    }
                }
                for &neighbour in &survivors[..kept] {
                    let distance = distance(neighbour);
                    if scratch.beam.len() >= ef && distance >= worst {
                        continue;
                    }
                    let found = entry(distance, neighbour);
                    // Better than every waiting candidate: expanded next, so
                    // start loading its block now rather than when it is popped.
                    if scratch
                        .candidates
                        .peek()
                        .is_none_or(|Reverse(top)| found < *top)
                    {
                        self.prefetch(neighbour as usize);
                    }
                    scratch.candidates.push(Reverse(found));
                    scratch.beam.push(found);
                    if scratch.beam.len() > ef {
                        scratch.beam.pop();
                    }
                    if scratch.beam.len() >= ef {
                        let now = scratch
                            .beam
                            .peek()
                            .map_or(f32::INFINITY, |&e| distance_of(e));
                        if now != worst {
                            worst = now;
                            limit = limit_for(worst);
                        }
                    }
                }
            }
            for slot in touched.drain(..) {
                visited[slot as usize / 64] = 0;
            }
            let mut hits: Vec<Hit> = scratch
                .beam
                .drain()
                .map(|e| {
                    let slot = slot_of(e) as usize;
                    (self.keys[slot], -distance_of(e))
                })
                .collect();
            crate::index_reads::sort_hits(&mut hits);
            hits.truncate(k);
            Ok(hits)
        })
    }

    /// The coded sum past which a neighbour cannot beat a beam whose worst
    /// distance is `worst`, short of a coding error of [`MARGIN_SIGMAS`]
    /// standard deviations (plus the table's rounding).
    fn limits<'a>(&'a self, table: &'a Table, query: &[f32]) -> impl Fn(f32) -> u16 + 'a {
        // A coded vector's error per dimension, and so along a query's direction.
        let sigma = MARGIN_SIGMAS * (self.coding_error / self.codebook.dims() as f32).sqrt();
        let query_norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        let rounding = self.codebook.subspaces() as f32 * 0.5;
        // The table's sums stand for `offset + units / scale` in the beam's
        // distance (the negated score; the squared distance for l2).
        move |worst: f32| {
            let spread = match self.metric {
                Metric::Ip => query_norm * sigma,
                Metric::Cos => sigma,
                Metric::L2 => 2.0 * worst.max(0.0).sqrt() * sigma + self.coding_error,
            };
            let units = (worst + spread - table.offset) * table.scale + rounding;
            if units.is_nan() || units >= f32::from(u16::MAX) {
                u16::MAX
            } else {
                units.max(0.0) as u16
            }
        }
    }

    /// Slot `slot`'s first group and neighbour count.
    fn node(&self, slot: usize) -> (usize, usize) {
        let word = self.nodes[slot];
        ((word >> 16) as usize, (word & 0xffff) as usize)
    }

    /// Starts loading the blocks of the node expanded next.
    #[allow(unsafe_code)]
    fn prefetch(&self, slot: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let (first_group, count) = self.node(slot);
            let first = first_group * self.stride;
            let last = ((first_group + count.div_ceil(GROUP)) * self.stride).min(self.blocks.len());
            let base = self.blocks.as_ptr();
            for at in (first..last).step_by(64) {
                // SAFETY: a prefetch never faults, and `at` is inside `blocks`.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(at).cast()) };
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = slot;
    }
}

#[cfg(test)]
mod tests;
