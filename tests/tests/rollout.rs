//! Rollout and rollback of bundle versions (issue 17, part 2), against real
//! servers, real processes and a real etcd:
//!
//! - one process, no etcd (`recsys serve --bundle-root`'s cluster): `CURRENT`
//!   moved to v2 and back under steady load; zero failed requests, and every
//!   answer's items belong to the version the answer names;
//! - processes and etcd: `recsys rollout --version v2` under steady load, a
//!   replica killed with SIGKILL in the middle and restarted (it comes back on
//!   the desired version), `recsys rollout --rollback`; zero failed requests,
//!   every answer from one version, the one it names;
//! - a version whose shard file is corrupt on its nodes is never switched to,
//!   and `recsys rollout --status` says which node failed and why.
//!
//! The two versions have disjoint item ids (v2's are v1's plus [`V2_OFFSET`]),
//! so an answer that mixed them, or named the wrong one, shows.
//!
//! The binaries must be built first (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use recsys_bundle::{BundleRoot, IndexParams};
use recsys_bundle_builder::synthetic::{SyntheticSpec, generate};
use recsys_bundle_builder::{BuildOptions, Staging, build_bundle};
use recsys_discovery::EtcdServer;
use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_proto::v1::RecommendRequest;
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_tests::processes::{ServerProcess, free_addr, spawn};
use recsys_tests::{gateway_client, ranked};
use tokio::sync::Mutex;
use tonic::transport::Channel;

/// v2's item ids are v1's plus this.
const V2_OFFSET: u64 = 1_000_000;
const ITEMS: usize = 600;
const DIM: usize = 16;
const SHARDS: u32 = 2;
/// The longest any switch may take here; only a bound for a test that fails.
const SWITCH_LIMIT: Duration = Duration::from_secs(120);

/// Builds `version` into `root` (ids offset by `offset`, the planted ranker),
/// through the builder's staging, as `recsys bundle --root` does.
fn build_version(root: &Path, version: &str, offset: u64) {
    let spec = SyntheticSpec {
        items: ITEMS,
        users: 40,
        dimensions: DIM,
        clusters: 8,
        seed: 11,
    };
    let mut catalog = generate(&spec).unwrap();
    for id in &mut catalog.items.ids {
        *id += offset;
    }
    let staging = Staging::version(root, version).unwrap();
    let options = BuildOptions {
        params: IndexParams::default(),
        shard_count: SHARDS,
        version: version.into(),
        source: "rollout test".into(),
        threads: 1,
    };
    let mut manifest = build_bundle(
        staging.path(),
        &catalog.items,
        Some(&catalog.users),
        &options,
        &|_| {},
    )
    .unwrap();
    let inputs = recsys_model::planted::PlantedInputs {
        dim: DIM,
        user_ids: catalog.users.ids(),
        user_vectors: catalog.users.data(),
        item_ids: &catalog.items.ids,
        item_vectors: &catalog.items.data,
        item_quality: &catalog.item_quality,
        quality_weight: 0.3,
    };
    recsys_model::planted::write(staging.path(), &inputs, &format!("planted-{version}")).unwrap();
    manifest.ranker = Some(recsys_bundle::RankerSpec::attached(false));
    recsys_bundle_builder::seal(staging.path(), &mut manifest).unwrap();
    staging.commit().unwrap();
}

/// Which version an id belongs to.
fn version_of(id: u64) -> &'static str {
    if id >= V2_OFFSET { "v2" } else { "v1" }
}

/// What the load saw.
#[derive(Debug, Default)]
struct Seen {
    answers: usize,
    failures: Vec<String>,
    /// Answers by the version they named, in order of arrival.
    versions: Vec<String>,
}

