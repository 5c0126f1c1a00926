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
//!
//! A pass that panics fails only its own requests (their callers see the reply
//! channel close): the thread catches the panic and takes the next batch, so a
//! poisoned input cannot leave a node that reports `SERVING` with no thread left
//! to score.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use recsys_model::{RankError, Ranker, Scores, UserContext};
use tokio::sync::oneshot;

/// What a request gets back.
pub type Outcome = Result<Scores, RankError>;

/// What the scoring threads run: the bundle's [`Ranker`]; the tests put in scorers
/// that block or panic on cue.
pub trait BatchScorer: Send + Sync + 'static {
    /// One outcome per request, in order, from one forward pass.
    fn score_batch(
        &self,
        requests: &[(&UserContext, &[u64])],
        allow_unknown_items: bool,
    ) -> Vec<Outcome>;
}

impl BatchScorer for Ranker {
    fn score_batch(
        &self,
        requests: &[(&UserContext, &[u64])],
        allow_unknown_items: bool,
    ) -> Vec<Outcome> {
        Ranker::score_batch(self, requests, allow_unknown_items)
    }
}

struct Job<S> {
    ranker: Arc<S>,
    user: UserContext,
    items: Vec<u64>,
    reply: oneshot::Sender<Outcome>,
}

struct Queue<S> {
    jobs: VecDeque<Job<S>>,
    closed: bool,
}

struct Shared<S> {
    queue: Mutex<Queue<S>>,
    ready: Condvar,
    max_queue: usize,
    max_batch_rows: usize,
    allow_unknown_items: bool,
}

impl<S> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, Queue<S>> {
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

/// The queue and its scoring threads; the threads stop when it is dropped, once
/// the requests already queued are answered.
pub struct Batcher<S: BatchScorer = Ranker> {
    shared: Arc<Shared<S>>,
}

impl<S: BatchScorer> std::fmt::Debug for Batcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("max_queue", &self.shared.max_queue)
            .field("max_batch_rows", &self.shared.max_batch_rows)
            .finish_non_exhaustive()
    }
}

