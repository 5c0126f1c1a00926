//! The API's limits and defaults, in one place for every server and client.
//!
//! The gateway accepts at most what every node accepts: a retrieval node's
//! `Search` takes up to [`MAX_RETRIEVE_K`] items per call and a ranking node's
//! `Rank` up to [`MAX_RETRIEVE_K`] candidates, and the gateway never asks a
//! shard for more than `retrieve_k` (itself at most [`MAX_RETRIEVE_K`]) nor sends
//! more candidates than it retrieved. Servers may be configured to accept more
//! than these, never less (their flags refuse it at start), so a request the
//! gateway takes is never refused by a node for its size.
//!
//! The largest message each server decodes ([`recommend_request_max_bytes`] and
//! its siblings) is computed from the same limits, so a message too large to be
//! valid is refused by its length prefix before it is decoded into memory.

use std::time::Duration;

/// Most items one `Recommend` answer holds (`k`).
pub const MAX_K: u32 = 1_000;

/// Most candidates one request retrieves (`retrieve_k`), which is also the most
/// items a shard is asked for and the most candidates a ranking node scores.
pub const MAX_RETRIEVE_K: u32 = 10_000;

/// Most `exclude_item_ids` one `Recommend` carries.
pub const MAX_EXCLUSIONS: usize = 10_000;

/// Longest user id, in bytes.
pub const MAX_ID_BYTES: usize = 1024;

/// Most values in one list-valued user feature.
pub const MAX_LIST_VALUES: usize = 1024;

/// Most entries in `user_features`.
pub const MAX_USER_FEATURES: usize = 64;

/// Longest user feature name, in bytes.
pub const MAX_FEATURE_NAME_BYTES: usize = 128;

/// Longest string user feature value (alone or in a list), in bytes.
pub const MAX_FEATURE_VALUE_BYTES: usize = 1024;

/// Most bytes all of `user_features` take: every name plus the encoded size of
/// every value. Bounds the map as a whole, since [`MAX_USER_FEATURES`] lists of
/// [`MAX_LIST_VALUES`] values of [`MAX_FEATURE_VALUE_BYTES`] each would be 64 MiB.
pub const MAX_USER_FEATURES_BYTES: usize = 64 * 1024;

/// Largest magnitude of a number in a request: every query embedding value and
/// every numeric (float) user feature must be finite and within `±1e6`.
///
/// Why this bound: f32 scores are sums of `dimensions` products (inner product,
/// cosine) or squared differences (l2). With |q| ≤ 1e6 and item values of any
/// trained model (|x| ≪ 1e6), a 4096-dimension squared distance is at most
/// 4096 · (2e6)² ≈ 1.6e16, twenty orders of magnitude below f32's 3.4e38, so a
/// valid query cannot make a node answer `inf`. Embeddings of trained models sit
/// within ±100; 1e6 leaves room for unnormalized ones.
pub const MAX_VALUE_MAGNITUDE: f32 = 1e6;

/// Most embedding dimensions a bundle may have; bounds the query in a request.
pub const MAX_DIMENSIONS: usize = 4096;

/// The deadline of a request that carries none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest deadline the gateway honours by default; a client asking for
/// more gets this (its request is clamped, not refused): work the client has
/// long stopped waiting for must not hold a slot for years.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// HTTP/2 streams one client connection may have open at once on any server,
/// by default: above the gateway's fan-out per node connection under load,
/// far below what would let one connection pin a server's memory.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Exact (brute-force) searches that may run at once, by default, at a gateway
/// and at each retrieval node; more are refused with `RESOURCE_EXHAUSTED`. An
/// exact search scans the whole shard on every shard.
pub const DEFAULT_MAX_EXACT_SEARCHES: usize = 4;

/// Candidates a gateway retrieves for a ranked answer when the request leaves
/// `retrieve_k` at 0: TFRS's tutorials retrieve 100 and rank them, and on the
/// MovieLens demo the ranked top 10 of 100 differ from the retrieval top 10 in
/// most answers. Its cost is the ranking stage's (one forward pass per
/// candidate) and a wider search per shard; a caller may ask for fewer or more.
pub const DEFAULT_RETRIEVE_K: u32 = 100;

