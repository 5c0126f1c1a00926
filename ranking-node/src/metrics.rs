//! The ranking node's Prometheus series: candidates per call, scoring time, and
//! users scored through the out-of-vocabulary row. Scraped through
//! `recsys_server::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter};
use recsys_server::metrics::{counter, histogram, latency_histogram};

static SCORE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    latency_histogram(
        "recsys_ranking_score_seconds",
        "time of one batched forward pass, feature look-up included",
    )
});

static CANDIDATES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        HistogramOpts::new(
            "recsys_ranking_candidates",
            "candidates scored per Rank call",
        )
        .buckets(vec![
            1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
        ]),
    )
});

static OOV_USERS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_ranking_out_of_vocabulary_users_total",
        "Rank calls whose user the ranker did not know (scored with the out-of-vocabulary row)",
    )
});

/// One call scored `candidates` items in `elapsed`.
pub fn scored(candidates: usize, elapsed: Duration, user_out_of_vocabulary: bool) {
    SCORE_SECONDS.observe(elapsed.as_secs_f64());
    CANDIDATES.observe(candidates as f64);
    if user_out_of_vocabulary {
        OOV_USERS.inc();
    }
}
