//! etcd secured as compose and Kubernetes run it: a real etcd serving `https://`
//! only with client certificates required (`--client-cert-auth`), certificates
//! from `recsys certs`, and auth on with the cluster's users and roles from
//! `recsys_discovery::etcd_auth::setup`. Covers a cluster whose every server logs
//! in as its own etcd user registering and being routed to over TLS; each user
//! refused (`Denied`, "permission denied") outside its own keys; a forged
//! registration (what a leaked retrieval password allows) getting no traffic;
//! and clients without the CA, without a certificate or without TLS refused.
//!
//! Needs the binaries (`cargo build --workspace --bins`) and etcd.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_catalog_log::ChangeLog;
use recsys_discovery::etcd::{connect, request};
use recsys_discovery::etcd_auth::{ClusterUser, root_credentials, setup};
use recsys_discovery::{
    DiscoveryError, EtcdAccess, EtcdCredentials, EtcdServer, EtcdServerTls, EtcdTls, Role, node_key,
};
use recsys_local_cluster::{ClusterTls, EtcdCluster, LocalCluster, LocalClusterOptions};
use recsys_proto::v1::ShardChangeRecord;
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_tests::processes::binary;
use recsys_tests::*;

const SHARDS: u32 = 2;
const TIMEOUT: Duration = Duration::from_secs(5);

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd-tls-2k");
        shared_bundle(&root, 2_000, SHARDS, 67)
    })
}

/// `recsys certs` into `dir/certs`: a fresh CA and every certificate, etcd's included.
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

/// A TLS etcd with auth on for `cluster`; the passwords are in `dir/secrets`.
struct SecureEtcd {
    etcd: EtcdServer,
    certs: PathBuf,
    secrets: PathBuf,
    cluster: String,
}

impl SecureEtcd {
    async fn start(dir: &Path, cluster: &str) -> Self {
        let certs = certs(dir);
        let mut etcd = EtcdServer::start_tls(EtcdServerTls {
            cert: certs.join("etcd.pem"),
            key: certs.join("etcd.key"),
            ca: certs.join("ca.pem"),
            client: (certs.join("etcd-client.pem"), certs.join("etcd-client.key")),
        })
        .await
        .unwrap();
        let secrets = dir.join("secrets");
        setup(&etcd.access(), cluster, &secrets).await.unwrap();
        // Setup is idempotent: a second run (as root, auth now on) changes nothing.
        setup(&etcd.access(), cluster, &secrets).await.unwrap();
        etcd.set_root(root_credentials(&secrets));
        Self {
            etcd,
            certs,
            secrets,
            cluster: cluster.to_string(),
        }
    }

    fn access(&self, kind: ClusterUser) -> EtcdAccess {
        self.etcd
            .access()
            .with_credentials(Some(kind.credentials(&self.cluster, &self.secrets)))
    }

    fn prefix(&self) -> String {
        format!("/recsys/{}/", self.cluster)
    }
}

/// Puts `key` as the etcd user of `kind`.
async fn put_as(access: &EtcdAccess, key: &str) -> Result<(), DiscoveryError> {
    let mut client = connect(access).await?;
    request("put", client.put(key, "x", None)).await.map(drop)
}

fn assert_denied(outcome: Result<(), DiscoveryError>, what: &str) {
    match outcome {
        Err(DiscoveryError::Denied { message, .. }) => {
            assert!(message.contains("permission denied"), "{what}: {message}")
        }
        other => panic!("{what}: expected a permission refusal, got {other:?}"),
    }
}

