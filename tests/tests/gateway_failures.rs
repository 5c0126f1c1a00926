//! The gateway's failure matrix, through its public gRPC API: real retrieval nodes
//! next to misbehaving ones (`recsys_tests::misbehaving`: generated server traits
//! on real servers), and for each case the status the caller gets, whether the
//! answer is `ranked`, the coverage reasons, and that it came within the time
//! budget.
//!
//! Requests carry no client deadline, so the gateway's default (1 s) is the
//! budget, and each answer must come within [`BOUND`]: a structural bound, far
//! above the budget (a loaded 2-core machine stays well inside it) and far below
//! what a misbehaving node would cost if the gateway waited for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_gateway::{GatewayConfig, RequestPolicy};
use recsys_proto::v1::{RecommendOptions, RecommendRequest, RecommendResponse};
use recsys_tests::misbehaving::*;
use recsys_tests::static_gateway::{gateway_config, serve_static_gateway};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// The gateway's request budget when the client sends no deadline.
const BUDGET: Duration = Duration::from_secs(1);

/// Every answer comes within this: see the module doc.
const BOUND: Duration = Duration::from_secs(20);

/// How long a slow ranker takes: longer than any test.
const FOREVER: Duration = Duration::from_secs(600);

const SHARDS: u32 = 2;
const CANDIDATES: u32 = 100;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gateway-failures");
        shared_bundle(&root, 2_000, SHARDS, 52)
    })
}

/// A gateway over `shards` (replicas per shard) and `ranking`, serving once its
/// bundle is loaded. Health checks run at start and then only every minute, so a
/// node a failed call left out of routing stays out for the test.
async fn gateway(
    shards: &[Vec<SocketAddr>],
    ranking: &[SocketAddr],
    token: &CancellationToken,
) -> SocketAddr {
    let config = GatewayConfig {
        policy: RequestPolicy {
            default_timeout: BUDGET,
            ..RequestPolicy::default()
        },
        ..gateway_config(bundle().path())
    };
    serve_static_gateway(config, shards, ranking, token).await
}

/// A real retrieval node for each shard.
async fn serving_shards(token: &CancellationToken) -> Vec<Vec<SocketAddr>> {
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        shards.push(vec![retrieval_node(bundle().path(), shard, token).await]);
    }
    shards
}

/// A two-stage request over exact retrieval, so its fallback order is exactly
/// [`retrieval_order`]'s.
fn two_stage() -> RecommendRequest {
    let mut request = ranked("user-1", 10, CANDIDATES);
    request.options = Some(RecommendOptions {
        exact: true,
        ..Default::default()
    });
    request
}

