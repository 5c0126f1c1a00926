//! The docker compose cluster (deploy/docker-compose.yml) tested from outside,
//! through its published gateway: answers against the brute-force truth of the
//! bundle job's synthetic catalog, the two stages, input errors, and containers
//! stopped and started under a steady load.
//!
//! `make compose-test` brings the cluster up, runs this file with
//! `RECSYS_TEST_GATEWAY` and `RECSYS_COMPOSE` set, `--ignored` and
//! `--test-threads=1` (the fault test stops containers), and brings it down. Every
//! test is `#[ignore]`d so that `cargo test --workspace` reports them as ignored
//! rather than passed; run without the variables, they fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_bundle_builder::synthetic::{SyntheticCatalog, SyntheticSpec, generate};
use recsys_proto::v1::{RecommendRequest, RecommendResponse};
use recsys_tests::compose::{Compose, gateway};
use recsys_tests::load::{Load, LoadReport};
use recsys_tests::*;
use tonic::Code;

/// The bundle job's catalog: must match its flags in deploy/docker-compose.yml.
const SPEC: SyntheticSpec = SyntheticSpec {
    items: 100_000,
    users: 1_000,
    dimensions: 32,
    clusters: 32,
    seed: 7,
};
/// The bundle job's `--version`, which every answer carries: a compose file whose
/// bundle drifted from [`SPEC`] fails here rather than with odd mismatches.
const VERSION: &str = "compose-synthetic-100k-seed7";
const SHARDS: u32 = 2;

fn catalog() -> &'static SyntheticCatalog {
    static CATALOG: OnceLock<SyntheticCatalog> = OnceLock::new();
    CATALOG.get_or_init(|| generate(&SPEC).unwrap())
}

fn user_embedding(row: usize) -> Vec<f32> {
    let users = &catalog().users;
    let dims = users.dimensions();
    users.data()[row * dims..(row + 1) * dims].to_vec()
}

fn full(response: &RecommendResponse) -> bool {
    full_coverage(response, SHARDS)
}