fn change(shard: u32) -> Vec<ShardChangeRecord> {
    vec![ShardChangeRecord {
        shard,
        shard_count: SHARDS,
        bundle_version: "v".into(),
        changes: vec![],
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_etcd_user_writes_only_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let secure = SecureEtcd::start(dir.path(), "rbac").await;
    let base = secure.prefix();
    let retrieval = secure.access(ClusterUser::Retrieval);
    let ranking = secure.access(ClusterUser::Ranking);
    let gateway = secure.access(ClusterUser::Gateway);
    let rollout = secure.access(ClusterUser::Rollout);

    // Each writes its own keys.
    put_as(&retrieval, &format!("{base}nodes/retrieval/r-0"))
        .await
        .unwrap();
    put_as(&ranking, &format!("{base}nodes/ranking/k-0"))
        .await
        .unwrap();
    put_as(&rollout, &format!("{base}desired_version"))
        .await
        .unwrap();
    ChangeLog::connect(&gateway, &secure.cluster)
        .await
        .unwrap()
        .append(&change(0))
        .await
        .unwrap();

    // And nothing else.
    for (access, key, what) in [
        (
            &retrieval,
            format!("{base}nodes/ranking/r-0"),
            "retrieval as ranking",
        ),
        (
            &retrieval,
            format!("{base}desired_version"),
            "retrieval sets the version",
        ),
        (
            &retrieval,
            format!("{base}catalog/shard-00000/x"),
            "retrieval writes the log",
        ),
        (
            &retrieval,
            "/recsys/other/nodes/retrieval/r-0".to_string(),
            "another cluster",
        ),
        (
            &ranking,
            format!("{base}nodes/retrieval/k-0"),
            "ranking as retrieval",
        ),
        (
            &gateway,
            format!("{base}nodes/retrieval/g-0"),
            "the gateway registers",
        ),
        (
            &rollout,
            format!("{base}nodes/retrieval/v-0"),
            "rollout registers",
        ),
        (
            &rollout,
            format!("{base}catalog/shard-00000/x"),
            "rollout writes the log",
        ),
    ] {
        assert_denied(put_as(access, &key).await, what);
    }
    // A node user appending item changes: refused, and the error says so.
    let log = ChangeLog::connect(&retrieval, &secure.cluster)
        .await
        .unwrap();
    let error = log.append(&change(1)).await.unwrap_err().to_string();
    assert!(error.contains("permission denied"), "{error}");
    // Every user reads its cluster: a node follows the log, a gateway the nodes.
    let (entries, _) = log.read_all_after(0).await.unwrap();
    assert_eq!(entries.len(), 1);
    let mut client = connect(&gateway).await.unwrap();
    let nodes = request(
        "get",
        client.get(
            format!("{base}nodes/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        ),
    )
    .await
    .unwrap();
    assert_eq!(nodes.kvs().len(), 2);

    // No login at all, and a wrong password: refused as such.
    let mut anonymous = connect(&secure.etcd.access()).await.unwrap();
    let outcome = request("get", anonymous.get(base.clone(), None)).await;
    assert!(
        matches!(outcome, Err(DiscoveryError::Denied { .. })),
        "{outcome:?}"
    );
    let wrong = dir.path().join("wrong.password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let outcome = connect(
        &secure.etcd.access().with_credentials(Some(EtcdCredentials {
            user: ClusterUser::Gateway.user(&secure.cluster),
            password_file: wrong,
        })),
    )
    .await;
    let error = outcome.err().expect("a wrong password logged in");
    assert!(
        matches!(error, DiscoveryError::Denied { .. }),
        "a wrong password is a refusal: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_the_ca_a_certificate_or_tls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secure = SecureEtcd::start(dir.path(), "refusals").await;
    let foreign = certs(&dir.path().join("foreign"));
    let good = secure.access(ClusterUser::Gateway);
    // The good client first, so the refusals below are about what they lack.
    let mut client = connect(&good).await.unwrap();
    request("get", client.get(secure.prefix(), None))
        .await
        .unwrap();

    let tls = good.tls.clone().unwrap();
    let without_certificate = EtcdAccess {
        tls: Some(EtcdTls {
            identity: None,
            ..tls.clone()
        }),
        ..good.clone()
    };
    let other_ca = EtcdAccess {
        tls: Some(EtcdTls {
            ca: foreign.join("ca.pem"),
            identity: Some((
                foreign.join("etcd-client.pem"),
                foreign.join("etcd-client.key"),
            )),
        }),
        ..good.clone()
    };
    for (access, what) in [
        (without_certificate, "no client certificate"),
        (other_ca, "another CA"),
    ] {
        let outcome = async {
            let mut client = connect(&access).await?;
            request("get", client.get(secure.prefix(), None)).await
        }
        .await;
        assert!(
            matches!(
                outcome,
                Err(DiscoveryError::Etcd { .. } | DiscoveryError::Timeout { .. })
            ),
            "{what}: {outcome:?}"
        );
    }
    // Plaintext to the TLS port: refused before any call.
    let plain = EtcdAccess::plain(vec![secure.etcd.endpoint().replace("https://", "http://")]);
    let outcome = async {
        let mut client = connect(&plain).await?;
        request("get", client.get(secure.prefix(), None)).await
    }
    .await;
    assert!(outcome.is_err(), "plaintext to a TLS etcd: {outcome:?}");
    // An https URL without a CA is a configuration error, named before connecting.
    let outcome = connect(&EtcdAccess {
        tls: None,
        ..good.clone()
    })
    .await;
    assert!(
        matches!(outcome, Err(DiscoveryError::EtcdConfig(_))),
        "{:?}",
        outcome.err()
    );
}

/// `recsys_gateway_node_identity_rejections_total{reason}` of this process.
fn rejections(reason: &str) -> f64 {
    metric_value(
        &recsys_server::metrics::render(),
        &format!(r#"recsys_gateway_node_identity_rejections_total{{reason="{reason}"}}"#),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_a_tls_etcd_with_auth_registers_routes_and_ignores_a_forged_node() {
    let dir = tempfile::tempdir().unwrap();
    let secure = SecureEtcd::start(dir.path(), "secure").await;
    let mut options = LocalClusterOptions::new(bundle().path());
    options.tls = Some(ClusterTls {
        dir: secure.certs.clone(),
    });
    options.etcd = Some(EtcdCluster {
        etcd: secure.etcd.access(),
        cluster: secure.cluster.clone(),
        lease_ttl: Duration::from_secs(5),
        users: Some(secure.secrets.clone()),
    });
    // Returns once the gateway's view, read from etcd as the gateway's user,
    // holds every shard each node registered as its own user.
    let cluster = LocalCluster::start(options).await.unwrap();
    let tls = cluster.tls.clone().unwrap();
    let channel = tls
        .client("client")
        .channel(&cluster.gateway_addr.to_string())
        .unwrap();
    let mut client = GatewayServiceClient::new(channel);
    let users = bundle().catalog.users.ids();
    let response = recommend(&mut client, by_user(&users[0], 10, false), TIMEOUT)
        .await
        .unwrap();
    assert!(full_coverage(&response, SHARDS), "{:?}", response.coverage);

    // What a leaked retrieval password allows: a registration claiming shard 1 at
    // the address of shard 0's node. Its certificate names shard 0, so the
    // gateway's check refuses it and it gets no traffic.
    let shard0 = cluster.node_addr(0, 0).unwrap();
    let forged = serde_json::json!({
        "node_id": "forged",
        "addr": shard0.to_string(),
        "role": "retrieval",
        "shard": 1,
        "shard_count": SHARDS,
        "bundle_version": cluster.manifest().version,
        "state": "serving",
    });
    let before = rejections("wrong_identity");
    let mut etcd = connect(&secure.access(ClusterUser::Retrieval))
        .await
        .unwrap();
    request(
        "put",
        etcd.put(
            node_key(&secure.cluster, Role::Retrieval, "forged"),
            forged.to_string(),
            None,
        ),
    )
    .await
    .unwrap();
    let started = Instant::now();
    while rejections("wrong_identity") <= before {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway never checked the forged node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..50 {
        let response = recommend(
            &mut client,
            by_user(&users[i % users.len()], 10, false),
            TIMEOUT,
        )
        .await
        .unwrap();
        assert!(
            full_coverage(&response, SHARDS),
            "request {i} with a forged node registered: {:?}",
            response.coverage
        );
    }
    cluster.shutdown().await.unwrap();
}
