//! Bundle roots in an S3-compatible object store (issue 17 part 4), against a
//! real one on loopback (moto, `recsys_tests::moto`): `recsys bundle publish`
//! uploads a version and real node and gateway processes serve it from the
//! store; an unfinished upload and a corrupted object are never loaded, and the
//! node says why; the local cache keeps within its byte bound.
//!
//! Needs moto (`scripts/install-deps.sh` installs it); without it these fail,
//! unless `RECSYS_SKIP_MOTO_TESTS=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use recsys_bundle::{FileSet, Manifest, RemoteRoot};
use recsys_bundle_store::{BundleCache, StoreRoot};
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{InfoRequest, InfoResponse, LoadStatus};
use recsys_tests::moto::Moto;
use recsys_tests::processes::{ServerCommand, ServerProcess, binary, free_addr};
use recsys_tests::{by_embedding, full_coverage, synthetic_bundle, wait_for_answer};
use tonic_health::ServingStatus;

const DIM: usize = 16;
const BUCKET: &str = "bundles";
const READY: Duration = Duration::from_secs(60);

/// Moto started for `test` with its bucket, the root `s3://BUCKET/{prefix}` in
/// it and a client of that root; `None` when the moto tests are skipped.
fn store_root(test: &str, prefix: &str) -> Option<(Moto, String, recsys_bundle_store::Store)> {
    let moto = Moto::start(test)?;
    moto.create_bucket(BUCKET);
    let url = format!("s3://{BUCKET}/{prefix}");
    let store = moto.store(&url);
    Some((moto, url, store))
}

