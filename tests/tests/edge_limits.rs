//! Limits at the edge (issue 18, parts 2 and 5), each against real servers:
//! queries whose scores would overflow, node answers that break what every
//! honest node guarantees (`recsys_tests::misbehaving::LyingShard`, a real gRPC
//! server), a ranker that answers NaN, messages too large or undecodable,
//! calls to methods no service has, and the cap on exact searches.
//!
//! One test binary of its own: the metrics registry is per process, and these
//! tests read the gateway's refused-answer counters and the gRPC series.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use prost::Message;
use recsys_gateway::{GatewayConfig, RequestPolicy};
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{FeatureValue, RecommendResponse, SearchRequest, feature_value::Kind};
use recsys_tests::misbehaving::*;
use recsys_tests::noise::Noise;
use recsys_tests::static_gateway::{gateway_config, serve_static_gateway};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;

const SHARDS: u32 = 2;
const DIMENSIONS: usize = 32;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("edge-limits");
        shared_bundle(&root, 2_000, SHARDS, 71)
    })
}

fn version() -> String {
    recsys_bundle::Manifest::load(bundle().path())
        .unwrap()
        .version
}

/// A gateway over `shards` and `ranking` with `policy`, serving once its bundle is
/// loaded. Health checks run every minute: a node leaves routing only by a call.
async fn gateway_with(
    shards: &[Vec<SocketAddr>],
    ranking: &[SocketAddr],
    policy: RequestPolicy,
    token: &CancellationToken,
) -> SocketAddr {
    let config = GatewayConfig {
        policy,
        ..gateway_config(bundle().path())
    };
    serve_static_gateway(config, shards, ranking, token).await
}

async fn gateway(
    shards: &[Vec<SocketAddr>],
    ranking: &[SocketAddr],
    token: &CancellationToken,
) -> SocketAddr {
    gateway_with(shards, ranking, RequestPolicy::default(), token).await
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A real retrieval node per shard.
async fn real_shards(token: &CancellationToken) -> Vec<Vec<SocketAddr>> {
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        shards.push(vec![retrieval_node(bundle().path(), shard, token).await]);
    }
    shards
}

/// Ids of the catalog that live on `shard`.
fn ids_on(shard: u32) -> Vec<u64> {
    bundle()
        .catalog
        .items
        .ids
        .iter()
        .copied()
        .filter(|id| recsys_bundle::shard_of(*id, SHARDS) == shard)
        .collect()
}

