//! Registration and membership against a real etcd: each test starts its own
//! [`EtcdServer`] and waits for conditions on the published views with deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recsys_discovery::{
    ClusterView, EtcdMembership, EtcdOptions, EtcdServer, Membership, NodeRecord, NodeState,
    Registration, RegistrationOptions, Role, node_key,
};
use tokio::sync::{Semaphore, watch};

/// How long any condition may take; generous for a slow, shared 2-core VM.
const DEADLINE: Duration = Duration::from_secs(10);
const CLUSTER: &str = "test";

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn retrieval(id: &str, shard: u32) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        addr: format!("127.0.0.1:{}", 7000 + shard),
        role: Role::Retrieval,
        shard: Some(shard),
        shard_count: Some(2),
        bundle_version: "v1".into(),
        state: NodeState::Serving,
        versions: Vec::new(),
    }
}

fn ranking(id: &str) -> NodeRecord {
    NodeRecord {
        node_id: id.into(),
        addr: "127.0.0.1:7100".into(),
        role: Role::Ranking,
        shard: None,
        shard_count: None,
        bundle_version: "v1".into(),
        state: NodeState::Serving,
        versions: Vec::new(),
    }
}

fn register(etcd: &EtcdServer, record: NodeRecord) -> Registration {
    let mut options = RegistrationOptions::new(vec![etcd.endpoint()], CLUSTER, record);
    options.lease_ttl = Duration::from_secs(2);
    Registration::start(options)
}

fn membership(etcd: &EtcdServer) -> EtcdMembership {
    EtcdMembership::start(EtcdOptions::new(vec![etcd.endpoint()], CLUSTER))
}

/// Every node id in the view, sorted.
fn ids(view: &ClusterView) -> Vec<String> {
    let mut ids: Vec<String> = view
        .shards
        .iter()
        .flatten()
        .chain(&view.ranking)
        .map(|node| node.node_id.clone())
        .collect();
    ids.sort();
    ids
}

fn find<'a>(view: &'a ClusterView, id: &str) -> Option<&'a NodeRecord> {
    view.shards
        .iter()
        .flatten()
        .chain(&view.ranking)
        .find(|node| node.node_id == id)
}

/// Waits until the published view satisfies `predicate`; returns how long it took.
async fn wait_for(
    views: &mut watch::Receiver<Arc<ClusterView>>,
    what: &str,
    predicate: impl Fn(&ClusterView) -> bool,
) -> Duration {
    let started = Instant::now();
    let waited = tokio::time::timeout(DEADLINE, views.wait_for(|view| predicate(view)))
        .await
        .map(|found| found.is_ok());
    match waited {
        Ok(true) => started.elapsed(),
        Ok(false) => panic!("membership stopped while waiting for {what}"),
        Err(_) => panic!(
            "no view with {what} after {DEADLINE:?}; last: {:?}",
            ids(&views.borrow())
        ),
    }
}

/// Waits until a flag (connected, registered) has `value`.
async fn wait_flag(flag: &mut watch::Receiver<bool>, what: &str, value: bool) -> Duration {
    let started = Instant::now();
    match tokio::time::timeout(DEADLINE, flag.wait_for(|v| *v == value)).await {
        Ok(Ok(_)) => started.elapsed(),
        _ => panic!("{what} did not become {value} within {DEADLINE:?}"),
    }
}

fn has(id: &'static str) -> impl Fn(&ClusterView) -> bool {
    move |view| find(view, id).is_some()
}

fn lacks(id: &'static str) -> impl Fn(&ClusterView) -> bool {
    move |view| find(view, id).is_none()
}

