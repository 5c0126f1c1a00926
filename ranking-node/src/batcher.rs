//! Scoring threads fed by a bounded queue, batching concurrent requests.
//!
//! Each of `threads` OS threads takes the oldest waiting request and, with it,
//! every other request already waiting (up to `max_batch_rows` candidates in all),
//! and scores them in one forward pass ([`Ranker::score_batch`]). Nothing waits
//! for a batch to fill, so an idle node adds no latency; under load, concurrent
//! small requests share one pass's fixed cost (tensor set-up, one matmul per layer
//! instead of one per request). Measured in docs/benchmarks.md.
//!
//! The queue is bounded: when it is full, `Rank` answers `RESOURCE_EXHAUSTED`
//! at once rather than queueing without end, and the gateway falls back to
//! retrieval order.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use recsys_model::{RankError, Ranker, Scores, UserContext};
use tokio::sync::oneshot;

/// What a request gets back.
pub type Outcome = Result<Scores, RankError>;

struct Job {
    ranker: Arc<Ranker>,
    user: UserContext,
    items: Vec<u64>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    max_queue: usize,
    max_batch_rows: usize,
    allow_unknown_items: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent queue (push and pop
        // only), so a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Too many requests are waiting.
    #[error("ranking queue full: {0} requests waiting")]
    Full(usize),
    /// The node is shutting down.
    #[error("ranking node shutting down")]
    Closed,
}

/// How the batcher runs.
#[derive(Debug, Clone, Copy)]
pub struct BatcherConfig {
    /// Scoring threads.
    pub threads: usize,
    /// Most requests waiting.
    pub max_queue: usize,
    /// Most candidates one pass takes from several requests (a larger request
    /// still runs, alone); 0 = one request per pass.
    pub max_batch_rows: usize,
    /// Score unknown items as out of vocabulary.
    pub allow_unknown_items: bool,
}

/// The queue and its scoring threads; the threads stop when it is dropped.
pub struct Batcher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_queue", &self.shared.max_queue)
            .field("max_batch_rows", &self.shared.max_batch_rows)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts `config.threads` scoring threads.
    pub fn start(config: BatcherConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            max_queue: config.max_queue.max(1),
            max_batch_rows: config.max_batch_rows,
            allow_unknown_items: config.allow_unknown_items,
        });
        for i in 0..config.threads.max(1) {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("rank-{i}"))
                .spawn(move || work(&shared))?;
        }
        Ok(Self { shared })
    }

    /// Queues `items` for `user` on `ranker`; the answer comes on the receiver.
    pub fn submit(
        &self,
        ranker: Arc<Ranker>,
        user: UserContext,
        items: Vec<u64>,
    ) -> Result<oneshot::Receiver<Outcome>, QueueError> {
        let (reply, answer) = oneshot::channel();
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(QueueError::Closed);
        }
        if queue.jobs.len() >= self.shared.max_queue {
            return Err(QueueError::Full(queue.jobs.len()));
        }
        queue.jobs.push_back(Job {
            ranker,
            user,
            items,
            reply,
        });
        drop(queue);
        self.shared.ready.notify_one();
        Ok(answer)
    }
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// A scoring thread: waits for work, takes a batch, scores it, replies.
fn work(shared: &Shared) {
    loop {
        let batch = {
            let mut queue = shared.lock();
            while queue.jobs.is_empty() && !queue.closed {
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.jobs.is_empty() {
                return;
            }
            take_batch(&mut queue.jobs, shared.max_batch_rows)
        };
        score(batch, shared.allow_unknown_items);
    }
}

/// The oldest job, and the following ones that share its ranker while the rows fit.
fn take_batch(jobs: &mut VecDeque<Job>, max_rows: usize) -> Vec<Job> {
    let Some(first) = jobs.pop_front() else {
        return Vec::new();
    };
    let mut rows = first.items.len();
    let mut batch = vec![first];
    while let Some(next) = jobs.front() {
        if rows + next.items.len() > max_rows || !Arc::ptr_eq(&next.ranker, &batch[0].ranker) {
            break;
        }
        rows += next.items.len();
        batch.extend(jobs.pop_front());
    }
    batch
}

fn score(batch: Vec<Job>, allow_unknown_items: bool) {
    let Some(ranker) = batch.first().map(|job| job.ranker.clone()) else {
        return;
    };
    let started = Instant::now();
    let requests: Vec<(&UserContext, &[u64])> = batch
        .iter()
        .map(|job| (&job.user, job.items.as_slice()))
        .collect();
    let outcomes = ranker.score_batch(&requests, allow_unknown_items);
    let elapsed = started.elapsed();
    let rows: usize = batch.iter().map(|job| job.items.len()).sum();
    crate::metrics::pass(batch.len(), rows, elapsed);
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        if let Ok(scores) = &outcome {
            crate::metrics::scored(job.items.len(), scores.user_out_of_vocabulary);
        }
        // The caller may have gone (deadline, cancellation): nothing to do then.
        let _ = job.reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recsys_model::planted::{self, PlantedInputs};

    fn ranker(dir: &std::path::Path) -> Arc<Ranker> {
        let inputs = PlantedInputs {
            dim: 1,
            user_ids: &["u".into()],
            user_vectors: &[1.0],
            item_ids: &[1, 2, 3],
            item_vectors: &[1.0, 2.0, 3.0],
            item_quality: &[0, 0, 0],
            quality_weight: 0.0,
        };
        planted::write(dir, &inputs, "t").unwrap();
        Arc::new(Ranker::load(&recsys_bundle::RankerSpec::attached(false).files(dir)).unwrap())
    }

    fn job(ranker: &Arc<Ranker>, rows: usize) -> Job {
        Job {
            ranker: ranker.clone(),
            user: UserContext::default(),
            items: vec![1; rows],
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn batches_take_waiting_jobs_while_rows_fit_and_the_ranker_is_the_same() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (ranker(a.path()), ranker(b.path()));
        let mut jobs: VecDeque<Job> = [
            job(&old, 300),
            job(&old, 500),
            job(&old, 300),
            job(&old, 10),
        ]
        .into_iter()
        .collect();
        let sizes = |batch: Vec<Job>| batch.iter().map(|j| j.items.len()).collect::<Vec<_>>();
        // 300 + 500 fit in 1000; the next 300 does not, and order is kept.
        assert_eq!(sizes(take_batch(&mut jobs, 1000)), [300, 500]);
        jobs.push_back(job(&new, 10));
        // A job for another ranker (a swapped bundle) waits for its own pass.
        assert_eq!(sizes(take_batch(&mut jobs, 1000)), [300, 10]);
        assert_eq!(sizes(take_batch(&mut jobs, 1000)), [10]);
        // A request larger than the limit still runs, alone; 0 turns batching off.
        jobs.extend([job(&old, 5000), job(&old, 1), job(&old, 1)]);
        assert_eq!(sizes(take_batch(&mut jobs, 1000)), [5000]);
        assert_eq!(sizes(take_batch(&mut jobs, 0)), [1]);
        assert_eq!(jobs.len(), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_score_as_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = ranker(dir.path());
        let batcher = Batcher::start(BatcherConfig {
            threads: 1,
            max_queue: 64,
            max_batch_rows: 1024,
            allow_unknown_items: false,
        })
        .unwrap();
        let user = UserContext {
            user_id: "u".into(),
            ..Default::default()
        };
        let answers: Vec<_> = (0..32)
            .map(|i| {
                let items = vec![1 + i % 3, 3, 9 * (i % 2)];
                let items: Vec<u64> = items.into_iter().filter(|&id| id != 0).collect();
                let answer = batcher.submit(ranker.clone(), user.clone(), items.clone());
                (items, answer.unwrap())
            })
            .collect();
        for (items, answer) in answers {
            let batched = answer.await.unwrap();
            let alone = ranker.score(&user, &items, false);
            match (alone, batched) {
                (Ok(a), Ok(b)) => {
                    for (x, y) in a.scores.iter().zip(&b.scores) {
                        assert!((x - y).abs() < 1e-5);
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{a:?} vs {b:?}"),
            }
        }
    }
}
