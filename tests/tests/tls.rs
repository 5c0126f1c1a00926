//! TLS everywhere, mutual TLS inside: certificates from `recsys certs`, retrieval
//! nodes as processes of the real binary with `--tls-*`, the gateway in this
//! process with TLS on its public side, mutual TLS toward the nodes and an API key
//! file. Covers the answer end to end over TLS, a node whose certificate does not
//! match its registration (or comes from another CA) getting no traffic, the
//! refusals a client without a certificate or key gets (`UNAUTHENTICATED`), a
//! key file rotated under a running gateway, and nodes (retrieval and ranking
//! processes) that serve `Search` and `Rank` only to the gateway's certificate
//! while health and `Info` stay open to the public client certificate.
//!
//! Needs the binaries (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use recsys_discovery::{Membership, StaticMembership, StaticSpec};
use recsys_gateway::api_keys::{sha256, to_hex};
use recsys_gateway::{GatewayConfig, GatewayError, GatewaySecurity, NodeTlsFiles, RequestPolicy};
use recsys_local_cluster::ServerHandle;
use recsys_proto::v1::RecommendRequest;
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_server::tls::{ClientTls, ServerAccess, ServerTls};
use recsys_tests::processes::{ServerCommand, ServerProcess, binary, free_addr};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SHARDS: u32 = 2;
const KEY: &str = "first-key";
const ROTATED_KEY: &str = "second-key";

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-2k");
        shared_bundle(&root, 2_000, SHARDS, 61)
    })
}

/// A directory of certificates written by `recsys certs` (a fresh CA each call).
fn certs(dir: &Path) -> PathBuf {
    let out = dir.join("certs");
    let status = std::process::Command::new(binary("recsys"))
        .args(["certs", "--out"])
        .arg(&out)
        .args(["--shards", &SHARDS.to_string()])
        .env("RUST_LOG", "error")
        .status()
        .unwrap();
    assert!(status.success(), "recsys certs failed: {status}");
    out
}

/// A `retrieval-node` process for `shard` over mutual TLS, presenting `cert`
/// (`DIR/NAME.pem` and `.key`) and trusting `ca` for its clients; and where it
/// serves metrics.
fn tls_node(shard: u32, cert: &Path, ca: &Path) -> (ServerProcess, SocketAddr) {
    let args = [
        "--bundle".to_string(),
        bundle().path().display().to_string(),
        "--shard".into(),
        shard.to_string(),
    ];
    tls_server("retrieval-node", &format!("node {shard}"), &args, cert, ca)
}

/// A `ranking-node` process over mutual TLS with `DIR/ranking.pem`.
fn tls_ranking(certs: &Path) -> (ServerProcess, SocketAddr) {
    let args = [
        "--bundle".to_string(),
        bundle().path().display().to_string(),
        "--threads".into(),
        "1".into(),
    ];
    tls_server(
        "ranking-node",
        "ranking",
        &args,
        &certs.join("ranking"),
        &certs.join("ca.pem"),
    )
}