#[tokio::test]
async fn registered_node_appears_and_deregistered_node_disappears() {
    init_tracing();
    let etcd = EtcdServer::start().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    wait_flag(&mut members.connected(), "membership connected", true).await;

    let started = Instant::now();
    let shard = register(&etcd, retrieval("r0", 0));
    let ranker = register(&etcd, ranking("k0"));
    wait_for(&mut views, "r0 and k0", |v| has("r0")(v) && has("k0")(v)).await;
    let visible = started.elapsed();
    // Only measured: `wait_for` bounds it by DEADLINE, and a loaded 2-core machine
    // can take more than any tight bound while the watch is still correct.
    println!("measured: registration to visible in {visible:?}");
    {
        let view = views.borrow();
        assert_eq!(view.shard_count, 2);
        assert_eq!(view.shards[0][0].addr, "127.0.0.1:7000");
        assert_eq!(view.ranking[0].node_id, "k0");
    }
    wait_flag(&mut shard.registered(), "r0 registered", true).await;

    let started = Instant::now();
    shard.deregister().await;
    let deregistered = started.elapsed();
    let gone = wait_for(&mut views, "r0 gone", lacks("r0")).await;
    println!("measured: deregister took {deregistered:?}, then gone from view in {gone:?}");
    assert!(has("k0")(&views.borrow()));
    let mut client = etcd.client().await.unwrap();
    let left = client
        .get(node_key(CLUSTER, Role::Retrieval, "r0"), None)
        .await
        .unwrap();
    assert!(left.kvs().is_empty(), "revoking the lease deletes the key");
    drop(ranker);
}

#[tokio::test]
async fn draining_node_leaves_the_view_and_can_return() {
    init_tracing();
    let etcd = EtcdServer::start().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    let node = register(&etcd, retrieval("r0", 0));
    let other = register(&etcd, retrieval("r1", 0));
    wait_for(&mut views, "r0 and r1", |v| has("r0")(v) && has("r1")(v)).await;

    let started = Instant::now();
    node.set_state(NodeState::Draining).await.unwrap();
    wait_for(&mut views, "r0 draining", lacks("r0")).await;
    println!(
        "measured: draining to gone from view in {:?}",
        started.elapsed()
    );
    assert!(has("r1")(&views.borrow()));

    node.set_state(NodeState::Serving).await.unwrap();
    wait_for(&mut views, "r0 serving again", has("r0")).await;
    drop((node, other));
}

#[tokio::test]
async fn compaction_relists_without_losing_nodes() {
    init_tracing();
    let etcd = EtcdServer::start().await.unwrap();
    let a = register(&etcd, retrieval("a", 0));
    let b = register(&etcd, ranking("b"));
    wait_flag(&mut a.registered(), "a registered", true).await;
    wait_flag(&mut b.registered(), "b registered", true).await;

    // The watch waits at the gate after the first list, so it falls behind.
    let gate = Arc::new(Semaphore::new(0));
    let members = EtcdMembership::start(
        EtcdOptions::new(vec![etcd.endpoint()], CLUSTER).with_watch_gate(gate.clone()),
    );
    let mut views = members.subscribe();
    wait_for(&mut views, "a and b listed", |v| has("a")(v) && has("b")(v)).await;
    let history = record_views(&members);

    let mut client = etcd.client().await.unwrap();
    let c_key = node_key(CLUSTER, Role::Retrieval, "c");
    for version in 0..50 {
        let mut c = retrieval("c", 1);
        c.bundle_version = format!("v{version}");
        client
            .put(c_key.as_str(), serde_json::to_string(&c).unwrap(), None)
            .await
            .unwrap();
    }
    let d = register(&etcd, retrieval("d", 1));
    wait_flag(&mut d.registered(), "d registered", true).await;
    let compacted = etcd.compact_to_latest().await.unwrap();
    println!("compacted to revision {compacted}");

    // The watch now starts below the compaction point: etcd cancels it, and only a
    // fresh list can show c's last version and d.
    let started = Instant::now();
    gate.add_permits(1);
    wait_for(&mut views, "c at v49 and d after the re-list", |v| {
        find(v, "c").is_some_and(|c| c.bundle_version == "v49") && has("d")(v)
    })
    .await;
    println!(
        "measured: re-list after compaction in {:?}",
        started.elapsed()
    );
    wait_flag(&mut members.connected(), "membership connected", true).await;

    // The watch after the re-list is live: later changes arrive.
    d.deregister().await;
    wait_for(&mut views, "d gone", lacks("d")).await;
    let e = register(&etcd, retrieval("e", 0));
    wait_for(&mut views, "e", has("e")).await;

    // A compaction behind a live watch changes nothing for it.
    etcd.compact_to_latest().await.unwrap();
    let mut c = retrieval("c", 1);
    c.bundle_version = "v50".into();
    client
        .put(c_key.as_str(), serde_json::to_string(&c).unwrap(), None)
        .await
        .unwrap();
    wait_for(&mut views, "c at v50", |v| {
        find(v, "c").is_some_and(|c| c.bundle_version == "v50")
    })
    .await;

    for view in history.lock().unwrap().iter() {
        let ids = ids(view);
        assert!(
            ids.contains(&"a".to_string()) && ids.contains(&"b".to_string()),
            "a view lost a known node: {ids:?}"
        );
    }
    drop((a, b, e));
}

