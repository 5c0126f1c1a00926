//! A shard file whose graph is corrupt but whose header, sizes and vectors are
//! fine (what a buggy writer or a flipped bit inside the links leaves) is refused
//! by every load mode with an error naming the file: the vendored usearch's
//! patch 9 checks every level and link before a search can follow one out of
//! the graph. Without it, `view` accepts these files and the first search reads
//! outside the index's memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use recsys_bundle::{IndexParams, shard_file};
use recsys_index::{LoadMode, ShardIndex, build_shard};

const ITEMS: usize = 300;
const DIM: usize = 8;

/// Bytes of usearch's dense-index head and of the graph header (size,
/// connectivity, base connectivity, max level, entry slot: five u64).
const DENSE_HEAD: usize = 64;
const GRAPH_HEADER: usize = 40;

/// Writes a one-shard bundle and returns the path of its shard file.
fn bundle(dir: &Path) -> std::path::PathBuf {
    let params = IndexParams::default();
    let data: Vec<f32> = (0..ITEMS * DIM)
        .map(|i| ((i * 7919) % 1009) as f32 / 1009.0 - 0.5)
        .collect();
    let ids: Vec<u64> = (0..ITEMS as u64).collect();
    let order: Vec<usize> = (0..ITEMS).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    let path = dir.join(shard_file(0));
    build_shard(&path, &params, DIM, &data, &ids, &order, &pool, &|_| {}).unwrap();
    let manifest = serde_json::json!({
        "format_version": recsys_bundle::FORMAT_VERSION,
        "version": "corrupt-graph",
        "dimensions": DIM,
        "index": params,
        "shard_count": 1,
        "shards": [{"shard": 0, "file": shard_file(0), "items": ITEMS}],
        "items": ITEMS,
        "catalog": null,
        "query_model": null,
        "source": "test",
    });
    std::fs::write(dir.join(recsys_bundle::MANIFEST_FILE), manifest.to_string()).unwrap();
    path
}

/// Offsets in the file: the level table, and node 0 (key u64, level i16, then
/// the base list: count u32 and u32 slots). The vectors matrix comes first,
/// after its two u32 dimensions.
fn offsets() -> (usize, usize) {
    let levels = 8 + ITEMS * DIM * 4 + DENSE_HEAD + GRAPH_HEADER;
    (levels, levels + ITEMS * 2)
}

fn patch(path: &Path, at: usize, bytes: &[u8]) {
    let mut content = std::fs::read(path).unwrap();
    content[at..at + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, content).unwrap();
}

const MODES: [LoadMode; 5] = [
    LoadMode::View,
    LoadMode::Load,
    LoadMode::HugePages,
    LoadMode::Packed,
    LoadMode::Coded,
];

fn refused_by_every_mode(dir: &Path, path: &Path, expected: &str) {
    for mode in MODES {
        let error = ShardIndex::open_with(dir, 0, mode)
            .expect_err("a corrupt graph must be refused")
            .to_string();
        assert!(error.contains(expected), "{mode:?}: {error}");
        assert!(
            error.contains(&path.display().to_string()),
            "{mode:?}: {error}"
        );
    }
}

#[test]
fn the_layout_this_test_assumes_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(dir.path());
    let content = std::fs::read(&path).unwrap();
    let (levels, node0) = offsets();
    let level0 = i16::from_le_bytes([content[levels], content[levels + 1]]);
    let key0 = u64::from_le_bytes(content[node0..node0 + 8].try_into().unwrap());
    let tape_level = i16::from_le_bytes([content[node0 + 8], content[node0 + 9]]);
    let count = u32::from_le_bytes(content[node0 + 10..node0 + 14].try_into().unwrap());
    assert_eq!(key0, 0);
    assert_eq!(level0, tape_level);
    assert!(count > 0 && count as usize <= 2 * IndexParams::default().connectivity);
    for mode in MODES {
        ShardIndex::open_with(dir.path(), 0, mode).unwrap();
    }
}

#[test]
fn a_neighbor_slot_past_the_member_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(dir.path());
    let (_, node0) = offsets();
    patch(&path, node0 + 14, &(ITEMS as u32).to_le_bytes());
    refused_by_every_mode(dir.path(), &path, "neighbor slot is past the member count");
}

#[test]
fn a_neighbor_count_over_the_connectivity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(dir.path());
    let (_, node0) = offsets();
    patch(&path, node0 + 10, &u32::MAX.to_le_bytes());
    refused_by_every_mode(dir.path(), &path, "more neighbors than its connectivity");
}

#[test]
fn a_level_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(dir.path());
    let (levels, _) = offsets();
    // Node 1's level: negative, then far above the maximum.
    for level in [-1i16, i16::MAX] {
        patch(&path, levels + 2, &level.to_le_bytes());
        refused_by_every_mode(dir.path(), &path, "level");
    }
}
