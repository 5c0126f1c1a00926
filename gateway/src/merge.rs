//! The streaming top-k merge: shard answers are folded into a bounded heap as they
//! arrive (TFRS `Streaming`'s reduce, Quickwit's incremental collector).
//!
//! Order: higher score first; equal scores put the smaller id first, so a result
//! does not depend on which shard answered first. Ids are deduplicated (a hedged or
//! retried shard may answer twice), keeping the higher score.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// An item and its score; higher is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Item id.
    pub item_id: u64,
    /// Score, finite.
    pub score: f32,
}

impl Candidate {
    /// `Less` when `self` ranks before `other`.
    pub fn rank_cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.item_id.cmp(&other.item_id))
    }
}

/// Heap entry ordered so that the heap's top is the worst kept candidate.
#[derive(Debug, Clone, Copy)]
struct Worst(Candidate);

impl PartialEq for Worst {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Worst {}
impl PartialOrd for Worst {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Worst {
    fn cmp(&self, other: &Self) -> Ordering {
        // "Greater" = ranks later, so BinaryHeap (a max-heap) keeps the worst on top.
        self.0.rank_cmp(&other.0)
    }
}

/// The best `k` candidates seen so far.
#[derive(Debug, Clone)]
pub struct TopK {
    k: usize,
    heap: BinaryHeap<Worst>,
    scores: FxHashMap<u64, f32>,
}

impl TopK {
    /// An empty collector keeping at most `k` candidates.
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k.min(1 << 16) + 1),
            scores: FxHashMap::with_capacity_and_hasher(k.min(1 << 16), Default::default()),
        }
    }

    /// Candidates kept.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Offers one candidate; returns whether it is now among the kept ones.
    pub fn push(&mut self, candidate: Candidate) -> bool {
        if self.k == 0 {
            return false;
        }
        if let Some(&kept) = self.scores.get(&candidate.item_id) {
            if candidate.score.total_cmp(&kept) != Ordering::Greater {
                return false;
            }
            // A better score for a kept id: rare (only a twice-answering shard with a
            // different index), so an O(k) rebuild is fine.
            let mut entries = std::mem::take(&mut self.heap).into_vec();
            for entry in &mut entries {
                if entry.0.item_id == candidate.item_id {
                    entry.0.score = candidate.score;
                }
            }
            self.heap = BinaryHeap::from(entries);
            self.scores.insert(candidate.item_id, candidate.score);
            return true;
        }
        if self.heap.len() < self.k {
            self.heap.push(Worst(candidate));
            self.scores.insert(candidate.item_id, candidate.score);
            return true;
        }
        let Some(mut worst) = self.heap.peek_mut() else {
            return false;
        };
        if candidate.rank_cmp(&worst.0) != Ordering::Less {
            return false;
        }
        // Replace in place: one sift-down instead of a pop and a push.
        self.scores.remove(&worst.0.item_id);
        *worst = Worst(candidate);
        drop(worst);
        self.scores.insert(candidate.item_id, candidate.score);
        true
    }

    /// Folds one shard's answer. Shards send answers best first; when this one is
    /// (checked in one pass), the fold stops at the first entry that cannot enter a
    /// full heap, since no later entry can. An unsorted answer is merged whole.
    pub fn merge(&mut self, answer: &[Candidate]) {
        let sorted = answer.is_sorted_by(|a, b| a.rank_cmp(b) != Ordering::Greater);
        for candidate in answer {
            let entered = self.push(*candidate);
            if sorted
                && !entered
                && self.heap.len() == self.k
                && !self.scores.contains_key(&candidate.item_id)
            {
                break;
            }
        }
    }

    /// The kept candidates, best first.
    pub fn sorted(&self) -> Vec<Candidate> {
        let mut out: Vec<Candidate> = self.heap.iter().map(|w| w.0).collect();
        out.sort_unstable_by(Candidate::rank_cmp);
        out
    }

    /// The kept candidates, best first, consuming the collector.
    pub fn into_sorted(self) -> Vec<Candidate> {
        self.heap
            .into_sorted_vec()
            .into_iter()
            .map(|w| w.0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(item_id: u64, score: f32) -> Candidate {
        Candidate { item_id, score }
    }

    /// Sort, dedupe by id keeping the best score, truncate: what the merge must equal.
    fn reference(all: &[Candidate], k: usize) -> Vec<Candidate> {
        let mut best: FxHashMap<u64, f32> = FxHashMap::default();
        for cand in all {
            let entry = best.entry(cand.item_id).or_insert(cand.score);
            if cand.score > *entry {
                *entry = cand.score;
            }
        }
        let mut out: Vec<Candidate> = best.into_iter().map(|(id, s)| c(id, s)).collect();
        out.sort_by(Candidate::rank_cmp);
        out.truncate(k);
        out
    }

    #[test]
    fn ties_break_by_smaller_id() {
        let mut top = TopK::new(2);
        top.merge(&[c(9, 1.0), c(3, 1.0)]);
        top.merge(&[c(5, 1.0)]);
        assert_eq!(top.into_sorted(), vec![c(3, 1.0), c(5, 1.0)]);
    }

    #[test]
    fn duplicate_keeps_the_higher_score() {
        let mut top = TopK::new(3);
        top.merge(&[c(1, 0.5), c(2, 0.4)]);
        top.merge(&[c(2, 0.9), c(1, 0.1)]);
        assert_eq!(top.into_sorted(), vec![c(2, 0.9), c(1, 0.5)]);
    }

    #[test]
    fn zero_k_keeps_nothing() {
        let mut top = TopK::new(0);
        top.merge(&[c(1, 1.0)]);
        assert!(top.is_empty());
    }

    fn shard_lists() -> impl Strategy<Value = Vec<Vec<Candidate>>> {
        // Few distinct scores and ids so that ties and duplicates are common.
        let cand = (0u64..60, 0i32..20).prop_map(|(id, s)| c(id, s as f32 / 4.0));
        proptest::collection::vec(proptest::collection::vec(cand, 0..40), 0..8)
    }

    proptest! {
        /// The merge equals sort-dedupe-truncate, whether answers come sorted or not.
        #[test]
        fn equals_reference(lists in shard_lists(), k in 0usize..50, sort in any::<bool>()) {
            let mut top = TopK::new(k);
            for list in &lists {
                let mut list = list.clone();
                if sort {
                    list.sort_by(Candidate::rank_cmp);
                }
                top.merge(&list);
            }
            let all: Vec<Candidate> = lists.concat();
            prop_assert_eq!(top.sorted(), reference(&all, k));
            prop_assert_eq!(top.into_sorted(), reference(&all, k));
        }

        /// The arrival order of shard answers does not change the result.
        #[test]
        fn order_independent(lists in shard_lists(), k in 1usize..50, rotate in 0usize..8) {
            let sorted: Vec<Vec<Candidate>> = lists.iter().map(|l| {
                let mut l = l.clone();
                l.sort_by(Candidate::rank_cmp);
                l
            }).collect();
            let mut forward = TopK::new(k);
            sorted.iter().for_each(|l| forward.merge(l));
            let mut rotated = sorted.clone();
            if !rotated.is_empty() {
                let n = rotated.len();
                rotated.rotate_left(rotate % n);
            }
            let mut other = TopK::new(k);
            rotated.iter().rev().for_each(|l| other.merge(l));
            prop_assert_eq!(forward.into_sorted(), other.into_sorted());
        }
    }
}
