//! Each node checks only the files it reads (`FileSet`), and checks all of them:
//! a corrupt file fails exactly the sets that hold it, naming it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use recsys_bundle::{BundleError, FileSet, IndexParams, Manifest, verify_files};
use recsys_bundle_builder::BuildOptions;
use recsys_bundle_builder::synthetic::{SyntheticSpec, build_synthetic};

fn bundle(dir: &Path) -> Manifest {
    let spec = SyntheticSpec {
        items: 600,
        users: 10,
        dimensions: 8,
        clusters: 4,
        seed: 9,
    };
    let options = BuildOptions {
        params: IndexParams::default(),
        shard_count: 2,
        version: "sets".into(),
        source: "synthetic".into(),
        threads: 1,
    };
    build_synthetic(dir, &spec, &options, &|_| {}).unwrap().1
}

fn flip(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

const SETS: [FileSet; 5] = [
    FileSet::All,
    FileSet::Shard(0),
    FileSet::Shard(1),
    FileSet::Ranker,
    FileSet::Gateway,
];

/// Which of [`SETS`] fail, each error naming `file`.
fn failing(dir: &Path, manifest: &Manifest, file: &str) -> Vec<FileSet> {
    SETS.into_iter()
        .filter(|&set| match verify_files(dir, manifest, set) {
            Ok(_) => false,
            Err(error) => {
                assert!(error.to_string().contains(file), "{set:?}: {error}");
                true
            }
        })
        .collect()
}

#[test]
fn a_corrupt_file_fails_exactly_the_sets_that_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = bundle(dir.path());
    for set in SETS {
        let report = verify_files(dir.path(), &manifest, set).unwrap();
        assert!(!report.files.is_empty(), "{set:?} checks nothing");
    }
    let cases = [
        (
            "shards/shard-1.usearch",
            vec![FileSet::All, FileSet::Shard(1)],
        ),
        (
            "ranker/weights.safetensors",
            vec![FileSet::All, FileSet::Ranker],
        ),
        ("catalog.tsv", vec![FileSet::All, FileSet::Gateway]),
        ("vocab/user_id.txt", vec![FileSet::All, FileSet::Gateway]),
    ];
    for (file, expected) in cases {
        let path = dir.path().join(file);
        let good = std::fs::read(&path).unwrap();
        flip(&path);
        assert_eq!(failing(dir.path(), &manifest, file), expected, "{file}");
        std::fs::write(&path, good).unwrap();
    }
}

#[test]
fn a_manifest_without_checksums_or_missing_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = bundle(dir.path());
    manifest.files.remove("shards/shard-0.usearch");
    let error = verify_files(dir.path(), &manifest, FileSet::Shard(0)).unwrap_err();
    assert!(error.to_string().contains("shard-0.usearch"), "{error}");
    verify_files(dir.path(), &manifest, FileSet::Shard(1)).unwrap();

    manifest.files.clear();
    let error = verify_files(dir.path(), &manifest, FileSet::Shard(1)).unwrap_err();
    assert!(matches!(error, BundleError::Corrupt { .. }));
    assert!(error.to_string().contains("no file checksums"), "{error}");
    let error = verify_files(dir.path(), &bundle(dir.path()), FileSet::Shard(7)).unwrap_err();
    assert!(error.to_string().contains("not 7"), "{error}");
}

#[test]
fn a_ranker_variants_files_are_the_rankers_and_only_its_config_reaches_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path());
    let own = dir.path().join("ranker");
    recsys_bundle_builder::attach_ranker_variant(dir.path(), &own, &[], Some("b")).unwrap();
    let manifest = Manifest::load(dir.path()).unwrap();
    assert_eq!(manifest.variant_names(), ["default", "b"]);
    for (file, expected) in [
        (
            "rankers/b/weights.safetensors",
            vec![FileSet::All, FileSet::Ranker],
        ),
        ("rankers/b/config.json", vec![FileSet::All, FileSet::Ranker]),
    ] {
        let path = dir.path().join(file);
        let good = std::fs::read(&path).unwrap();
        flip(&path);
        assert_eq!(failing(dir.path(), &manifest, file), expected, "{file}");
        std::fs::write(&path, good).unwrap();
    }
    // The gateway fetches the variant's config (its request features and heads).
    assert!(FileSet::Gateway.reads(&manifest, "rankers/b/config.json"));
    assert!(!FileSet::Gateway.reads(&manifest, "rankers/b/weights.safetensors"));
    // A variant needs a name fit for a directory, and the bundle's own ranker.
    for bad in ["default", "../x", "B"] {
        let error = recsys_bundle_builder::attach_ranker_variant(dir.path(), &own, &[], Some(bad))
            .unwrap_err();
        assert!(error.to_string().contains("variant"), "{bad}: {error}");
    }
}
