//! The Python example (`examples/python/recommend.py`) as a new user runs it,
//! against a real local cluster with a ranker: a request of only a user and
//! `k` must come back ranked from the gateway's default candidate count (the
//! newcomer's finding of issue 19: it used to rank only the top k of
//! retrieval among themselves), printed with both scores, and a bad request
//! must print the gateway's reason.
//!
//! The interpreter is `target/example-venv/bin/python` (grpcio and
//! grpcio-tools, installed by `scripts/install-deps.sh`) or
//! `$RECSYS_EXAMPLE_PYTHON`. A machine without it fails this test with the
//! command that installs it, unless `RECSYS_SKIP_PYTHON_EXAMPLE_TESTS=1` says
//! to skip it (the skip is then logged); CI never sets it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use recsys_local_cluster::{LocalCluster, LocalClusterOptions};
use recsys_tests::*;

/// Opt-out of this test.
const SKIP_VAR: &str = "RECSYS_SKIP_PYTHON_EXAMPLE_TESTS";
/// The interpreter to use instead of the project's venv.
const PYTHON_VAR: &str = "RECSYS_EXAMPLE_PYTHON";

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-example");
        let bundle = shared_bundle(&root, 5_000, 2, 23);
        // Each item's topic as its one genre, for the example's filters.
        let mut tsv = String::from("id\tgenre:keyword_list\n");
        for (id, topic) in bundle
            .catalog
            .items
            .ids
            .iter()
            .zip(&bundle.catalog.item_cluster)
        {
            tsv.push_str(&format!("{id}\ttopic-{topic}\n"));
        }
        add_attributes(&bundle, &tsv);
        bundle
    })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interpreter with grpcio, or `None` when the test is skipped on purpose.
fn python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os(PYTHON_VAR).map_or_else(
        || repo().join("target/example-venv/bin/python"),
        PathBuf::from,
    );
    if python.is_file() {
        return Some(python);
    }
    let reason = format!(
        "no Python with grpcio at {} (run scripts/install-deps.sh, or set {PYTHON_VAR})",
        python.display()
    );
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        skip::skip(test, &reason, SKIP_VAR);
        return None;
    }
    panic!("{test} cannot run: {reason}; set {SKIP_VAR}=1 to skip it on purpose");
}

