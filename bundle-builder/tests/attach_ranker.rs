//! `attach_ranker` with a ranker that `tools/tfrs_export` really exported from a
//! TFRS model (the fixture of `model/tests/tfrs_export.rs`): the bundle then
//! scores exactly as TFRS did, and broken rankers are refused by name.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use recsys_bundle::{IndexParams, Manifest};
use recsys_bundle_builder::{BuildOptions, ItemVectors, attach_ranker, build_bundle};
use recsys_model::{Ranker, UserContext};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/fixtures/tfrs_export")
}

/// A bundle of `ids` with 4-d vectors.
fn bundle(ids: &[u64]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<f32> = ids
        .iter()
        .flat_map(|&id| (0..4).map(move |d| (id as f32 + d as f32).sin()))
        .collect();
    let items = ItemVectors::new(Path::new("test"), 4, data, Some(ids.to_vec()), None).unwrap();
    let options = BuildOptions {
        params: IndexParams::default(),
        shard_count: 1,
        version: "attach-test".into(),
        source: "test".into(),
        threads: 1,
    };
    build_bundle(dir.path(), &items, None, &options, &|_| {}).unwrap();
    dir
}

/// `ranker` scores the fixture `request`'s items for `user` as TFRS did, within 1e-5.
fn assert_scores_as_in_tfrs(ranker: &Ranker, user: &UserContext, request: &Value) {
    let items: Vec<u64> = request["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let scores = ranker.score(user, &items, false).unwrap();
    let expected = request["scores"].as_array().unwrap();
    assert_eq!(scores.scores.len(), expected.len());
    for (ours, theirs) in scores.scores.iter().zip(expected) {
        assert!((ours - theirs.as_f64().unwrap() as f32).abs() <= 1e-5);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn an_exported_ranker_scores_in_the_bundle_as_in_tfrs() {
    let ids: Vec<u64> = (1..=10).collect();
    let dir = bundle(&ids);
    let attached = attach_ranker(dir.path(), &fixtures().join("tutorial/ranker"), &ids).unwrap();
    assert_eq!(attached.version, "tfrs-export-fixture-tutorial");
    assert_eq!(attached.ranker_items, 8);
    assert_eq!(attached.unknown_items, 2, "items 9 and 10 have no features");

    let manifest = Manifest::load(dir.path()).unwrap();
    let ranker = Ranker::load(&manifest.ranker_files(dir.path()).unwrap()).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let model = &expected["models"][0];
    assert_eq!(model["name"], "tutorial");
    let request = &model["requests"][0];
    let user = UserContext {
        user_id: request["user_id"].as_str().unwrap().into(),
        features: request["user_features"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
            .collect(),
    };
    assert_scores_as_in_tfrs(&ranker, &user, request);
}

#[test]
fn a_ranker_exported_into_the_bundle_itself_is_kept_whole() {
    let ids: Vec<u64> = (1..=8).collect();
    let dir = bundle(&ids);
    let ranker_dir = dir.path().join("ranker");
    copy_dir(&fixtures().join("tutorial/ranker"), &ranker_dir);
    let before = std::fs::read(ranker_dir.join("weights.safetensors")).unwrap();
    let attached = attach_ranker(dir.path(), &ranker_dir, &ids).unwrap();
    assert_eq!(attached.unknown_items, 0);
    assert_eq!(
        std::fs::read(ranker_dir.join("weights.safetensors")).unwrap(),
        before
    );
}

#[test]
fn a_ranker_whose_weights_do_not_fit_its_config_is_refused_by_name() {
    let ids: Vec<u64> = (1..=8).collect();
    let dir = bundle(&ids);
    let broken = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tutorial/ranker"), broken.path());
    // The variant's weights have other shapes than the tutorial's config.
    std::fs::copy(
        fixtures().join("variant/ranker/weights.safetensors"),
        broken.path().join("weights.safetensors"),
    )
    .unwrap();
    let error = attach_ranker(dir.path(), broken.path(), &ids)
        .unwrap_err()
        .to_string();
    assert!(error.contains("weights.safetensors"), "{error}");
    assert!(error.contains("tensor"), "{error}");
    assert!(Manifest::load(dir.path()).unwrap().ranker.is_none());
}

#[test]
fn a_missing_vocabulary_is_named() {
    let ids: Vec<u64> = (1..=8).collect();
    let dir = bundle(&ids);
    let broken = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tutorial/ranker"), broken.path());
    std::fs::remove_file(broken.path().join("vocab/user_zip_code.txt")).unwrap();
    let error = attach_ranker(dir.path(), broken.path(), &ids)
        .unwrap_err()
        .to_string();
    assert!(error.contains("user_zip_code"), "{error}");
}

#[test]
fn stored_user_features_come_along_and_stand_in_for_the_request() {
    // The fixture's first request, with its user features stored instead of sent.
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let request = &expected["models"][0]["requests"][0];
    let user_id = request["user_id"].as_str().unwrap();
    let features = request["user_features"].as_object().unwrap();
    let source = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tutorial/ranker"), source.path());
    let names: Vec<&str> = features.keys().map(String::as_str).collect();
    let cells: Vec<&str> = features.values().map(|v| v.as_str().unwrap()).collect();
    std::fs::write(
        source.path().join("user_features.tsv"),
        format!(
            "user_id\t{}\n{user_id}\t{}\n",
            names.join("\t"),
            cells.join("\t")
        ),
    )
    .unwrap();

    let ids: Vec<u64> = (1..=8).collect();
    let dir = bundle(&ids);
    attach_ranker(dir.path(), source.path(), &ids).unwrap();
    let manifest = Manifest::load(dir.path()).unwrap();
    assert_eq!(
        manifest.ranker.as_ref().unwrap().user_features.as_deref(),
        Some("ranker/user_features.tsv")
    );
    assert!(dir.path().join("ranker/user_features.tsv").is_file());
    let ranker = Ranker::load(&manifest.ranker_files(dir.path()).unwrap()).unwrap();
    assert_eq!(ranker.stored_users(), 1);
    let only_id = UserContext {
        user_id: user_id.into(),
        ..Default::default()
    };
    assert_scores_as_in_tfrs(&ranker, &only_id, request);

    // A table naming a feature the ranker does not take fails the attach.
    std::fs::write(
        source.path().join("user_features.tsv"),
        "user_id\tshoe_size\nu\t42\n",
    )
    .unwrap();
    let error = attach_ranker(dir.path(), source.path(), &ids)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("column shoe_size is not a user-side feature"),
        "{error}"
    );
}
