//! TLS everywhere, mutual TLS inside: certificates from `recsys certs`, retrieval
//! nodes as processes of the real binary with `--tls-*`, the gateway in this
//! process with TLS on its public side, mutual TLS toward the nodes and an API key
//! file. Covers the answer end to end over TLS, a node whose certificate does not
//! match its registration (or comes from another CA) getting no traffic, the
//! refusals a client without a certificate or key gets (`UNAUTHENTICATED`), and a
//! key file rotated under a running gateway.
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
/// (`DIR/NAME.pem` and `.key`) and trusting `ca` for its clients.
fn tls_node(shard: u32, cert: &Path, ca: &Path) -> (ServerProcess, SocketAddr) {
    let addr = free_addr();
    let metrics = free_addr();
    let process = ServerCommand::new(binary("retrieval-node"), format!("node {shard}"), addr)
        .args([
            "--bundle".to_string(),
            bundle().path().display().to_string(),
            "--shard".into(),
            shard.to_string(),
            "--listen".into(),
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
/// side, mutual TLS toward `shards` (one address per shard), API keys from `keys`.
async fn tls_gateway(
    certs: &Path,
    shards: &[SocketAddr],
    keys: &Path,
) -> ServerHandle<GatewayError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spec = StaticSpec {
        shards: shards.iter().map(|a| vec![a.to_string()]).collect(),
        ranking: vec![],
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
        },
        server_limits: Default::default(),
        max_in_flight: 0,
        item_log: None,
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
    let gateway = tls_gateway(&certs, &addrs, &keys).await;
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
        let gateway = tls_gateway(&certs, &[good.addr, node.addr], &keys).await;
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
