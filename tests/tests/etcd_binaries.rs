//! Real-binary clusters in etcd mode, as compose and Kubernetes run them: a real
//! etcd, two shards of two `retrieval-node` replicas each, one `ranking-node` and
//! a `gateway`, every one a process of this tree's binaries configured only by
//! `RECSYS_*` variables (`deploy/docker-compose.yml`'s set, plus short leases,
//! health checks and hedges). What only such a cluster shows: etcd paused
//! (`SIGSTOP`) under load, a lease revoked while its node serves, a replica frozen
//! until the gateway's health check drops it and thawed until it routes there
//! again, and registrations written by someone hostile.
//!
//! Every request of a fault window is checked: answered, full coverage, and the
//! same items as from the healthy cluster (exact search and a deterministic
//! ranker, so the answer is fixed). What the gateway decides is read where it
//! shows: its view changes and health verdicts in its log (stderr to a file), its
//! routing in each node's `Search` counter.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use etcd_client::GetOptions;
use recsys_discovery::{EtcdServer, nodes_prefix};
use recsys_local_cluster::ClusterError;
use recsys_proto::v1::{RecommendRequest, gateway_service_client::GatewayServiceClient};
use recsys_tests::processes::{ServerCommand, ServerProcess, binary, free_addr};
use recsys_tests::*;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

const SHARDS: u32 = 2;
const SEED: u64 = 61;
/// Short leases keep expiry windows short; nodes send keepalives every TTL/3.
const LEASE_TTL_S: u64 = 3;
/// The gateway's health checks (their timeout is the interval, at most 1 s).
const HEALTH_INTERVAL_MS: u64 = 200;
/// A call to a frozen replica goes to the other one after this long.
const HEDGE_AFTER_MS: u64 = 100;
/// Deadline of one request: far above a healthy answer, so only a hang fails it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for anything the cluster should do by itself.
const SETTLE: Duration = Duration::from_secs(20);
/// Queries whose fixed answers every request is checked against.
const QUERIES: usize = 8;
const K: u32 = 10;
/// Bounds of a background load: requests in all, and the pause between two.
const MAX_REQUESTS: u64 = 3_000;
const LOAD_PAUSE: Duration = Duration::from_millis(5);

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("etcd-binaries-4k");
        shared_bundle(&root, 4_000, SHARDS, SEED)
    })
}

