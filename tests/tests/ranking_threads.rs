//! A ranking node splits no matrix product over threads unless its operator
//! asks (`RAYON_NUM_THREADS`): its scoring threads already run one batch each,
//! and a split pass cost 2.7× the time and 3.5× the CPU on a 2-core host
//! (`recsys_server::kernel_threads`). Read from what the binary logs at start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use recsys_local_cluster::ServerCommand;
use recsys_tests::processes::{binary, free_addr};
use recsys_tests::*;

/// Starts a ranking node with `env`, waits until it serves, returns its log.
async fn log_of(bundle: &TestBundle, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ranking.log");
    let addr = free_addr();
    let mut command = ServerCommand::new(binary("ranking-node"), "ranking", addr)
        .args([
            "--bundle".to_string(),
            bundle.path().display().to_string(),
            "--listen".to_string(),
            addr.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stderr_to(&log);
    for (key, value) in env {
        command = command.env(key, value);
    }
    let mut node = command.spawn().unwrap();
    node.wait_serving(Duration::from_secs(60)).await.unwrap();
    drop(node);
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_thread_per_product_by_default_and_the_operators_number_when_set() {
    let bundle = synthetic_bundle(500, 10, 8, 1, 5);
    let default = log_of(&bundle, &[]).await;
    assert!(default.contains("threads_per_product=1"), "{default}");
    let chosen = log_of(&bundle, &[("RAYON_NUM_THREADS", "3")]).await;
    assert!(chosen.contains("threads_per_product=3"), "{chosen}");
}