/// Polls until the gateway answers ranked with every shard (it learns the nodes
/// from etcd and health-checks them each second), at most `timeout`.
async fn wait_full_coverage(gateway: SocketAddr, timeout: Duration) {
    let request = ranked("user-0", 10, 100);
    wait_for_answer(gateway, request, |r| full(r) && r.ranked, timeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster: make compose-test"]
async fn compose_exact_search_matches_brute_force() {
    let gateway = gateway("compose_exact_search_matches_brute_force");
    wait_full_coverage(gateway, Duration::from_secs(60)).await;
    let mut client = gateway_client(gateway).await;
    for row in [0, 1, 17, 500, 999] {
        let query = user_embedding(row);
        let response = recommend(
            &mut client,
            by_embedding(query.clone(), 50, true),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(response.bundle_version, VERSION);
        let reference = brute_force(catalog(), &query, &[]);
        let truth: std::collections::HashMap<u64, f64> = reference.iter().copied().collect();
        assert_eq!(response.items.len(), 50);
        for (rank, item) in response.items.iter().enumerate() {
            let (want_id, want_score) = reference[rank];
            // The same id at the same rank, or a tie within float rounding.
            let got_score = truth[&item.item_id];
            assert!(
                item.item_id == want_id || (got_score - want_score).abs() < 1e-5,
                "user row {row}, rank {rank}: got {} ({got_score}), want {want_id} ({want_score})",
                item.item_id
            );
            assert!((f64::from(item.retrieval_score) - got_score).abs() < 1e-4);
        }
        let coverage = response.coverage.unwrap();
        assert_eq!((coverage.shards_asked, coverage.shards_answered), (2, 2));
        assert_eq!(coverage.items_searched, SPEC.items as u64);
        assert!(!coverage.degraded, "{:?}", coverage.reasons);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster: make compose-test"]
async fn compose_two_stage_recommend_follows_the_planted_ranker() {
    let gateway = gateway("compose_two_stage_recommend_follows_the_planted_ranker");
    wait_full_coverage(gateway, Duration::from_secs(60)).await;
    let mut client = gateway_client(gateway).await;
    let (mut on_topic, mut total) = (0, 0);
    for row in [3, 42, 640] {
        let user = format!("user-{row}");
        let response = recommend(&mut client, ranked(&user, 10, 100), Duration::from_secs(5))
            .await
            .unwrap();
        assert!(response.ranked, "{:?}", response.coverage);
        assert!(response.model_version.starts_with("planted-"));
        assert_eq!(response.items.len(), 10);
        let mut previous = f32::INFINITY;
        for item in &response.items {
            let score = item.ranking_score.unwrap();
            assert!(score <= previous, "not sorted by ranking score");
            previous = score;
            let want = planted_score(catalog(), row, item.item_id as usize);
            assert!(
                (f64::from(score) - want).abs() < 1e-4,
                "{user}, item {}: {score} vs {want}",
                item.item_id
            );
            assert!(item.retrieval_rank < 100);
        }
        // Good candidates for a synthetic user are items of its planted topic.
        total += response.items.len();
        on_topic += response
            .items
            .iter()
            .filter(|item| {
                catalog().item_cluster[item.item_id as usize] == catalog().user_cluster[row]
            })
            .count();
    }
    assert!(
        on_topic as f64 / total as f64 > 0.9,
        "{on_topic} of {total} in the users' topics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster: make compose-test"]
async fn compose_bad_requests_get_invalid_argument() {
    let gateway = gateway("compose_bad_requests_get_invalid_argument");
    let mut client = gateway_client(gateway).await;
    let status = recommend(
        &mut client,
        by_user("user-0", 0, false),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains('k'), "{}", status.message());
    let status = recommend(
        &mut client,
        by_embedding(vec![0.5; 7], 10, false),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = recommend(
        &mut client,
        by_user("nobody", 10, false),
        Duration::from_secs(2),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

/// The load of the fault test: two-stage requests for every synthetic user in turn.
fn request(i: u64) -> RecommendRequest {
    ranked(&format!("user-{}", i % SPEC.users as u64), 10, 100)
}

/// Runs a steady load while `act` runs, then until `after` more answers came (at
/// most a minute), and reports.
async fn under_load<F: Future<Output = ()>>(
    gateway: SocketAddr,
    what: &str,
    after: u64,
    act: impl FnOnce() -> F,
) -> LoadReport {
    let load = Load::start(gateway, 4, Duration::from_secs(2), request).await;
    assert!(
        load.wait_for_answers(50, Duration::from_secs(30)).await,
        "{what}: the load got no answers before the action"
    );
    let started = Instant::now();
    act().await;
    let acted = started.elapsed();
    assert!(
        load.wait_for_answers(after, Duration::from_secs(60)).await,
        "{what}: too few answers after the action"
    );
    let report = load.stop().await;
    eprintln!(
        "compose fault test: {what}: action took {:.1} s; {} answered, {} failed, {} with partial coverage; first: {:?}",
        acted.as_secs_f64(),
        report.ok,
        report.failed,
        report.partial,
        report.errors.first()
    );
    report
}

/// `compose stop` or `start` off the runtime's workers, which serve the load.
async fn compose_do(compose: &Compose, verb: &'static str, services: &'static [&'static str]) {
    let compose = compose.clone();
    tokio::task::spawn_blocking(move || match verb {
        "stop" => compose.stop(services),
        _ => compose.start(services),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster: make compose-test"]
async fn compose_stopped_replicas_and_shard_fail_no_request() {
    let test = "compose_stopped_replicas_and_shard_fail_no_request";
    let (gateway, compose) = (gateway(test), Compose::from_env(test));
    let _restore = compose.start_on_drop(&["retrieval-1a", "retrieval-1b"]);
    wait_full_coverage(gateway, Duration::from_secs(60)).await;

    // One replica of shard 1 goes away: its twin answers for it.
    let report = under_load(gateway, "stop retrieval-1b", 300, || {
        compose_do(&compose, "stop", &["retrieval-1b"])
    })
    .await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.partial, 0, "{:?}", report.errors);

    // The whole of shard 1 goes away: answers from shard 0 with coverage saying so.
    let report = under_load(gateway, "stop retrieval-1a (all of shard 1)", 300, || {
        compose_do(&compose, "stop", &["retrieval-1a"])
    })
    .await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert!(report.partial > 0, "no partial answer without shard 1");
    let mut client = gateway_client(gateway).await;
    let response = recommend(
        &mut client,
        by_user("user-5", 20, false),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let coverage = response.coverage.clone().unwrap();
    assert_eq!((coverage.shards_asked, coverage.shards_answered), (2, 1));
    assert!(coverage.degraded);
    assert_eq!(coverage.reasons.len(), 1, "{:?}", coverage.reasons);
    assert_eq!(coverage.reasons[0].shard, Some(1));
    assert!(coverage.items_searched < coverage.items_total);
    // Shard 0 returns its k', the top-k-probability quantile: maybe fewer than 20.
    assert!(!response.items.is_empty() && response.items.len() <= 20);
    assert!(
        response
            .items
            .iter()
            .all(|item| recsys_bundle::sharding::shard_of(item.item_id, SHARDS) == 0)
    );

    // Both come back, under load until the gateway answers with both shards again:
    // no failure on the way, then full coverage.
    let report = under_load(
        gateway,
        "start retrieval-1a and retrieval-1b, until full coverage",
        100,
        || async {
            compose_do(&compose, "start", &["retrieval-1a", "retrieval-1b"]).await;
            wait_full_coverage(gateway, Duration::from_secs(120)).await;
        },
    )
    .await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    let report = under_load(gateway, "after the restart", 300, || async {}).await;
    assert_eq!(report.failed, 0, "{:?}", report.errors);
    assert_eq!(report.partial, 0, "{:?}", report.errors);
}

/// A command's output as one string, for the assertions' messages.
fn said(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// TLS and mutual TLS end to end: the test's other clients present the CA's
/// client certificate (`RECSYS_TEST_GATEWAY_TLS`) and get full answers, which the
/// gateway can give only over mutual TLS to every node; a client without a
/// certificate gets UNAUTHENTICATED, plaintext gets no answer, a node asked
/// without a certificate refuses too and its certificate names its shard; etcd refuses a client without a
/// certificate, and a node's etcd user may register but not write the change log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the compose cluster: make compose-test"]
async fn compose_runs_mutual_tls_and_etcd_auth_and_refuses_strangers() {
    let test = "compose_runs_mutual_tls_and_etcd_auth_and_refuses_strangers";
    let gateway = gateway(test);
    let compose = Compose::from_env(test);
    let tls = recsys_tests::compose::gateway_tls().unwrap_or_else(|| {
        panic!("{test}: RECSYS_TEST_GATEWAY_TLS is not set; make compose-test sets it")
    });
    wait_full_coverage(gateway, Duration::from_secs(60)).await;

    // The gateway: TLS without a client certificate, and plaintext.
    let no_certificate = recsys_server::tls::ClientTls {
        identity: None,
        ..tls.clone()
    };
    let channel = no_certificate
        .endpoint(&gateway.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = recsys_proto::v1::gateway_service_client::GatewayServiceClient::new(channel)
        .recommend(by_user("user-0", 10, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let plaintext = async {
        let mut client = recsys_proto::v1::gateway_service_client::GatewayServiceClient::connect(
            format!("http://{gateway}"),
        )
        .await
        .map_err(|e| e.to_string())?;
        client
            .recommend(by_user("user-0", 10, false))
            .await
            .map_err(|status| status.to_string())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), plaintext).await;
    assert!(
        !matches!(outcome, Ok(Ok(_))),
        "a plaintext client was answered"
    );

    // A node, from inside the network (a one-off container of the `certs` job's
    // image and volume): with a client certificate it is SERVING and proves
    // shard 0's identity; without one it refuses; checked for shard 1's
    // identity, its certificate fails.
    let health = |server_name: &str, certificate: bool| {
        let mut argv = vec![
            "recsys",
            "health",
            "--addr=retrieval-0a:7000",
            "--timeout-ms=5000",
            "--tls-ca=/secrets/certs/ca.pem",
        ];
        let name = format!("--tls-server-name={server_name}");
        argv.push(&name);
        if certificate {
            argv.extend([
                "--tls-cert=/secrets/certs/client.pem",
                "--tls-key=/secrets/certs/client.key",
            ]);
        }
        compose.run_once("certs", &argv)
    };
    let with = health("retrieval-shard-0.recsys", true);
    assert!(with.status.success(), "{}", said(&with));
    let without = health("retrieval-shard-0.recsys", false);
    assert!(!without.status.success(), "{}", said(&without));
    assert!(
        said(&without).contains("Unauthenticated"),
        "{}",
        said(&without)
    );
    let other_shard = health("retrieval-shard-1.recsys", true);
    assert!(!other_shard.status.success(), "{}", said(&other_shard));

    // etcd: no client certificate, no connection; with one but no login, no
    // access; a retrieval node's user registers but cannot touch the log.
    let etcdctl = |extra: &[&str]| -> Vec<String> {
        let mut argv: Vec<String> = [
            "etcdctl",
            "--endpoints=https://127.0.0.1:2379",
            "--cacert=/secrets/certs/ca.pem",
            "--dial-timeout=3s",
            "--command-timeout=3s",
        ]
        .map(String::from)
        .to_vec();
        argv.extend(extra.iter().map(|s| s.to_string()));
        argv
    };
    let run = |argv: Vec<String>| {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        compose.exec("etcd", &argv)
    };
    let certificate = [
        "--cert=/secrets/certs/etcd-client.pem",
        "--key=/secrets/certs/etcd-client.key",
    ];
    let no_certificate = run(etcdctl(&["get", "/recsys/compose/", "--prefix"]));
    assert!(
        !no_certificate.status.success(),
        "{}",
        said(&no_certificate)
    );
    let mut anonymous = certificate.to_vec();
    anonymous.extend(["get", "/recsys/compose/", "--prefix", "--keys-only"]);
    let anonymous = run(etcdctl(&anonymous));
    assert!(
        said(&anonymous).contains("permission denied") || said(&anonymous).contains("user name"),
        "{}",
        said(&anonymous)
    );
    let user = "recsys-compose-retrieval";
    let password = compose.read_file("gateway", &format!("/secrets/etcd/{user}.password"));
    let login = format!("--user={user}:{}", password.trim());
    let as_node = |verb_and_key: &[&str]| {
        let mut argv = certificate.to_vec();
        argv.push(&login);
        argv.extend(verb_and_key);
        run(etcdctl(&argv))
    };
    let register = as_node(&["put", "/recsys/compose/nodes/retrieval/compose-test", "x"]);
    assert!(register.status.success(), "{}", said(&register));
    let delete = as_node(&["del", "/recsys/compose/nodes/retrieval/compose-test"]);
    assert!(delete.status.success(), "{}", said(&delete));
    for key in [
        "/recsys/compose/catalog/shard-00000/compose-test",
        "/recsys/compose/nodes/ranking/compose-test",
    ] {
        let denied = as_node(&["put", key, "x"]);
        assert!(
            said(&denied).contains("permission denied"),
            "{key}: {}",
            said(&denied)
        );
    }
}