/// One server process, where it serves metrics, and its log file.
struct Node {
    process: ServerProcess,
    addr: SocketAddr,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn pid(&self) -> u32 {
        self.process.pid().expect("the process runs")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Search` calls this node answered.
    async fn searches(&self) -> f64 {
        searches(self.metrics).await
    }
}

/// `kill -SIG pid` (`kill(1)`: the workspace has no unsafe code for libc's).
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// Calls `probe` until it gives a value, at most `timeout`.
async fn poll<T>(timeout: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if started.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Index of the first line of `log` at or after line `from` that holds `message`
/// and every token of `fields` (whole whitespace-separated tokens, such as
/// `node_id=s0a`).
fn find_line(log: &str, from: usize, message: &str, fields: &[&str]) -> Option<usize> {
    log.lines().enumerate().skip(from).find_map(|(i, line)| {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        (line.contains(message) && fields.iter().all(|f| tokens.contains(f))).then_some(i)
    })
}

/// The last lines of a log, for failure messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// A check query, its answer from the healthy cluster, and whether it is ranked.
#[derive(Clone)]
struct Expected {
    request: RecommendRequest,
    ids: Vec<u64>,
    ranked: bool,
}

/// Sends `expected`'s request: `Err` says how the answer differs.
async fn check(
    client: &mut GatewayServiceClient<Channel>,
    expected: &Expected,
) -> Result<(), String> {
    let response = recommend(client, expected.request.clone(), REQUEST_TIMEOUT)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    if !full_coverage(&response, SHARDS) {
        return Err(format!("coverage {:?}", response.coverage));
    }
    if response.ranked != expected.ranked {
        return Err(format!(
            "ranked {} expected {}",
            response.ranked, expected.ranked
        ));
    }
    if ids(&response) != expected.ids {
        return Err(format!(
            "items {:?} expected {:?}",
            ids(&response),
            expected.ids
        ));
    }
    Ok(())
}

/// How to start one server: its binary, its id, and its own variables.
type Spec = (&'static str, String, Vec<(&'static str, String)>);

/// The etcd key of node `id` (`rank` is the ranking node) in cluster `name`.
fn node_key_of(name: &str, id: &str) -> String {
    let role = if id == "rank" { "ranking" } else { "retrieval" };
    format!("{}{role}/{id}", nodes_prefix(name))
}

/// etcd, shards 0 and 1 with replicas `a` and `b`, a ranking node and a gateway.
struct Cluster {
    // Declared before etcd: the processes die first.
    gateway: Node,
    retrieval: BTreeMap<String, Node>,
    ranking: Node,
    etcd: EtcdServer,
    name: String,
    _logs: tempfile::TempDir,
    /// The check queries and their answers from the healthy cluster.
    expected: Vec<Expected>,
    /// One cluster at a time: seven processes per cluster, four tests at once,
    /// on two cores, and the start-up deadlines become a lottery.
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Held by the running [`Cluster`], so the tests of this file take turns.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// Starts everything, waits until every node is registered and the gateway
    /// answers with full coverage and ranking, and records the check answers.
    async fn start(name: &str) -> Self {
        let serial = ONE_CLUSTER_AT_A_TIME.lock().await;
        let etcd = EtcdServer::start().await.unwrap_or_else(|e| panic!("{e}"));
        let logs = tempfile::tempdir().unwrap();
        let bundle_dir = bundle().path().display().to_string();
        // Ports handed out to this cluster, never twice (a port found free is
        // released before its server binds it, and the next search may find it).
        let handed_out = std::cell::RefCell::new(std::collections::HashSet::new());
        let port = || loop {
            let addr = free_addr();
            if handed_out.borrow_mut().insert(addr.port()) {
                return addr;
            }
        };
        let spawn = |binary_name: &str, id: &str, env: &[(&str, String)]| {
            let (addr, metrics) = (port(), port());
            let log = logs.path().join(format!("{id}.log"));
            let mut command = ServerCommand::new(binary(binary_name), id, addr)
                .env("RUST_LOG", "info")
                .stderr_to(&log)
                // compose's x-env, and what each service sets.
                .env("RECSYS_BUNDLE", &bundle_dir)
                .env("RECSYS_ETCD", etcd.endpoint())
                .env("RECSYS_CLUSTER", name)
                .env("RECSYS_LISTEN", addr.to_string())
                .env("RECSYS_METRICS_LISTEN", metrics.to_string())
                .env("RECSYS_IO_THREADS", "1");
            if binary_name != "gateway" {
                // Where other nodes reach this one, as compose names its service.
                command = command.env("RECSYS_ADVERTISE_ADDR", addr.to_string());
            }
            for (key, value) in env {
                command = command.env(key, value);
            }
            let process = command.spawn().unwrap_or_else(|e| panic!("{e}"));
            Node {
                process,
                addr,
                metrics,
                log,
            }
        };
        let node_env = |addr_id: &str| {
            vec![
                ("RECSYS_NODE_ID", addr_id.to_string()),
                ("RECSYS_LEASE_TTL", LEASE_TTL_S.to_string()),
                ("RECSYS_DRAIN_GRACE_MS", "100".to_string()),
            ]
        };
        // Every node is started before any is waited for (they load in parallel);
        // one that exits before SERVING is started again on fresh ports, at most
        // twice: a port found free can be taken by another process before the
        // server binds it. A server that fails for another reason fails thrice.
        let start_all = async |specs: Vec<Spec>| {
            let mut nodes: Vec<Node> = specs
                .iter()
                .map(|(binary_name, id, env)| spawn(binary_name, id, env))
                .collect();
            for ((binary_name, id, env), node) in specs.iter().zip(&mut nodes) {
                let mut attempt = 1;
                loop {
                    let outcome = node.process.wait_serving(Duration::from_secs(60)).await;
                    // A node without its metrics port serves on, with a warning;
                    // the tests read its counters there, so it starts again too.
                    let metrics_taken = node.log().contains("cannot bind the metrics address");
                    match outcome {
                        Ok(()) if !metrics_taken => break,
                        Ok(()) | Err(ClusterError::Exited { .. }) if attempt < 3 => {
                            eprintln!(
                                "{id} did not start, starting it again:\n{}",
                                tail(&node.log())
                            );
                            node.process.kill9();
                            *node = spawn(binary_name, id, env);
                            attempt += 1;
                        }
                        Ok(()) => {
                            panic!("{id} cannot bind its metrics port\n{}", tail(&node.log()))
                        }
                        Err(error) => panic!("{error}\n{}", tail(&node.log())),
                    }
                }
            }
            specs
                .into_iter()
                .map(|(_, id, _)| id)
                .zip(nodes)
                .collect::<Vec<(String, Node)>>()
        };
        let mut specs = Vec::new();
        for shard in 0..SHARDS {
            for replica in ["a", "b"] {
                let id = format!("s{shard}{replica}");
                let mut env = node_env(&id);
                env.push(("RECSYS_SHARD", shard.to_string()));
                env.push(("RECSYS_SEARCH_THREADS", "1".into()));
                specs.push(("retrieval-node", id, env));
            }
        }
        let mut env = node_env("rank");
        env.push(("RECSYS_RANK_THREADS", "1".into()));
        specs.push(("ranking-node", "rank".into(), env));
        let mut retrieval: BTreeMap<String, Node> = start_all(specs).await.into_iter().collect();
        let ranking = retrieval.remove("rank").expect("started");
        // The gateway lists etcd once at start: every node is registered first.
        let keys: Vec<String> = retrieval
            .keys()
            .chain([&"rank".to_string()])
            .map(|id| node_key_of(name, id))
            .collect();
        let missing = std::sync::Mutex::new(keys.clone());
        let registered = poll(SETTLE, async || {
            let mut client = etcd.client().await.ok()?;
            let prefix = nodes_prefix(name);
            let listed = client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
                .ok()?;
            let present: Vec<String> = listed
                .kvs()
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect();
            let absent: Vec<String> = keys
                .iter()
                .filter(|key| !present.contains(key))
                .cloned()
                .collect();
            let done = absent.is_empty();
            *missing.lock().unwrap_or_else(|e| e.into_inner()) = absent;
            done.then_some(())
        })
        .await;
        assert!(
            registered.is_some(),
            "not every node registered within {SETTLE:?}; missing: {:?}",
            missing.lock().unwrap_or_else(|e| e.into_inner())
        );
        let gateway_env = vec![
            ("RECSYS_HEALTH_INTERVAL_MS", HEALTH_INTERVAL_MS.to_string()),
            ("RECSYS_HEDGE_AFTER_MS", HEDGE_AFTER_MS.to_string()),
        ];
        let (_, gateway) = start_all(vec![("gateway", "gateway".into(), gateway_env)])
            .await
            .pop()
            .expect("started");
        let mut cluster = Self {
            gateway,
            retrieval,
            ranking,
            etcd,
            name: name.into(),
            _logs: logs,
            expected: Vec::new(),
            _serial: serial,
        };
        let users = bundle().catalog.users.ids();
        wait_for_answer(
            cluster.gateway.addr,
            ranked(&users[0], K, 50),
            |r| full_coverage(r, SHARDS) && r.ranked,
            SETTLE,
        )
        .await;
        cluster.expected = cluster.record_expected().await;
        cluster
    }

    /// Node keys in etcd and their leases.
    async fn registrations(&self) -> BTreeMap<String, i64> {
        let mut client = self.etcd.client().await.unwrap();
        let prefix = nodes_prefix(&self.name);
        let listed = client
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        listed
            .kvs()
            .iter()
            .map(|kv| (String::from_utf8_lossy(kv.key()).into_owned(), kv.lease()))
            .collect()
    }

    /// The etcd key of node `id`.
    fn key(&self, id: &str) -> String {
        node_key_of(&self.name, id)
    }

    fn node_ids(&self) -> Vec<String> {
        self.retrieval
            .keys()
            .cloned()
            .chain(["rank".to_string()])
            .collect()
    }

    /// Waits until every node's key is in etcd.
    async fn wait_registered(&self) -> BTreeMap<String, i64> {
        let keys: Vec<String> = self.node_ids().iter().map(|id| self.key(id)).collect();
        poll(SETTLE, async || {
            let registered = self.registrations().await;
            keys.iter()
                .all(|key| registered.contains_key(key))
                .then_some(registered)
        })
        .await
        .unwrap_or_else(|| panic!("not every node registered: {:?}", keys))
    }

    /// Exact searches for item-like queries, checked against brute force, and
    /// ranked requests for users.
    async fn record_expected(&self) -> Vec<Expected> {
        let mut client = gateway_client(self.gateway.addr).await;
        let catalog = &bundle().catalog;
        let mut expected = Vec::new();
        for q in 0..QUERIES {
            let (request, ranked_request) = if q % 2 == 0 {
                let row = (q * 499) % catalog.items.len();
                let query: Vec<f32> = catalog
                    .items
                    .row(row)
                    .iter()
                    .map(|v| v * 1.5 + 0.01)
                    .collect();
                (by_embedding(query, K, true), false)
            } else {
                let users = catalog.users.ids();
                (ranked(&users[q % users.len()], K, 50), true)
            };
            let response = recommend(&mut client, request.clone(), REQUEST_TIMEOUT)
                .await
                .unwrap();
            assert!(full_coverage(&response, SHARDS), "{:?}", response.coverage);
            assert_eq!(response.ranked, ranked_request);
            assert_eq!(response.items.len(), K as usize);
            if let Some(recsys_proto::v1::recommend_request::Query::QueryEmbedding(query)) =
                &request.query
            {
                // Exact search: every item scores within rounding of the true top k.
                let reference = bundle().reference(&query.values, &[]);
                let truth: HashMap<u64, f64> = reference.iter().copied().collect();
                let kth = reference[K as usize - 1].1;
                for id in ids(&response) {
                    assert!(truth[&id] >= kth - 1e-4, "item {id} is not in the top {K}");
                }
            }
            expected.push(Expected {
                request,
                ids: ids(&response),
                ranked: ranked_request,
            });
        }
        expected
    }

    /// Starts a checked load through the gateway.
    async fn load(&self) -> CheckedLoad {
        CheckedLoad::start(self.gateway.addr, self.expected.clone()).await
    }

    /// Fails when a server process has exited.
    fn assert_all_running(&mut self) {
        for node in [&mut self.gateway, &mut self.ranking]
            .into_iter()
            .chain(self.retrieval.values_mut())
        {
            if let Err(error) = node.process.check_running() {
                panic!("{error}\n{}", tail(&node.log()));
            }
        }
    }
}

/// What a checked load saw.
#[derive(Debug, Default)]
struct LoadReport {
    /// Requests sent.
    sent: u64,
    /// Requests sent while strict.
    strict: u64,
    /// Failures of strict requests (the first few), and how many.
    strict_failures: Vec<String>,
    strict_failed: u64,
    /// Failures while not strict.
    loose_failed: u64,
}

impl LoadReport {
    /// Every request sent while the load was strict was answered in full.
    fn assert_no_strict_failure(&self) {
        assert!(
            self.strict_failures.is_empty(),
            "{} of {} requests failed: {:?}",
            self.strict_failed,
            self.strict,
            self.strict_failures
        );
    }
}

/// One client sending the check queries back to back (a few ms apart), at most
/// [`MAX_REQUESTS`], until stopped; while `strict` is set every failure counts
/// against the test, otherwise it is only counted.
struct CheckedLoad {
    stop: CancellationToken,
    strict: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    /// The last failure, for the message of a wait that timed out.
    last_failure: Arc<Mutex<String>>,
    task: JoinHandle<LoadReport>,
}

impl CheckedLoad {
    async fn start(gateway: SocketAddr, expected: Vec<Expected>) -> Self {
        let stop = CancellationToken::new();
        let strict = Arc::new(AtomicBool::new(true));
        let answered = Arc::new(AtomicU64::new(0));
        let last_failure = Arc::new(Mutex::new(String::from("none")));
        let mut client = gateway_client(gateway).await;
        let task = tokio::spawn({
            let (stop, strict, answered) = (stop.clone(), strict.clone(), answered.clone());
            let last_failure = last_failure.clone();
            async move {
                let mut report = LoadReport::default();
                while !stop.is_cancelled() && report.sent < MAX_REQUESTS {
                    let is_strict = strict.load(Ordering::SeqCst);
                    let query = &expected[report.sent as usize % expected.len()];
                    report.sent += 1;
                    report.strict += u64::from(is_strict);
                    let checked = check(&mut client, query).await;
                    if let Err(why) = &checked {
                        *last_failure.lock().unwrap() = why.clone();
                    }
                    match checked {
                        Ok(()) => {
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(why) if is_strict => {
                            report.strict_failed += 1;
                            if report.strict_failures.len() < 5 {
                                report.strict_failures.push(why);
                            }
                        }
                        Err(_) => report.loose_failed += 1,
                    }
                    tokio::time::sleep(LOAD_PAUSE).await;
                }
                report
            }
        });
        let load = Self {
            stop,
            strict,
            answered,
            last_failure,
            task,
        };
        load.wait_answered(5).await;
        load
    }

    /// Waits until `more` further requests were answered correctly.
    async fn wait_answered(&self, more: u64) {
        let target = self.answered.load(Ordering::SeqCst) + more;
        poll(SETTLE, async || {
            (self.answered.load(Ordering::SeqCst) >= target).then_some(())
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the load got no {more} more correct answers; the last failure: {}",
                self.last_failure.lock().unwrap()
            )
        });
    }

    fn set_strict(&self, strict: bool) {
        self.strict.store(strict, Ordering::SeqCst);
    }

    async fn stop(self) -> LoadReport {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// etcd frozen for longer than a lease: every request meanwhile is answered in
/// full (the gateway routes by its last view and the nodes serve without etcd),
/// and afterwards every node is registered again on a new lease (etcd expired the
/// old ones on waking up). Then etcd killed outright, which the gateway does see
/// (a pause is too short for its keepalive to notice): still every request is
/// answered in full from the last view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_paused_under_load_costs_no_request_and_nodes_register_again() {
    let mut cluster = Cluster::start("pause").await;
    let before = cluster.wait_registered().await;
    let load = cluster.load().await;
    let etcd_pid = cluster.etcd.pid().expect("etcd runs");

    signal(etcd_pid, "STOP");
    let stopped = Instant::now();
    // The pause itself, not a wait for readiness: past the TTL, so every lease
    // runs out while etcd sleeps.
    tokio::time::sleep(Duration::from_secs(LEASE_TTL_S) + Duration::from_millis(1500)).await;
    load.set_strict(false);
    signal(etcd_pid, "CONT");
    let paused = stopped.elapsed();

    // Every node on a new lease: etcd revoked the old ones, the nodes came back.
    let keys: Vec<String> = cluster
        .node_ids()
        .iter()
        .map(|id| cluster.key(id))
        .collect();
    let after = poll(SETTLE, async || {
        let now = cluster.registrations().await;
        keys.iter()
            .all(|key| {
                now.get(key)
                    .is_some_and(|lease| Some(lease) != before.get(key))
            })
            .then_some(now)
    })
    .await;
    let Some(after) = after else {
        let logs: Vec<String> = cluster.retrieval.values().map(|n| tail(&n.log())).collect();
        panic!(
            "not every node registered again after etcd woke up: before {before:?}, now {:?}\n{}",
            cluster.registrations().await,
            logs.join("\n---\n")
        );
    };
    // And the gateway answers in full again: once it has seen the new
    // registrations and health-checked the nodes (a second at most), which
    // follows etcd's listing above by a moment; from then on nothing may fail.
    load.wait_answered(QUERIES as u64).await;
    load.set_strict(true);
    load.wait_answered(2 * QUERIES as u64).await;

    // A pause shorter than the gateway's HTTP/2 keepalive never shows it an
    // error; a crash does at once. It must keep routing by its last view.
    let logged = cluster.gateway.log().lines().count();
    cluster.etcd.stop().await.unwrap();
    poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            logged,
            "etcd membership unavailable, keeping the last view",
            &[],
        )
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the gateway never noticed etcd was gone:\n{}",
            tail(&cluster.gateway.log())
        )
    });
    load.wait_answered(2 * QUERIES as u64).await;
    cluster.etcd.restart().await.unwrap();
    load.wait_answered(QUERIES as u64).await;
    let report = load.stop().await;
    cluster.assert_all_running();
    eprintln!(
        "etcd paused {paused:?}: {} requests, {} while paused; {} failed after it woke, until the nodes registered again; leases {before:?} -> {after:?}",
        report.sent, report.strict, report.loose_failed
    );
    report.assert_no_strict_failure();
    assert!(report.strict >= 20, "too few requests checked: {report:?}");
}

/// A lease revoked while its node serves: the gateway drops the node, the node
/// registers again on a new lease, the gateway takes it back and routes to it;
/// the other replica of its shard keeps every answer whole meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_lease_drops_its_node_until_it_registers_again() {
    let mut cluster = Cluster::start("revoke").await;
    let registered = cluster.wait_registered().await;
    let load = cluster.load().await;
    let key = cluster.key("s0a");
    let lease = registered[&key];

    let logged = cluster.gateway.log().lines().count();
    let mut client = cluster.etcd.client().await.unwrap();
    client.lease_revoke(lease).await.unwrap();

    let dropped = poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            logged,
            "node deregistered",
            &["node_id=s0a"],
        )
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the gateway never dropped s0a:\n{}",
            tail(&cluster.gateway.log())
        )
    });
    let back = poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            dropped + 1,
            "node registered",
            &["node_id=s0a"],
        )
    })
    .await;
    if back.is_none() {
        panic!(
            "the gateway never got s0a back:\n{}\n--- s0a:\n{}",
            tail(&cluster.gateway.log()),
            tail(&cluster.retrieval["s0a"].log())
        );
    }
    let now = cluster.registrations().await;
    assert!(
        now.get(&key).is_some_and(|&new| new != lease),
        "s0a is not on a new lease: {now:?}"
    );
    // Routed to again: its searches grow under the load.
    let node = &cluster.retrieval["s0a"];
    let searched = node.searches().await;
    poll(SETTLE, async || {
        (node.searches().await > searched).then_some(())
    })
    .await
    .expect("the gateway took s0a back into its view but never routed to it");
    let report = load.stop().await;
    cluster.assert_all_running();
    report.assert_no_strict_failure();
}

/// A replica frozen (`SIGSTOP`) until the gateway's health check marks it
/// unhealthy: hedges to the other replica keep every answer whole. Thawed, it
/// passes a health check and the gateway routes to it again while the other
/// replica is healthy too (an unhealthy replica is only tried when no healthy one
/// is left, so its searches would not grow otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_replica_leaves_routing_and_returns_after_it_thaws() {
    let mut cluster = Cluster::start("freeze").await;
    let load = cluster.load().await;
    let node = &cluster.retrieval["s1a"];
    let token = format!("node={}", node.addr);
    poll(SETTLE, async || (node.searches().await > 0.0).then_some(()))
        .await
        .expect("s1a was never routed to");

    // Verdicts from before the freeze (a check that timed out on a busy
    // machine) do not count.
    let logged = cluster.gateway.log().lines().count();
    signal(node.pid(), "STOP");
    let unhealthy = poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            logged,
            "node fails its health check",
            &[token.as_str()],
        )
    })
    .await;
    signal(node.pid(), "CONT");
    let unhealthy = unhealthy.unwrap_or_else(|| {
        panic!(
            "the gateway never marked frozen s1a unhealthy:\n{}",
            tail(&cluster.gateway.log())
        )
    });
    let healthy = poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            unhealthy + 1,
            "node passes its health check",
            &[token.as_str()],
        )
    })
    .await;
    if healthy.is_none() {
        panic!(
            "the gateway never marked thawed s1a healthy again:\n{}",
            tail(&cluster.gateway.log())
        );
    }
    let searched = node.searches().await;
    poll(SETTLE, async || {
        (node.searches().await > searched).then_some(())
    })
    .await
    .expect("the gateway marked s1a healthy but never routed to it again");
    let report = load.stop().await;
    cluster.assert_all_running();
    report.assert_no_strict_failure();
}

/// Registrations nobody honest wrote, under the cluster's prefix: one claiming
/// 4294967295 shards (issue 18: it sized an allocation before any check), one
/// whose shard is beyond its own count, and one that is not JSON. The gateway
/// logs them, routes around them, and answers the next 200 requests in full.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registrations_are_ignored_and_the_gateway_keeps_answering() {
    let mut cluster = Cluster::start("hostile").await;
    let prefix = format!("{}retrieval/", nodes_prefix(&cluster.name));
    let version = format!("test-{SEED}");
    let record = |id: &str, shard: u32, shard_count: u32| {
        serde_json::json!({
            "node_id": id,
            "addr": "127.0.0.1:9",
            "role": "retrieval",
            "shard": shard,
            "shard_count": shard_count,
            "bundle_version": version,
            "state": "serving",
        })
        .to_string()
    };
    let mut client = cluster.etcd.client().await.unwrap();
    for (id, value) in [
        ("hostile-huge", record("hostile-huge", 0, u32::MAX)),
        ("hostile-beyond", record("hostile-beyond", 7, SHARDS)),
        ("hostile-garbage", "{\"node_id\": [1, 2".to_string()),
    ] {
        client
            .put(format!("{prefix}{id}"), value, None)
            .await
            .unwrap();
    }

    let mut gateway = gateway_client(cluster.gateway.addr).await;
    let mut failures = Vec::new();
    for i in 0..200 {
        if let Err(why) = check(&mut gateway, &cluster.expected[i % cluster.expected.len()]).await {
            failures.push(format!("request {i}: {why}"));
            if failures.len() == 3 {
                break;
            }
        }
    }
    cluster.assert_all_running();
    assert!(
        failures.is_empty(),
        "the gateway failed after hostile registrations: {failures:?}\n{}",
        tail(&cluster.gateway.log())
    );
    poll(SETTLE, async || {
        find_line(
            &cluster.gateway.log(),
            0,
            "ignoring node registration",
            &["node_id=hostile-huge"],
        )
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the gateway did not log the hostile registration:\n{}",
            tail(&cluster.gateway.log())
        )
    });
}
