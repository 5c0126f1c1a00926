//! `recsys train ranking --objective click` as a user runs it: a generic CSV
//! whose `label` column holds clicks (`--format csv --negatives 0`), the
//! binary, its report (AUC, log loss, calibration beside popularity), and the
//! exported ranker's sigmoid head.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use recsys_tests::processes::binary;
use recsys_trainer::synthetic_ratings::PlantedRatings;

#[test]
fn a_click_ranker_trains_from_a_labelled_csv_and_exports_a_probability_head() {
    let dir = tempfile::tempdir().unwrap();
    let planted = PlantedRatings {
        users: 60,
        items: 40,
        clusters: 3,
        ratings_per_user: 30,
        noise: 0.2,
        seed: 3,
    }
    .draw();
    // A click where the user's taste is the item's genre (rating above 3.3).
    let mut csv = String::from("user,item,label\n");
    for i in &planted.interactions {
        let label = u8::from(i.rating.unwrap() > 3.3);
        csv.push_str(&format!("{},{},{label}\n", i.user, i.item));
    }
    std::fs::write(dir.path().join("interactions.csv"), csv).unwrap();
    let out = dir.path().join("ranker");
    let output = Command::new(binary("recsys"))
        .args([
            "train",
            "ranking",
            "--format",
            "csv",
            "--objective",
            "click",
        ])
        .args([
            "--negatives",
            "0",
            "--features",
            "user_id,movie_id",
            "--epochs",
            "20",
        ])
        .args(["--batch-size", "128", "--lr", "0.01", "--validation", "0"])
        .arg("--data")
        .arg(dir.path())
        .arg("--out")
        .arg(&out)
        .env_remove("RECSYS_TRAIN_RANKER_OBJECTIVE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{stdout}"))
            .to_string()
    };
    let auc = |line: String| -> f64 {
        let after = line.split("test AUC ").nth(1).unwrap();
        after.split(',').next().unwrap().parse().unwrap()
    };
    let model = auc(line("model:"));
    let popularity = auc(line("popularity:"));
    assert!(model > 0.9 && model > popularity + 0.2, "{stdout}");
    assert!(line("calibration").contains('/'), "{stdout}");
    let config = std::fs::read_to_string(out.join("config.json")).unwrap();
    assert!(config.contains("\"logit\""), "{config}");
}

/// Runs `recsys train ranking` with `args` on the data directory `data`;
/// returns what it printed, failing the test when it failed.
fn train(data: &std::path::Path, args: &[&str]) -> String {
    let output = Command::new(binary("recsys"))
        .args(["train", "ranking", "--format", "csv"])
        .args(args)
        .args(["--features", "user_id,movie_id", "--epochs", "5"])
        .args(["--batch-size", "128", "--lr", "0.01", "--validation", "0"])
        .arg("--data")
        .arg(data)
        .env_remove("RECSYS_TRAIN_RANKER_OBJECTIVE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    stdout
}

fn planted_csv(dir: &std::path::Path) {
    let planted = PlantedRatings {
        users: 30,
        items: 40,
        clusters: 3,
        ratings_per_user: 20,
        noise: 0.2,
        seed: 4,
    }
    .draw();
    let mut csv = String::from("user,item,rating\n");
    for i in &planted.interactions {
        csv.push_str(&format!("{},{},{}\n", i.user, i.item, i.rating.unwrap()));
    }
    std::fs::write(dir.join("interactions.csv"), csv).unwrap();
}

#[test]
fn a_two_head_ranker_trains_from_ratings_reports_each_head_and_exports_both() {
    let dir = tempfile::tempdir().unwrap();
    planted_csv(dir.path());
    let out = dir.path().join("ranker");
    let out_arg = out.to_str().unwrap().to_string();
    let stdout = train(
        dir.path(),
        &[
            "--objective",
            "rating,click",
            "--negatives",
            "2",
            "--out",
            &out_arg,
        ],
    );
    for needle in [
        "rating head: test RMSE",
        "click head: test AUC",
        "combined score (0.2 × rating + 1 × click)",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in:\n{stdout}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let heads: Vec<(&str, &str)> = config["dcn"]["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(heads, [("rating", "regression"), ("click", "logit")]);
}

#[test]
fn a_click_ranker_trains_from_an_impression_log_joined_with_clicks() {
    let dir = tempfile::tempdir().unwrap();
    planted_csv(dir.path());
    // Two answers as the gateway logs them, one still being written (not read).
    let log = dir.path().join("log");
    std::fs::create_dir(&log).unwrap();
    let mut lines = String::new();
    for u in 0..30 {
        let items: Vec<String> = (0..10)
            .map(|p| {
                format!(
                    "{{\"item_id\":{},\"position\":{p}}}",
                    (u * 7 + p * 3) % 40 + 1
                )
            })
            .collect();
        lines.push_str(&format!(
            "{{\"request_id\":\"r{u}\",\"time_ms\":1000000,\"user_id\":\"u{u}\",\"items\":[{}]}}\n",
            items.join(",")
        ));
    }
    std::fs::write(log.join("impressions-00000001.jsonl"), lines).unwrap();
    std::fs::write(log.join("impressions-00000002.jsonl.partial"), "{\"user").unwrap();
    // Users click the first three items they were shown, 5 s later.
    let mut events = String::from("user,item,time,event\n");
    for u in 0..30 {
        for p in 0..3 {
            events.push_str(&format!("u{u},{},1005,click\n", (u * 7 + p * 3) % 40 + 1));
        }
        events.push_str(&format!("u{u},{},1005,view\n", (u * 7 + 27) % 40 + 1));
    }
    let events_file = dir.path().join("events.csv");
    std::fs::write(&events_file, events).unwrap();
    let stdout = train(
        dir.path(),
        &[
            "--objective",
            "click",
            "--impressions",
            log.to_str().unwrap(),
            "--events",
            events_file.to_str().unwrap(),
        ],
    );
    assert!(
        stdout.contains("impressions: 300 items shown, 90 clicked (30.0 %)"),
        "{stdout}"
    );
    assert!(stdout.contains("model: test AUC"), "{stdout}");
}
