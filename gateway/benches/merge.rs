//! Streaming merge of shard answers: 8 shards × k = 1000 into a top-1000.
//! Target (issue 2): under 50 µs per merge.

#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng, rngs::StdRng};
use recsys_gateway::merge::{Candidate, TopK};

/// `shards` sorted answers of `k` hits each, ids disjoint as with hash sharding.
fn answers(shards: usize, k: usize, seed: u64) -> Vec<Vec<Candidate>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..shards)
        .map(|shard| {
            let mut list: Vec<Candidate> = (0..k)
                .map(|i| Candidate {
                    item_id: (i * shards + shard) as u64,
                    score: rng.random::<f32>(),
                })
                .collect();
            list.sort_by(Candidate::rank_cmp);
            list
        })
        .collect()
}

fn merge(c: &mut Criterion) {
    let mut group = c.benchmark_group("merge");
    for (shards, k) in [(8usize, 1000usize), (8, 100), (32, 1000)] {
        let lists = answers(shards, k, 42);
        group.bench_with_input(
            BenchmarkId::new(format!("{shards}x"), k),
            &lists,
            |b, lists| {
                b.iter(|| {
                    let mut top = TopK::new(k);
                    for (shard, list) in lists.iter().enumerate() {
                        top.merge(shard as u32, list);
                    }
                    top.into_sorted()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, merge);
criterion_main!(benches);
