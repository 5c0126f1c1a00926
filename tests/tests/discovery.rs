//! Discovery through a real etcd: nodes register and the gateway routes to them;
//! replicas killed with `kill -9`, stopped with SIGTERM, and etcd itself going
//! away under a steady load cost no request.
//!
//! Retrieval nodes here are real processes of the `retrieval-node` binary (only a
//! process can be killed with `-9`); the gateway runs in the test process with the
//! same `run` as its binary and an [`EtcdMembership`].

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use recsys_discovery::{ClusterView, EtcdMembership, EtcdOptions, EtcdServer, Membership};
use recsys_gateway::GatewayError;
use recsys_gateway::{GatewayConfig, RequestPolicy};
use recsys_local_cluster::{EtcdCluster, LocalCluster, LocalClusterOptions, ServerHandle};
use recsys_proto::v1::{RecommendRequest, RecommendResponse};
use recsys_tests::load::Load;
use recsys_tests::processes::{self, RetrievalProcess, ServerProcess, free_addr};
use recsys_tests::*;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const SHARDS: u32 = 2;
/// Short leases keep the kill -9 test short; the default is 10 s.
const LEASE_TTL_S: u64 = 2;

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("discovery-4k");
        shared_bundle(&root, 4_000, SHARDS, 51)
    })
}

/// A `retrieval-node` process for `shard`, registered in `etcd` under `cluster`,
/// with its metrics on `metrics`.
fn node_process(etcd: &EtcdServer, cluster: &str, shard: u32, name: &str) -> ServerProcess {
    node_process_with_metrics(etcd, cluster, shard, name, free_addr())
}

fn node_process_with_metrics(
    etcd: &EtcdServer,
    cluster: &str,
    shard: u32,
    name: &str,
    metrics: std::net::SocketAddr,
) -> ServerProcess {
    processes::retrieval(&RetrievalProcess {
        bundle: bundle().path(),
        etcd: etcd.endpoint(),
        cluster,
        shard,
        name,
        metrics,
        lease_ttl_s: LEASE_TTL_S,
    })
}

/// Waits until `view` satisfies `done`, at most `timeout`; returns how long it
/// took. On a timeout the panic also lists what etcd itself holds under the
/// cluster's prefix, which tells a registration that never landed from a watch
/// that missed it.
async fn wait_view(
    view: &mut watch::Receiver<Arc<ClusterView>>,
    etcd: &EtcdServer,
    timeout: Duration,
    done: impl Fn(&ClusterView) -> bool,
) -> Duration {
    let started = Instant::now();
    let reached = tokio::time::timeout(timeout, view.wait_for(|v| done(v)))
        .await
        .map(|_| ());
    if reached.is_err() {
        panic!(
            "view not reached within {timeout:?}: {:?}\netcd holds: {:?}",
            *view.borrow(),
            registered_keys(etcd).await
        );
    }
    started.elapsed()
}

/// Every key under `/recsys/` with its lease, or why etcd did not say.
async fn registered_keys(etcd: &EtcdServer) -> Result<Vec<(String, i64)>, String> {
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .map_err(|e| e.to_string())?;
    let listing = client
        .get(
            "/recsys/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(listing
        .kvs()
        .iter()
        .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
        .collect())
}

fn replicas(view: &ClusterView, shard: usize) -> Vec<String> {
    view.shards
        .get(shard)
        .map(|r| r.iter().map(|n| n.node_id.clone()).collect())
        .unwrap_or_default()
}

/// A gateway in this process discovering through etcd, SERVING.
async fn gateway(etcd: &EtcdServer, cluster: &str) -> ServerHandle<GatewayError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let membership = Arc::new(EtcdMembership::start(EtcdOptions::new(
        vec![etcd.endpoint()],
        cluster,
    )));
    let config = GatewayConfig {
        bundle: recsys_bundle::BundleSource::at(bundle().path().to_path_buf()),
        versions: Default::default(),
        policy: RequestPolicy::default(),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_millis(500),
        security: Default::default(),
        server_limits: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
    };
    let token = CancellationToken::new();
    let run = recsys_gateway::run(listener, config, membership, token.clone());
    let mut gateway = ServerHandle::spawn("gateway", addr, token, run);
    gateway
        .wait_serving(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    gateway
}