/// Records every view `members` publishes from now on.
fn record_views(members: &EtcdMembership) -> Arc<Mutex<Vec<Arc<ClusterView>>>> {
    let history = Arc::new(Mutex::new(Vec::new()));
    let mut views = members.subscribe();
    let sink = history.clone();
    tokio::spawn(async move {
        while views.changed().await.is_ok() {
            let view = views.borrow_and_update().clone();
            sink.lock().unwrap().push(view);
        }
    });
    history
}

#[tokio::test]
async fn view_survives_etcd_outage_and_catches_up() {
    init_tracing();
    let mut etcd = EtcdServer::start().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    let mut connected = members.connected();
    let a = register(&etcd, retrieval("a", 0));
    wait_for(&mut views, "a", has("a")).await;
    wait_flag(&mut connected, "membership connected", true).await;

    etcd.stop().await.unwrap();
    let noticed = wait_flag(&mut connected, "membership connected", false).await;
    wait_flag(&mut a.registered(), "a registered", false).await;
    println!("measured: membership noticed the outage in {noticed:?}");
    assert!(has("a")(&views.borrow()), "the last view stays");

    // A node that starts while etcd is away keeps trying, and does not fail.
    let b = register(&etcd, ranking("b"));
    assert!(!b.is_registered());
    assert!(b.set_state(NodeState::Serving).await.is_err());

    etcd.restart().await.unwrap();
    let started = Instant::now();
    wait_for(&mut views, "a and b after etcd returned", |v| {
        has("a")(v) && has("b")(v)
    })
    .await;
    println!(
        "measured: catch-up after etcd restart in {:?}",
        started.elapsed()
    );
    wait_flag(&mut a.registered(), "a registered again", true).await;
    wait_flag(&mut connected, "membership connected again", true).await;
    drop((a, b));
}

#[tokio::test]
async fn starts_while_etcd_is_down() {
    init_tracing();
    let mut etcd = EtcdServer::start().await.unwrap();
    etcd.stop().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    let node = register(&etcd, retrieval("a", 0));
    assert!(ids(&views.borrow()).is_empty());
    assert!(!*members.connected().borrow());

    etcd.restart().await.unwrap();
    let took = wait_for(&mut views, "a", has("a")).await;
    println!("measured: visible {took:?} after etcd came up");
    drop(node);
}