fn reasons(response: &RecommendResponse) -> Vec<String> {
    let coverage = response.coverage.as_ref().unwrap();
    coverage.reasons.iter().map(|r| r.reason.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_that_would_overflow_a_score_are_refused_by_gateway_and_node() {
    let token = CancellationToken::new();
    let shards = real_shards(&token).await;
    let gateway = gateway(&shards, &[], &token).await;
    let mut client = gateway_client(gateway).await;
    let mut node = RetrievalServiceClient::new(channel(shards[0][0]).await);

    for bad in [
        3.4e38,
        -3.4e38,
        f32::MAX,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        1.5e6,
    ] {
        let mut values = vec![0.1; DIMENSIONS];
        values[3] = bad;
        let status = recommend(
            &mut client,
            by_embedding(values.clone(), 10, false),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().starts_with("query_embedding: value 3 is "),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("within ±1e6"),
            "{}",
            status.message()
        );

        let search = SearchRequest {
            query: values,
            k: 10,
            ..Default::default()
        };
        let status = node.search(search).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(
            status.message().starts_with("query: value 3 is "),
            "{}",
            status.message()
        );
    }
    // At the bound: answered, every score finite, exact and approximate.
    for exact in [false, true] {
        let values: Vec<f32> = (0..DIMENSIONS)
            .map(|i| if i % 2 == 0 { 1e6 } else { -1e6 })
            .collect();
        let response = recommend(
            &mut client,
            by_embedding(values, 10, exact),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(response.items.len(), 10);
        assert!(full_coverage(&response, SHARDS));
        assert_answer_invariants(&response, 10, &[]);
    }
    // A numeric user feature past the bound is refused at the gateway with its name.
    let mut request = by_user(&bundle().catalog.users.ids()[0], 10, false);
    request.user_features.insert(
        "age".into(),
        FeatureValue {
            kind: Some(Kind::FloatValue(-3.4e38)),
        },
    );
    let status = recommend(&mut client, request, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.message(),
        "user_features: feature age is -3.4e38, numbers must be finite and within ±1e6"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_answering_infinite_scores_is_a_failed_shard_not_a_short_answer() {
    let token = CancellationToken::new();
    let liar = LyingShard::new(Lie::InfiniteScore, 1, SHARDS, &version());
    let shards = vec![
        vec![retrieval_node(bundle().path(), 0, &token).await],
        vec![serve_lying_shard(liar.clone(), &token).await],
    ];
    let gateway = gateway(&shards, &[], &token).await;
    let mut client = gateway_client(gateway).await;
    for round in 1..=2 {
        let response = recommend(
            &mut client,
            by_embedding(vec![0.1; DIMENSIONS], 10, false),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let coverage = response.coverage.as_ref().unwrap();
        assert!(coverage.degraded);
        assert_eq!((coverage.shards_asked, coverage.shards_answered), (2, 1));
        let reasons = reasons(&response);
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].starts_with("answer holds a non-finite score: item "),
            "{reasons:?}"
        );
        assert!(reasons[0].ends_with("scored inf"), "{reasons:?}");
        assert_answer_invariants(&response, 10, &[]);
        // Not quarantined: a score can overflow for a valid query on a large model.
        assert_eq!(liar.calls(), round);
    }
    let metrics = recsys_server::metrics::render();
    assert!(
        metric_value(
            &metrics,
            r#"recsys_gateway_refused_answers_total{check="non_finite_score"}"#
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_replicas_are_refused_quarantined_and_counted() {
    let excluded: Vec<u64> = ids_on(1).into_iter().take(3).collect();
    for (lie, check) in [
        (Lie::Duplicate, "duplicate_item"),
        (Lie::Excluded, "excluded_item"),
        (Lie::WrongVersion, "wrong_version"),
    ] {
        let token = CancellationToken::new();
        let liar = LyingShard::new(lie, 1, SHARDS, &version());
        let shards = vec![
            vec![retrieval_node(bundle().path(), 0, &token).await],
            vec![
                serve_lying_shard(liar.clone(), &token).await,
                retrieval_node(bundle().path(), 1, &token).await,
            ],
        ];
        let gateway = gateway(&shards, &[], &token).await;
        let mut client = gateway_client(gateway).await;
        let mut request = by_embedding(vec![0.1; DIMENSIONS], 10, false);
        request.exclude_item_ids = excluded.clone();
        // Which replica goes first is random: ask until the liar was tried. Its
        // answer is refused and the other replica asked, so every answer is whole.
        let mut rounds = 0;
        while liar.calls() == 0 {
            rounds += 1;
            assert!(rounds <= 64, "{lie:?}: the lying replica was never tried");
            let response = recommend(&mut client, request.clone(), Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                full_coverage(&response, SHARDS),
                "{lie:?}: {:?}",
                response.coverage
            );
            assert!(!response.coverage.as_ref().unwrap().degraded);
            assert_answer_invariants(&response, 10, &excluded);
        }
        // Quarantined: never asked again, whatever its health says.
        for _ in 0..16 {
            let response = recommend(&mut client, request.clone(), Duration::from_secs(5))
                .await
                .unwrap();
            assert!(full_coverage(&response, SHARDS));
            assert_answer_invariants(&response, 10, &excluded);
        }
        assert_eq!(liar.calls(), 1, "{lie:?}");
        let metrics = recsys_server::metrics::render();
        let series = format!(r#"recsys_gateway_refused_answers_total{{check="{check}"}}"#);
        assert!(
            metric_value(&metrics, &series).is_some_and(|n| n >= 1.0),
            "{series} missing:\n{metrics}"
        );
        token.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_finite_ranker_score_is_a_ranking_failure_in_coverage() {
    let token = CancellationToken::new();
    let ranker = FakeRanker::new(RankerBehaviour::NonFinite);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&real_shards(&token).await, &ranking, &token).await;
    let mut client = gateway_client(gateway).await;
    let response = recommend(
        &mut client,
        ranked(&bundle().catalog.users.ids()[0], 10, 50),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(!response.ranked);
    assert!(response.coverage.as_ref().unwrap().degraded);
    assert_eq!(
        reasons(&response),
        ["ranking answer holds a non-finite score: candidate 0 scored NaN"]
    );
    assert_answer_invariants(&response, 10, &[]);
    assert_eq!(ranker.calls(), 1);
    token.cancel();
}

/// A request of about 4 MiB of one-byte exclusion ids: once decoded into a
/// ~33 MB array before any check; now refused by its length prefix.
fn four_mebibytes_of_ids() -> Vec<u64> {
    vec![1; 4 << 20]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_undecodable_requests_are_refused_before_decoding() {
    let token = CancellationToken::new();
    let shards = real_shards(&token).await;
    let ranker = FakeRanker::new(RankerBehaviour::Good);
    let ranking = [serve_ranker(ranker.clone(), &token).await];
    let gateway = gateway(&shards, &ranking, &token).await;
    let mut client = gateway_client(gateway).await;

    let mut huge = by_embedding(vec![0.1; DIMENSIONS], 10, false);
    huge.exclude_item_ids = four_mebibytes_of_ids();
    assert!(huge.encoded_len() >= 4 << 20);
    let status = recommend(&mut client, huge, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains(&format!(
            "the limit is: {} bytes",
            recsys_proto::limits::recommend_request_max_bytes()
        )),
        "{}",
        status.message()
    );
    let mut node = RetrievalServiceClient::new(channel(shards[0][0]).await);
    let status = node
        .search(SearchRequest {
            bundle_version: String::new(),
            min_log_revision: 0,
            query: vec![0.1; DIMENSIONS],
            k: 10,
            exclude_item_ids: four_mebibytes_of_ids(),
            exact: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(ranker.calls(), 0);

    // Bytes that are no message: INVALID_ARGUMENT naming the message, at the
    // gateway and at each kind of node (the codec of `recsys_proto::codec`).
    let garbage = vec![0xff; 64];
    for (addr, path, message) in [
        (
            gateway,
            "/recsys.v1.GatewayService/Recommend",
            "RecommendRequest",
        ),
        (
            gateway,
            "/recsys.v1.GatewayService/RecommendStream",
            "RecommendRequest",
        ),
        (
            shards[0][0],
            "/recsys.v1.RetrievalService/Search",
            "SearchRequest",
        ),
        (ranking[0], "/recsys.v1.RankingService/Rank", "RankRequest"),
    ] {
        let status = raw_grpc::call(&channel(addr).await, path, garbage.clone())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(
            status
                .message()
                .starts_with(&format!("{message} does not decode: ")),
            "{}",
            status.message()
        );
    }
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_bit_flipped_requests_get_no_internal_and_no_broken_answer() {
    let token = CancellationToken::new();
    let shards = real_shards(&token).await;
    let gateway = gateway(&shards, &[], &token).await;
    let gateway_channel = channel(gateway).await;
    let node_channel = channel(shards[1][0]).await;
    let mut valid = by_embedding(vec![0.1; DIMENSIONS], 20, false);
    valid.exclude_item_ids = ids_on(0).into_iter().take(5).collect();
    let valid_bytes = valid.encode_to_vec();
    let search_bytes = SearchRequest {
        bundle_version: String::new(),
        min_log_revision: 0,
        query: vec![0.1; DIMENSIONS],
        k: 20,
        exclude_item_ids: ids_on(1).into_iter().take(5).collect(),
        exact: false,
        ..Default::default()
    }
    .encode_to_vec();
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..3_000 {
        let (target, path, base) = if i % 3 == 2 {
            (
                &node_channel,
                "/recsys.v1.RetrievalService/Search",
                &search_bytes,
            )
        } else {
            (
                &gateway_channel,
                "/recsys.v1.GatewayService/Recommend",
                &valid_bytes,
            )
        };
        let body = match i % 4 {
            // Random bytes of a random length.
            0 => {
                let len = (noise.next_u64() % 256) as usize;
                noise.bytes(len)
            }
            // The valid message with a few bits flipped.
            1 | 2 => {
                let mut bytes = base.clone();
                for _ in 0..=(noise.next_u64() % 4) {
                    let bit = (noise.next_u64() % (bytes.len() as u64 * 8)) as usize;
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
                bytes
            }
            // The valid message cut short.
            _ => {
                let cut = (noise.next_u64() % base.len() as u64) as usize;
                base[..cut].to_vec()
            }
        };
        let outcome = raw_grpc::call(target, path, body).await;
        let code = match &outcome {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        assert!(
            !matches!(code, Code::Internal | Code::Unknown),
            "request {i} to {path}: {outcome:?}"
        );
        if let Ok(bytes) = &outcome
            && path.contains("Gateway")
        {
            let response = RecommendResponse::decode(bytes.as_slice()).unwrap();
            assert_answer_invariants(&response, recsys_proto::limits::MAX_K, &[]);
        }
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    eprintln!("codes of 3000 malformed requests: {codes:?}");
    assert!(codes.contains_key("InvalidArgument"), "{codes:?}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_of_known_services_add_no_series() {
    let token = CancellationToken::new();
    let shards = real_shards(&token).await;
    let gateway = gateway(&shards, &[], &token).await;
    let channel = channel(gateway).await;
    let unknown = |text: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("recsys_grpc_server_handled_total")
                    && l.contains("method=\"unknown\"")
            })
            .count()
    };
    for i in 0..200 {
        let path = format!("/recsys.v1.GatewayService/Nope{i}");
        let status = raw_grpc::call(&channel, &path, Vec::new())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented);
    }
    let text = recsys_server::metrics::render();
    assert!(!text.contains("Nope"), "{text}");
    assert_eq!(unknown(&text), 1, "{text}");
    let series = r#"recsys_grpc_server_handled_total{code="Unimplemented",method="unknown",service="recsys.v1.GatewayService"}"#;
    assert_eq!(metric_value(&text, series), Some(200.0), "{text}");
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_searches_are_capped_and_can_be_disabled() {
    let token = CancellationToken::new();
    // Shards that take calls and never answer: an exact search holds its slot
    // for its whole deadline.
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        let silent = LyingShard::new(Lie::Silent, shard, SHARDS, &version());
        shards.push(vec![serve_lying_shard(silent, &token).await]);
    }
    let policy = RequestPolicy {
        max_exact_searches: 1,
        ..RequestPolicy::default()
    };
    let gateway = gateway_with(&shards, &[], policy, &token).await;
    let exact = by_embedding(vec![0.1; DIMENSIONS], 10, true);
    let holder = {
        let exact = exact.clone();
        tokio::spawn(async move {
            let mut client = gateway_client(gateway).await;
            // A probe below may hold the slot when the holder arrives; then the
            // holder is the one refused, and tries again (after a pause, so it
            // does not spin while that probe runs out its 200 ms).
            loop {
                match recommend(&mut client, exact.clone(), Duration::from_secs(30)).await {
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => break other,
                }
            }
        })
    };
    let mut client = gateway_client(gateway).await;
    // Until the holder's request has its slot, a probe may take it itself
    // (and time out quickly); then the next one is refused at once.
    let mut refused = None;
    for _ in 0..100 {
        match recommend(&mut client, exact.clone(), Duration::from_millis(200)).await {
            Err(status) if status.code() == Code::ResourceExhausted => {
                refused = Some(status);
                break;
            }
            // The gateway's answer or the client's own timer, whichever is first.
            Err(status) => assert!(
                matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
                "{status:?}"
            ),
            Ok(response) => panic!("silent shards answered: {response:?}"),
        }
    }
    let refused = refused.expect("never refused");
    assert_eq!(
        refused.message(),
        "options.exact: 1 exact searches are already running, the limit is 1"
    );
    // Approximate searches are not held back by the cap.
    let status = recommend(
        &mut client,
        by_embedding(vec![0.1; DIMENSIONS], 10, false),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    holder.abort();

    let disabled = RequestPolicy {
        max_exact_searches: 0,
        ..RequestPolicy::default()
    };
    let gateway = gateway_with(&real_shards(&token).await, &[], disabled, &token).await;
    let mut client = gateway_client(gateway).await;
    let status = recommend(&mut client, exact, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "options.exact: exact searches are disabled on this server"
    );
    token.cancel();
}
