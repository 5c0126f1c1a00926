//! `recsys health`, the probe every compose healthcheck runs, against a real
//! retrieval node: exit 0 for SERVING, exit 1 with a one-line reason for an unknown
//! service or nothing listening.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;

use recsys_local_cluster::ServerHandle;
use recsys_tests::processes::{binary, free_addr};
use recsys_tests::*;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Runs `recsys health` with `args` off the runtime's workers.
async fn health(args: &[String]) -> Output {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        Command::new(binary("recsys"))
            .arg("health")
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recsys_health_exits_zero_only_for_serving() {
    let bundle = synthetic_bundle(2_000, 10, 8, 1, 5);
    let token = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = recsys_tests::node_config(bundle.path(), 0);
    let run = recsys_retrieval_node::run(listener, config, token.clone());
    let mut node = ServerHandle::spawn("retrieval node", addr, token.clone(), run);
    node.wait_serving(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let at = |extra: &[&str]| {
        let mut args = vec!["--addr".to_string(), addr.to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };

    let out = health(&at(&[])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("SERVING"));
    let out = health(&at(&["--service", "recsys.v1.RetrievalService"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    // An unknown service: exit 1, one line naming why, no backtrace even when
    // RUST_BACKTRACE asks for one.
    let out = health(&at(&["--service", "recsys.v1.Nothing"])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("NotFound"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // Nothing listening.
    let out = health(&[
        "--addr".to_string(),
        free_addr().to_string(),
        "--timeout-ms".to_string(),
        "500".to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot connect"),
        "{}",
        text(&out.stderr)
    );
    node.stop().await.unwrap();
}