impl<S: BatchScorer> Batcher<S> {
    /// Starts `config.threads` scoring threads.
    pub fn start(config: BatcherConfig) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
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
        ranker: Arc<S>,
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

impl<S: BatchScorer> Drop for Batcher<S> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// A scoring thread: waits for work, takes a batch, scores it, replies.
fn work<S: BatchScorer>(shared: &Shared<S>) {
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
fn take_batch<S>(jobs: &mut VecDeque<Job<S>>, max_rows: usize) -> Vec<Job<S>> {
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

fn score<S: BatchScorer>(batch: Vec<Job<S>>, allow_unknown_items: bool) {
    let Some(ranker) = batch.first().map(|job| job.ranker.clone()) else {
        return;
    };
    let started = Instant::now();
    let requests: Vec<(&UserContext, &[u64])> = batch
        .iter()
        .map(|job| (&job.user, job.items.as_slice()))
        .collect();
    // The ranker only reads its weights, so nothing it shares is left half-written
    // by a panic; an uncaught one would end this thread for good.
    let outcomes = match std::panic::catch_unwind(AssertUnwindSafe(|| {
        ranker.score_batch(&requests, allow_unknown_items)
    })) {
        Ok(outcomes) => outcomes,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(
                requests = batch.len(),
                %message,
                "scoring pass panicked, failing its requests"
            );
            // Dropping the batch closes the reply channels: the callers answer INTERNAL.
            return;
        }
    };
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

    fn job(ranker: &Arc<Ranker>, rows: usize) -> Job<Ranker> {
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
        let mut jobs: VecDeque<Job<Ranker>> = [
            job(&old, 300),
            job(&old, 500),
            job(&old, 300),
            job(&old, 10),
        ]
        .into_iter()
        .collect();
        let sizes =
            |batch: Vec<Job<Ranker>>| batch.iter().map(|j| j.items.len()).collect::<Vec<_>>();
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
                    assert_eq!(a.scores.len(), b.scores.len());
                    for (x, y) in a.scores.iter().zip(&b.scores) {
                        assert!((x - y).abs() < 1e-5);
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
                (a, b) => panic!("{a:?} vs {b:?}"),
            }
        }
    }

    /// Item id that makes [`Gate`] panic.
    const POISON: u64 = u64::MAX;

    /// A scorer under the test's control: each pass reports how many requests it
    /// took and waits for the test to let it finish; a request holding [`POISON`]
    /// makes the pass panic. Scores are the item ids.
    struct Gate {
        passes: std::sync::mpsc::SyncSender<usize>,
        go: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    /// The test's side of a [`Gate`].
    struct Control {
        passes: std::sync::mpsc::Receiver<usize>,
        go: std::sync::mpsc::SyncSender<()>,
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(30);

    impl Control {
        /// The size of the next pass to start (waits for it, at most [`WAIT`]).
        fn next_pass(&self) -> usize {
            self.passes
                .recv_timeout(WAIT)
                .expect("no scoring pass started")
        }

        /// Lets one pass finish.
        fn release(&self) {
            self.go.send(()).unwrap();
        }
    }

    fn gate() -> (Arc<Gate>, Control) {
        let (passes, passes_rx) = std::sync::mpsc::sync_channel(64);
        let (go, go_rx) = std::sync::mpsc::sync_channel(64);
        let gate = Gate {
            passes,
            go: Mutex::new(go_rx),
        };
        let control = Control {
            passes: passes_rx,
            go,
        };
        (Arc::new(gate), control)
    }

    impl BatchScorer for Gate {
        fn score_batch(&self, requests: &[(&UserContext, &[u64])], _: bool) -> Vec<Outcome> {
            let _ = self.passes.send(requests.len());
            let _ = self
                .go
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .recv_timeout(WAIT);
            if requests.iter().any(|(_, items)| items.contains(&POISON)) {
                panic!("poisoned request");
            }
            requests
                .iter()
                .map(|(_, items)| {
                    Ok(Scores {
                        scores: items.iter().map(|&id| id as f32).collect(),
                        user_out_of_vocabulary: false,
                    })
                })
                .collect()
        }
    }

    fn gated(threads: usize, max_queue: usize) -> (Batcher<Gate>, Arc<Gate>, Control) {
        let batcher = Batcher::start(BatcherConfig {
            threads,
            max_queue,
            max_batch_rows: 1024,
            allow_unknown_items: false,
        })
        .unwrap();
        let (gate, control) = gate();
        (batcher, gate, control)
    }

    async fn answer(receiver: oneshot::Receiver<Outcome>) -> Vec<f32> {
        tokio::time::timeout(WAIT, receiver)
            .await
            .expect("no answer in time")
            .expect("reply dropped")
            .expect("scored")
            .scores
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_waiting_requests_form_one_batch() {
        let (batcher, gate, control) = gated(1, 4);
        let user = UserContext::default();
        // The one scoring thread is held in a pass...
        let first = batcher.submit(gate.clone(), user.clone(), vec![7]).unwrap();
        assert_eq!(control.next_pass(), 1);
        // ...while requests arrive from several tasks at once, until the queue is full.
        let batcher = Arc::new(batcher);
        let submitted: Vec<_> = (0..4u64)
            .map(|i| {
                let (batcher, gate, user) = (batcher.clone(), gate.clone(), user.clone());
                tokio::spawn(async move { batcher.submit(gate, user, vec![i, i + 10]) })
            })
            .collect();
        let mut waiting = Vec::new();
        for task in submitted {
            waiting.push(task.await.unwrap().unwrap());
        }
        match batcher.submit(gate.clone(), user.clone(), vec![1]) {
            Err(QueueError::Full(4)) => {}
            other => panic!("expected a full queue, got {:?}", other.map(|_| ())),
        }
        control.release();
        assert_eq!(answer(first).await, [7.0]);
        // Everything that waited goes in the next pass, not four passes.
        assert_eq!(control.next_pass(), 4);
        control.release();
        let mut answers = Vec::new();
        for receiver in waiting {
            answers.push(answer(receiver).await);
        }
        answers.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let want: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32, (i + 10) as f32]).collect();
        assert_eq!(answers, want);
        // And the queue takes requests again.
        let again = batcher.submit(gate, user, vec![3]).unwrap();
        assert_eq!(control.next_pass(), 1);
        control.release();
        assert_eq!(answer(again).await, [3.0]);
    }

    #[tokio::test]
    async fn a_panicking_pass_fails_its_requests_and_the_thread_scores_on() {
        let (batcher, gate, control) = gated(1, 8);
        let user = UserContext::default();
        let poisoned = batcher
            .submit(gate.clone(), user.clone(), vec![POISON])
            .unwrap();
        assert_eq!(control.next_pass(), 1);
        control.release();
        let outcome = tokio::time::timeout(WAIT, poisoned)
            .await
            .expect("the poisoned request was never answered");
        assert!(outcome.is_err(), "a panicked pass answered: {outcome:?}");
        // The only scoring thread is still there.
        for round in 0..3u64 {
            let next = batcher
                .submit(gate.clone(), user.clone(), vec![round])
                .unwrap();
            assert_eq!(control.next_pass(), 1);
            control.release();
            assert_eq!(answer(next).await, [round as f32]);
        }
    }

    #[tokio::test]
    async fn dropping_the_batcher_answers_what_is_queued_then_stops_the_threads() {
        let (batcher, gate, control) = gated(2, 8);
        let user = UserContext::default();
        // One request in each thread's pass (one at a time, so neither takes both)...
        let mut in_pass = Vec::new();
        for i in 0..2u64 {
            in_pass.push(batcher.submit(gate.clone(), user.clone(), vec![i]).unwrap());
            assert_eq!(control.next_pass(), 1);
        }
        // ...and one waiting.
        let queued = batcher.submit(gate.clone(), user, vec![5]).unwrap();
        let threads_alive = Arc::downgrade(&batcher.shared);
        drop(batcher);
        for _ in 0..3 {
            control.release();
        }
        for (i, receiver) in in_pass.into_iter().enumerate() {
            assert_eq!(answer(receiver).await, [i as f32]);
        }
        assert_eq!(control.next_pass(), 1);
        assert_eq!(answer(queued).await, [5.0]);
        // Each thread holds the shared queue until it returns.
        let deadline = std::time::Instant::now() + WAIT;
        while threads_alive.upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "scoring threads still running after the batcher was dropped"
            );
            std::thread::yield_now();
            tokio::task::yield_now().await;
        }
    }
}