#[tokio::test]
async fn lost_lease_registers_again() {
    init_tracing();
    let mut etcd = EtcdServer::start().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    let node = register(&etcd, retrieval("a", 0));
    node.set_state(NodeState::Serving).await.ok();
    wait_for(&mut views, "a", has("a")).await;
    wait_flag(&mut node.registered(), "a registered", true).await;
    let key = node_key(CLUSTER, Role::Retrieval, "a");
    // A long-lived etcd is far ahead in revisions of the wiped one that replaces
    // it: a membership that resumed its watch from a revision it saw before the
    // wipe would miss every event after it. Another node's state changes make them.
    let busy = register(&etcd, retrieval("c", 1));
    wait_flag(&mut busy.registered(), "c registered", true).await;
    for _ in 0..25 {
        busy.set_state(NodeState::Draining).await.unwrap();
        busy.set_state(NodeState::Serving).await.unwrap();
    }
    busy.deregister().await;
    wait_for(&mut views, "c gone", lacks("c")).await;
    let old_lease = {
        let mut client = etcd.client().await.unwrap();
        client.get(key.as_str(), None).await.unwrap().kvs()[0].lease()
    };
    let mut connected = members.connected();
    connected.borrow_and_update();

    // A wiped etcd knows neither the key nor the lease. The old membership keeps
    // its last view, which still shows `a`: nothing below may be satisfied by it.
    etcd.restart_wiped().await.unwrap();
    let started = Instant::now();
    let mut client = etcd.client().await.unwrap();
    let registered_again = loop {
        let found = client.get(key.as_str(), None).await.unwrap();
        if let Some(kv) = found.kvs().first() {
            assert_ne!(kv.lease(), 0, "the key is on a lease");
            assert_ne!(kv.lease(), old_lease, "a lease the wiped etcd cannot know");
            break started.elapsed();
        }
        assert!(started.elapsed() < DEADLINE, "a never registered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // A membership that starts now can only see `a` through the new registration.
    let fresh = membership(&etcd);
    let mut fresh_views = fresh.subscribe();
    wait_for(&mut fresh_views, "a in a fresh membership", has("a")).await;

    // The old membership noticed the wipe and watches the new etcd (whose
    // revisions start again from 1): a node registered now reaches its view.
    tokio::time::timeout(DEADLINE, connected.changed())
        .await
        .expect("the membership never noticed that etcd went away")
        .unwrap();
    wait_flag(&mut connected, "membership connected again", true).await;
    let other = register(&etcd, retrieval("b", 1));
    wait_for(&mut views, "a and b after the wipe", |v| {
        has("a")(v) && has("b")(v)
    })
    .await;
    println!(
        "measured: key back {registered_again:?} after the wiped restart, b in the old view after {:?}",
        started.elapsed()
    );
    wait_flag(&mut node.registered(), "a registered", true).await;
    drop((other, fresh));
}

#[tokio::test]
async fn revoked_lease_registers_again() {
    init_tracing();
    let etcd = EtcdServer::start().await.unwrap();
    let members = membership(&etcd);
    let mut views = members.subscribe();
    let node = register(&etcd, retrieval("a", 0));
    wait_for(&mut views, "a", has("a")).await;
    wait_flag(&mut node.registered(), "a registered", true).await;

    // Someone else revokes the lease: the stream stays up, the next keepalive
    // answers TTL 0, and the node registers on a new lease.
    let mut client = etcd.client().await.unwrap();
    let key = node_key(CLUSTER, Role::Retrieval, "a");
    let lease = client.get(key.as_str(), None).await.unwrap().kvs()[0].lease();
    let started = Instant::now();
    client.lease_revoke(lease).await.unwrap();
    // The view may drop `a` and regain it between two looks, so watch the lease.
    let now = loop {
        let found = client.get(key.as_str(), None).await.unwrap();
        if let Some(kv) = found.kvs().first().filter(|kv| kv.lease() != lease) {
            break kv.lease();
        }
        assert!(started.elapsed() < DEADLINE, "a never registered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_for(&mut views, "a back", has("a")).await;
    println!(
        "measured: registered again {:?} after the revoke",
        started.elapsed()
    );
    assert_ne!(now, lease, "registered on a new lease");
}

#[tokio::test]
async fn malformed_values_are_skipped() {
    init_tracing();
    let etcd = EtcdServer::start().await.unwrap();
    let mut client = etcd.client().await.unwrap();
    let prefix = recsys_discovery::nodes_prefix(CLUSTER);
    client
        .put(
            format!("{prefix}retrieval/listed-garbage"),
            "{not json",
            None,
        )
        .await
        .unwrap();
    let good = serde_json::to_string(&retrieval("good", 0)).unwrap();
    client
        .put(node_key(CLUSTER, Role::Retrieval, "good"), good, None)
        .await
        .unwrap();

    let members = membership(&etcd);
    let mut views = members.subscribe();
    wait_for(&mut views, "good", has("good")).await;
    assert_eq!(ids(&views.borrow()), ["good"]);

    // Garbage arriving through the watch is skipped too, and garbage written over a
    // registration removes that node.
    client
        .put(format!("{prefix}ranking/watched-garbage"), "[1, 2]", None)
        .await
        .unwrap();
    let later = register(&etcd, ranking("later"));
    wait_for(&mut views, "later", has("later")).await;
    client
        .put(node_key(CLUSTER, Role::Retrieval, "good"), "\u{0}", None)
        .await
        .unwrap();
    wait_for(&mut views, "good overwritten", lacks("good")).await;
    assert_eq!(ids(&views.borrow()), ["later"]);
    drop(later);
}