/// Waits until the gateway ranks: with etcd, it may list the nodes before the
/// ranking node's registration is in (the load then starts from a cluster that
/// ranks, so an unranked answer later is a rollout's fault).
async fn wait_until_ranked(client: &mut GatewayServiceClient<Channel>) {
    let started = Instant::now();
    loop {
        let answer = client.recommend(ranked("user-0", 10, 50)).await;
        if answer.is_ok_and(|a| a.into_inner().ranked) {
            return;
        }
        assert!(started.elapsed() < SWITCH_LIMIT, "the gateway never ranked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends ranked requests one after another until `stop`, checking each answer.
fn steady_load(
    mut client: GatewayServiceClient<Channel>,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        wait_until_ranked(&mut client).await;
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let user = format!("user-{}", i % 40);
            i += 1;
            let request: RecommendRequest = ranked(&user, 10, 50);
            let mut call = tonic::Request::new(request);
            call.set_timeout(Duration::from_secs(10));
            let outcome = client.recommend(call).await;
            let mut seen = seen.lock().await;
            match outcome {
                Ok(response) => {
                    let response = response.into_inner();
                    seen.answers += 1;
                    let named = response.bundle_version.clone();
                    let coverage = response.coverage.clone().unwrap_or_default();
                    if coverage.degraded {
                        seen.failures
                            .push(format!("{named}: degraded: {coverage:?}"));
                    }
                    if !response.ranked {
                        seen.failures.push(format!("{named}: not ranked"));
                    }
                    if response.items.is_empty() {
                        seen.failures.push(format!("{named}: no items"));
                    }
                    for item in &response.items {
                        if version_of(item.item_id) != named {
                            seen.failures.push(format!(
                                "answer named {named} holds item {} of {}",
                                item.item_id,
                                version_of(item.item_id)
                            ));
                        }
                    }
                    seen.versions.push(named);
                }
                Err(status) => seen.failures.push(format!("{status:?}")),
            }
        }
    })
}

