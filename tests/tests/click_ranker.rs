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
