//! The retrieval node's Prometheus series: time waiting for the search pool and
//! time searching, per shard and mode; searches waiting now, and searches not
//! run because their deadline had passed. Scraped through `recsys_server::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounterVec, IntGauge, IntGaugeVec};
use recsys_server::metrics::{counter_vec, gauge_vec, latency_histogram_vec};

static WAITING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_retrieval_waiting_searches",
        "searches waiting for a slot on the search pool now, by shard (bounded by the admission limit)",
        &["shard"],
    )
});

static EXPIRED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_retrieval_expired_searches_total",
        "searches not run because the caller's deadline passed before they could start, by shard",
        &["shard"],
    )
});

/// A search waiting for the pool; counted in the gauge until dropped.
#[derive(Debug)]
pub struct Waiting(IntGauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}

static FILTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_retrieval_filtered_searches_total",
        "searches with an attribute filter, by shard and how the matching items were found (post_filter: an unfiltered search for k / share items, the matching kept; graph: the filter inside the HNSW traversal; scan: an exact scan of the matching items)",
        &["shard", "path"],
    )
});

/// A filtered search of `shard` ended, having taken `route`.
pub fn filtered(shard: u32, route: &str) {
    FILTERED
        .with_label_values(&[shard.to_string().as_str(), route])
        .inc();
}

/// A search of `shard` starts waiting for the pool.
pub fn waiting(shard: u32) -> Waiting {
    let gauge = WAITING.with_label_values(&[shard.to_string().as_str()]);
    gauge.inc();
    Waiting(gauge)
}

/// A search of `shard` was not run: its deadline had passed.
pub fn expired(shard: u32) {
    EXPIRED
        .with_label_values(&[shard.to_string().as_str()])
        .inc();
}

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

static LOG_REVISION: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_retrieval_log_revision",
        "the last item change log revision the shard has applied, by shard",
        &["shard"],
    )
});

static REFUSED_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_retrieval_refused_changes_total",
        "item change log entries the shard refused (foreign items, bad vectors), by shard",
        &["shard"],
    )
});

static DELTA_PACKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_retrieval_delta_packed",
        "1 while the shard's searches read a packed copy of its mutable part (made once the change log pauses), 0 otherwise, by shard",
        &["shard"],
    )
});

static FOLDED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_retrieval_folded",
        "1 while the shard's searches read one graph folded from its base and mutable part (made once the change log has been quiet and the part is large), 0 otherwise, by shard",
        &["shard"],
    )
});

/// Whether `shard`'s searches read a packed copy of its mutable part.
pub fn delta_packed(shard: u32, packed: bool) {
    DELTA_PACKED
        .with_label_values(&[shard.to_string().as_str()])
        .set(i64::from(packed));
}

/// Whether `shard`'s searches read a fold of its base and mutable part.
pub fn folded(shard: u32, folded: bool) {
    FOLDED
        .with_label_values(&[shard.to_string().as_str()])
        .set(i64::from(folded));
}

/// `shard` has applied the change log up to `revision`.
pub fn log_revision(shard: u32, revision: u64) {
    LOG_REVISION
        .with_label_values(&[shard.to_string().as_str()])
        .set(i64::try_from(revision).unwrap_or(i64::MAX));
}

/// `shard` refused a change log entry.
pub fn refused_change(shard: u32) {
    REFUSED_CHANGES
        .with_label_values(&[shard.to_string().as_str()])
        .inc();
}
