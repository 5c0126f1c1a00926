//! The retrieval node's Prometheus series: time waiting for the search pool and
//! time searching, per shard and mode. Scraped through `recsys_server::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::HistogramVec;
use recsys_server::metrics::latency_histogram_vec;

static SEARCH_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_retrieval_search_seconds",
        "time of one index search on the search pool, by shard and mode (hnsw or exact)",
        &["shard", "mode"],
    )
});

static QUEUE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_retrieval_queue_seconds",
        "time a search waited for a slot on the search pool: the node's saturation",
        &["shard"],
    )
});

/// One search of `shard` waited `queued` for the pool and ran for `searched`.
pub fn search(shard: u32, exact: bool, queued: Duration, searched: Duration) {
    let shard = shard.to_string();
    QUEUE_SECONDS
        .with_label_values(&[shard.as_str()])
        .observe(queued.as_secs_f64());
    SEARCH_SECONDS
        .with_label_values(&[shard.as_str(), if exact { "exact" } else { "hnsw" }])
        .observe(searched.as_secs_f64());
}
