//! The loop the impression log closes (issue 20, part 4), on synthetic data:
//! a ranker trained by the trainer is served by a cluster whose gateway logs
//! every answer; what users then click (a planted taste) is joined with the
//! log, and a click ranker trained on "shown and clicked" against "shown and
//! not clicked" learns the taste. And a gateway process killed while it
//! writes leaves nothing a reader chokes on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use recsys_bundle_builder::attach_ranker;
use recsys_gateway::impression_log::{ImpressionLog, ImpressionLogOptions};
use recsys_local_cluster::{LocalCluster, LocalClusterOptions, ProcessCluster, ProcessOptions};
use recsys_proto::v1::RecommendRequest;
use recsys_proto::v1::recommend_request::Query;
use recsys_tests::trained_ranker::{
    PLANTED, export_planted_ranker, items_bundle, planted_config, planted_training,
};
use recsys_tests::*;
use recsys_trainer::click::{self, Objective};
use recsys_trainer::impressions::{Event, label_impressions, read_impressions};
use recsys_trainer::{RankingModel, predict_interactions, train_ranking};

const USERS: usize = 30;

/// Whether user `u{n}` clicks item `id`: its genre is the user's taste (the
/// planted ratings' rule, `PlantedRatings::rating`).
fn clicks(user: &str, id: u64) -> bool {
    let n: usize = user.trim_start_matches('u').parse().unwrap();
    n % PLANTED.clusters == (id as usize - 1) % PLANTED.clusters
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_answers_are_logged_and_train_a_click_ranker() {
    // Train and serve.
    let ids: Vec<u64> = (1..=PLANTED.items as u64).collect();
    let bundle = items_bundle(&ids, 2, "logged");
    let source = tempfile::tempdir().unwrap();
    export_planted_ranker(source.path(), Vec::new(), 3, "first-ranker");
    attach_ranker(bundle.path(), source.path(), &ids).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let mut log = ImpressionLogOptions::new(log_dir.path());
    log.max_file_age = Duration::from_millis(200);
    let mut options = LocalClusterOptions::new(bundle.path());
    options.impression_log = Some(log);
    let cluster = LocalCluster::start(options).await.unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let mut answers = 0;
    for u in 0..USERS {
        for like in [1, 12, 23, 34] {
            let request = RecommendRequest {
                query: Some(Query::UserId(format!("u{u}"))),
                similar_to_item_id: Some(like),
                k: 10,
                retrieve_k: 39,
                ..Default::default()
            };
            let answer = recommend(&mut client, request, Duration::from_secs(10))
                .await
                .unwrap();
            assert!(answer.ranked);
            answers += 1;
        }
    }
    // Log: every answer reaches a complete file (the last one by age).
    let deadline = Instant::now() + Duration::from_secs(30);
    let shown = loop {
        let shown = read_impressions(log_dir.path()).unwrap_or_default();
        if shown.len() == answers * 10 {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} shown items logged",
            shown.len(),
            answers * 10
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    cluster.shutdown().await.unwrap();

    // The users click what fits their taste, a second after they saw it.
    let events: Vec<Event> = shown
        .iter()
        .filter(|s| clicks(&s.user, s.item.parse().unwrap()))
        .map(|s| Event {
            user: s.user.clone(),
            item: s.item.clone(),
            time_ms: s.time_ms + 1_000,
            event: "click".into(),
        })
        .collect();
    let labelled = label_impressions(&shown, &events, &["click".into()], 3_600_000);
    let positives = labelled.iter().filter(|i| i.rating == Some(1.0)).count();
    assert!(positives > 0 && positives < labelled.len(), "{positives}");

    // Train again, on what was shown.
    let data = PLANTED.draw();
    let model = RankingModel::new(planted_config(Objective::Click, Vec::new()), &data, 5).unwrap();
    let training = planted_training(30, 5);
    train_ranking(&model, &labelled, &training, &mut |_| {}).unwrap();
    let scores = predict_interactions(&model, &labelled, 512).unwrap();
    let auc = click::click_metrics(&scores, &click::labels(&labelled).unwrap())
        .unwrap()
        .auc;
    assert!(auc > 0.8, "AUC {auc} on the logged impressions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_it_writes_leaves_only_whole_records() {
    let bundle = synthetic_bundle(2_000, 40, 8, 2, 13);
    let log_dir = tempfile::tempdir().unwrap();
    let options = ProcessOptions {
        env: vec![
            (
                "RECSYS_IMPRESSION_LOG".into(),
                log_dir.path().display().to_string(),
            ),
            ("RECSYS_IMPRESSION_LOG_MAX_AGE_S".into(), "1".into()),
        ],
        ..ProcessOptions::default()
    };
    let cluster = ProcessCluster::start(bundle.path(), &options)
        .await
        .unwrap();
    let mut client = gateway_client(cluster.gateway_addr).await;
    let users = bundle.catalog.users.ids();
    // Answers until one file is complete and the next is being written.
    let names = || -> Vec<String> {
        std::fs::read_dir(log_dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for user in users.iter().take(20) {
            recommend(&mut client, ranked(user, 10, 50), Duration::from_secs(10))
                .await
                .unwrap();
        }
        let now = names();
        if now.iter().any(|n| n.ends_with(".jsonl")) && now.iter().any(|n| n.ends_with(".partial"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no complete and open file together: {now:?}"
        );
    }
    let gateway = *cluster.pids().last().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &gateway.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Readers take the complete files, every line whole.
    let complete = read_impressions(log_dir.path()).unwrap();
    assert!(!complete.is_empty());
    // The next gateway on the directory completes the open file up to its
    // last whole line: nothing written is lost, no half record kept.
    drop(ImpressionLog::start(ImpressionLogOptions::new(log_dir.path())).unwrap());
    let recovered = read_impressions(log_dir.path()).unwrap();
    assert!(
        recovered.len() >= complete.len(),
        "{} < {}",
        recovered.len(),
        complete.len()
    );
    assert!(
        !names().iter().any(|n| n.ends_with(".partial")),
        "{:?}",
        names()
    );
    drop(cluster);
}