fn request(i: u64) -> RecommendRequest {
    let users = bundle().catalog.users.ids();
    by_user(&users[i as usize % users.len()], 10, false)
}

/// Two replicas of each shard as processes, all registered and SERVING.
async fn replicated_nodes(
    etcd: &EtcdServer,
    cluster: &str,
    view: &mut watch::Receiver<Arc<ClusterView>>,
) -> Vec<Vec<ServerProcess>> {
    let mut nodes = Vec::new();
    for shard in 0..SHARDS {
        let pair: Vec<ServerProcess> = ["a", "b"]
            .iter()
            .map(|r| node_process(etcd, cluster, shard, &format!("s{shard}{r}")))
            .collect();
        nodes.push(pair);
    }
    for node in nodes.iter_mut().flatten() {
        node.wait_serving(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // Generous: four debug-build nodes starting at once on two loaded cores
    // register on a lease of LEASE_TTL_S, and a CI machine's etcd may take
    // seconds per write; what this waits for is the view, not its speed.
    wait_view(view, etcd, Duration::from_secs(30), |v| {
        v.shard_count == SHARDS && v.shards.iter().all(|r| r.len() == 2)
    })
    .await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_node_is_routed_to_and_a_deregistered_one_is_not() {
    let etcd = EtcdServer::start().await.unwrap();
    let mut options = LocalClusterOptions::new(bundle().path());
    options.etcd = Some(EtcdCluster {
        etcd: etcd.access(),
        cluster: "routing".into(),
        lease_ttl: Duration::from_secs(LEASE_TTL_S),
        users: None,
    });
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let full = recommend(&mut client, request(0), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(full.coverage.unwrap().shards_answered, SHARDS);

    // A graceful stop deregisters: shard 0 then has no replica, which the
    // gateway reports as coverage (not a connection error to a dead address).
    cluster.stop_node(0, 0).await.unwrap();
    let membership = EtcdMembership::start(EtcdOptions::new(vec![etcd.endpoint()], "routing"));
    let mut view = membership.subscribe();
    wait_view(&mut view, &etcd, Duration::from_secs(15), |v| {
        replicas(v, 0).is_empty()
    })
    .await;
    let partial = recommend(&mut client, request(1), Duration::from_secs(5))
        .await
        .unwrap();
    let coverage = partial.coverage.unwrap();
    assert_eq!(coverage.shards_answered, SHARDS - 1);
    assert!(
        coverage.reasons[0].reason.contains("no replica"),
        "{:?}",
        coverage.reasons
    );

    // A new node for shard 0 is routed to once it is SERVING: the gateway learns it
    // from the watch and admits it after a health check (each second). The time is
    // measured and printed; the bound only catches a node never routed to, since a
    // loaded 2-core machine can stretch a second.
    let mut node = node_process(&etcd, "routing", 0, "late-s0");
    node.wait_serving(Duration::from_secs(60)).await.unwrap();
    let serving = Instant::now();
    loop {
        let answer = recommend(&mut client, request(2), Duration::from_secs(5))
            .await
            .unwrap();
        if answer.coverage.unwrap().shards_answered == SHARDS {
            break;
        }
        assert!(
            serving.elapsed() < Duration::from_secs(20),
            "the new node was not routed to within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!(
        "registration → first routed request: {:?} after SERVING",
        serving.elapsed()
    );
    node.terminate(Duration::from_secs(15)).await.unwrap();
    wait_view(&mut view, &etcd, Duration::from_secs(15), |v| {
        replicas(v, 0).is_empty()
    })
    .await;
    cluster.shutdown().await.unwrap();
}

/// etcd, two replicas per shard, a gateway and a steady load already answering.
struct Loaded {
    etcd: EtcdServer,
    /// Kept alive: dropping it stops the watch that feeds `view`.
    _membership: EtcdMembership,
    view: watch::Receiver<Arc<ClusterView>>,
    nodes: Vec<Vec<ServerProcess>>,
    /// Stopped at the end of each test, which fails if it failed.
    gateway: ServerHandle<GatewayError>,
    load: Load,
}

async fn loaded(cluster: &str) -> Loaded {
    let etcd = EtcdServer::start().await.unwrap();
    let membership = EtcdMembership::start(EtcdOptions::new(vec![etcd.endpoint()], cluster));
    let mut view = membership.subscribe();
    let nodes = replicated_nodes(&etcd, cluster, &mut view).await;
    let gateway = gateway(&etcd, cluster).await;
    // The load counts every failure, so it starts once the gateway has found the
    // nodes in etcd, not merely once it is SERVING.
    let full = |r: &RecommendResponse| full_coverage(r, SHARDS);
    wait_for_answer(gateway.addr, request(0), full, Duration::from_secs(30)).await;
    let load = Load::start(gateway.addr, 4, Duration::from_secs(2), request).await;
    assert!(load.wait_for_answers(50, Duration::from_secs(30)).await);
    Loaded {
        etcd,
        _membership: membership,
        view,
        nodes,
        gateway,
        load,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_per_shard_under_load_fails_nothing() {
    let mut c = loaded("kill").await;
    let killed = Instant::now();
    for pair in &mut c.nodes {
        pair[0].kill9();
    }
    let removed = wait_view(
        &mut c.view,
        &c.etcd,
        Duration::from_secs(LEASE_TTL_S * 5),
        |v| v.shards.iter().all(|r| r.len() == 1),
    )
    .await;
    eprintln!("kill -9 → removed from routing: {removed:?} (lease TTL {LEASE_TTL_S} s)");
    assert!(c.load.wait_for_answers(50, Duration::from_secs(30)).await);
    let report = c.load.stop().await;
    eprintln!(
        "kill -9 under load: {report:?}, {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.partial, 0, "{report:?}");
    c.gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_replica_per_shard_under_load_fails_nothing() {
    let mut c = loaded("term").await;
    for pair in &mut c.nodes {
        let stopped = Instant::now();
        pair[0]
            .terminate(Duration::from_secs(15))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{} drained and exited in {:?}",
            pair[0].name,
            stopped.elapsed()
        );
    }
    wait_view(&mut c.view, &c.etcd, Duration::from_secs(15), |v| {
        v.shards.iter().all(|r| r.len() == 1)
    })
    .await;
    assert!(c.load.wait_for_answers(50, Duration::from_secs(30)).await);
    let report = c.load.stop().await;
    eprintln!("SIGTERM under load: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.partial, 0, "{report:?}");
    c.gateway.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_under_load_fails_nothing_and_a_node_added_meanwhile_is_used() {
    let mut c = loaded("outage").await;
    c.etcd.stop().await.unwrap();
    let outage = Duration::from_secs(
        std::env::var("RECSYS_TEST_ETCD_OUTAGE_S")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    // A third replica of shard 0 starts while etcd is away: it serves but cannot
    // register until etcd returns.
    let late_metrics = free_addr();
    let mut late = node_process_with_metrics(&c.etcd, "outage", 0, "late-s0", late_metrics);
    late.wait_serving(Duration::from_secs(60)).await.unwrap();
    let outage_started = Instant::now();
    while outage_started.elapsed() < outage {
        // The load runs all along; this only paces the outage.
        assert!(c.load.wait_for_answers(1, Duration::from_secs(10)).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.etcd.restart().await.unwrap();
    let caught_up = wait_view(&mut c.view, &c.etcd, Duration::from_secs(30), |v| {
        replicas(v, 0).iter().any(|id| id == "late-s0")
    })
    .await;
    eprintln!("etcd back → node added during the outage in the view: {caught_up:?}");
    // The gateway routes to it: its own Search counter moves.
    let searched = || searches(late_metrics);
    let before = searched().await;
    assert!(c.load.wait_for_answers(50, Duration::from_secs(30)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while searched().await <= before {
        assert!(
            Instant::now() < deadline,
            "the gateway never routed to the node added during the outage"
        );
        assert!(c.load.wait_for_answers(10, Duration::from_secs(10)).await);
    }
    let report = c.load.stop().await;
    eprintln!("etcd down {outage:?} under load: {report:?}");
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.partial, 0, "{report:?}");
    c.gateway.stop().await.unwrap();
}
