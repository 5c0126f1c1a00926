//! Scoring threads fed by a bounded queue, batching concurrent requests.
//!
//! Each of `threads` OS threads takes the oldest waiting request and, with it,
//! every other request already waiting (up to `max_batch_rows` candidates in all),
//! and scores them in one forward pass ([`Ranker::score_batch`]). Nothing waits
//! for a batch to fill, so an idle node adds no latency; under load, concurrent
//! small requests share one pass's fixed cost (tensor set-up, one matmul per layer
//! instead of one per request). Measured in docs/benchmarks.md.
//!
//! The queue is bounded twice: by requests (`max_queue`) and by the candidates
//! they carry (`max_queue_candidates`), since one request may hold 10 000 and a
//! count alone would let the queue hold gigabytes. When either is reached, `Rank`
//! answers `RESOURCE_EXHAUSTED` at once rather than queueing without end, and the
//! gateway falls back to retrieval order. A request alone in the queue is always
//! taken, so no valid request is refused by an idle node.
//!
//! Work nobody waits for is dropped before it is scored: a thread taking a batch
//! skips requests whose caller has gone (the gRPC handler was dropped, so the
//! reply channel is closed: a cancelled call, or tonic's own timeout) and
//! requests whose deadline has passed (answered `DEADLINE_EXCEEDED`), and counts
//! them in `recsys_ranking_skipped_total`.
//!
//! A pass that panics fails only its own requests (their callers see the reply
//! channel close): the thread catches the panic and takes the next batch, so a
//! poisoned input cannot leave a node that reports `SERVING` with no thread left
//! to score. A thread that dies anyway (a panic outside the pass: dropping a
//! swapped-out ranker, say) is restarted after `restart_delay`, and [`Workers`]
//! says how many threads are alive meanwhile; the node reports `NOT_SERVING`
//! while one is missing (`server.rs`).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use recsys_model::{RankError, Ranker, Scores, UserContext};
use recsys_server::trace_context;
use tokio::sync::{oneshot, watch};

/// What a scorer gives back for one request.
pub type Outcome = Result<Scores, RankError>;

/// What a request gets back: its outcome, or [`Expired`] when its deadline passed
/// while it waited.
pub type Reply = Result<Outcome, Expired>;

/// A request's deadline passed before a thread took it; it was not scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the deadline passed while the request waited in the ranking queue")]
pub struct Expired;

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
    /// When the caller stops waiting (`None`: it sent no deadline).
    deadline: Option<Instant>,
    reply: oneshot::Sender<Reply>,
    /// The caller's span: the batch that scores the job is its child or linked
    /// to it (`trace_context`).
    span: tracing::Span,
}

struct Queue<S> {
    jobs: VecDeque<Job<S>>,
    /// Candidates of the jobs in `jobs`.
    candidates: usize,
    closed: bool,
}

/// How many scoring threads are alive; the node serves only when all are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workers {
    /// Threads the batcher runs.
    pub threads: usize,
    /// Threads alive now.
    pub alive: usize,
    /// Threads that died (a panic outside a pass) so far.
    pub died: u64,
    /// Threads started again after one died, so far.
    pub restarted: u64,
}

impl Workers {
    /// Every thread is alive.
    pub fn all_alive(&self) -> bool {
        self.alive >= self.threads
    }
}