/// `binary` with `args`, listening on a free port over mutual TLS with `cert`
/// and `ca`, metrics on another; not serving yet.
fn tls_server(
    binary_name: &str,
    name: &str,
    args: &[String],
    cert: &Path,
    ca: &Path,
) -> (ServerProcess, SocketAddr) {
    let addr = free_addr();
    let metrics = free_addr();
    let process = ServerCommand::new(binary(binary_name), name, addr)
        .args(args.iter().cloned())
        .args([
            "--listen".to_string(),
            addr.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
            "--tls-cert".into(),
            cert.with_extension("pem").display().to_string(),
            "--tls-key".into(),
            cert.with_extension("key").display().to_string(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ])
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap_or_else(|error| panic!("{error}"));
    (process, metrics)
}

/// A client of the cluster's CA with `DIR/client.pem`, checking servers by the
/// name `server_name`.
fn client_tls(certs: &Path, with_cert: bool, server_name: Option<&str>) -> ClientTls {
    ClientTls {
        ca: certs.join("ca.pem"),
        identity: with_cert.then(|| (certs.join("client.pem"), certs.join("client.key"))),
        server_name: server_name.map(String::from),
    }
}

/// Polls a TLS server's health until SERVING, at most `timeout`, failing early
/// when its process has exited.
async fn wait_serving_tls(node: &mut ServerProcess, tls: &ClientTls, name: &str) {
    let channel = tls.channel(&node.addr.to_string()).unwrap();
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(60) {
        node.check_running().unwrap_or_else(|e| panic!("{e}"));
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        request.set_timeout(Duration::from_secs(1));
        match HealthClient::new(channel.clone()).check(request).await {
            Ok(answer) if answer.get_ref().status() == ServingStatus::Serving => return,
            Ok(answer) => last = format!("{:?}", answer.get_ref().status()),
            Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} not SERVING over tls within 60 s: {last}");
}

/// The gateway in this process: TLS with client certificates on its public
/// side, mutual TLS toward `shards` (one address per shard) and `ranking`, API
/// keys from `keys`.
async fn tls_gateway(
    certs: &Path,
    shards: &[SocketAddr],
    ranking: &[SocketAddr],
    keys: &Path,
) -> ServerHandle<GatewayError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = StaticSpec {
        shards: shards.iter().map(|a| vec![a.to_string()]).collect(),
        ranking: ranking.iter().map(ToString::to_string).collect(),
    };
    let membership: Arc<dyn Membership> = Arc::new(StaticMembership::new(&spec).unwrap());
    let config = GatewayConfig {
        bundle: recsys_bundle::BundleSource::at(bundle().path().to_path_buf()),
        versions: Default::default(),
        policy: RequestPolicy::default(),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_millis(200),
        security: GatewaySecurity {
            access: ServerAccess {
                tls: Some(ServerTls {
                    cert: certs.join("gateway.pem"),
                    key: certs.join("gateway.key"),
                    client_ca: Some(certs.join("ca.pem")),
                }),
                reflection: false,
            },
            node_tls: Some(NodeTlsFiles {
                ca: certs.join("ca.pem"),
                cert: certs.join("gateway-client.pem"),
                key: certs.join("gateway-client.key"),
            }),
            api_keys: Some(keys.to_path_buf()),
            session_keys: None,
        },
        server_limits: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
    };
    let token = CancellationToken::new();
    let run = recsys_gateway::run(listener, config, membership, token.clone());
    ServerHandle::spawn("tls gateway", addr, token, run)
}

fn key_file(path: &Path, keys: &[(&str, &str)]) {
    let text: String = keys
        .iter()
        .map(|(name, key)| format!("{name} {}\n", to_hex(&sha256(key.as_bytes()))))
        .collect();
    // Written whole then renamed, as an operator's tooling would, so the gateway
    // never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn request(i: usize) -> RecommendRequest {
    let users = bundle().catalog.users.ids();
    by_user(&users[i % users.len()], 10, false)
}

/// `request` with an API key header, when given.
async fn call(
    channel: &Channel,
    key: Option<&str>,
    request: RecommendRequest,
) -> Result<recsys_proto::v1::RecommendResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(Duration::from_secs(5));
    if let Some(key) = key {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
    }
    GatewayServiceClient::new(channel.clone())
        .recommend(request)
        .await
        .map(tonic::Response::into_inner)
}