/// Sends `request` with no client deadline; fails when no answer comes within [`BOUND`].
async fn ask(
    gateway: SocketAddr,
    request: RecommendRequest,
) -> (Result<RecommendResponse, tonic::Status>, Duration) {
    let mut client = gateway_client(gateway).await;
    let started = Instant::now();
    let outcome = tokio::time::timeout(BOUND, client.recommend(request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {BOUND:?}"))
        .map(tonic::Response::into_inner);
    (outcome, started.elapsed())
}

/// The top 10 in retrieval order (ranking skipped).
async fn retrieval_order(gateway: SocketAddr) -> Vec<u64> {
    let (answer, _) = ask(gateway, by_user("user-1", 10, true)).await;
    ids(&answer.unwrap())
}

/// A reason's stage, checking that the enum and the string kept for older
/// clients say the same.
#[allow(deprecated)]
fn stage(reason: &recsys_proto::v1::DegradedReason) -> String {
    let name = match reason.stage_kind() {
        recsys_proto::v1::Stage::Retrieval => "retrieval",
        recsys_proto::v1::Stage::Ranking => "ranking",
        recsys_proto::v1::Stage::Unspecified => "unspecified",
    };
    assert_eq!(reason.stage, name, "the two stage fields disagree");
    name.to_string()
}

/// Coverage reasons as (stage, shard, reason).
fn reasons(response: &RecommendResponse) -> Vec<(String, Option<u32>, String)> {
    response
        .coverage
        .as_ref()
        .unwrap()
        .reasons
        .iter()
        .map(|r| (stage(r), r.shard, r.reason.clone()))
        .collect()
}

fn ranking_reason(reason: &str) -> Vec<(String, Option<u32>, String)> {
    vec![("ranking".into(), None, reason.into())]
}

/// Checks an answer that fell back to retrieval order after the ranking stage
/// failed with `reason`, every shard having answered.
async fn assert_fell_back(gateway: SocketAddr, response: &RecommendResponse, reason: &str) {
    assert!(!response.ranked);
    assert_eq!(reasons(response), ranking_reason(reason));
    let coverage = response.coverage.as_ref().unwrap();
    assert!(coverage.degraded);
    assert_eq!(coverage.shards_answered, SHARDS);
    assert!(response.model_version.is_empty());
    assert!(response.items.iter().all(|i| i.ranking_score.is_none()));
    assert_eq!(ids(response), retrieval_order(gateway).await);
}

/// Checks an answer ranked by a [`RankerBehaviour::Good`] ranker: its scores are
/// the candidates' positions, so the best is the last candidate.
fn assert_ranked_by_fake(response: &RecommendResponse) {
    assert!(response.ranked, "{:?}", response.coverage);
    assert_eq!(response.model_version, FAKE_MODEL_VERSION);
    let best = &response.items[0];
    assert_eq!(best.ranking_score, Some((CANDIDATES - 1) as f32));
    assert_eq!(best.retrieval_rank, CANDIDATES - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ranker_falls_back_to_retrieval_order_at_the_ranking_deadline() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Slow(FOREVER));
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&serving_shards(&token).await, &ranking, &token).await;

    let (answer, elapsed) = ask(gateway, two_stage()).await;
    eprintln!("slow ranker: answered after {elapsed:?} (budget {BUDGET:?})");
    let response = answer.unwrap();
    assert_fell_back(gateway, &response, "deadline exceeded").await;
    assert_eq!(ranker.calls(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranker_error_falls_back_with_its_status_as_the_reason() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Fails(Code::Internal));
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&serving_shards(&token).await, &ranking, &token).await;

    let (answer, elapsed) = ask(gateway, two_stage()).await;
    assert!(elapsed < BOUND);
    let response = answer.unwrap();
    assert_fell_back(gateway, &response, &format!("internal: {FAKE_FAILURE}")).await;
    // One ranking node: the retry has nowhere else to go, and never goes back.
    assert_eq!(ranker.calls(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ranker_answer_with_the_wrong_score_count_is_refused() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::WrongScoreCount);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&serving_shards(&token).await, &ranking, &token).await;

    let (answer, elapsed) = ask(gateway, two_stage()).await;
    assert!(elapsed < BOUND);
    let response = answer.unwrap();
    let reason = format!(
        "malformed answer: {} scores for {CANDIDATES} candidates",
        CANDIDATES - 1
    );
    assert_fell_back(gateway, &response, &reason).await;
    assert_eq!(ranker.calls(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_ranking_node_fails_over_to_the_second() {
    let token = CancellationToken::new();
    let failing = FakeRanker::new(RankerBehaviour::Fails(Code::Unavailable));
    let good = FakeRanker::new(RankerBehaviour::Good);
    let ranking = [
        serve_ranker(failing.clone(), &token).await,
        serve_ranker(good.clone(), &token).await,
    ];
    let gateway = gateway(&serving_shards(&token).await, &ranking, &token).await;

    // Which node goes first is the gateway's random choice: ask until the failing
    // one was tried (one in two requests while it is in routing).
    let mut failed_over = 0;
    for round in 0..64 {
        let (failing_before, good_before) = (failing.calls(), good.calls());
        let (answer, elapsed) = ask(gateway, two_stage()).await;
        assert!(elapsed < BOUND);
        let response = answer.unwrap_or_else(|s| panic!("round {round}: {s:?}"));
        assert_ranked_by_fake(&response);
        assert!(reasons(&response).is_empty(), "{:?}", reasons(&response));
        assert!(!response.coverage.as_ref().unwrap().degraded);
        assert_eq!(good.calls(), good_before + 1, "round {round}");
        if failing.calls() > failing_before {
            assert_eq!(failing.calls(), failing_before + 1, "tried twice");
            failed_over += 1;
            break;
        }
    }
    assert_eq!(failed_over, 1, "the failing ranking node was never tried");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_shards_silent_past_the_deadline_is_deadline_exceeded() {
    let token = CancellationToken::new();
    // Every shard accepts and never answers: only the caller's deadline ends it.
    let mut shards = Vec::new();
    for _ in 0..SHARDS {
        shards.push(vec![black_hole(&token).await]);
    }
    let gateway = gateway(&shards, &[], &token).await;
    let mut client = gateway_client(gateway).await;
    let mut request = tonic::Request::new(two_stage());
    request.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let status = tokio::time::timeout(BOUND, client.recommend(request))
        .await
        .unwrap_or_else(|_| panic!("no answer within {BOUND:?}"))
        .unwrap_err();
    assert!(started.elapsed() < BOUND);
    // The gateway's own answer (sent just before tonic's timer would fire) names
    // the shards; tonic's CANCELLED "Timeout expired" would mean it answered late.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let message = status.message();
    for shard in 0..SHARDS {
        assert!(
            message.contains(&format!("shard {shard}: deadline exceeded")),
            "{message}"
        );
    }
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_shards_down_is_unavailable_naming_every_shard() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Good);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    // Nothing listens there: connections are refused.
    let shards: Vec<Vec<SocketAddr>> = (0..SHARDS).map(|_| vec![processes::free_addr()]).collect();
    let gateway = gateway(&shards, &ranking, &token).await;

    let (answer, elapsed) = ask(gateway, two_stage()).await;
    assert!(elapsed < BOUND);
    let status = answer.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.starts_with("no shard answered: "), "{message}");
    for shard in 0..SHARDS {
        assert!(
            message.contains(&format!("shard {shard}: unavailable: ")),
            "{message}"
        );
    }
    // Nothing to rank.
    assert_eq!(ranker.calls(), 0);

    // The stream says the same, as its one message.
    let mut client = gateway_client(gateway).await;
    let mut stream = client
        .recommend_stream(two_stage())
        .await
        .unwrap()
        .into_inner();
    let status = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().starts_with("no shard answered: "));
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_still_loading_is_named_and_the_rest_is_ranked() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Good);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let loading = LoadingShard::default();
    let shards = vec![
        vec![retrieval_node(bundle().path(), 0, &token).await],
        vec![serve_loading_shard(loading.clone(), &token).await],
    ];
    let gateway = gateway(&shards, &ranking, &token).await;

    let (answer, elapsed) = ask(gateway, two_stage()).await;
    assert!(elapsed < BOUND);
    let response = answer.unwrap();
    assert_ranked_by_fake(&response);
    let coverage = response.coverage.as_ref().unwrap();
    assert!(coverage.degraded);
    assert_eq!((coverage.shards_asked, coverage.shards_answered), (2, 1));
    assert_eq!(
        reasons(&response),
        [(
            "retrieval".to_string(),
            Some(1),
            format!("unavailable: {STILL_LOADING}")
        )]
    );
    // Its only replica: tried although not SERVING, and once.
    assert_eq!(loading.calls(), 1);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_replica_is_passed_over_for_a_serving_one() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Good);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let loading = LoadingShard::default();
    let mut shards = serving_shards(&token).await;
    shards[1].insert(0, serve_loading_shard(loading.clone(), &token).await);
    let gateway = gateway(&shards, &ranking, &token).await;

    for round in 0..8 {
        let (answer, elapsed) = ask(gateway, two_stage()).await;
        assert!(elapsed < BOUND);
        let response = answer.unwrap();
        assert_ranked_by_fake(&response);
        assert!(
            reasons(&response).is_empty(),
            "round {round}: {:?}",
            reasons(&response)
        );
        assert!(full_coverage(&response, SHARDS));
    }
    // Out of routing from its first health check or its first refusal, whichever
    // came first: never asked twice.
    assert!(loading.calls() <= 1, "asked {} times", loading.calls());
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_with_the_fallback_when_ranking_fails() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::Fails(Code::Internal));
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&serving_shards(&token).await, &ranking, &token).await;

    let mut client = gateway_client(gateway).await;
    let started = Instant::now();
    let mut stream = client
        .recommend_stream(two_stage())
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = tokio::time::timeout(BOUND, stream.message())
        .await
        .unwrap()
        .unwrap()
    {
        messages.push(message);
    }
    assert!(started.elapsed() < BOUND);
    // One running top-k per shard, then the final answer.
    assert_eq!(messages.len(), SHARDS as usize + 1);
    let (last, partial) = messages.split_last().unwrap();
    assert!(partial.iter().all(|m| !m.r#final && !m.ranked));
    assert!(last.r#final);
    assert!(!last.ranked);
    let coverage = last.coverage.as_ref().unwrap();
    assert!(coverage.degraded);
    assert_eq!(coverage.shards_answered, SHARDS);
    let reasons: Vec<_> = coverage
        .reasons
        .iter()
        .map(|r| (stage(r), r.shard, r.reason.clone()))
        .collect();
    assert_eq!(
        reasons,
        ranking_reason(&format!("internal: {FAKE_FAILURE}"))
    );
    let last_ids: Vec<u64> = last.items.iter().map(|i| i.item_id).collect();
    assert_eq!(last_ids, retrieval_order(gateway).await);
    token.cancel();
}
