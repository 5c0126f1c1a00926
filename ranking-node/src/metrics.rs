//! The ranking node's Prometheus series: candidates per call, time and requests
//! per forward pass, and users scored through the out-of-vocabulary row. Scraped through
//! `recsys_server::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter};
use recsys_server::metrics::{counter, histogram, latency_histogram};

static SCORE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    latency_histogram(
        "recsys_ranking_score_seconds",
        "time of one forward pass over one or more batched requests, feature look-up included",
    )
});

static REQUESTS_PER_PASS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        HistogramOpts::new(
            "recsys_ranking_requests_per_pass",
            "Rank requests scored together in one forward pass",
        )
        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
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

/// One forward pass scored `requests` requests, `rows` candidates in all, in `elapsed`.
pub fn pass(requests: usize, _rows: usize, elapsed: Duration) {
    SCORE_SECONDS.observe(elapsed.as_secs_f64());
    REQUESTS_PER_PASS.observe(requests as f64);
}

/// One call had `candidates` items scored.
pub fn scored(candidates: usize, user_out_of_vocabulary: bool) {
    CANDIDATES.observe(candidates as f64);
    if user_out_of_vocabulary {
        OOV_USERS.inc();
    }
}