/// Polls until a keyed call through `channel` is answered with every shard, or fails.
async fn wait_full_answer(channel: &Channel, key: &str) {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(30) {
        match call(channel, Some(key), request(0)).await {
            Ok(response) if full_coverage(&response, SHARDS) => return,
            Ok(response) => last = format!("{:?}", response.coverage),
            Err(status) => last = format!("{:?}: {}", status.code(), status.message()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no full answer over tls within 30 s: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_end_to_end_over_mutual_tls_and_refuses_clients_without_certificate_or_key() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let ca = certs.join("ca.pem");
    let node_client = ClientTls {
        ca: ca.clone(),
        identity: Some((
            certs.join("gateway-client.pem"),
            certs.join("gateway-client.key"),
        )),
        server_name: None,
    };
    let mut nodes = Vec::new();
    for shard in 0..SHARDS {
        let (mut node, _) = tls_node(shard, &certs.join(format!("retrieval-shard-{shard}")), &ca);
        wait_serving_tls(&mut node, &node_client, "node").await;
        nodes.push(node);
    }
    let keys = dir.path().join("api-keys");
    key_file(&keys, &[("first", KEY)]);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let gateway = tls_gateway(&certs, &addrs, &[], &keys).await;
    let gateway_addr = gateway.addr.to_string();

    let client = client_tls(&certs, true, None)
        .channel(&gateway_addr)
        .unwrap();
    wait_full_answer(&client, KEY).await;
    for i in 0..20 {
        let response = call(&client, Some(KEY), request(i)).await.unwrap();
        assert!(full_coverage(&response, SHARDS), "{:?}", response.coverage);
        assert_eq!(response.items.len(), 10);
    }

    // No client certificate: the handshake completes, every call is refused.
    let no_cert = client_tls(&certs, false, None)
        .channel(&gateway_addr)
        .unwrap();
    let status = call(&no_cert, Some(KEY), request(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );

    // A certificate, but no key or a wrong one.
    let status = call(&client, None, request(0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("missing api key"), "{status:?}");
    let status = call(&client, Some("guessed"), request(0))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Plaintext to a TLS node is no way around the gateway, and neither is TLS
    // without a client certificate.
    let node_addr = nodes[0].addr;
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{node_addr}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic::Request::new(HealthCheckRequest::default());
    health.set_timeout(Duration::from_secs(2));
    assert!(HealthClient::new(plain).check(health).await.is_err());
    let anonymous = ClientTls {
        identity: None,
        ..node_client.clone()
    };
    let mut health = tonic::Request::new(HealthCheckRequest::default());
    health.set_timeout(Duration::from_secs(2));
    let status = HealthClient::new(anonymous.channel(&node_addr.to_string()).unwrap())
        .check(health)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Rotation: the file now holds only the second key; within the poll the first
    // is refused and the second accepted, with no restart.
    key_file(&keys, &[("second", ROTATED_KEY)]);
    let started = Instant::now();
    loop {
        let old = call(&client, Some(KEY), request(1)).await;
        let new = call(&client, Some(ROTATED_KEY), request(1)).await;
        if matches!(&old, Err(s) if s.code() == Code::Unauthenticated) && new.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "key rotation not in force after 10 s: old {:?}, new {:?}",
            old.map(|_| "ok"),
            new.map(|_| "ok")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file keeps the keys in force.
    std::fs::write(&keys, "not a key line\n").unwrap();
    tokio::time::sleep(recsys_gateway::api_keys::POLL_INTERVAL * 3).await;
    call(&client, Some(ROTATED_KEY), request(2)).await.unwrap();

    gateway.stop().await.unwrap();
    for node in &mut nodes {
        node.kill9();
    }
}

/// Counts of the gateway's refused node handshakes for `reason`, in this process.
fn rejections(reason: &str) -> f64 {
    metric_value(
        &recsys_server::metrics::render(),
        &format!(r#"recsys_gateway_node_identity_rejections_total{{reason="{reason}"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_does_not_match_its_registration_gets_no_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let foreign = certs_in(&dir.path().join("foreign"));
    let ca = certs.join("ca.pem");
    let node_client = ClientTls {
        ca: ca.clone(),
        identity: Some((
            certs.join("gateway-client.pem"),
            certs.join("gateway-client.key"),
        )),
        server_name: None,
    };
    let (mut good, _) = tls_node(0, &certs.join("retrieval-shard-0"), &ca);
    wait_serving_tls(&mut good, &node_client, "shard 0").await;
    // Serves shard 1, but proves shard 0's identity: a valid certificate of the
    // cluster, for another registration.
    let (mut impostor, impostor_metrics) = tls_node(1, &certs.join("retrieval-shard-0"), &ca);
    let impostor_client = ClientTls {
        server_name: Some("retrieval-shard-0.recsys".into()),
        ..node_client.clone()
    };
    wait_serving_tls(&mut impostor, &impostor_client, "impostor").await;
    // Serves shard 1 with shard 1's name, from another CA.
    let (mut stranger, stranger_metrics) = tls_node(1, &foreign.join("retrieval-shard-1"), &ca);
    // It trusts our CA for clients, so our client certificate and its CA reach it.
    let stranger_client = ClientTls {
        ca: foreign.join("ca.pem"),
        ..node_client.clone()
    };
    wait_serving_tls(&mut stranger, &stranger_client, "stranger").await;

    let keys = dir.path().join("api-keys");
    key_file(&keys, &[("first", KEY)]);
    let client = client_tls(&certs, true, None);
    let wrong_before = rejections("wrong_identity");
    let untrusted_before = rejections("untrusted");
    for (node, metrics, reason) in [
        (&impostor, impostor_metrics, "wrong_identity"),
        (&stranger, stranger_metrics, "untrusted"),
    ] {
        let gateway = tls_gateway(&certs, &[good.addr, node.addr], &[], &keys).await;
        let channel = client.channel(&gateway.addr.to_string()).unwrap();
        // Shard 0 answers from the start; the refused node never does.
        let started = Instant::now();
        let mut answered = 0;
        while answered < 30 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "too few answers"
            );
            let Ok(response) = call(&channel, Some(KEY), request(answered)).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let coverage = response.coverage.clone().unwrap_or_default();
            assert_eq!(coverage.shards_answered, 1, "{reason}: {coverage:?}");
            assert!(coverage.degraded, "{reason}: {coverage:?}");
            answered += 1;
        }
        assert_eq!(
            searches(metrics).await,
            0.0,
            "{reason}: the node was searched"
        );
        gateway.stop().await.unwrap();
    }
    assert!(rejections("wrong_identity") > wrong_before);
    assert!(rejections("untrusted") > untrusted_before);
    // The good node did all the work.
    for node in [&mut good, &mut impostor, &mut stranger] {
        node.kill9();
    }
}

/// Another cluster's certificates (a CA the gateway does not trust).
fn certs_in(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    certs(dir)
}

/// A client of the cluster's CA presenting `DIR/NAME.pem`, checking the server
/// by the name `server_name`.
fn presenting(certs: &Path, name: &str, server_name: &str) -> ClientTls {
    ClientTls {
        ca: certs.join("ca.pem"),
        identity: Some((
            certs.join(format!("{name}.pem")),
            certs.join(format!("{name}.key")),
        )),
        server_name: Some(server_name.into()),
    }
}

/// Calls refused for the caller's identity, on the server whose metrics are at `metrics`.
async fn identity_refusals(metrics: SocketAddr) -> f64 {
    metric_value(
        &scrape(metrics).await,
        r#"recsys_unauthenticated_total{reason="identity_not_allowed"}"#,
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serve_data_only_to_the_gateway_and_health_and_info_to_any_cluster_certificate() {
    use recsys_proto::v1::ranking_service_client::RankingServiceClient;
    use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
    use recsys_proto::v1::{InfoRequest, RankRequest, SearchRequest};

    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let ca = certs.join("ca.pem");
    // Health with the public client certificate: every node comes up SERVING.
    let mut nodes = Vec::new();
    for shard in 0..SHARDS {
        let (mut node, metrics) =
            tls_node(shard, &certs.join(format!("retrieval-shard-{shard}")), &ca);
        let name = format!("retrieval-shard-{shard}.recsys");
        wait_serving_tls(&mut node, &presenting(&certs, "client", &name), "node").await;
        nodes.push((node, metrics));
    }
    let (mut ranking, ranking_metrics) = tls_ranking(&certs);
    wait_serving_tls(
        &mut ranking,
        &presenting(&certs, "client", "ranking.recsys"),
        "ranking",
    )
    .await;

    // The public client certificate, straight to a node's data services: refused,
    // the caller told which identity is needed and which it presented.
    let node_addr = nodes[0].0.addr.to_string();
    let public = presenting(&certs, "client", "retrieval-shard-0.recsys")
        .channel(&node_addr)
        .unwrap();
    let search = SearchRequest {
        query: vec![0.1; 32],
        k: 10,
        ..Default::default()
    };
    let before = identity_refusals(nodes[0].1).await;
    let status = RetrievalServiceClient::new(public.clone())
        .search(search.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    for name in ["gateway.recsys", "client.recsys"] {
        assert!(status.message().contains(name), "{status:?}");
    }
    assert_eq!(identity_refusals(nodes[0].1).await, before + 1.0);
    let ranking_addr = ranking.addr.to_string();
    let public_ranking = presenting(&certs, "client", "ranking.recsys")
        .channel(&ranking_addr)
        .unwrap();
    let rank = RankRequest {
        user_id: bundle().catalog.users.ids()[0].clone(),
        item_ids: vec![1, 2, 3],
        ..Default::default()
    };
    let status = RankingServiceClient::new(public_ranking.clone())
        .rank(rank.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("gateway.recsys"), "{status:?}");
    assert!(identity_refusals(ranking_metrics).await >= 1.0);

    // Info stays open to any certificate of the cluster; so does health (above).
    let info = RetrievalServiceClient::new(public)
        .info(InfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.shard, 0);
    RankingServiceClient::new(public_ranking)
        .info(InfoRequest {})
        .await
        .unwrap();

    // The gateway's certificate is admitted, directly and through the gateway.
    let as_gateway = presenting(&certs, "gateway-client", "retrieval-shard-0.recsys")
        .channel(&node_addr)
        .unwrap();
    RetrievalServiceClient::new(as_gateway)
        .search(search)
        .await
        .unwrap();
    let keys = dir.path().join("api-keys");
    key_file(&keys, &[("first", KEY)]);
    let shards: Vec<SocketAddr> = nodes.iter().map(|(n, _)| n.addr).collect();
    let gateway = tls_gateway(&certs, &shards, &[ranking.addr], &keys).await;
    let client = client_tls(&certs, true, None)
        .channel(&gateway.addr.to_string())
        .unwrap();
    wait_full_answer(&client, KEY).await;
    let users = bundle().catalog.users.ids();
    let started = Instant::now();
    let response = loop {
        // The gateway health-checks the ranking node before it sends it work.
        let response = call(&client, Some(KEY), ranked(&users[1], 10, 50))
            .await
            .unwrap();
        if response.ranked || started.elapsed() > Duration::from_secs(30) {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(response.ranked, "{response:?}");
    assert!(full_coverage(&response, SHARDS), "{:?}", response.coverage);
    assert_eq!(response.items.len(), 10);
    assert!(searches(nodes[0].1).await >= 1.0);

    gateway.stop().await.unwrap();
    for (node, _) in &mut nodes {
        node.kill9();
    }
    ranking.kill9();
}