/// The default probability that a shard's `k'` holds every item of the global
/// top `retrieve_k` that lives on it (Vespa's top-k probability).
pub const DEFAULT_TOP_K_PROBABILITY: f64 = 0.9999;

/// The default recall@k each shard's HNSW search aims for
/// (`RecommendOptions.recall_target`): each shard searches with the narrowest
/// beam its builder measured to reach it at the `k` asked of it.
pub const DEFAULT_RECALL_TARGET: f32 = 0.95;

/// Most heads a multi-objective ranker may have, and so most entries of a
/// request's `head_weights`.
pub const MAX_HEADS: usize = 16;

/// Largest weight of a head's score in a request's `head_weights` (and in a
/// ranker's config, `recsys_model::MAX_HEAD_WEIGHT`): combined scores stay well
/// within `f32` whatever the heads' scales.
pub const MAX_HEAD_WEIGHT: f64 = 1e6;

// Wire sizes, for the message size limits below. Each bound assumes the
// costliest legal encoding (a repeated scalar written unpacked, a tag per value).

/// A repeated `uint64` written unpacked: a tag byte and a varint of up to 10 bytes.
const ID_WIRE_BYTES: usize = 11;
/// A repeated `float` written unpacked: a tag byte and 4 bytes.
const FLOAT_WIRE_BYTES: usize = 5;
/// A map entry's framing: entry tag and length, key tag and length, value tag and length.
const MAP_ENTRY_WIRE_BYTES: usize = 16;
/// Everything else in a message (scalars, tags and lengths of the fields above),
/// generously.
const SLACK_BYTES: usize = 4 * 1024;

/// The largest `head_weights` map on the wire: [`MAX_HEADS`] names of up to
/// [`MAX_FEATURE_NAME_BYTES`] and a float each.
const fn head_weights_wire_bytes() -> usize {
    MAX_HEADS * (MAX_FEATURE_NAME_BYTES + FLOAT_WIRE_BYTES + MAP_ENTRY_WIRE_BYTES)
}

/// The largest `user_features` map on the wire: [`MAX_USER_FEATURES_BYTES`] of
/// names and encoded values plus each entry's framing.
const fn user_features_wire_bytes() -> usize {
    MAX_USER_FEATURES_BYTES + MAX_USER_FEATURES * MAP_ENTRY_WIRE_BYTES
}

/// The largest valid `RecommendRequest`: a user id or a query of
/// [`MAX_DIMENSIONS`], the user features, [`MAX_EXCLUSIONS`] ids (about 200 KiB
/// in all). A gateway decodes nothing larger.
pub const fn recommend_request_max_bytes() -> usize {
    MAX_ID_BYTES
        + MAX_DIMENSIONS * FLOAT_WIRE_BYTES
        + user_features_wire_bytes()
        + MAX_EXCLUSIONS * ID_WIRE_BYTES
        + MAX_SESSION_TOKEN_BYTES
        + MAX_ID_BYTES
        + 3 * MAX_FILTER_BYTES
        + head_weights_wire_bytes()
        + SLACK_BYTES
}

/// Longest attribute filter: its text form (`filter_expression`, or the
/// structured `filter` written as text) in bytes; a structured filter's
/// encoding may take twice that.
pub const MAX_FILTER_BYTES: usize = 4096;

/// Items a session token remembers: the newest, when pages add up past it.
pub const MAX_SESSION_ITEMS: usize = 1000;

/// Longest session token a gateway writes or reads: [`MAX_SESSION_ITEMS`]
/// items of a 10-byte id and a 4-byte score, the header and the signature.
pub const MAX_SESSION_TOKEN_BYTES: usize = MAX_SESSION_ITEMS * 14 + MAX_VERSION_BYTES + 128;

/// The largest valid `SearchRequest` for a node that takes `max_exclusions`
/// excluded ids: a query of [`MAX_DIMENSIONS`] and the ids.
pub const fn search_request_max_bytes(max_exclusions: usize) -> usize {
    MAX_DIMENSIONS * FLOAT_WIRE_BYTES
        + max_exclusions.saturating_mul(ID_WIRE_BYTES)
        + MAX_FILTER_BYTES
        + SLACK_BYTES
}