struct Shared<S> {
    queue: Mutex<Queue<S>>,
    ready: Condvar,
    max_queue: usize,
    max_queue_candidates: usize,
    max_batch_rows: usize,
    allow_unknown_items: bool,
    restart_delay: Duration,
    workers: watch::Sender<Workers>,
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
    /// Too many requests, or candidates, are waiting.
    #[error(
        "ranking queue full: {requests} requests with {candidates} candidates waiting, the limits are {max_requests} requests (--max-queue) and {max_candidates} candidates (--max-queue-candidates)"
    )]
    Full {
        /// Requests waiting.
        requests: usize,
        /// Candidates waiting.
        candidates: usize,
        /// The request limit.
        max_requests: usize,
        /// The candidate limit.
        max_candidates: usize,
    },
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
    /// Most candidates waiting, over all requests (a request alone in the queue
    /// is taken whatever its size).
    pub max_queue_candidates: usize,
    /// Most candidates one pass takes from several requests (a larger request
    /// still runs, alone); 0 = one request per pass.
    pub max_batch_rows: usize,
    /// Score unknown items as out of vocabulary.
    pub allow_unknown_items: bool,
    /// How long a thread that died waits before it is started again (a thread
    /// that dies at once again would otherwise spin).
    pub restart_delay: Duration,
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
            .field("max_queue_candidates", &self.shared.max_queue_candidates)
            .field("max_batch_rows", &self.shared.max_batch_rows)
            .finish_non_exhaustive()
    }
}

impl<S: BatchScorer> Batcher<S> {
    /// Starts `config.threads` scoring threads.
    pub fn start(config: BatcherConfig) -> std::io::Result<Self> {
        let threads = config.threads.max(1);
        let (workers, _) = watch::channel(Workers {
            threads,
            alive: threads,
            died: 0,
            restarted: 0,
        });
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                candidates: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            max_queue: config.max_queue.max(1),
            max_queue_candidates: config.max_queue_candidates.max(1),
            max_batch_rows: config.max_batch_rows,
            allow_unknown_items: config.allow_unknown_items,
            restart_delay: config.restart_delay,
            workers,
        });
        for index in 0..threads {
            spawn_worker(shared.clone(), index, false)?;
        }
        Ok(Self { shared })
    }

    /// Queues `items` for `user` on `ranker`, to be scored before `deadline`; the
    /// answer comes on the receiver.
    pub fn submit(
        &self,
        ranker: Arc<S>,
        user: UserContext,
        items: Vec<u64>,
        deadline: Option<Instant>,
    ) -> Result<oneshot::Receiver<Reply>, QueueError> {
        let (reply, answer) = oneshot::channel();
        let mut queue = self.shared.lock();
        if queue.closed {
            return Err(QueueError::Closed);
        }
        let over_candidates = !queue.jobs.is_empty()
            && queue.candidates.saturating_add(items.len()) > self.shared.max_queue_candidates;
        if queue.jobs.len() >= self.shared.max_queue || over_candidates {
            return Err(QueueError::Full {
                requests: queue.jobs.len(),
                candidates: queue.candidates,
                max_requests: self.shared.max_queue,
                max_candidates: self.shared.max_queue_candidates,
            });
        }
        queue.candidates += items.len();
        queue.jobs.push_back(Job {
            ranker,
            user,
            items,
            deadline,
            reply,
            span: tracing::Span::current(),
        });
        crate::metrics::queued(queue.jobs.len(), queue.candidates);
        drop(queue);
        self.shared.ready.notify_one();
        Ok(answer)
    }

    /// The scoring threads' state, updated as threads die and restart.
    pub fn workers(&self) -> watch::Receiver<Workers> {
        self.shared.workers.subscribe()
    }
}

impl<S: BatchScorer> Drop for Batcher<S> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_all();
    }
}

/// Starts scoring thread `index`; a `restart` first waits the restart delay and
/// then counts itself alive again.
fn spawn_worker<S: BatchScorer>(
    shared: Arc<Shared<S>>,
    index: usize,
    restart: bool,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("rank-{index}"))
        .spawn(move || {
            if restart {
                std::thread::sleep(shared.restart_delay);
                shared.workers.send_modify(|w| {
                    w.alive += 1;
                    w.restarted += 1;
                });
                tracing::info!(thread = index, "scoring thread restarted");
            }
            let guard = WorkerGuard { shared, index };
            work(&guard.shared);
        })
        .map(drop)
}

/// Held by a scoring thread for its life: if the thread unwinds, counts it dead
/// and starts another in its place.
struct WorkerGuard<S: BatchScorer> {
    shared: Arc<Shared<S>>,
    index: usize,
}

