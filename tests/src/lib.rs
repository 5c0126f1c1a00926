//! Harness for the integration tests: builds synthetic bundles in temporary
//! directories and talks to real clusters through the gateway.
//!
//! The tests themselves live in `tests/tests/*.rs`; every server they use is a real
//! gRPC server on a `127.0.0.1:0` port, started with the same code as the binaries,
//! except `compose.rs`, which talks to the docker compose cluster's published
//! gateway ([`compose`]), and `k8s.rs`, which reads the rendered manifests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod compose;
pub mod live_cluster;
pub mod load;
pub mod misbehaving;
pub mod moto;
pub mod noise;
pub mod processes;
pub mod raw_grpc;
pub mod skip;
pub mod static_gateway;
pub mod trained_ranker;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use recsys_bundle::{IndexParams, Metric};
use recsys_bundle_builder::BuildOptions;
use recsys_bundle_builder::synthetic::{SyntheticCatalog, SyntheticSpec, build_synthetic};
use recsys_proto::v1::{
    QueryEmbedding, RecommendOptions, RecommendRequest, RecommendResponse,
    gateway_service_client::GatewayServiceClient, recommend_request::Query,
};
use tonic::transport::Channel;

/// A synthetic bundle on disk and the catalog it was built from.
pub struct TestBundle {
    pub dir: tempfile::TempDir,
    pub catalog: SyntheticCatalog,
    pub metric: Metric,
}

impl TestBundle {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Brute-force reference: every item scored in f64 against `query`, best first,
    /// minus `excluded`.
    pub fn reference(&self, query: &[f32], excluded: &[u64]) -> Vec<(u64, f64)> {
        brute_force(&self.catalog, query, excluded)
    }

    /// Each item's entry of `values` (one per item row, as the catalog's
    /// `item_cluster` and `item_quality`), by item id.
    pub fn by_item<T: Copy>(&self, values: &[T]) -> std::collections::HashMap<u64, T> {
        self.catalog
            .items
            .ids
            .iter()
            .copied()
            .zip(values.iter().copied())
            .collect()
    }

    /// The catalog's ground truth as an attributes file: each item's
    /// `topic:keyword` (its cluster, as `topic-N`) and `quality:integer`, after
    /// the columns `extra` (headers, tab-separated) whose cells `cells` writes.
    pub fn topic_and_quality_tsv(&self, extra: &str, cells: impl Fn(u64) -> String) -> String {
        let catalog = &self.catalog;
        let mut tsv = format!("id\t{extra}topic:keyword\tquality:integer\n");
        for ((id, topic), quality) in catalog
            .items
            .ids
            .iter()
            .zip(&catalog.item_cluster)
            .zip(&catalog.item_quality)
        {
            tsv.push_str(&format!("{id}\t{}topic-{topic}\t{quality}\n", cells(*id)));
        }
        tsv
    }
}