/// The largest valid `RankRequest` for a node that takes `max_candidates`:
/// a user id, the user features and the candidate ids.
pub const fn rank_request_max_bytes(max_candidates: usize) -> usize {
    MAX_ID_BYTES
        + user_features_wire_bytes()
        + max_candidates.saturating_mul(ID_WIRE_BYTES)
        + head_weights_wire_bytes()
        + SLACK_BYTES
}

/// Longest bundle or model version string a node answer may carry.
pub const MAX_VERSION_BYTES: usize = 1024;

/// The largest valid `SearchResponse` to a search of up to `max_k` items:
/// the ids, the scores and a version. A gateway decodes no larger answer.
pub const fn search_response_max_bytes(max_k: usize) -> usize {
    max_k.saturating_mul(ID_WIRE_BYTES + FLOAT_WIRE_BYTES) + MAX_VERSION_BYTES + SLACK_BYTES
}

/// The largest valid `RankResponse` for `candidates` candidates: a combined
/// score and [`MAX_HEADS`] head scores each, the head names, a version.
pub const fn rank_response_max_bytes(candidates: usize) -> usize {
    candidates.saturating_mul(FLOAT_WIRE_BYTES * (1 + MAX_HEADS))
        + MAX_HEADS * (MAX_FEATURE_NAME_BYTES + 2)
        + MAX_VERSION_BYTES
        + SLACK_BYTES
}