impl<S: BatchScorer> Drop for WorkerGuard<S> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.shared.workers.send_modify(|w| {
            w.alive = w.alive.saturating_sub(1);
            w.died += 1;
        });
        crate::metrics::thread_died();
        tracing::error!(
            thread = self.index,
            delay_ms = self.shared.restart_delay.as_millis() as u64,
            "scoring thread died, restarting it"
        );
        if let Err(error) = spawn_worker(self.shared.clone(), self.index, true) {
            // The node stays NOT_SERVING: fewer threads than it reports.
            tracing::error!(thread = self.index, %error, "cannot restart a scoring thread");
        }
    }
}

/// A scoring thread: waits for work, takes a batch, scores it, replies.
fn work<S: BatchScorer>(shared: &Shared<S>) {
    loop {
        let (batch, skipped) = {
            let mut queue = shared.lock();
            while queue.jobs.is_empty() && !queue.closed {
                queue = shared.ready.wait(queue).unwrap_or_else(|e| e.into_inner());
            }
            if queue.jobs.is_empty() {
                return;
            }
            let taken = take_batch(&mut queue.jobs, shared.max_batch_rows, Instant::now());
            let removed: usize = taken
                .batch
                .iter()
                .chain(&taken.skipped)
                .map(|job| job.items.len())
                .sum();
            queue.candidates = queue.candidates.saturating_sub(removed);
            crate::metrics::queued(queue.jobs.len(), queue.candidates);
            (taken.batch, taken.skipped)
        };
        for job in skipped {
            // Whose caller is still there hears why; the others are just dropped.
            let expired = !job.reply.is_closed();
            crate::metrics::skipped(if expired { "expired" } else { "cancelled" });
            let _ = job.reply.send(Err(Expired));
        }
        score(batch, shared.allow_unknown_items);
    }
}

/// What a thread takes from the queue at once.
struct Taken<S> {
    /// To score in one pass.
    batch: Vec<Job<S>>,
    /// Not to score: the caller has gone or the deadline passed.
    skipped: Vec<Job<S>>,
}

impl<S> Job<S> {
    /// Nobody waits for the answer any more, or not in time.
    fn abandoned(&self, now: Instant) -> bool {
        self.reply.is_closed() || self.deadline.is_some_and(|deadline| deadline <= now)
    }
}

/// The oldest job still wanted, and the following ones that share its ranker
/// while the rows fit; abandoned jobs met on the way are skipped.
fn take_batch<S>(jobs: &mut VecDeque<Job<S>>, max_rows: usize, now: Instant) -> Taken<S> {
    let mut taken = Taken {
        batch: Vec::new(),
        skipped: Vec::new(),
    };
    let mut rows = 0;
    while let Some(next) = jobs.front() {
        if next.abandoned(now) {
            taken.skipped.extend(jobs.pop_front());
            continue;
        }
        if let Some(first) = taken.batch.first()
            && (rows + next.items.len() > max_rows || !Arc::ptr_eq(&next.ranker, &first.ranker))
        {
            break;
        }
        rows += next.items.len();
        taken.batch.extend(jobs.pop_front());
    }
    taken
}

fn score<S: BatchScorer>(batch: Vec<Job<S>>, allow_unknown_items: bool) {
    let Some(ranker) = batch.first().map(|job| job.ranker.clone()) else {
        return;
    };
    let rows: usize = batch.iter().map(|job| job.items.len()).sum();
    let span = batch_span(&batch, rows);
    let _entered = span.enter();
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
    crate::metrics::pass(batch.len(), rows, elapsed);
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        if let Ok(scores) = &outcome {
            crate::metrics::scored(job.items.len(), scores.user_out_of_vocabulary);
        }
        // The caller may have gone (deadline, cancellation): nothing to do then.
        let _ = job.reply.send(Ok(outcome));
    }
}

