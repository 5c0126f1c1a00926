//! The gateway's Prometheus series: per-stage latency, per-shard answers, degraded
//! responses and failed node calls. The `/metrics` endpoint and the per-call gRPC
//! series are `recsys_server::metrics`'.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge};
use recsys_server::metrics::{counter, counter_vec, gauge, latency_histogram_vec};

static STAGE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_gateway_stage_seconds",
        "time spent per Recommend stage: encode, retrieval, ranking, total",
        &["stage"],
    )
});

static SHARD_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_gateway_shard_seconds",
        "time until a shard answered or gave up, retries included",
        &["shard"],
    )
});

static SHARD_ANSWERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_shard_answers_total",
        "shard searches by outcome: answered, or missing from the merge",
        &["shard", "outcome"],
    )
});

static DEGRADED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_degraded_total",
        "answers that fell short, by the first stage that did: retrieval (a shard missing) or ranking (retrieval order returned)",
        &["stage"],
    )
});

static NODE_CALL_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_node_call_failures_total",
        "failed calls to retrieval or ranking nodes, by gRPC code or timeout; a retry follows unless the code forbids it",
        &["code"],
    )
});

static REFUSED_ANSWERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_refused_answers_total",
        "node answers the gateway refused, by the check they failed (malformed, foreign_item, duplicate_item, excluded_item, wrong_version, non_finite_score); all but non_finite_score also quarantine the node",
        &["check"],
    )
});

static VARIANT_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_gateway_variant_seconds",
        "time to answer a ranked Recommend, by the ranker variant (A/B arm) its user is assigned to",
        &["variant"],
    )
});

static VARIANT_ANSWERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_variant_answers_total",
        "Recommend answers by the ranker variant their user is assigned to and outcome: ranked, or degraded (a shard missing, or retrieval order returned)",
        &["variant", "outcome"],
    )
});

static IMPRESSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_impressions_total",
        "answers offered to the impression log: logged, dropped_queue_full (the writer fell behind), dropped_stopped (the log stopped)",
        &["outcome"],
    )
});

static IMPRESSION_LOG_STOPPED: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_gateway_impression_log_stopped",
        "1 once a write of the impression log failed (a full disk) and logging stopped; serving goes on",
    )
});

static BUNDLE_VERSIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_gateway_bundle_versions",
        "bundle versions the gateway holds: 2 while a rollout loads or retires one",
    )
});

static BUNDLE_SWITCHES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_gateway_bundle_switches_total",
        "changes of the bundle version new requests are answered with",
    )
});

static HEDGES: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_gateway_hedged_calls_total",
        "node calls that were sent to a second replica because the first was slow",
    )
});

static MISMATCHED_NODES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_gateway_mismatched_nodes",
        "nodes in the membership that serve another bundle version or shard count, and are not routed to",
    )
});

static INVALID_REGISTRATIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_gateway_invalid_registrations",
        "serving registrations in the membership whose shard numbers no cluster can route by (a shard count outside 1..=1024, a shard not below it), ignored",
    )
});

static APPLY_LAG: LazyLock<prometheus::Gauge> = LazyLock::new(|| {
    recsys_server::metrics::float_gauge(
        "recsys_gateway_apply_lag_seconds",
        "age of the oldest item change this gateway accepted that a serving retrieval replica has not applied (0: none pending); past --max-apply-lag-ms item changes are refused",
    )
});

static APPLY_LAG_REFUSALS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "recsys_gateway_apply_lag_refusals_total",
        "UpsertItems and DeleteItems calls refused with RESOURCE_EXHAUSTED because a replica lagged past --max-apply-lag-ms",
    )
});

/// The oldest pending item change is `seconds` old.
pub fn apply_lag(seconds: f64) {
    APPLY_LAG.set(seconds);
}

/// An item change call was refused for the replicas' lag.
pub fn apply_lag_refused() {
    APPLY_LAG_REFUSALS.inc();
}

/// `count` registrations are ignored for impossible shard numbers.
pub fn invalid_registrations(count: usize) {
    INVALID_REGISTRATIONS.set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// `count` nodes are left out for serving another bundle.
pub fn mismatched_nodes(count: usize) {
    MISMATCHED_NODES.set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// A node answer failed the answer check `check` (a constant label).
pub fn refused_answer(check: &'static str) {
    REFUSED_ANSWERS.with_label_values(&[check]).inc();
}

/// The gateway holds `held` versions and answers with `primary`; counts a
/// switch when `primary` changed since the last call.
pub fn bundle_versions(primary: Option<&str>, held: usize) {
    static LAST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    BUNDLE_VERSIONS.set(i64::try_from(held).unwrap_or(i64::MAX));
    if let Ok(mut last) = LAST.lock()
        && last.as_deref() != primary
    {
        if last.is_some() {
            BUNDLE_SWITCHES.inc();
        }
        *last = primary.map(str::to_string);
    }
}

/// A call was hedged to a second replica.
pub fn hedged() {
    HEDGES.inc();
}

/// A Recommend stage took `elapsed`.
pub fn stage(stage: &'static str, elapsed: Duration) {
    STAGE_SECONDS
        .with_label_values(&[stage])
        .observe(elapsed.as_secs_f64());
}

/// Shard `shard` answered (or not) after `elapsed`.
pub fn shard_answer(shard: u32, answered: bool, elapsed: Duration) {
    let shard = shard.to_string();
    SHARD_SECONDS
        .with_label_values(&[shard.as_str()])
        .observe(elapsed.as_secs_f64());
    SHARD_ANSWERS
        .with_label_values(&[
            shard.as_str(),
            if answered { "answered" } else { "missing" },
        ])
        .inc();
}

/// An answer was marked degraded at `stage`.
pub fn degraded(stage: &'static str) {
    DEGRADED.with_label_values(&[stage]).inc();
}

/// A call to a node failed with `code` (a lowercase gRPC code name or `timeout`).
pub fn node_call_failed(code: &'static str) {
    NODE_CALL_FAILURES.with_label_values(&[code]).inc();
}

static NODE_IDENTITY_REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_gateway_node_identity_rejections_total",
        "TLS handshakes with nodes whose certificate was refused, by reason: wrong_identity (valid, but not the role and shard the node registered), untrusted (not from the cluster CA), expired, other; such a node gets no traffic",
        &["reason"],
    )
});

/// Counts a node certificate refused during a handshake.
pub fn node_identity_rejected(reason: &'static str) {
    NODE_IDENTITY_REJECTIONS.with_label_values(&[reason]).inc();
}

static LOG_REVISION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "recsys_gateway_log_revision",
        "the last item change log revision whose names the gateway has applied",
    )
});

/// The gateway has applied the change log's names up to `revision`.
pub fn log_revision(revision: u64) {
    LOG_REVISION.set(i64::try_from(revision).unwrap_or(i64::MAX));
}

/// One answer to a user assigned to `variant`: its time, and whether it fell
/// short (a shard missing, or unranked).
pub fn variant_answer(variant: &str, elapsed: Duration, degraded: bool) {
    VARIANT_SECONDS
        .with_label_values(&[variant])
        .observe(elapsed.as_secs_f64());
    let outcome = if degraded { "degraded" } else { "ranked" };
    VARIANT_ANSWERS.with_label_values(&[variant, outcome]).inc();
}

/// An answer offered to the impression log, by what became of it.
pub fn impression(outcome: &'static str) {
    IMPRESSIONS.with_label_values(&[outcome]).inc();
}

/// Whether the impression log has stopped.
pub fn impression_log_stopped(stopped: bool) {
    IMPRESSION_LOG_STOPPED.set(i64::from(stopped));
}