/// `recsys bundle publish --bundle DIR --to URL [--set-current]` against `moto`.
fn publish(moto: &Moto, dir: &Path, url: &str, set_current: bool) {
    let mut command = std::process::Command::new(binary("recsys"));
    command
        .args(["bundle", "publish", "--bundle"])
        .arg(dir)
        .args(["--to", url])
        .args(moto.s3_flags())
        .env("RUST_LOG", "error");
    if set_current {
        command.arg("--set-current");
    }
    for (key, value) in moto.env() {
        command.env(key, value);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "recsys bundle publish failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A server process serving the root at `url` from `moto`, with its own cache.
fn from_store(
    moto: &Moto,
    binary_name: &str,
    url: &str,
    cache: &Path,
    args: &[String],
) -> ServerProcess {
    let addr = free_addr();
    let mut command = ServerCommand::new(binary(binary_name), binary_name, addr)
        .args(["--bundle-root", url, "--bundle-cache"])
        .args([cache.as_os_str()])
        .args(["--listen".to_string(), addr.to_string()])
        .args(["--current-poll-ms", "100"])
        .args(moto.s3_flags())
        .args(args)
        .env("RUST_LOG", "error");
    for (key, value) in moto.env() {
        command = command.env(key, value);
    }
    command.spawn().unwrap()
}

/// A retrieval node for `shard` of the root at `url`.
fn retrieval(moto: &Moto, url: &str, cache: &Path, shard: u32) -> ServerProcess {
    let args = ["--shard", &shard.to_string(), "--search-threads", "1"].map(String::from);
    from_store(moto, "retrieval-node", url, cache, &args)
}

async fn info(addr: SocketAddr) -> InfoResponse {
    try_info(addr).await.unwrap()
}

async fn try_info(addr: SocketAddr) -> Result<InfoResponse, String> {
    let mut client = RetrievalServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|error| error.to_string())?;
    let response = client.info(InfoRequest {}).await;
    response
        .map(tonic::Response::into_inner)
        .map_err(|status| status.to_string())
}

/// Polls the node's Info (once it listens) until `check` holds, at most a
/// minute; fails at once if the process exits.
async fn info_until(
    node: &mut ServerProcess,
    what: &str,
    check: impl Fn(&InfoResponse) -> bool,
) -> InfoResponse {
    let started = Instant::now();
    loop {
        node.check_running().unwrap();
        let last = match try_info(node.addr).await {
            Ok(now) if check(&now) => return now,
            Ok(now) => format!("{now:?}"),
            Err(error) => error,
        };
        assert!(
            started.elapsed() < READY,
            "{what}: never happened; last Info {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The relative paths of the files under `dir`.
fn files(dir: &Path) -> Vec<String> {
    recsys_bundle::verify::files_under(dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_version_is_served_from_the_store() {
    let Some(moto) = Moto::start("a_published_version_is_served_from_the_store") else {
        return;
    };
    moto.create_bucket(BUCKET);
    let bundle = synthetic_bundle(2_000, 20, DIM, 2, 41);
    let url = format!("s3://{BUCKET}/prod");
    publish(&moto, bundle.path(), &url, true);
    // Publishing again uploads nothing and keeps the version.
    publish(&moto, bundle.path(), &url, true);

    let caches = tempfile::tempdir().unwrap();
    let mut nodes: Vec<ServerProcess> = (0..2)
        .map(|shard| {
            retrieval(
                &moto,
                &url,
                &caches.path().join(format!("shard-{shard}")),
                shard,
            )
        })
        .collect();
    let mut ranking = from_store(
        &moto,
        "ranking-node",
        &url,
        &caches.path().join("ranking"),
        &["--threads".to_string(), "1".to_string()],
    );
    let membership = caches.path().join("membership.json");
    let shards: Vec<Vec<String>> = nodes
        .iter()
        .map(|node| vec![node.addr.to_string()])
        .collect();
    std::fs::write(
        &membership,
        serde_json::json!({"shards": shards, "ranking": [ranking.addr.to_string()]}).to_string(),
    )
    .unwrap();
    let mut gateway = from_store(
        &moto,
        "gateway",
        &url,
        &caches.path().join("gateway"),
        &["--static".to_string(), membership.display().to_string()],
    );
    for node in &mut nodes {
        node.wait_serving(READY).await.unwrap();
    }
    ranking.wait_serving(READY).await.unwrap();
    gateway.wait_serving(READY).await.unwrap();

    let row = 7;
    let query = bundle.catalog.items.row(row).to_vec();
    let request = by_embedding(query.clone(), 10, true);
    wait_for_answer(
        gateway.addr,
        request.clone(),
        |r| full_coverage(r, 2),
        READY,
    )
    .await;
    let mut client = recsys_tests::gateway_client(gateway.addr).await;
    let response = recsys_tests::recommend(&mut client, request, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.bundle_version, "test-41");
    // An exact search: the brute-force reference's top ten.
    let expected: Vec<u64> = bundle
        .reference(&query, &[])
        .iter()
        .take(10)
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(recsys_tests::ids(&response), expected);

    // Two stages: the ranking node scores with the version's ranker.
    let ranked = recsys_tests::ranked("user-3", 10, 100);
    wait_for_answer(gateway.addr, ranked.clone(), |r| r.ranked, READY).await;
    let response = recsys_tests::recommend(&mut client, ranked, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(response.bundle_version, "test-41");
    assert_eq!(response.items.len(), 10);

    // Each server fetched only what it reads.
    let cached = |name: &str| files(&caches.path().join(name).join("test-41"));
    assert_eq!(
        cached("shard-0"),
        ["manifest.json", "shards/shard-0.usearch"]
    );
    assert_eq!(
        cached("shard-1"),
        ["manifest.json", "shards/shard-1.usearch"]
    );
    let ranking_files = cached("ranking");
    assert!(
        ranking_files
            .iter()
            .all(|file| file == "manifest.json" || file.starts_with("ranker/")),
        "{ranking_files:?}"
    );
    assert!(ranking_files.len() > 2, "{ranking_files:?}");
    let gateway_files = cached("gateway");
    assert!(
        gateway_files
            .iter()
            .all(|file| !file.starts_with("shards/")),
        "{gateway_files:?}"
    );
    assert!(
        gateway_files.contains(&"catalog.tsv".to_string()),
        "{gateway_files:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_upload_is_never_loaded_and_the_node_says_why() {
    let Some((moto, url, store)) = store_root(
        "an_unfinished_upload_is_never_loaded_and_the_node_says_why",
        "live",
    ) else {
        return;
    };
    let v1 = synthetic_bundle(1_000, 10, DIM, 2, 51);
    publish(&moto, v1.path(), &url, true);
    // v2's upload stopped before its manifest (the last object publish writes).
    let v2 = synthetic_bundle(1_000, 10, DIM, 2, 52);
    publish(&moto, v2.path(), &url, false);
    store.delete("test-52/manifest.json").unwrap();
    // v3's manifest is there but one of its shard files is not.
    let v3 = synthetic_bundle(1_000, 10, DIM, 2, 53);
    publish(&moto, v3.path(), &url, false);
    store.delete("test-53/shards/shard-0.usearch").unwrap();

    let caches = tempfile::tempdir().unwrap();
    let mut node = retrieval(&moto, &url, &caches.path().join("a"), 0);
    node.wait_serving(READY).await.unwrap();
    assert_eq!(info(node.addr).await.bundle_version, "test-51");

    for (version, why) in [
        ("test-52", "upload did not finish"),
        ("test-53", "shard-0.usearch"),
    ] {
        store
            .put_bytes("CURRENT", format!("{version}\n").into_bytes())
            .unwrap();
        let now = info_until(&mut node, &format!("{version} failing"), |info| {
            info.versions
                .iter()
                .any(|v| v.version == version && v.load_status() == LoadStatus::Failed)
        })
        .await;
        let failed = now.versions.iter().find(|v| v.version == version).unwrap();
        assert!(failed.load_error.contains(version), "{}", failed.load_error);
        assert!(failed.load_error.contains(why), "{}", failed.load_error);
        // The served version stays.
        assert_eq!(now.bundle_version, "test-51");
        assert_eq!(
            recsys_tests::health_status(node.addr).await,
            ServingStatus::Serving as i32
        );
    }

    // A node started on the unfinished version serves nothing and says why.
    store.put_bytes("CURRENT", b"test-52\n".to_vec()).unwrap();
    let mut fresh = retrieval(&moto, &url, &caches.path().join("b"), 0);
    let now = info_until(&mut fresh, "the fresh node failing", |info| {
        info.load_status() == LoadStatus::Failed
    })
    .await;
    assert!(
        now.load_error.contains("test-52/manifest.json"),
        "{}",
        now.load_error
    );
    assert_eq!(
        recsys_tests::health_status(fresh.addr).await,
        ServingStatus::NotServing as i32
    );
    // Nothing of v2 or v3 is in the caches as a version.
    for cache in ["a", "b"] {
        for version in ["test-52", "test-53"] {
            let manifest = caches
                .path()
                .join(cache)
                .join(version)
                .join("manifest.json");
            assert!(!manifest.exists(), "{}", manifest.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_object_is_refused_naming_the_file() {
    let Some((moto, url, store)) =
        store_root("a_corrupted_object_is_refused_naming_the_file", "corrupt")
    else {
        return;
    };
    let bundle = synthetic_bundle(1_000, 10, DIM, 2, 61);
    publish(&moto, bundle.path(), &url, true);
    let object = "test-61/shards/shard-0.usearch";
    let mut bytes = store.get_small(object, 1 << 30).unwrap().unwrap().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    store.put_bytes(object, bytes).unwrap();

    let caches = tempfile::tempdir().unwrap();
    let mut bad = retrieval(&moto, &url, &caches.path().join("shard-0"), 0);
    let mut good = retrieval(&moto, &url, &caches.path().join("shard-1"), 1);
    let now = info_until(&mut bad, "the corrupt shard failing", |info| {
        info.load_status() == LoadStatus::Failed
    })
    .await;
    assert!(
        now.load_error.contains("shard-0.usearch"),
        "{}",
        now.load_error
    );
    assert!(
        now.load_error.contains("checksum mismatch"),
        "{}",
        now.load_error
    );
    assert_eq!(
        recsys_tests::health_status(bad.addr).await,
        ServingStatus::NotServing as i32
    );
    // Nothing of the bad object stays in the cache; the other shard is untouched.
    let cached = files(&caches.path().join("shard-0"));
    assert!(
        cached.iter().all(|file| !file.contains("shard-0")),
        "{cached:?}"
    );
    good.wait_serving(READY).await.unwrap();
}

#[test]
fn the_cache_keeps_within_its_bound() {
    let Some((moto, url, store)) = store_root("the_cache_keeps_within_its_bound", "cache") else {
        return;
    };
    let versions: Vec<_> = (71..74)
        .map(|seed| synthetic_bundle(1_000, 10, DIM, 1, seed))
        .collect();
    for bundle in &versions {
        recsys_bundle_store::publish(&store, bundle.path(), true).unwrap();
    }
    // Publishing another bundle under a published name is refused.
    let clash = synthetic_bundle(500, 10, DIM, 1, 71);
    let error = recsys_bundle_store::publish(&store, clash.path(), false).unwrap_err();
    assert!(error.to_string().contains("already published"), "{error}");

    // Room for one version's shard and a half: never two at once.
    let manifest = Manifest::load(versions[0].path()).unwrap();
    let one: u64 = manifest
        .files
        .values()
        .map(|digest| digest.bytes)
        .sum::<u64>()
        + std::fs::metadata(versions[0].path().join("manifest.json"))
            .unwrap()
            .len();
    let bound = one * 3 / 2;
    let tmp = tempfile::tempdir().unwrap();
    let cache = BundleCache::open(tmp.path(), bound).unwrap();
    let root = StoreRoot::new(moto.store(&url), cache.clone());

    let first = root.fetch("test-71", FileSet::All).unwrap();
    assert!(cache.used_bytes() <= bound);
    // While test-71 is pinned (served), test-72 does not fit: refused, naming the bound.
    let error = root.fetch("test-72", FileSet::All).unwrap_err().to_string();
    assert!(
        error.contains("bundle-cache-max-bytes") && error.contains("test-71"),
        "{error}"
    );
    assert!(cache.used_bytes() <= bound);
    // Released (retired), it is evicted for the next one.
    drop(first);
    let second = root.fetch("test-72", FileSet::All).unwrap();
    assert_eq!(cache.versions(), ["test-72"]);
    assert!(
        cache.used_bytes() <= bound,
        "{} > {bound}",
        cache.used_bytes()
    );
    recsys_bundle::verify_bundle(&second.dir).unwrap();
    drop(second);
    let third = root.fetch("test-73", FileSet::All).unwrap();
    assert_eq!(cache.versions(), ["test-73"]);
    assert!(cache.used_bytes() <= bound);
    assert!(!tmp.path().join("test-71").exists() && !tmp.path().join("test-72").exists());
    drop(third);
    // Fetched again, a cached version is read from the disk, not the store.
    store.delete("test-73/shards/shard-0.usearch").unwrap();
    root.fetch("test-73", FileSet::All).unwrap();
}

/// A node releases a version's files when it retires the version: with room
/// for two versions of its shard and not three, it moves v1 → v2 → v3, which
/// only fits once v1, retired, leaves the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_version_leaves_the_cache() {
    let Some((moto, url, store)) = store_root("a_retired_version_leaves_the_cache", "rolling")
    else {
        return;
    };
    let versions: Vec<_> = (81..84)
        .map(|seed| synthetic_bundle(1_000, 10, DIM, 2, seed))
        .collect();
    for bundle in &versions {
        recsys_bundle_store::publish(&store, bundle.path(), false).unwrap();
    }
    // What shard 0 fetches of a version: its index and the manifest.
    let share = |bundle: &recsys_tests::TestBundle| {
        let manifest = Manifest::load(bundle.path()).unwrap();
        manifest.files[&recsys_bundle::shard_file(0)].bytes
            + std::fs::metadata(bundle.path().join("manifest.json"))
                .unwrap()
                .len()
    };
    let largest = versions.iter().map(share).max().unwrap();
    let bound = largest * 5 / 2;
    store.put_bytes("CURRENT", b"test-81\n".to_vec()).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let args = [
        "--shard",
        "0",
        "--search-threads",
        "1",
        "--retire-after-ms",
        "200",
        "--bundle-cache-max-bytes",
        &bound.to_string(),
    ]
    .map(String::from);
    let mut node = from_store(&moto, "retrieval-node", &url, cache.path(), &args);
    node.wait_serving(READY).await.unwrap();
    for version in ["test-82", "test-83"] {
        store
            .put_bytes("CURRENT", format!("{version}\n").into_bytes())
            .unwrap();
        let now = info_until(&mut node, &format!("{version} served"), |info| {
            info.bundle_version == version
                || info
                    .versions
                    .iter()
                    .any(|v| v.version == version && v.load_status() == LoadStatus::Failed)
        })
        .await;
        assert_eq!(now.bundle_version, version, "{:?}", now.versions);
        // The version before it is retired (nothing asks for it) and released.
        info_until(&mut node, "the old version retired", |info| {
            info.versions.len() == 1
        })
        .await;
    }
    let cached: Vec<String> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with('.'))
        .collect();
    assert!(!cached.contains(&"test-81".to_string()), "{cached:?}");
    assert!(cached.contains(&"test-83".to_string()), "{cached:?}");
    let used: u64 = files(cache.path())
        .iter()
        .filter(|file| !file.starts_with('.'))
        .map(|file| std::fs::metadata(cache.path().join(file)).unwrap().len())
        .sum();
    assert!(used <= bound, "{used} > {bound}");
}

/// Parts 2 and 4 together: nodes and a gateway serving a root in the store
/// follow the desired version in etcd (`recsys rollout`), not the store's
/// `CURRENT` (which they start from while etcd names none): a rollout to a
/// version published beside it switches every answer to that version's items,
/// and a rollback switches them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_through_etcd_serves_versions_from_the_store() {
    let Some((moto, url, store)) = store_root(
        "a_rollout_through_etcd_serves_versions_from_the_store",
        "etcd-rollout",
    ) else {
        return;
    };
    let versions: Vec<_> = [91, 92]
        .map(|seed| synthetic_bundle(1_000, 10, DIM, 2, seed))
        .into_iter()
        .collect();
    for bundle in &versions {
        recsys_bundle_store::publish(&store, bundle.path(), false).unwrap();
    }
    // The store's pointer says one version; etcd will say another.
    store.put_bytes("CURRENT", b"test-91\n".to_vec()).unwrap();
    let etcd = recsys_discovery::EtcdServer::start().await.unwrap();
    let cluster = ["--etcd", &etcd.endpoint(), "--cluster", "s3roll"].map(String::from);
    let caches = tempfile::tempdir().unwrap();
    let mut servers: Vec<ServerProcess> = (0..2u32)
        .map(|shard| {
            let mut args = vec![
                "--shard".to_string(),
                shard.to_string(),
                "--search-threads".into(),
                "1".into(),
                "--node-id".into(),
                format!("retrieval-{shard}"),
                "--retire-after-ms".into(),
                "200".into(),
            ];
            args.extend(cluster.clone());
            let cache = caches.path().join(format!("shard-{shard}"));
            from_store(&moto, "retrieval-node", &url, &cache, &args)
        })
        .collect();
    let mut args = cluster.to_vec();
    args.extend(["--retire-after-ms".to_string(), "200".to_string()]);
    servers.push(from_store(
        &moto,
        "gateway",
        &url,
        &caches.path().join("gateway"),
        &args,
    ));
    for server in &mut servers {
        server.wait_serving(READY).await.unwrap();
    }
    let gateway = servers[2].addr;

    // An exact search for one of a version's rows: that version's brute-force
    // top ten, and the answer names the version.
    let answers_from = |index: usize| {
        let bundle = &versions[index];
        let query = bundle.catalog.items.row(3).to_vec();
        let expected: Vec<u64> = bundle
            .reference(&query, &[])
            .iter()
            .take(10)
            .map(|(id, _)| *id)
            .collect();
        let version = format!("test-{}", [91, 92][index]);
        async move {
            let request = by_embedding(query, 10, true);
            let ready = |r: &recsys_proto::v1::RecommendResponse| {
                r.bundle_version == version && full_coverage(r, 2)
            };
            wait_for_answer(gateway, request.clone(), ready, READY).await;
            let mut client = recsys_tests::gateway_client(gateway).await;
            let answer = recsys_tests::recommend(&mut client, request, Duration::from_secs(5))
                .await
                .unwrap();
            assert_eq!(answer.bundle_version, version);
            assert_eq!(recsys_tests::ids(&answer), expected, "{version}");
        }
    };
    answers_from(0).await;
    let rollout = |action: &[&str]| {
        let output = std::process::Command::new(binary("recsys"))
            .args(["rollout", "--etcd", &etcd.endpoint(), "--cluster", "s3roll"])
            .args(action)
            .env("RUST_LOG", "error")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "recsys rollout {action:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    // A rollback goes back to an earlier rollout, so the first version is
    // rolled out too (the nodes already serve it: nothing changes).
    rollout(&["--version", "test-91"]);
    answers_from(0).await;
    rollout(&["--version", "test-92"]);
    answers_from(1).await;
    rollout(&["--rollback"]);
    answers_from(0).await;
    for server in &mut servers {
        server.check_running().unwrap();
    }
}
