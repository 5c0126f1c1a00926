//! A bundle is a function of its inputs, not of the machine that built it:
//! every Kubernetes pod builds the synthetic bundle itself with as many threads as
//! it has cores, and the pods must agree. Every file is byte-identical across
//! thread counts except the HNSW index files (and their checksums and measured
//! search depths in the manifest), whose graphs depend on the order in
//! which parallel inserts land (what they hold is checked by the search tests
//! against the brute-force oracle).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use recsys_bundle::{IndexParams, Manifest};
use recsys_bundle_builder::BuildOptions;
use recsys_bundle_builder::synthetic::{SyntheticSpec, build_synthetic};

/// Every file under `dir` by relative path, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path.strip_prefix(dir).unwrap().display().to_string();
                out.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn synthetic_bundles_are_byte_identical_across_thread_counts() {
    let spec = SyntheticSpec {
        items: 3_000,
        users: 30,
        dimensions: 8,
        clusters: 4,
        seed: 5,
    };
    let build = |threads: usize| {
        let dir = tempfile::tempdir().unwrap();
        let options = BuildOptions {
            params: IndexParams::default(),
            shard_count: 2,
            version: "determinism".into(),
            source: "synthetic".into(),
            threads,
        };
        build_synthetic(dir.path(), &spec, &options, &|_| {}).unwrap();
        dir
    };
    let one = build(1);
    let manifest = Manifest::load(one.path()).unwrap();
    let index_files: Vec<&str> = manifest.shards.iter().map(|s| s.file.as_str()).collect();
    assert_eq!(index_files.len(), 2);
    let reference = files(one.path());
    let compared = reference
        .iter()
        .filter(|(name, _)| !index_files.contains(&name.as_str()))
        .count();
    // The manifest, catalog, user table and planted ranker at least.
    assert!(compared >= 4, "only {compared} files besides the index");
    for threads in [2, 3] {
        let other = build(threads);
        let theirs = files(other.path());
        let names = |files: &[(String, Vec<u8>)]| -> Vec<String> {
            files.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(&theirs), names(&reference), "{threads} threads");
        for ((name, a), (_, b)) in reference.iter().zip(&theirs) {
            if index_files.contains(&name.as_str()) {
                continue;
            }
            if name == recsys_bundle::MANIFEST_FILE {
                // The manifest lists every file's checksum, the index files'
                // too, which differ, and the search depths measured on each
                // shard's graph: compare it without those.
                let without_index = |bytes: &[u8]| {
                    let mut manifest: Manifest = serde_json::from_slice(bytes).unwrap();
                    manifest
                        .files
                        .retain(|file, _| !index_files.contains(&file.as_str()));
                    for shard in &mut manifest.shards {
                        assert!(shard.search_depths.is_some());
                        shard.search_depths = None;
                    }
                    manifest
                };
                assert_eq!(without_index(a), without_index(b), "{threads} threads");
                continue;
            }
            assert!(a == b, "{name} differs between 1 and {threads} threads");
        }
    }
    println!("{compared} files identical across 1, 2 and 3 build threads");
}
