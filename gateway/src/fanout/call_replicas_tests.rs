//! The retry and hedge policy of [`call_replicas`], pinned on a paused clock.
//!
//! Each attempt's answer is scripted (answer or fail after a delay, or hang), and
//! every attempt is logged with the replica it went to, when it started and whether
//! it was dropped before it finished, so each rule of the policy's doc comment is
//! checked exactly, without timing luck: with the clock paused, tokio advances time
//! only when every task waits, so "the hedge starts at 10 ms" is an equality.
//! The channels are real (lazy, never connected): the scripted call ignores them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use recsys_discovery::{ClusterView, NodeRecord};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use tonic_health::ServingStatus;

use super::call_replicas;
use crate::node_channels::tests::replica;
use crate::node_channels::{NodeChannels, NodeHandle};

const MS: Duration = Duration::from_millis(1);

/// What one attempt does.
#[derive(Debug, Clone, Copy)]
enum Script {
    /// Answers with its attempt number after the delay.
    Answer(Duration),
    /// Fails with the code after the delay.
    Fail(Code, Duration),
    /// Never answers.
    Hang,
}

/// What happened to one attempt.
#[derive(Debug, Clone)]
struct Attempt {
    addr: String,
    /// When it started, from the start of the call.
    started: Duration,
    /// The time left it was given.
    remaining: Duration,
    /// Dropped before its script ran out: cancelled.
    cancelled: bool,
}

type Log = Arc<Mutex<Vec<Attempt>>>;

fn lock(log: &Log) -> std::sync::MutexGuard<'_, Vec<Attempt>> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Marks its attempt cancelled when dropped before the script finished.
struct DropWatch {
    log: Log,
    index: usize,
    finished: bool,
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if !self.finished {
            lock(&self.log)[self.index].cancelled = true;
        }
    }
}

/// Replicas with scripted answers.
struct Harness {
    pool: NodeChannels,
    replicas: Vec<NodeRecord>,
}

/// The outcome of one [`call_replicas`] through the harness.
#[derive(Debug)]
struct Run {
    outcome: Result<usize, String>,
    elapsed: Duration,
    attempts: Vec<Attempt>,
}

impl Run {
    fn addrs(&self) -> Vec<&str> {
        self.attempts.iter().map(|a| a.addr.as_str()).collect()
    }
}

impl Harness {
    /// `n` replicas on addresses nothing listens on (the calls never use them).
    fn new(n: u16) -> Self {
        Self::on(
            (1..=n)
                .map(|port| format!("127.0.0.1:{port}"))
                .collect::<Vec<_>>(),
        )
    }

    fn on(addrs: Vec<String>) -> Self {
        Self {
            pool: NodeChannels::new(Duration::from_secs(1)),
            replicas: addrs.iter().map(|a| replica(a)).collect(),
        }
    }

    fn node(&self, addr: &str) -> Arc<NodeHandle> {
        self.pool.node(&replica(addr)).unwrap()
    }

    /// Calls the replicas once; attempt `i` to replica `addr` follows `script(i, addr)`.
    async fn call(
        &self,
        deadline_after: Duration,
        hedge_after: Option<Duration>,
        script: impl Fn(usize, &str) -> Script,
    ) -> Run {
        let log: Log = Arc::default();
        let start = Instant::now();
        let outcome = call_replicas(
            &self.pool,
            &self.replicas,
            start + deadline_after,
            hedge_after,
            |node: &NodeHandle, remaining| {
                let index = {
                    let mut attempts = lock(&log);
                    attempts.push(Attempt {
                        addr: node.addr.clone(),
                        started: start.elapsed(),
                        remaining,
                        cancelled: false,
                    });
                    attempts.len() - 1
                };
                let script = script(index, &node.addr);
                let watch = DropWatch {
                    log: log.clone(),
                    index,
                    finished: false,
                };
                async move {
                    // Moved in whole (not only the field written below), so it
                    // drops with the attempt.
                    let mut watch = watch;
                    let outcome = match script {
                        Script::Answer(after) => {
                            tokio::time::sleep(after).await;
                            Ok(tonic::Response::new(index))
                        }
                        Script::Fail(code, after) => {
                            tokio::time::sleep(after).await;
                            Err(Status::new(code, "scripted"))
                        }
                        Script::Hang => std::future::pending().await,
                    };
                    watch.finished = true;
                    outcome
                }
            },
            |_| Ok(()),
        )
        .await;
        let attempts = lock(&log).clone();
        Run {
            // The reasons clients see in coverage.
            outcome: outcome.map_err(|failure| failure.to_string()),
            elapsed: start.elapsed(),
            attempts,
        }
    }

