//! `recsys-bench load`, the load generator docs/benchmarks.md quotes, run as a user
//! runs it: its own local cluster on a bundle, one I/O thread (`--io-threads`, the
//! flag every binary shares), a JSON line per concurrency level.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use recsys_tests::processes::binary;
use recsys_tests::synthetic_bundle;

#[test]
fn load_reports_every_level_with_answers_and_ordered_percentiles() {
    let bundle = synthetic_bundle(3_000, 20, 16, 2, 9);
    let out = Command::new(binary("recsys-bench"))
        .args(["--io-threads", "1", "load", "--bundle"])
        .arg(bundle.path())
        .args(["--concurrency", "1,3", "--seconds", "0.5", "--k", "10"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "recsys-bench load failed: {stderr}");
    let levels: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(levels.len(), 2, "{levels:?}");
    for (level, concurrency) in levels.iter().zip([1, 3]) {
        assert_eq!(level["event"], "load");
        assert_eq!(level["concurrency"], concurrency);
        assert_eq!(level["errors"], 0, "{level}");
        let requests = level["requests"].as_u64().unwrap();
        assert!(requests > 0, "{level}");
        let qps = level["qps"].as_f64().unwrap();
        assert!((qps - requests as f64 / 0.5).abs() < 1e-6, "{level}");
        let [p50, p90, p99] = ["p50_us", "p90_us", "p99_us"].map(|p| level[p].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{level}");
    }
}