/// Runs the example with `args`; its exit status, stdout and stderr.
fn example(python: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(python)
        .arg(repo().join("examples/python/recommend.py"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_prints_a_ranked_answer_for_a_user_and_k() {
    let Some(python) = python("the_python_example_prints_a_ranked_answer_for_a_user_and_k") else {
        return;
    };
    let bundle = bundle();
    let cluster = LocalCluster::start(LocalClusterOptions::new(bundle.path()))
        .await
        .unwrap();
    let gateway = cluster.gateway_addr.to_string();
    let user = bundle.catalog.users.ids()[0].clone();

    // What the gateway answers a request of only the user and k.
    let mut client = gateway_client(cluster.gateway_addr).await;
    let answer = recommend(&mut client, ranked(&user, 5, 0), Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.ranked, "{answer:?}");
    // Ranked from more candidates than k: some came from past retrieval's top 5.
    let deepest = answer.items.iter().map(|item| item.retrieval_rank).max();
    assert!(
        deepest >= Some(5),
        "ranked only the top 5 of retrieval: {answer:?}"
    );

    let (ok, stdout, stderr) = tokio::task::spawn_blocking({
        let python = python.clone();
        let args = ["--gateway", &gateway, "--user-id", &user, "-k", "5"].map(str::to_owned);
        move || example(&python, &args.each_ref().map(String::as_str))
    })
    .await
    .unwrap();
    assert!(ok, "the example failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("ranked by {}", answer.model_version)),
        "{stdout}"
    );
    // One line per item after the header: rank, id, ranking score, retrieval
    // score, retrieval rank, name.
    let lines: Vec<&str> = stdout
        .lines()
        .skip_while(|line| {
            line.split_whitespace().collect::<Vec<_>>()
                != ["rank", "item", "ranking", "retrieval", "(rank)", "name"]
        })
        .skip(1)
        .take_while(|line| !line.starts_with("coverage"))
        .collect();
    let printed: Vec<u64> = lines
        .iter()
        .map(|line| line.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(printed, ids(&answer), "{stdout}");
    for (line, item) in lines.iter().zip(&answer.items) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let ranking: f32 = columns[2].parse().unwrap();
        assert!(
            (ranking - item.ranking_score.unwrap()).abs() < 1e-3,
            "{line}"
        );
        assert_eq!(
            columns[4].parse::<u32>().unwrap(),
            item.retrieval_rank + 1,
            "{line}"
        );
    }

    // A session: the first page prints its token, the next page is new items.
    let run = |args: Vec<String>| {
        let python = python.clone();
        tokio::task::spawn_blocking(move || {
            example(
                &python,
                &args.iter().map(String::as_str).collect::<Vec<_>>(),
            )
        })
    };
    let base = vec![
        "--gateway".to_string(),
        gateway.clone(),
        "--user-id".to_string(),
        user.clone(),
        "-k".to_string(),
        "5".to_string(),
    ];
    let (ok, first, stderr) = run([base.clone(), vec!["--session".into()]].concat())
        .await
        .unwrap();
    assert!(ok, "{first}\n{stderr}");
    let token = first
        .lines()
        .find_map(|line| line.split("--session-token ").nth(1))
        .unwrap_or_else(|| panic!("no session token printed:\n{first}"))
        .to_string();
    let (ok, second, stderr) = run([
        base.clone(),
        vec!["--session-token".into(), token, "--next-page".into()],
    ]
    .concat())
    .await
    .unwrap();
    assert!(ok, "{second}\n{stderr}");
    let items = |stdout: &str| -> Vec<u64> {
        stdout
            .lines()
            .skip_while(|line| !line.trim_start().starts_with("rank "))
            .skip(1)
            .take_while(|line| !line.starts_with("coverage"))
            .map(|line| line.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect()
    };
    let (page_one, page_two) = (items(&first), items(&second));
    assert_eq!(
        (page_one.len(), page_two.len()),
        (5, 5),
        "{first}\n{second}"
    );
    assert!(
        page_two.iter().all(|id| !page_one.contains(id)),
        "{first}\n{second}"
    );

    // Filters, as text and as the structured message: only matching items.
    let genre = bundle.by_item(&bundle.catalog.item_cluster);
    for (extra, allowed) in [
        (vec!["--filter", "genre = \"topic-1\""], vec![1u32]),
        (vec!["--genre", "topic-2", "--genre", "topic-3"], vec![2, 3]),
    ] {
        let args = [base.clone(), extra.iter().map(|s| s.to_string()).collect()].concat();
        let (ok, stdout, stderr) = run(args).await.unwrap();
        assert!(ok, "{extra:?}: {stdout}\n{stderr}");
        let printed = items(&stdout);
        assert_eq!(printed.len(), 5, "{extra:?}: {stdout}");
        assert!(
            printed.iter().all(|id| allowed.contains(&genre[id])),
            "{extra:?}: {stdout}"
        );
    }

    // Similar items (never the item itself), a cap, and MMR.
    let item = page_one[0];
    let (ok, stdout, stderr) = run(vec![
        "--gateway".into(),
        gateway.clone(),
        "--similar-to".into(),
        item.to_string(),
        "-k".into(),
        "5".into(),
    ])
    .await
    .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    let similar = items(&stdout);
    assert_eq!(similar.len(), 5, "{stdout}");
    assert!(!similar.contains(&item), "{stdout}");
    let (ok, stdout, stderr) = run([
        base.clone(),
        vec!["--max-per-value".into(), "genre=1".into()],
    ]
    .concat())
    .await
    .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    let capped = items(&stdout);
    let mut genres: Vec<u32> = capped.iter().map(|id| genre[id]).collect();
    genres.sort_unstable();
    genres.dedup();
    assert_eq!(genres.len(), capped.len(), "one per genre: {stdout}");
    let (ok, stdout, stderr) =
        run([base.clone(), vec!["--mmr-lambda".into(), "0.3".into()]].concat())
            .await
            .unwrap();
    assert!(ok, "{stdout}\n{stderr}");
    assert_eq!(items(&stdout).len(), 5, "{stdout}");

    // A bad request prints the gateway's reason, naming the field.
    let (ok, _, stderr) = tokio::task::spawn_blocking({
        let args = ["--gateway", &gateway, "--user-id", &user, "-k", "0"].map(str::to_owned);
        move || example(&python, &args.each_ref().map(String::as_str))
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("k"),
        "{stderr}"
    );
    cluster.shutdown().await.unwrap();
}