    fn in_flight(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .map(|r| self.node(&r.addr).in_flight())
            .collect()
    }

    fn healthy(&self) -> Vec<bool> {
        self.replicas
            .iter()
            .map(|r| self.node(&r.addr).is_healthy())
            .collect()
    }
}

/// The first attempt follows `first`, every later one `then`.
fn first_then(first: Script, then: Script) -> impl Fn(usize, &str) -> Script {
    move |i, _| if i == 0 { first } else { then }
}

const DEADLINE: Duration = Duration::from_secs(1);

#[tokio::test(start_paused = true)]
async fn transport_failures_are_retried_once_on_another_replica() {
    for code in [Code::Unavailable, Code::Cancelled, Code::Unknown] {
        let harness = Harness::new(2);
        let run = harness
            .call(
                DEADLINE,
                None,
                first_then(Script::Fail(code, 3 * MS), Script::Answer(2 * MS)),
            )
            .await;
        assert_eq!(run.outcome, Ok(1), "{code:?}: {run:?}");
        let addrs = run.addrs();
        assert_eq!(addrs.len(), 2, "{code:?}: {run:?}");
        assert_ne!(addrs[0], addrs[1], "{code:?}: retried on the same replica");
        // The retry goes out the moment the failure arrives, with the time left.
        assert_eq!(run.attempts[1].started, 3 * MS, "{code:?}");
        assert_eq!(run.attempts[1].remaining, DEADLINE - 3 * MS, "{code:?}");
        assert_eq!(run.elapsed, 5 * MS, "{code:?}");
        // The failed node is out of routing; the one that answered is not.
        let failed = harness.node(addrs[0]);
        assert!(!failed.is_healthy(), "{code:?}: failed node still routed");
        assert!(harness.node(addrs[1]).is_healthy(), "{code:?}");
        assert_eq!(harness.in_flight(), [0, 0], "{code:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn there_is_only_one_retry() {
    let harness = Harness::new(3);
    let run = harness
        .call(DEADLINE, None, |_, _| Script::Fail(Code::Unavailable, MS))
        .await;
    assert_eq!(
        run.outcome,
        Err("unavailable: scripted".to_string()),
        "{run:?}"
    );
    assert_eq!(run.attempts.len(), 2, "a third replica was tried: {run:?}");
    assert_eq!(run.elapsed, 2 * MS);
}

#[tokio::test(start_paused = true)]
async fn deadline_exceeded_and_invalid_argument_are_not_retried() {
    for (code, reason) in [
        (Code::DeadlineExceeded, "deadline exceeded: scripted"),
        (Code::InvalidArgument, "invalid argument: scripted"),
    ] {
        let harness = Harness::new(2);
        let run = harness
            .call(
                DEADLINE,
                None,
                first_then(Script::Fail(code, 3 * MS), Script::Answer(MS)),
            )
            .await;
        assert_eq!(run.outcome, Err(reason.to_string()), "{code:?}: {run:?}");
        assert_eq!(run.attempts.len(), 1, "{code:?}: retried: {run:?}");
        assert_eq!(run.elapsed, 3 * MS, "{code:?}");
        // A node that answers, even with an error, is alive: it stays in routing.
        assert_eq!(harness.healthy(), [true, true], "{code:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn other_errors_are_retried_but_keep_the_node_in_routing() {
    for code in [Code::Internal, Code::ResourceExhausted] {
        let harness = Harness::new(2);
        let run = harness
            .call(
                DEADLINE,
                None,
                first_then(Script::Fail(code, MS), Script::Answer(MS)),
            )
            .await;
        assert_eq!(run.outcome, Ok(1), "{code:?}: {run:?}");
        assert_eq!(run.attempts.len(), 2, "{code:?}");
        assert_eq!(harness.healthy(), [true, true], "{code:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_hung_replica_times_out_at_the_deadline_without_a_retry() {
    let harness = Harness::new(2);
    let run = harness
        .call(DEADLINE, None, first_then(Script::Hang, Script::Answer(MS)))
        .await;
    assert_eq!(run.outcome, Err("deadline exceeded".to_string()));
    assert_eq!(run.elapsed, DEADLINE);
    assert_eq!(run.attempts.len(), 1, "retried after a timeout: {run:?}");
    assert!(run.attempts[0].cancelled, "the hung call was not dropped");
    assert_eq!(harness.in_flight(), [0, 0]);
    // A slow node is not a dead one: health checks decide.
    assert_eq!(harness.healthy(), [true, true]);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_goes_to_the_other_replica_and_the_loser_is_cancelled() {
    let harness = Harness::new(2);
    let hedge_after = 10 * MS;
    let run = harness
        .call(
            DEADLINE,
            Some(hedge_after),
            first_then(Script::Hang, Script::Answer(5 * MS)),
        )
        .await;
    assert_eq!(run.outcome, Ok(1), "{run:?}");
    let addrs = run.addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    assert_eq!(run.attempts[1].started, hedge_after);
    assert_eq!(run.attempts[1].remaining, DEADLINE - hedge_after);
    assert_eq!(run.elapsed, 15 * MS);
    assert!(run.attempts[0].cancelled, "the losing call still runs");
    assert!(!run.attempts[1].cancelled);
    assert_eq!(harness.in_flight(), [0, 0]);
    // Being slower than a hedge is not a failure.
    assert_eq!(harness.healthy(), [true, true]);
}

#[tokio::test(start_paused = true)]
async fn when_the_first_wins_after_all_the_hedge_is_cancelled() {
    let harness = Harness::new(2);
    let run = harness
        .call(
            DEADLINE,
            Some(10 * MS),
            first_then(Script::Answer(15 * MS), Script::Answer(100 * MS)),
        )
        .await;
    assert_eq!(run.outcome, Ok(0), "{run:?}");
    assert_eq!(run.attempts.len(), 2);
    assert_eq!(run.elapsed, 15 * MS);
    assert!(run.attempts[1].cancelled, "the losing hedge still runs");
    assert_eq!(harness.in_flight(), [0, 0]);
}

#[tokio::test(start_paused = true)]
async fn no_hedge_before_its_time_past_the_deadline_or_when_off() {
    // Answered a moment before the hedge was due.
    let harness = Harness::new(2);
    let run = harness
        .call(DEADLINE, Some(10 * MS), |_, _| Script::Answer(10 * MS - MS))
        .await;
    assert_eq!(run.outcome, Ok(0));
    assert_eq!(run.attempts.len(), 1, "{run:?}");
    // A hedge due at the deadline would have no time left: none is sent.
    let run = harness
        .call(50 * MS, Some(50 * MS), |_, _| Script::Hang)
        .await;
    assert_eq!(run.outcome, Err("deadline exceeded".to_string()));
    assert_eq!(run.attempts.len(), 1, "{run:?}");
    // Hedging off.
    let run = harness.call(50 * MS, None, |_, _| Script::Hang).await;
    assert_eq!(run.outcome, Err("deadline exceeded".to_string()));
    assert_eq!(run.attempts.len(), 1, "{run:?}");
    // One replica: nothing to hedge to.
    let alone = Harness::new(1);
    let run = alone
        .call(50 * MS, Some(10 * MS), |_, _| Script::Hang)
        .await;
    assert_eq!(run.outcome, Err("deadline exceeded".to_string()));
    assert_eq!(run.attempts.len(), 1, "{run:?}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_is_not_retried_again() {
    // The hedge fails while the first still hangs: the hedge was the one extra
    // attempt, so the call waits for the first until the deadline.
    let harness = Harness::new(3);
    let run = harness
        .call(
            DEADLINE,
            Some(10 * MS),
            first_then(Script::Hang, Script::Fail(Code::Unavailable, 5 * MS)),
        )
        .await;
    assert_eq!(run.outcome, Err("deadline exceeded".to_string()));
    assert_eq!(run.attempts.len(), 2, "{run:?}");
    assert_eq!(run.elapsed, DEADLINE);
    assert!(run.attempts[0].cancelled);
    assert_eq!(harness.in_flight(), [0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn no_replica_is_an_error_without_a_call() {
    let harness = Harness::new(0);
    let run = harness
        .call(DEADLINE, None, |_, _| Script::Answer(MS))
        .await;
    assert_eq!(run.outcome, Err("no replica available".to_string()));
    assert!(run.attempts.is_empty());
}

/// A `grpc.health.v1` server (the one every node runs) on a free loopback port,
/// reporting what the test sets.
async fn health_server(
    token: &CancellationToken,
) -> (String, tonic_health::server::HealthReporter) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (health, router) = recsys_server::grpc::standard_router().unwrap();
    tokio::spawn(router.serve_with_incoming_shutdown(
        recsys_server::grpc::incoming(listener),
        token.clone().cancelled_owned(),
    ));
    (addr, health)
}

async fn set(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    recsys_server::grpc::set_health(health, "recsys.v1.RetrievalService", status).await;
}

/// The two replicas in the order the pool tries them.
fn order(harness: &Harness) -> Vec<String> {
    harness
        .pool
        .replica_order(&harness.replicas)
        .into_iter()
        .map(|node| node.unwrap().addr.clone())
        .collect()
}

/// Real time and real health servers: the health check is what brings a node back.
#[tokio::test]
async fn a_failed_node_is_left_out_until_a_health_check_passes() {
    let token = CancellationToken::new();
    let (a, a_health) = health_server(&token).await;
    let (b, b_health) = health_server(&token).await;
    set(&a_health, ServingStatus::Serving).await;
    set(&b_health, ServingStatus::Serving).await;
    let harness = Harness::on(vec![a.clone(), b.clone()]);
    let view = ClusterView {
        shard_count: 1,
        shards: vec![harness.replicas.clone()],
        ranking: Vec::new(),
        invalid: 0,
    };
    // B looks busy, so of two healthy replicas A always goes first (the less
    // busy of two): the order below is decided by health alone.
    let _busy = harness.node(&b).start_call();
    assert_eq!(order(&harness), [a.clone(), b.clone()]);

    let script = |_: usize, addr: &str| {
        if addr == a {
            Script::Fail(Code::Unavailable, Duration::ZERO)
        } else {
            Script::Answer(Duration::ZERO)
        }
    };
    let run = harness.call(DEADLINE, None, script).await;
    assert_eq!(run.addrs(), [a.as_str(), b.as_str()]);
    assert_eq!(run.outcome, Ok(1));
    // Out of routing: B first even though it is busier, for every call.
    for _ in 0..10 {
        let run = harness.call(DEADLINE, None, script).await;
        assert_eq!(run.addrs(), [b.as_str()], "{run:?}");
    }
    // A health check that does not pass keeps A out.
    set(&a_health, ServingStatus::NotServing).await;
    crate::health_check::check_all(&harness.pool, &view, Duration::from_secs(5)).await;
    assert_eq!(order(&harness), [b.clone(), a.clone()]);
    // One that passes brings it back.
    set(&a_health, ServingStatus::Serving).await;
    crate::health_check::check_all(&harness.pool, &view, Duration::from_secs(5)).await;
    assert_eq!(order(&harness), [a.clone(), b.clone()]);
    let run = harness
        .call(DEADLINE, None, |_, _| Script::Answer(Duration::ZERO))
        .await;
    assert_eq!(run.addrs(), [a.as_str()]);
    token.cancel();
}
