use super::*;

fn impression(user: &str, items: &[u64]) -> Impression {
    Impression {
        request_id: String::new(),
        time_ms: 1,
        user_id: user.into(),
        user_features: BTreeMap::new(),
        bundle_version: "v1".into(),
        model_version: "m1".into(),
        ranker_variant: "default".into(),
        ranked: true,
        heads: Vec::new(),
        items: items
            .iter()
            .enumerate()
            .map(|(position, &item_id)| Shown {
                item_id,
                position: position as u32,
                retrieval_score: 0.5,
                ranking_score: Some(1.0),
                head_scores: Vec::new(),
            })
            .collect(),
    }
}

/// The `.jsonl` files in `dir`, by name.
fn complete(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

/// Every record of the complete files, as JSON.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    complete(dir)
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Polls `done` for up to 10 s.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn files_rotate_by_size_and_age_and_hold_every_record_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ImpressionLogOptions::new(dir.path());
    options.max_file_bytes = 2_000;
    options.max_file_age = Duration::from_millis(200);
    let log = ImpressionLog::start(options).unwrap();
    for u in 0..100 {
        log.record(impression(&format!("u{u}"), &[1, 2, 3]));
    }
    // The last file closes by age, without another record.
    eventually("every record in a complete file", || {
        records(dir.path()).len() == 100
    });
    let files = complete(dir.path());
    assert!(files.len() > 3, "{files:?}");
    let users: Vec<String> = records(dir.path())
        .iter()
        .map(|r| r["user_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(users, (0..100).map(|u| format!("u{u}")).collect::<Vec<_>>());
    let first = &records(dir.path())[0];
    assert_eq!(first["items"][2]["item_id"], 3);
    assert_eq!(first["items"][2]["position"], 2);
    assert!(log.request_id() != log.request_id());
}

#[test]
fn a_file_a_killed_gateway_left_is_cut_to_its_last_whole_line_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let torn = dir.path().join("impressions-00000007.jsonl.partial");
    std::fs::write(
        &torn,
        "{\"user_id\":\"a\"}\n{\"user_id\":\"b\"}\n{\"user_id\":\"c",
    )
    .unwrap();
    let empty = dir.path().join("impressions-00000008.jsonl.partial");
    std::fs::write(&empty, "{\"user_id\":\"half").unwrap();
    let mut options = ImpressionLogOptions::new(dir.path());
    options.max_file_age = Duration::from_millis(50);
    let log = ImpressionLog::start(options).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("impressions-00000007.jsonl")).unwrap(),
        "{\"user_id\":\"a\"}\n{\"user_id\":\"b\"}\n"
    );
    assert!(!torn.exists() && !empty.exists());
    log.record(impression("d", &[9]));
    eventually("the next file", || {
        dir.path().join("impressions-00000009.jsonl").exists()
    });
    assert_eq!(records(dir.path()).len(), 3);
}

#[test]
fn a_full_disk_stops_the_log_and_nothing_else() {
    let dev_full = Path::new("/dev/full");
    if !dev_full.exists() {
        eprintln!("skipped: no /dev/full on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The first file the log opens is /dev/full, where every write fails
    // with ENOSPC, as on a full disk.
    std::os::unix::fs::symlink(
        dev_full,
        dir.path().join("impressions-00000001.jsonl.partial"),
    )
    .unwrap();
    let log = ImpressionLog::start(ImpressionLogOptions::new(dir.path())).unwrap();
    log.record(impression("u", &[1]));
    eventually("the log stops", || log.stopped.load(Ordering::Relaxed));
    // Later records are dropped at once, without an error to the caller.
    for _ in 0..1000 {
        log.record(impression("u", &[1]));
    }
    assert!(complete(dir.path()).is_empty());
}
