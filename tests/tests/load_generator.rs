//! `recsys-bench load`, the load generator docs/benchmarks.md quotes, run as a user
//! runs it: its own local cluster on a bundle, one I/O thread (`--io-threads`, the
//! flag every binary shares), a JSON line per concurrency level; and `recsys-bench
//! overhead --processes`, which starts the server binaries as processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use recsys_tests::processes::binary;
use recsys_tests::synthetic_bundle;

#[test]
fn load_reports_every_level_with_answers_from_every_client() {
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
        // Every client answered within the window (none stalled or was never started).
        let requests = level["requests"].as_u64().unwrap();
        assert!(requests >= concurrency, "{level}");
        assert!(level["qps"].as_f64().unwrap() > 0.0, "{level}");
        assert!(level["p50_us"].as_f64().unwrap() > 0.0, "{level}");
    }
}

#[test]
fn open_loop_accounts_for_every_request_sent() {
    let bundle = synthetic_bundle(3_000, 20, 16, 2, 11);
    let out = Command::new(binary("recsys-bench"))
        .args(["--io-threads", "1", "load", "--bundle"])
        .arg(bundle.path())
        .args(["--rate", "200", "--seconds", "0.5", "--k", "10"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "recsys-bench load --rate failed: {stderr}"
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["event"], "unloaded");
    let level = &lines[1];
    assert_eq!(level["event"], "open_loop");
    let count = |key: &str| level[key].as_u64().unwrap();
    let other: u64 = level["other"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert!(count("sent") > 0, "{level}");
    assert_eq!(
        count("ok") + count("shed") + other,
        count("sent"),
        "{level}"
    );
    assert!(level["recovery_ms"].as_f64().is_some(), "{level}");
}

#[test]
fn load_refuses_a_window_that_is_not_positive() {
    let out = Command::new(binary("recsys-bench"))
        .args([
            "load",
            "--gateway",
            "127.0.0.1:1",
            "--dim",
            "4",
            "--seconds",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--seconds must be a positive number"),
        "{stderr}"
    );
}

#[test]
fn overhead_runs_every_server_as_a_process_and_splits_the_time() {
    let bundle = synthetic_bundle(3_000, 20, 16, 2, 10);
    // `--processes` starts the binaries next to recsys-bench, which refuses missing
    // or stale ones too; checked here, the failure names the binary in the test.
    for server in ["gateway", "retrieval-node", "ranking-node"] {
        binary(server);
    }
    let out = Command::new(binary("recsys-bench"))
        .args(["--io-threads", "1", "overhead", "--bundle"])
        .arg(bundle.path())
        .args(["--requests", "20", "--k", "10", "--processes"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "recsys-bench overhead failed: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["event"], "gateway_overhead");
    assert_eq!(report["processes"], true);
    assert_eq!(report["shards"], 2);
    // Two retrieval nodes and a gateway (and a ranking node if the bundle has a
    // ranker) ran as processes of their own, and none outlived the benchmark.
    let pids: Vec<u64> = report["server_pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(pids.len() >= 3, "{report}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "server process {pid} outlived recsys-bench"
        );
    }
    for field in [
        "direct_all_shards_median_us",
        "gateway_median_us",
        "gateway_handler_median_us",
        "gateway_fan_out_median_us",
        "gateway_health_rtt_median_us",
        "gateway_health_rtt_after_direct_median_us",
    ] {
        let us = report[field].as_f64().unwrap_or(0.0);
        assert!(us > 0.0, "{field} in {report}");
    }
    // The gateway's own handler holds its fan-out and fits in what the client saw.
    let handler = report["gateway_handler_median_us"].as_f64().unwrap();
    assert!(report["gateway_fan_out_median_us"].as_f64().unwrap() <= handler);
    assert!(handler < report["gateway_median_us"].as_f64().unwrap());
}
