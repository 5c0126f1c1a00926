//! The README's table of limits says what `recsys_proto::limits` holds.

#![allow(clippy::unwrap_used)]

use recsys_proto::limits::*;

#[test]
fn the_readme_table_matches_the_code() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let secs = |d: std::time::Duration| format!("{} s", d.as_secs());
    let rows = [
        ("MAX_K", MAX_K.to_string()),
        ("MAX_RETRIEVE_K", MAX_RETRIEVE_K.to_string()),
        ("MAX_EXCLUSIONS", MAX_EXCLUSIONS.to_string()),
        ("MAX_ID_BYTES", MAX_ID_BYTES.to_string()),
        ("MAX_DIMENSIONS", MAX_DIMENSIONS.to_string()),
        ("MAX_VALUE_MAGNITUDE", format!("{MAX_VALUE_MAGNITUDE:e}")),
        ("MAX_USER_FEATURES", MAX_USER_FEATURES.to_string()),
        ("MAX_FEATURE_NAME_BYTES", MAX_FEATURE_NAME_BYTES.to_string()),
        (
            "MAX_FEATURE_VALUE_BYTES",
            MAX_FEATURE_VALUE_BYTES.to_string(),
        ),
        ("MAX_LIST_VALUES", MAX_LIST_VALUES.to_string()),
        (
            "MAX_USER_FEATURES_BYTES",
            MAX_USER_FEATURES_BYTES.to_string(),
        ),
        (
            "recommend_request_max_bytes()",
            recommend_request_max_bytes().to_string(),
        ),
        (
            "search_request_max_bytes(MAX_EXCLUSIONS)",
            search_request_max_bytes(MAX_EXCLUSIONS).to_string(),
        ),
        (
            "rank_request_max_bytes(MAX_RETRIEVE_K)",
            rank_request_max_bytes(MAX_RETRIEVE_K as usize).to_string(),
        ),
        ("DEFAULT_TIMEOUT", secs(DEFAULT_TIMEOUT)),
        ("MAX_HEADS", MAX_HEADS.to_string()),
        ("MAX_HEAD_WEIGHT", format!("{MAX_HEAD_WEIGHT:e}")),
        ("MAX_SESSION_ITEMS", MAX_SESSION_ITEMS.to_string()),
        ("MAX_FILTER_BYTES", MAX_FILTER_BYTES.to_string()),
        (
            "MAX_SESSION_TOKEN_BYTES",
            MAX_SESSION_TOKEN_BYTES.to_string(),
        ),
        ("DEFAULT_MAX_TIMEOUT", secs(DEFAULT_MAX_TIMEOUT)),
        (
            "DEFAULT_MAX_CONCURRENT_STREAMS",
            DEFAULT_MAX_CONCURRENT_STREAMS.to_string(),
        ),
        (
            "DEFAULT_MAX_EXACT_SEARCHES",
            DEFAULT_MAX_EXACT_SEARCHES.to_string(),
        ),
    ];
    for (name, value) in rows {
        let row = format!("| `{name}` | {value} |");
        assert!(readme.contains(&row), "README.md has no row {row}");
    }
}