/// The span of one scoring pass: a child of its first request's span, linked
/// to the others it scores with it.
fn batch_span<S>(batch: &[Job<S>], rows: usize) -> tracing::Span {
    let parent = batch.first().map(|job| job.span.clone());
    let span = tracing::debug_span!(
        target: trace_context::TARGET,
        parent: parent.and_then(|span| span.id()),
        "ranking_batch",
        requests = batch.len(),
        rows,
    );
    for job in batch.iter().skip(1) {
        trace_context::link(&span, &job.span);
    }
    span
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

    /// A job and the receiver its caller waits on.
    fn job(ranker: &Arc<Ranker>, rows: usize) -> (Job<Ranker>, oneshot::Receiver<Reply>) {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            ranker: ranker.clone(),
            user: UserContext::default(),
            items: vec![1; rows],
            deadline: None,
            reply,
            span: tracing::Span::none(),
        };
        (job, receiver)
    }

    #[test]
    fn batches_take_waiting_jobs_while_rows_fit_and_the_ranker_is_the_same() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (old, new) = (ranker(a.path()), ranker(b.path()));
        let mut callers = Vec::new();
        let mut queue = |jobs: &mut VecDeque<Job<Ranker>>, ranker: &Arc<Ranker>, rows| {
            let (job, receiver) = job(ranker, rows);
            jobs.push_back(job);
            callers.push(receiver);
        };
        let mut jobs = VecDeque::new();
        for rows in [300, 500, 300, 10] {
            queue(&mut jobs, &old, rows);
        }
        let now = Instant::now();
        let sizes = |taken: Taken<Ranker>| {
            assert!(taken.skipped.is_empty());
            taken
                .batch
                .iter()
                .map(|j| j.items.len())
                .collect::<Vec<_>>()
        };
        // 300 + 500 fit in 1000; the next 300 does not, and order is kept.
        assert_eq!(sizes(take_batch(&mut jobs, 1000, now)), [300, 500]);
        queue(&mut jobs, &new, 10);
        // A job for another ranker (a swapped bundle) waits for its own pass.
        assert_eq!(sizes(take_batch(&mut jobs, 1000, now)), [300, 10]);
        assert_eq!(sizes(take_batch(&mut jobs, 1000, now)), [10]);
        // A request larger than the limit still runs, alone; 0 turns batching off.
        for rows in [5000, 1, 1] {
            queue(&mut jobs, &old, rows);
        }
        assert_eq!(sizes(take_batch(&mut jobs, 1000, now)), [5000]);
        assert_eq!(sizes(take_batch(&mut jobs, 0, now)), [1]);
        assert_eq!(jobs.len(), 1);
    }

    #[test]
    fn jobs_whose_caller_left_or_whose_deadline_passed_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = ranker(dir.path());
        let now = Instant::now();
        let (gone, _) = job(&ranker, 1);
        let (mut late, late_caller) = job(&ranker, 2);
        late.deadline = Some(now);
        let (mut wanted, wanted_caller) = job(&ranker, 3);
        wanted.deadline = Some(now + Duration::from_secs(60));
        let (mut late_again, late_again_caller) = job(&ranker, 4);
        late_again.deadline = Some(now - Duration::from_millis(1));
        let mut jobs: VecDeque<_> = [gone, late, wanted, late_again].into_iter().collect();
        let taken = take_batch(&mut jobs, 1000, now);
        let rows = |jobs: &[Job<Ranker>]| jobs.iter().map(|j| j.items.len()).collect::<Vec<_>>();
        assert_eq!(rows(&taken.batch), [3]);
        assert_eq!(rows(&taken.skipped), [1, 2, 4]);
        assert!(jobs.is_empty());
        drop((late_caller, wanted_caller, late_again_caller));
    }

    #[tokio::test]
    async fn concurrent_requests_score_as_alone() {
        let dir = tempfile::tempdir().unwrap();
        let ranker = ranker(dir.path());
        let batcher = Batcher::start(BatcherConfig {
            threads: 1,
            max_queue: 64,
            max_queue_candidates: 1000,
            max_batch_rows: 1024,
            allow_unknown_items: false,
            restart_delay: Duration::ZERO,
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
                let answer = batcher.submit(ranker.clone(), user.clone(), items.clone(), None);
                (items, answer.unwrap())
            })
            .collect();
        for (items, answer) in answers {
            let batched = answer.await.unwrap().unwrap();
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
                        head_scores: Vec::new(),
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
            max_queue_candidates: 100,
            max_batch_rows: 1024,
            allow_unknown_items: false,
            restart_delay: Duration::ZERO,
        })
        .unwrap();
        let (gate, control) = gate();
        (batcher, gate, control)
    }

    async fn answer(receiver: oneshot::Receiver<Reply>) -> Vec<f32> {
        tokio::time::timeout(WAIT, receiver)
            .await
            .expect("no answer in time")
            .expect("reply dropped")
            .expect("not expired")
            .expect("scored")
            .scores
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_waiting_requests_form_one_batch() {
        let (batcher, gate, control) = gated(1, 4);
        let user = UserContext::default();
        // The one scoring thread is held in a pass...
        let first = batcher
            .submit(gate.clone(), user.clone(), vec![7], None)
            .unwrap();
        assert_eq!(control.next_pass(), 1);
        // ...while requests arrive from several tasks at once, until the queue is full.
        let batcher = Arc::new(batcher);
        let submitted: Vec<_> = (0..4u64)
            .map(|i| {
                let (batcher, gate, user) = (batcher.clone(), gate.clone(), user.clone());
                tokio::spawn(async move { batcher.submit(gate, user, vec![i, i + 10], None) })
            })
            .collect();
        let mut waiting = Vec::new();
        for task in submitted {
            waiting.push(task.await.unwrap().unwrap());
        }
        match batcher.submit(gate.clone(), user.clone(), vec![1], None) {
            Err(QueueError::Full { requests: 4, .. }) => {}
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
        let again = batcher.submit(gate, user, vec![3], None).unwrap();
        assert_eq!(control.next_pass(), 1);
        control.release();
        assert_eq!(answer(again).await, [3.0]);
    }

    #[tokio::test]
    async fn a_panicking_pass_fails_its_requests_and_the_thread_scores_on() {
        let (batcher, gate, control) = gated(1, 8);
        let user = UserContext::default();
        let poisoned = batcher
            .submit(gate.clone(), user.clone(), vec![POISON], None)
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
                .submit(gate.clone(), user.clone(), vec![round], None)
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
            in_pass.push(
                batcher
                    .submit(gate.clone(), user.clone(), vec![i], None)
                    .unwrap(),
            );
            assert_eq!(control.next_pass(), 1);
        }
        // ...and one waiting.
        let queued = batcher.submit(gate.clone(), user, vec![5], None).unwrap();
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

    #[tokio::test]
    async fn the_queue_is_bounded_by_candidates_too() {
        let (batcher, gate, control) = gated(1, 8);
        let user = UserContext::default();
        let held = batcher
            .submit(gate.clone(), user.clone(), vec![1], None)
            .unwrap();
        assert_eq!(control.next_pass(), 1);
        // max_queue_candidates is 100: 60 fit, 60 + 50 do not, 60 + 40 do.
        let sixty = batcher
            .submit(gate.clone(), user.clone(), vec![2; 60], None)
            .unwrap();
        match batcher.submit(gate.clone(), user.clone(), vec![3; 50], None) {
            Err(error @ QueueError::Full { candidates: 60, .. }) => {
                let message = error.to_string();
                assert!(
                    message.contains("100 candidates (--max-queue-candidates)"),
                    "{message}"
                );
            }
            other => panic!("expected a full queue, got {:?}", other.map(|_| ())),
        }
        let forty = batcher
            .submit(gate.clone(), user.clone(), vec![4; 40], None)
            .unwrap();
        control.release();
        assert_eq!(answer(held).await, [1.0]);
        assert_eq!(control.next_pass(), 2);
        control.release();
        assert_eq!(answer(sixty).await.len(), 60);
        assert_eq!(answer(forty).await.len(), 40);
        // A request over the bound alone in an empty queue is still taken.
        let big = batcher.submit(gate, user, vec![5; 500], None).unwrap();
        assert_eq!(control.next_pass(), 1);
        control.release();
        assert_eq!(answer(big).await.len(), 500);
    }

    #[tokio::test]
    async fn waiting_requests_nobody_wants_are_not_scored() {
        let (batcher, gate, control) = gated(1, 8);
        let user = UserContext::default();
        let held = batcher
            .submit(gate.clone(), user.clone(), vec![1], None)
            .unwrap();
        assert_eq!(control.next_pass(), 1);
        // While the thread is busy: a caller that leaves, one whose deadline
        // passes, and one that waits.
        let cancelled = batcher
            .submit(gate.clone(), user.clone(), vec![2], None)
            .unwrap();
        drop(cancelled);
        let passed = Some(Instant::now());
        let expired = batcher
            .submit(gate.clone(), user.clone(), vec![3], passed)
            .unwrap();
        let later = Some(Instant::now() + WAIT);
        let wanted = batcher.submit(gate, user, vec![4], later).unwrap();
        control.release();
        assert_eq!(answer(held).await, [1.0]);
        // Only the one still wanted is scored.
        assert_eq!(control.next_pass(), 1);
        control.release();
        assert_eq!(answer(wanted).await, [4.0]);
        let expired = tokio::time::timeout(WAIT, expired).await.unwrap().unwrap();
        assert!(matches!(expired, Err(Expired)), "{expired:?}");
        let metrics = recsys_server::metrics::render();
        for reason in ["cancelled", "expired"] {
            let series = format!(r#"recsys_ranking_skipped_total{{reason="{reason}"}} "#);
            assert!(metrics.contains(&series), "no {series} in\n{metrics}");
        }
    }

    /// A scorer whose last reference panics when dropped, if armed: a panic in a
    /// scoring thread outside the pass's `catch_unwind`.
    struct Bomb {
        armed: bool,
    }

    impl Drop for Bomb {
        fn drop(&mut self) {
            if self.armed && !std::thread::panicking() {
                panic!("ranker drop failed");
            }
        }
    }

    impl BatchScorer for Bomb {
        fn score_batch(&self, requests: &[(&UserContext, &[u64])], _: bool) -> Vec<Outcome> {
            requests
                .iter()
                .map(|(_, items)| {
                    Ok(Scores {
                        scores: items.iter().map(|&id| id as f32).collect(),
                        head_scores: Vec::new(),
                        user_out_of_vocabulary: false,
                    })
                })
                .collect()
        }
    }

    #[tokio::test]
    async fn a_thread_that_dies_is_counted_and_restarted() {
        let batcher: Batcher<Bomb> = Batcher::start(BatcherConfig {
            threads: 1,
            max_queue: 8,
            max_queue_candidates: 100,
            max_batch_rows: 1024,
            allow_unknown_items: false,
            restart_delay: Duration::from_millis(10),
        })
        .unwrap();
        let mut workers = batcher.workers();
        assert!(workers.borrow().all_alive());
        let user = UserContext::default();
        // The thread holds the only reference to the ranker when the pass ends.
        let bomb = Arc::new(Bomb { armed: true });
        let first = batcher.submit(bomb, user.clone(), vec![1], None).unwrap();
        assert_eq!(answer(first).await, [1.0]);
        let state = tokio::time::timeout(WAIT, workers.wait_for(|w| w.restarted == 1))
            .await
            .expect("the scoring thread was not restarted")
            .unwrap()
            .to_owned();
        assert_eq!(state.died, 1);
        assert!(state.all_alive(), "{state:?}");
        // The new thread scores.
        let safe = Arc::new(Bomb { armed: false });
        let next = batcher.submit(safe, user, vec![2], None).unwrap();
        assert_eq!(answer(next).await, [2.0]);
    }
}