/// Waits until answers name `version`.
async fn wait_for_answers_of(seen: &Mutex<Seen>, version: &str) -> Duration {
    let started = Instant::now();
    loop {
        {
            let seen = seen.lock().await;
            if seen.versions.last().map(String::as_str) == Some(version) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < SWITCH_LIMIT,
                "answers never named {version}; failures: {:?}",
                seen.failures
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for `count` more answers: the version served after a switch goes on
/// answering once the old one is dropped.
async fn more_answers(seen: &Mutex<Seen>, count: usize) {
    let from = seen.lock().await.answers;
    let started = Instant::now();
    while seen.lock().await.answers < from + count {
        assert!(started.elapsed() < SWITCH_LIMIT, "the load stalled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Checks what the load saw: no failure, and once an answer named a version,
/// none named the previous one (each switch happens once, at one moment).
async fn assert_clean(seen: &Mutex<Seen>, order: &[&str]) {
    let seen = seen.lock().await;
    assert!(seen.failures.is_empty(), "failures: {:?}", seen.failures);
    // Runs of answers of one version, in order.
    let mut runs: Vec<(&str, usize)> = Vec::new();
    for version in &seen.versions {
        match runs.last_mut() {
            Some((last, count)) if *last == version.as_str() => *count += 1,
            _ => runs.push((version, 1)),
        }
    }
    let switches: Vec<&str> = runs.iter().map(|(version, _)| *version).collect();
    assert_eq!(switches, order, "versions answered, in order");
    eprintln!("{} answers, none failed: {runs:?}", seen.answers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_switch_in_one_process_under_load() {
    let root = tempfile::tempdir().unwrap();
    build_version(root.path(), "v1", 0);
    build_version(root.path(), "v2", V2_OFFSET);
    let roots = BundleRoot::new(root.path());
    roots.set_current("v1").unwrap();

    let mut options = LocalClusterOptions::new(root.path());
    options.replicas = 1;
    options.versions.poll = Duration::from_millis(100);
    // Longer than any request here can take between the gateway and a node.
    options.versions.retire_after = Duration::from_secs(2);
    let cluster = LocalCluster::start(options).await.unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        gateway_client(cluster.gateway_addr).await,
        seen.clone(),
        stop.clone(),
    );
    wait_for_answers_of(&seen, "v1").await;
    roots.set_current("v2").unwrap();
    wait_for_answers_of(&seen, "v2").await;
    roots.set_current("v1").unwrap();
    wait_for_answers_of(&seen, "v1").await;
    more_answers(&seen, 100).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_clean(&seen, &["v1", "v2", "v1"]).await;
    cluster.shutdown().await.unwrap();
}

/// The processes of an etcd cluster serving `root`.
struct Processes {
    retrieval: Vec<(u32, String, ServerProcess)>,
    ranking: ServerProcess,
    gateway: ServerProcess,
}

fn retrieval_args(
    root: &Path,
    etcd: &str,
    shard: u32,
    id: &str,
    switch: &str,
) -> (std::net::SocketAddr, Vec<String>) {
    let addr = free_addr();
    let args = [
        "--switch",
        switch,
        "--bundle-root",
        &root.display().to_string(),
        "--shard",
        &shard.to_string(),
        "--listen",
        &addr.to_string(),
        "--search-threads",
        "1",
        "--io-threads",
        "1",
        "--etcd",
        etcd,
        "--cluster",
        "rollout",
        "--node-id",
        id,
        "--lease-ttl",
        "2",
        "--retire-after-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    (addr, args)
}

async fn start_retrieval(
    root: &Path,
    etcd: &str,
    shard: u32,
    id: &str,
    switch: &str,
) -> ServerProcess {
    let (addr, args) = retrieval_args(root, etcd, shard, id, switch);
    let mut node = spawn(id, "retrieval-node", addr, &args);
    node.wait_serving(Duration::from_secs(60)).await.unwrap();
    node
}

async fn start_processes(root: &Path, etcd: &str, switch: &str) -> Processes {
    let mut retrieval = Vec::new();
    for shard in 0..SHARDS {
        for replica in ["a", "b"] {
            let id = format!("retrieval-{shard}{replica}");
            let node = start_retrieval(root, etcd, shard, &id, switch).await;
            retrieval.push((shard, id, node));
        }
    }
    let addr = free_addr();
    let args = [
        "--bundle-root",
        &root.display().to_string(),
        "--listen",
        &addr.to_string(),
        "--threads",
        "1",
        "--etcd",
        etcd,
        "--cluster",
        "rollout",
        "--node-id",
        "ranking-0",
        "--lease-ttl",
        "2",
        "--retire-after-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    let mut ranking = spawn("ranking-0", "ranking-node", addr, &args);
    ranking.wait_serving(Duration::from_secs(60)).await.unwrap();
    let addr = free_addr();
    let args = [
        "--bundle-root",
        &root.display().to_string(),
        "--listen",
        &addr.to_string(),
        "--etcd",
        etcd,
        "--cluster",
        "rollout",
        "--retire-after-ms",
        "2000",
    ]
    .map(String::from)
    .to_vec();
    let mut gateway = spawn("gateway", "gateway", addr, &args);
    gateway.wait_serving(Duration::from_secs(60)).await.unwrap();
    Processes {
        retrieval,
        ranking,
        gateway,
    }
}

fn rollout(etcd: &str, action: &[&str]) -> String {
    let output = std::process::Command::new(recsys_tests::processes::binary("recsys"))
        .args(["rollout", "--etcd", etcd, "--cluster", "rollout"])
        .args(action)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "recsys rollout {action:?}: {text}");
    text
}

/// Waits until every retrieval node registered in etcd reports `version` in
/// `phase` ("serving" or "failed"), as `recsys rollout --status` shows it.
async fn wait_for_status(etcd: &str, needle: &str, count: usize) -> String {
    let started = Instant::now();
    loop {
        let status = rollout(etcd, &["--status"]);
        if status.matches(needle).count() >= count {
            return status;
        }
        assert!(
            started.elapsed() < SWITCH_LIMIT,
            "never saw {count}x {needle:?} in:\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_kill_and_rollback_through_etcd_under_load() {
    let root = tempfile::tempdir().unwrap();
    build_version(root.path(), "v1", 0);
    build_version(root.path(), "v2", V2_OFFSET);
    BundleRoot::new(root.path()).set_current("v1").unwrap();
    let etcd_server = EtcdServer::start().await.unwrap();
    let etcd = etcd_server.endpoint();
    let mut processes = start_processes(root.path(), &etcd, "side-by-side").await;
    // A first rollout records v1 as the desired version, so that a rollback
    // has somewhere to go.
    rollout(&etcd, &["--version", "v1"]);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        gateway_client(processes.gateway.addr).await,
        seen.clone(),
        stop.clone(),
    );
    wait_for_answers_of(&seen, "v1").await;

    rollout(&etcd, &["--version", "v2"]);
    // In the middle of the rollout: one replica of shard 0 dies, and comes back.
    let (shard, id, victim) = &mut processes.retrieval[0];
    victim.kill9();
    let restarted = start_retrieval(root.path(), &etcd, *shard, id, "side-by-side").await;
    processes.retrieval[0].2 = restarted;
    wait_for_answers_of(&seen, "v2").await;
    // The restarted node serves the desired version, v2, like the others.
    let status = wait_for_status(&etcd, "v2* (serving)", 4).await;
    assert!(status.contains("retrieval-0a"), "{status}");

    rollout(&etcd, &["--rollback"]);
    wait_for_answers_of(&seen, "v1").await;
    more_answers(&seen, 100).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_clean(&seen, &["v1", "v2", "v1"]).await;
    let status = rollout(&etcd, &["--status"]);
    assert!(status.contains("desired version v1"), "{status}");
    assert!(
        status.contains("v1 -> v2") || status.contains("stack"),
        "{status}"
    );

    for (_, _, node) in &mut processes.retrieval {
        node.check_running().unwrap();
    }
    processes.ranking.check_running().unwrap();
    processes.gateway.check_running().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_fails_to_load_is_never_switched_to() {
    let root = tempfile::tempdir().unwrap();
    build_version(root.path(), "v1", 0);
    build_version(root.path(), "v2", V2_OFFSET);
    // Shard 1 of v2 is corrupt (a byte flipped after sealing): its nodes fail
    // to load v2, so no gateway may switch to it.
    let shard_file = root.path().join("v2").join(recsys_bundle::shard_file(1));
    let mut bytes = std::fs::read(&shard_file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x5a;
    std::fs::write(&shard_file, bytes).unwrap();
    BundleRoot::new(root.path()).set_current("v1").unwrap();
    let etcd_server = EtcdServer::start().await.unwrap();
    let etcd = etcd_server.endpoint();
    let mut processes = start_processes(root.path(), &etcd, "side-by-side").await;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        gateway_client(processes.gateway.addr).await,
        seen.clone(),
        stop.clone(),
    );
    wait_for_answers_of(&seen, "v1").await;
    rollout(&etcd, &["--version", "v2"]);
    // Both replicas of shard 1 say why v2 cannot be served, naming the file;
    // both of shard 0 serve it beside v1.
    let status = wait_for_status(&etcd, "v2 (failed:", 2).await;
    assert!(status.contains("shard-1"), "{status}");
    assert!(
        status.contains("cannot load the desired version"),
        "{status}"
    );
    wait_for_status(&etcd, "v2 (serving)", 2).await;
    // Answers go on from v1 for a while after every node made up its mind.
    let answered = seen.lock().await.answers;
    let started = Instant::now();
    while seen.lock().await.answers < answered + 100 && started.elapsed() < SWITCH_LIMIT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_clean(&seen, &["v1"]).await;
    for (_, _, node) in &mut processes.retrieval {
        node.check_running().unwrap();
    }
    processes.gateway.check_running().unwrap();
}

/// `--switch replace`: the two replicas of each shard drop v1 and load v2 in
/// turns, so each shard always has a replica answering the version gateways
/// use; no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_switching_in_place_take_turns() {
    let root = tempfile::tempdir().unwrap();
    build_version(root.path(), "v1", 0);
    build_version(root.path(), "v2", V2_OFFSET);
    BundleRoot::new(root.path()).set_current("v1").unwrap();
    let etcd_server = EtcdServer::start().await.unwrap();
    let etcd = etcd_server.endpoint();
    let mut processes = start_processes(root.path(), &etcd, "replace").await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(
        gateway_client(processes.gateway.addr).await,
        seen.clone(),
        stop.clone(),
    );
    wait_for_answers_of(&seen, "v1").await;
    rollout(&etcd, &["--version", "v2"]);
    wait_for_answers_of(&seen, "v2").await;
    // Every retrieval node ends up holding v2 alone.
    let started = Instant::now();
    loop {
        let status = rollout(&etcd, &["--status"]);
        let retrieval: Vec<&str> = status
            .lines()
            .filter(|l| l.contains("retrieval shard"))
            .collect();
        if retrieval.len() == 4
            && retrieval
                .iter()
                .all(|l| l.contains("v2* (serving)") && !l.contains("v1"))
        {
            break;
        }
        assert!(started.elapsed() < SWITCH_LIMIT, "{status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_clean(&seen, &["v1", "v2"]).await;
    for (_, _, node) in &mut processes.retrieval {
        node.check_running().unwrap();
    }
}