/// Every item of `catalog` scored in f64 (inner product) against `query`, best
/// first (ties by smaller id), minus `excluded`.
pub fn brute_force(catalog: &SyntheticCatalog, query: &[f32], excluded: &[u64]) -> Vec<(u64, f64)> {
    let items = &catalog.items;
    let mut scored: Vec<(u64, f64)> = (0..items.len())
        .filter(|&row| !excluded.contains(&items.ids[row]))
        .map(|row| {
            let dot: f64 = query
                .iter()
                .zip(items.row(row))
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            (items.ids[row], dot)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored
}

fn options(shards: u32, seed: u64) -> BuildOptions {
    BuildOptions {
        params: IndexParams::default(),
        shard_count: shards,
        version: format!("test-{seed}"),
        source: "synthetic".into(),
        threads: 0,
    }
}

/// The planted ranker's score of item row `row` for user row `user`
/// (`recsys_model::planted`): `u·i + Σu + 0.3·quality/9`.
pub fn planted_score(catalog: &SyntheticCatalog, user: usize, row: usize) -> f64 {
    let users = &catalog.users;
    let u = &users.data()[user * users.dimensions()..(user + 1) * users.dimensions()];
    let i = catalog.items.row(row);
    let dot: f64 = u
        .iter()
        .zip(i)
        .map(|(a, b)| f64::from(*a) * f64::from(*b))
        .sum();
    let sum: f64 = u.iter().map(|a| f64::from(*a)).sum();
    dot + sum + 0.3 * f64::from(catalog.item_quality[row]) / 9.0
}

/// Builds a synthetic bundle (inner product, planted ranker).
pub fn synthetic_bundle(
    items: usize,
    users: usize,
    dimensions: usize,
    shards: u32,
    seed: u64,
) -> TestBundle {
    let dir = tempfile::tempdir().unwrap();
    build_into(dir, items, users, dimensions, shards, seed)
}

/// Builds a synthetic bundle (32 topics) into `dir`, which the bundle then owns.
fn build_into(
    dir: tempfile::TempDir,
    items: usize,
    users: usize,
    dimensions: usize,
    shards: u32,
    seed: u64,
) -> TestBundle {
    let spec = SyntheticSpec {
        items,
        users,
        dimensions,
        clusters: 32,
        seed,
    };
    let (catalog, _) = build_synthetic(dir.path(), &spec, &options(shards, seed), &|_| {}).unwrap();
    TestBundle {
        dir,
        catalog,
        metric: Metric::Ip,
    }
}

/// A client of the gateway at `addr`: plaintext, or over TLS with the CA and the
/// `client` certificate of the `recsys certs` directory that
/// [`compose::GATEWAY_TLS_VAR`] names (deploy/compose.sh sets it for the compose
/// cluster, whose gateway requires a client certificate).
pub async fn gateway_client(addr: SocketAddr) -> GatewayServiceClient<Channel> {
    match compose::gateway_tls() {
        Some(tls) => {
            let channel = tls
                .endpoint(&addr.to_string())
                .unwrap()
                .connect()
                .await
                .unwrap();
            GatewayServiceClient::new(channel)
        }
        None => GatewayServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap(),
    }
}

/// A retrieval-only request (`skip_ranking`) for `k` items.
fn retrieval_only(query: Query, k: u32, exact: bool) -> RecommendRequest {
    RecommendRequest {
        query: Some(query),
        k,
        options: Some(RecommendOptions {
            exact,
            skip_ranking: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A retrieval-only request for `k` items by embedding.
pub fn by_embedding(values: Vec<f32>, k: u32, exact: bool) -> RecommendRequest {
    retrieval_only(Query::QueryEmbedding(QueryEmbedding { values }), k, exact)
}

/// A retrieval-only request for `k` items by user id.
pub fn by_user(user: &str, k: u32, exact: bool) -> RecommendRequest {
    retrieval_only(Query::UserId(user.into()), k, exact)
}

/// A two-stage request: retrieve `retrieve_k` candidates, return the best `k` by ranking.
pub fn ranked(user: &str, k: u32, retrieve_k: u32) -> RecommendRequest {
    RecommendRequest {
        query: Some(Query::UserId(user.into())),
        k,
        retrieve_k,
        ..Default::default()
    }
}

/// Sends `request` with a deadline.
pub async fn recommend(
    client: &mut GatewayServiceClient<Channel>,
    request: RecommendRequest,
    timeout: Duration,
) -> Result<RecommendResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    client
        .recommend(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Polls `gateway` with `request` until an answer satisfies `ready`, at most
/// `timeout`. A gateway is SERVING once its bundle is loaded, but it learns its
/// nodes from discovery and health-checks them afterwards, so a test that counts
/// failures must wait for this before it starts.
pub async fn wait_for_answer(
    gateway: SocketAddr,
    request: RecommendRequest,
    ready: impl Fn(&RecommendResponse) -> bool,
    timeout: Duration,
) {
    let mut client = gateway_client(gateway).await;
    let started = std::time::Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < timeout {
        match recommend(&mut client, request.clone(), Duration::from_secs(2)).await {
            Ok(response) if ready(&response) => return,
            Ok(response) => last = format!("{:?} ranked={}", response.coverage, response.ranked),
            Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no ready answer through {gateway} within {timeout:?}: {last}");
}

/// True when every one of `shards` shards was asked and answered.
pub fn full_coverage(response: &RecommendResponse, shards: u32) -> bool {
    let coverage = response.coverage.clone().unwrap_or_default();
    coverage.shards_asked == shards && coverage.shards_answered == shards
}

/// Item ids of a response, in order.
pub fn ids(response: &RecommendResponse) -> Vec<u64> {
    response.items.iter().map(|item| item.item_id).collect()
}

/// Adds `tsv` to `bundle` as its item attributes (`attributes.tsv`), sealed
/// into the manifest as `recsys bundle --attributes` does.
pub fn add_attributes(bundle: &TestBundle, tsv: &str) {
    std::fs::write(bundle.path().join("attributes.tsv"), tsv).unwrap();
    let mut manifest = recsys_bundle::Manifest::load(bundle.path()).unwrap();
    manifest.attributes = Some("attributes.tsv".into());
    recsys_bundle_builder::seal(bundle.path(), &mut manifest).unwrap();
}

/// A bundle built once per test process under `root` (an integration test passes
/// cargo's `CARGO_TARGET_TMPDIR` and a name of its own), rebuilt every run (never stale) and overwritten by the next one (never
/// piling up). Callers keep it in a `OnceLock`.
pub fn shared_bundle(root: &Path, items: usize, shards: u32, seed: u64) -> TestBundle {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root).unwrap();
    let dir = tempfile::Builder::new()
        .prefix("bundle-")
        .tempdir_in(root)
        .unwrap();
    build_into(dir, items, 200, 32, shards, seed)
}

/// `GET /metrics` over plain HTTP/1.0, as Prometheus' scraper would; the whole
/// response, status line and headers included.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    text
}

/// The number of `Search` calls the retrieval node whose metrics are at `metrics`
/// answered.
pub async fn searches(metrics: SocketAddr) -> f64 {
    metric_value(
        &scrape(metrics).await,
        r#"recsys_grpc_server_handled_total{code="Ok",method="Search",service="recsys.v1.RetrievalService"}"#,
    )
    .unwrap_or(0.0)
}

/// The value of the series whose line starts with `series` (name and labels).
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

/// What every OK answer must hold: at most `k` items, no id twice, none of
/// `excluded`, every score finite.
pub fn assert_answer_invariants(response: &RecommendResponse, k: u32, excluded: &[u64]) {
    assert!(
        response.items.len() <= k as usize,
        "{} items",
        response.items.len()
    );
    let mut seen = std::collections::HashSet::new();
    for item in &response.items {
        assert!(seen.insert(item.item_id), "item {} twice", item.item_id);
        assert!(
            !excluded.contains(&item.item_id),
            "excluded {}",
            item.item_id
        );
        assert!(item.retrieval_score.is_finite(), "{item:?}");
        assert!(item.ranking_score.is_none_or(f32::is_finite), "{item:?}");
    }
}

/// The `grpc.health.v1` status (the server as a whole) of the server at `addr`.
pub async fn health_status(addr: SocketAddr) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// The tests' retrieval node settings for shard `shard` of the bundle in
/// `bundle_dir`: one search thread, default limits and load mode, plaintext,
/// no registration, folding any change once the log is quiet. Change fields with struct update syntax (an `announce` to
/// register in etcd); the one place a new node setting is added for the tests.
pub fn node_config(bundle_dir: &Path, shard: u32) -> recsys_retrieval_node::NodeConfig {
    recsys_retrieval_node::NodeConfig {
        bundle: recsys_bundle::BundleSource::at(bundle_dir.to_path_buf()),
        versions: Default::default(),
        shard,
        search_threads: 1,
        limits: Default::default(),
        load_mode: Default::default(),
        announce: None,
        access: Default::default(),
        server_limits: Default::default(),
        max_in_flight: 0,
        // Fold whatever changed, so every live test's quiet spells run the fold.
        fold_min_items: 1,
    }
}
