//! Immutable, verifiable bundle versions (issue 17, part 1), against the real
//! binaries and real servers:
//!
//! - `recsys bundle --root` killed with SIGKILL at random points (seeded) never
//!   leaves a half version that loads, and the version CURRENT names still
//!   verifies and serves; the next complete build cleans up what the killed
//!   ones left;
//! - a flipped byte or a truncated file keeps the node that reads it
//!   NOT_SERVING, naming the file (retrieval, ranking, gateway), and the
//!   gateway's `Recommend` says the load failed, not that it is still loading;
//! - `recsys bundle verify` passes good bundles and roots and fails bad ones
//!   naming the file.
//!
//! The binaries must be built first (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recsys_bundle::root::{CURRENT_FILE, STAGING_PREFIX};
use recsys_bundle::{BundleRoot, verify_bundle};
use recsys_proto::v1::{
    InfoRequest, LoadStatus, RankRequest, SearchRequest,
    ranking_service_client::RankingServiceClient, retrieval_service_client::RetrievalServiceClient,
};
use recsys_tests::processes::{binary, free_addr, spawn};
use recsys_tests::static_gateway::gateway_config;
use recsys_tests::{by_embedding, gateway_client, health_status, recommend, synthetic_bundle};
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;

const DIM: usize = 16;

/// A client deadline no answer here needs.
const WAIT: Duration = Duration::from_secs(30);

/// `recsys bundle --root ROOT --synthetic ...` building `version`, as a command.
fn build_command(root: &Path, version: &str, items: usize) -> Command {
    let mut command = Command::new(binary("recsys"));
    command
        .args(["bundle", "--synthetic", "--shards", "2", "--threads", "1"])
        .args(["--items", &items.to_string(), "--users", "50"])
        .args(["--synthetic-dim", &DIM.to_string(), "--seed", "5"])
        .arg("--root")
        .arg(root)
        .args(["--version", version])
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    command
}

fn recsys(args: &[&str]) -> Output {
    Command::new(binary("recsys"))
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

/// A small deterministic generator (xorshift64*): the kill points are seeded, so
/// a failure replays.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// Every visible entry of the root is a complete version that verifies, and
/// CURRENT names one of them.
fn assert_root_sound(root: &Path) -> String {
    let roots = BundleRoot::new(root);
    for entry in std::fs::read_dir(root).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == CURRENT_FILE || name.starts_with('.') {
            continue;
        }
        verify_bundle(&entry.path()).unwrap_or_else(|e| panic!("version {name} is partial: {e}"));
    }
    let current = roots.resolve_current().unwrap();
    verify_bundle(&current.dir).unwrap();
    current.version
}