/// Most items in one `UpsertItems` or `DeleteItems` call: one call is one entry
/// of the cluster's change log in etcd, which refuses requests over 1.5 MiB by
/// default; 4,096 upserts of 64 dimensions with short names fit in 1 MiB.
pub const MAX_CATALOG_ITEMS: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{
        FeatureValue, QueryEmbedding, RankRequest, RecommendRequest, SearchRequest, SearchResponse,
        StringList, feature_value::Kind, recommend_request::Query,
    };
    use prost::Message;

    /// The costliest request within every limit: varints at their longest, the
    /// most features, each as large as the byte budget allows.
    fn largest_features() -> std::collections::HashMap<String, FeatureValue> {
        let mut features = std::collections::HashMap::new();
        let mut budget = MAX_USER_FEATURES_BYTES;
        for i in 0..MAX_USER_FEATURES {
            let name = format!("{i:0>width$}", width = MAX_FEATURE_NAME_BYTES);
            // One-byte values maximize the per-value framing against the budget.
            let values = (budget.saturating_sub(name.len()) / 2).min(MAX_LIST_VALUES);
            let value = FeatureValue {
                kind: Some(Kind::StringList(StringList {
                    values: vec!["x".into(); values],
                })),
            };
            budget = budget.saturating_sub(name.len() + value.encoded_len());
            features.insert(name, value);
        }
        features
    }

    /// A structured filter as large as the gateway takes.
    fn largest_filter() -> crate::v1::Filter {
        use crate::v1::{AttributeEquals, AttributeLiteral, Filter, attribute_literal, filter};
        let filter = |bytes| Filter {
            kind: Some(filter::Kind::Equals(AttributeEquals {
                attribute: "a".into(),
                value: Some(AttributeLiteral {
                    value: Some(attribute_literal::Value::Keyword("k".repeat(bytes))),
                }),
            })),
        };
        let overhead = filter(0).encoded_len() + 4;
        let largest = filter(2 * MAX_FILTER_BYTES - overhead);
        assert!(largest.encoded_len() <= 2 * MAX_FILTER_BYTES);
        largest
    }

    /// [`MAX_HEADS`] weights of the longest names.
    fn largest_head_weights() -> std::collections::HashMap<String, f32> {
        (0..MAX_HEADS)
            .map(|i| (format!("{i:0>width$}", width = MAX_FEATURE_NAME_BYTES), 1e6))
            .collect()
    }

    #[test]
    fn the_largest_valid_messages_fit_their_limits() {
        let request = RecommendRequest {
            min_revision: u64::MAX,
            query: Some(Query::QueryEmbedding(QueryEmbedding {
                values: vec![1.0; MAX_DIMENSIONS],
            })),
            user_features: largest_features(),
            k: MAX_K,
            retrieve_k: MAX_RETRIEVE_K,
            exclude_item_ids: vec![u64::MAX; MAX_EXCLUSIONS],
            options: Some(Default::default()),
            similar_to_item_id: Some(u64::MAX),
            session: Some(crate::v1::SessionRequest {
                token: vec![0xff; MAX_SESSION_TOKEN_BYTES],
                mode: 1,
            }),
            diversity: Some(crate::v1::Diversity {
                attribute: "a".repeat(MAX_ID_BYTES),
                max_per_value: u32::MAX,
                mmr_lambda: Some(1.0),
            }),
            // The gateway takes a structured filter of up to twice
            // MAX_FILTER_BYTES encoded, and the text besides.
            filter: Some(largest_filter()),
            filter_expression: "f".repeat(MAX_FILTER_BYTES),
            head_weights: largest_head_weights(),
        };
        assert!(request.encoded_len() <= recommend_request_max_bytes());
        let search = SearchRequest {
            min_log_revision: u64::MAX,
            query: vec![1.0; MAX_DIMENSIONS],
            k: MAX_RETRIEVE_K,
            exclude_item_ids: vec![u64::MAX; MAX_EXCLUSIONS],
            exact: true,
            // Version names are at most 128 bytes (`recsys_bundle::root::MAX_VERSION_LEN`).
            bundle_version: "v".repeat(128),
            filter: "f".repeat(MAX_FILTER_BYTES),
            return_vectors: true,
            recall_target: 0.0,
            recall_at: 0,
        };
        assert!(search.encoded_len() <= search_request_max_bytes(MAX_EXCLUSIONS));
        let rank = RankRequest {
            user_id: "u".repeat(MAX_ID_BYTES),
            user_features: largest_features(),
            item_ids: vec![u64::MAX; MAX_RETRIEVE_K as usize],
            bundle_version: "v".repeat(128),
            min_log_revision: u64::MAX,
            head_weights: largest_head_weights(),
            ranker_variant: "v".repeat(64),
        };
        assert!(rank.encoded_len() <= rank_request_max_bytes(MAX_RETRIEVE_K as usize));
        let ranked = crate::v1::RankResponse {
            scores: vec![1.0; MAX_RETRIEVE_K as usize],
            model_version: "m".repeat(MAX_VERSION_BYTES),
            user_out_of_vocabulary: true,
            bundle_version: "v".repeat(128),
            heads: (0..MAX_HEADS)
                .map(|i| format!("{i:0>width$}", width = MAX_FEATURE_NAME_BYTES))
                .collect(),
            head_scores: vec![1.0; MAX_RETRIEVE_K as usize * MAX_HEADS],
        };
        assert!(ranked.encoded_len() <= rank_response_max_bytes(MAX_RETRIEVE_K as usize));
        let answer = SearchResponse {
            item_ids: vec![u64::MAX; MAX_RETRIEVE_K as usize],
            scores: vec![1.0; MAX_RETRIEVE_K as usize],
            shard: u32::MAX,
            items_searched: u64::MAX,
            bundle_version: "v".repeat(MAX_VERSION_BYTES),
            search_us: u64::MAX,
            log_revision: u64::MAX,
            filter_matches: u64::MAX,
            filter_scanned: true,
            // Vectors come only when asked for; the gateway raises its limit
            // for those calls by their size.
            vectors: Vec::new(),
            search_ef: 0,
        };
        assert!(answer.encoded_len() <= search_response_max_bytes(MAX_RETRIEVE_K as usize));
    }

    #[test]
    fn four_mebibytes_of_one_byte_ids_is_over_the_gateway_limit() {
        // The message: 4 MiB of one-byte exclusion ids decoded into a
        // ~33 MB array before validation; now its length prefix refuses it.
        assert!(recommend_request_max_bytes() < 256 * 1024);
        assert!(4 << 20 > recommend_request_max_bytes());
    }
}
