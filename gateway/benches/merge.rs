//! Streaming merge of shard answers: 8 shards × k = 1000 into a top-1000.
//! Target (issue 2): under 50 µs per merge. And a session's cost per request
//! (issue 19): verify and read a token of k items, merge the answer into it,
//! sign the next one.

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

fn session(c: &mut Criterion) {
    use recsys_gateway::session::{SessionKeyring, SessionPlan};
    use recsys_proto::v1::{
        RecommendRequest, SessionMode, SessionRequest, recommend_request::Query,
    };
    let ring = SessionKeyring::random(std::time::Duration::from_secs(600));
    let request = |token: Vec<u8>| RecommendRequest {
        query: Some(Query::UserId("user-1".into())),
        k: 100,
        session: Some(SessionRequest {
            token,
            mode: SessionMode::Merge.into(),
        }),
        ..Default::default()
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut answer = |seed: u64| -> Vec<(u64, f32)> {
        let mut list: Vec<(u64, f32)> = (0..100)
            .map(|i| {
                (
                    seed * 1000 + i * 7 + rng.random_range(0..7),
                    rng.random::<f32>(),
                )
            })
            .collect();
        list.sort_by(|a, b| b.1.total_cmp(&a.1));
        list
    };
    let first = SessionPlan::open(&request(Vec::new()), &ring, "v1")
        .unwrap()
        .unwrap();
    let (_, token, _) = first.finish(&answer(1), true, 100, |_| false);
    println!("session token of 100 items: {} bytes", token.len());
    let next = answer(2);
    c.bench_function("session: open a 100-item token, merge 100, sign", |b| {
        b.iter(|| {
            let plan = SessionPlan::open(&request(token.clone()), &ring, "v1")
                .unwrap()
                .unwrap();
            plan.finish(&next, true, 100, |_| false)
        })
    });
}

criterion_group!(benches, merge, session);
criterion_main!(benches);