/// Starts a retrieval node of shard 0 on `--bundle-root root` and checks it
/// serves `version`.
async fn serves_from_root(root: &Path, version: &str) {
    let addr = free_addr();
    let args: Vec<String> = [
        "--bundle-root",
        &root.display().to_string(),
        "--shard",
        "0",
        "--listen",
        &addr.to_string(),
        "--search-threads",
        "1",
        "--io-threads",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let mut node = spawn("retrieval from root", "retrieval-node", addr, &args);
    node.wait_serving(Duration::from_secs(60)).await.unwrap();
    let mut client = RetrievalServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let answer = client
        .search(SearchRequest {
            query: vec![0.1; DIM],
            k: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.bundle_version, version);
    assert_eq!(answer.item_ids.len(), 5);
    node.terminate(Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_builder_at_random_points_keeps_the_served_version() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");

    // The first version, built to the end; its time bounds the kill points.
    let started = Instant::now();
    let status = build_command(&root, "v0", 6_000).status().unwrap();
    assert!(status.success());
    let full_build = started.elapsed();
    assert_eq!(assert_root_sound(&root), "v0");

    let mut rng = Rng(0x5eed_0017);
    let mut current = "v0".to_string();
    for attempt in 1..=6 {
        let version = format!("v{attempt}");
        let mut child = build_command(&root, &version, 6_000).spawn().unwrap();
        // Anywhere from the start to a little past a whole build's time, so some
        // kills land after the rename or the pointer update.
        let delay = rng.below(full_build.as_millis() as u64 * 6 / 5 + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // SIGKILL; an error only means the build had already been reaped.
        let _ = child.kill();
        child.wait().unwrap();
        let served = assert_root_sound(&root);
        // The pointer names the killed build's version only if that build got
        // all the way through; otherwise it is where it was.
        assert!(
            served == current || served == version,
            "attempt {attempt} (killed after {delay} ms): CURRENT names {served}"
        );
        if served == version {
            verify_bundle(&root.join(&version)).unwrap();
        }
        let hidden = std::fs::read_dir(&root)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        eprintln!(
            "attempt {attempt}: killed after {delay} ms of a {} ms build: CURRENT names {served}, {hidden} hidden entries",
            full_build.as_millis()
        );
        current = served;
    }
    serves_from_root(&root, &current).await;

    // A complete build afterwards removes what the killed ones left and moves
    // the pointer.
    let status = build_command(&root, "v9", 6_000).status().unwrap();
    assert!(status.success());
    let leftovers: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(STAGING_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_eq!(assert_root_sound(&root), "v9");
    serves_from_root(&root, "v9").await;
    // The ranking node and the gateway take the root too.
    for (name, binary, extra) in [
        ("ranking from root", "ranking-node", vec![]),
        (
            "gateway from root",
            "gateway",
            vec!["--shard".to_string(), "0=127.0.0.1:1".to_string()],
        ),
    ] {
        let addr = free_addr();
        let mut args = vec![
            "--bundle-root".to_string(),
            root.display().to_string(),
            "--listen".to_string(),
            addr.to_string(),
        ];
        args.extend(extra);
        let mut server = spawn(name, binary, addr, &args);
        server.wait_serving(Duration::from_secs(60)).await.unwrap();
        server.terminate(Duration::from_secs(10)).await.unwrap();
    }

    // Versions are immutable: building an existing one again is refused, and
    // the pointer can go back to an older one.
    let again = build_command(&root, "v9", 6_000).status().unwrap();
    assert!(!again.success());
    let output = recsys(&["bundle", "activate", root.to_str().unwrap(), "v0"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(BundleRoot::new(&root).current().unwrap(), "v0");
}

/// Flips one bit of the byte in the middle of `path`.
fn flip_a_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

/// Cuts the last byte off `path`.
fn truncate(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() - 1]).unwrap();
}

/// Polls until `check` says the load is over (either way), at most 30 s.
async fn settled<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(30), "still loading");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_or_a_truncated_file_keeps_the_node_not_serving() {
    let bundle = synthetic_bundle(2_000, 20, DIM, 2, 31);
    let dir = bundle.path();
    flip_a_byte(&dir.join("shards/shard-0.usearch"));
    truncate(&dir.join("shards/shard-1.usearch"));
    flip_a_byte(&dir.join("ranker/weights.safetensors"));
    truncate(&dir.join("catalog.tsv"));
    let token = CancellationToken::new();
    let not_serving = ServingStatus::NotServing as i32;

    // Retrieval nodes: Info names the file and what is wrong with it.
    for (shard, what) in [(0u32, "checksum mismatch"), (1, "truncated")] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = recsys_tests::node_config(dir, shard);
        tokio::spawn(recsys_retrieval_node::run(listener, config, token.clone()));
        let info = || async {
            let mut client = RetrievalServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            client.info(InfoRequest {}).await.unwrap().into_inner()
        };
        settled(|| async { info().await.load_status() != LoadStatus::Loading }).await;
        let info = info().await;
        assert_eq!(info.load_status(), LoadStatus::Failed);
        let file = format!("shard-{shard}.usearch");
        assert!(info.load_error.contains(&file), "{}", info.load_error);
        assert!(info.load_error.contains(what), "{}", info.load_error);
        assert_eq!(health_status(addr).await, not_serving);
    }

    // A ranking node: Rank answers UNAVAILABLE naming the weights file.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = recsys_ranking_node::RankingConfig::new(dir);
    tokio::spawn(recsys_ranking_node::run(listener, config, token.clone()));
    let rank = || async {
        let mut client = RankingServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        client
            .rank(RankRequest {
                user_id: "user-0".into(),
                item_ids: vec![1],
                ..Default::default()
            })
            .await
            .unwrap_err()
    };
    settled(|| async { !rank().await.message().contains("still loading") }).await;
    let status = rank().await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("weights.safetensors") && status.message().contains("checksum"),
        "{}",
        status.message()
    );
    assert_eq!(health_status(addr).await, not_serving);

    // A gateway whose catalog is cut short never turns SERVING.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let membership = recsys_discovery::StaticMembership::new(
        &recsys_discovery::StaticSpec::from_shard_flags(&["0=127.0.0.1:1".into()], &[]).unwrap(),
    )
    .unwrap();
    let config = recsys_gateway::GatewayConfig {
        versions: Default::default(),
        server_limits: Default::default(),
        security: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
        bundle: recsys_bundle::BundleSource::at(dir.to_path_buf()),
        policy: recsys_gateway::RequestPolicy::default(),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(1),
    };
    tokio::spawn(recsys_gateway::run(
        listener,
        config,
        Arc::new(membership),
        token.clone(),
    ));
    // The verification of a 2 000-item catalog ends in milliseconds; give the
    // loader ample time to (wrongly) turn SERVING before asserting it did not.
    let verdict = gateway_verdict(dir, addr).await;
    assert_eq!(verdict, not_serving);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_whose_bundle_failed_verification_names_the_file_in_recommend() {
    let bundle = synthetic_bundle(2_000, 20, DIM, 2, 37);
    let dir = bundle.path();
    flip_a_byte(&dir.join("catalog.tsv"));
    let token = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let membership = recsys_discovery::StaticMembership::new(
        &recsys_discovery::StaticSpec::from_shard_flags(&["0=127.0.0.1:1".into()], &[]).unwrap(),
    )
    .unwrap();
    tokio::spawn(recsys_gateway::run(
        listener,
        gateway_config(dir),
        Arc::new(membership),
        token.clone(),
    ));
    let recommend = || async {
        let mut client = gateway_client(addr).await;
        recommend(&mut client, by_embedding(vec![0.1; DIM], 5, false), WAIT)
            .await
            .expect_err("a gateway with a corrupt catalog answered")
    };
    // Before the fix the answer said "still loading" for ever.
    settled(|| async { !recommend().await.message().contains("still loading") }).await;
    let status = recommend().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("failed to load")
            && status.message().contains("catalog.tsv")
            && status.message().contains("checksum mismatch"),
        "the status does not name the file and what is wrong with it: {}",
        status.message()
    );
    assert_eq!(health_status(addr).await, ServingStatus::NotServing as i32);
    token.cancel();
}

/// The gateway's health once a bundle that passes verification would have
/// loaded: polls a gateway on an intact copy of the bundle until SERVING, then
/// reads the health of the one at `addr`.
async fn gateway_verdict(corrupt: &Path, addr: SocketAddr) -> i32 {
    let good = tempfile::tempdir().unwrap();
    copy_dir(corrupt, good.path());
    // Repair the copy: put back the catalog as the manifest describes it by
    // rebuilding it is not possible here, so drop it from the copy's manifest.
    let mut manifest = recsys_bundle::Manifest::load(good.path()).unwrap();
    manifest.catalog = None;
    manifest.files.remove("catalog.tsv");
    std::fs::remove_file(good.path().join("catalog.tsv")).unwrap();
    manifest.save(good.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let good_addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let membership = recsys_discovery::StaticMembership::new(
        &recsys_discovery::StaticSpec::from_shard_flags(&["0=127.0.0.1:1".into()], &[]).unwrap(),
    )
    .unwrap();
    let config = recsys_gateway::GatewayConfig {
        versions: Default::default(),
        server_limits: Default::default(),
        security: Default::default(),
        max_in_flight: 0,
        item_log: None,
        ranker_shares: None,
        impression_log: None,
        bundle: recsys_bundle::BundleSource::at(good.path().to_path_buf()),
        policy: recsys_gateway::RequestPolicy::default(),
        connect_timeout: Duration::from_secs(1),
        health_interval: Duration::from_secs(1),
    };
    tokio::spawn(recsys_gateway::run(
        listener,
        config,
        Arc::new(membership),
        token.clone(),
    ));
    settled(|| async { health_status(good_addr).await == ServingStatus::Serving as i32 }).await;
    let verdict = health_status(addr).await;
    token.cancel();
    verdict
}

fn copy_dir(from: &Path, to: &Path) {
    for path in recsys_bundle::verify::files_under(from).unwrap() {
        let target = to.join(&path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(from.join(&path), target).unwrap();
    }
}

fn stdout_and_stderr(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn bundle_verify_passes_good_bundles_and_names_the_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    assert!(
        build_command(&root, "good", 1_500)
            .status()
            .unwrap()
            .success()
    );
    let version: PathBuf = root.join("good");

    let output = recsys(&["bundle", "verify", version.to_str().unwrap()]);
    let text = stdout_and_stderr(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("verified bundle good"), "{text}");
    assert!(text.contains("shards/shard-1.usearch"), "{text}");
    // A root: every version and the pointer.
    let output = recsys(&["bundle", "verify", root.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout_and_stderr(&output));

    // A copy with one flipped byte in the user table fails, naming the file.
    let bad = root.join("bad");
    copy_dir(&version, &bad);
    let mut manifest = recsys_bundle::Manifest::load(&bad).unwrap();
    manifest.version = "bad".into();
    manifest.save(&bad).unwrap();
    flip_a_byte(&bad.join("query_model.safetensors"));
    let output = recsys(&["bundle", "verify", bad.to_str().unwrap()]);
    let text = stdout_and_stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("query_model.safetensors"), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    // ... and so does the root that holds it.
    let output = recsys(&["bundle", "verify", root.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stdout_and_stderr(&output).contains("query_model.safetensors"));

    // A missing file, and a file the manifest does not list.
    std::fs::copy(
        version.join("query_model.safetensors"),
        bad.join("query_model.safetensors"),
    )
    .unwrap();
    std::fs::remove_file(bad.join("catalog.tsv")).unwrap();
    let output = recsys(&["bundle", "verify", bad.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stdout_and_stderr(&output).contains("catalog.tsv"));
    std::fs::copy(version.join("catalog.tsv"), bad.join("catalog.tsv")).unwrap();
    std::fs::write(bad.join("shards/stray.usearch"), b"x").unwrap();
    let output = recsys(&["bundle", "verify", bad.to_str().unwrap()]);
    let text = stdout_and_stderr(&output);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("stray.usearch") && text.contains("not listed"),
        "{text}"
    );
    std::fs::remove_file(bad.join("shards/stray.usearch")).unwrap();
    let output = recsys(&["bundle", "verify", bad.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stdout_and_stderr(&output));
}
