//! The ranking node's Prometheus series: candidates per call, time and requests
//! per forward pass, users scored through the out-of-vocabulary row, the queue's
//! length, requests dropped unscored, and scoring threads that died. Scraped
//! through `recsys_server::metrics`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge};
use recsys_server::metrics::{counter, counter_vec, gauge, histogram, latency_histogram};

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

static QUEUED_REQUESTS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_ranking_queued_requests",
        "Rank requests waiting for a scoring thread",
    )
});

static QUEUED_CANDIDATES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_ranking_queued_candidates",
        "candidates of the Rank requests waiting for a scoring thread",
    )
});

static SKIPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_ranking_skipped_total",
        "queued Rank requests dropped unscored, by reason: cancelled (the caller left) or expired (the deadline passed)",
        &["reason"],
    )
});

static THREADS_DIED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_ranking_threads_died_total",
        "scoring threads that died (a panic outside a scoring pass) and were restarted",
    )
});

/// The queue holds `requests` requests with `candidates` candidates in all.
pub fn queued(requests: usize, candidates: usize) {
    QUEUED_REQUESTS.set(i64::try_from(requests).unwrap_or(i64::MAX));
    QUEUED_CANDIDATES.set(i64::try_from(candidates).unwrap_or(i64::MAX));
}

/// A queued request was dropped unscored; `reason` is `cancelled` or `expired`.
pub fn skipped(reason: &'static str) {
    SKIPPED.with_label_values(&[reason]).inc();
}

/// A scoring thread died and is being restarted.
pub fn thread_died() {
    THREADS_DIED.inc();
}

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

static LOG_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_ranking_log_revision",
        "the last item change log revision whose item features the node has applied",
    )
});

static REFUSED_CHANGES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_ranking_refused_changes_total",
        "upserted items whose features the ranker refused (a value of the wrong kind)",
    )
});

/// The node has applied the change log up to `revision`.
pub fn log_revision(revision: u64) {
    LOG_REVISION.set(i64::try_from(revision).unwrap_or(i64::MAX));
}

/// The ranker refused an upserted item's features.
pub fn refused_change() {
    REFUSED_CHANGES.inc();
}
