//! Prometheus metrics: the `/metrics` endpoint and a gRPC layer that counts and
//! times every call.
//!
//! Every server of the process records into the `prometheus` crate's default
//! registry, so one endpoint per process shows them all (the local cluster runs
//! several nodes in one process; their gRPC metrics are told apart by `service`, and
//! the nodes' own metrics carry a `shard` label). Node-specific metrics live in the
//! crate that records them (`recsys_gateway_*`, `recsys_retrieval_*`,
//! `recsys_ranking_*`); what is here is shared by all of them.

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds, from 100 µs (a shard search on a small shard) to 5 s
/// (past any sane deadline); shared so that dashboards can put the stages side by side.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The gRPC methods whose calls get their own label values, by service; a call
/// to any other service is counted under `other`/`other`, and to an unknown
/// method of a known service under `unknown`, so a client sending random paths
/// cannot add series (each label set is a series kept for the process's life).
const KNOWN_METHODS: &[(&str, &[&str])] = &[
    (
        "recsys.v1.GatewayService",
        &["Recommend", "RecommendStream"],
    ),
    (
        "recsys.v1.RetrievalService",
        &["Search", "Info", "GetItemVector"],
    ),
    ("recsys.v1.RankingService", &["Rank", "Info"]),
    ("recsys.v1.CatalogService", &["UpsertItems", "DeleteItems"]),
    ("grpc.health.v1.Health", &["Check", "Watch"]),
    (
        "grpc.reflection.v1.ServerReflection",
        &["ServerReflectionInfo"],
    ),
];

// Metrics are defined in `LazyLock` statics from constant names, labels and
// buckets, so the only ways to fail are programming errors (an invalid or duplicate
// name), which the first scrape in the tests shows; panicking at first use is the
// honest outcome. The constructors below are the one place that says so.

/// Registers `metric` in the default registry and returns it.
#[allow(clippy::expect_used)]
fn register<M: prometheus::core::Collector + Clone + 'static>(metric: M) -> M {
    prometheus::register(Box::new(metric.clone())).expect("metric names are unique constants");
    metric
}

/// A registered latency histogram with [`LATENCY_BUCKETS`], one series per label set.
#[allow(clippy::expect_used)]
pub fn latency_histogram_vec(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    register(HistogramVec::new(opts, labels).expect("constant metric definition"))
}

/// A registered histogram without labels.
#[allow(clippy::expect_used)]
pub fn histogram(opts: HistogramOpts) -> Histogram {
    register(Histogram::with_opts(opts).expect("constant metric definition"))
}

/// A registered latency histogram with [`LATENCY_BUCKETS`] and no labels.
pub fn latency_histogram(name: &str, help: &str) -> Histogram {
    histogram(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
}

/// A registered counter, one series per label set.
#[allow(clippy::expect_used)]
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("constant metric definition"))
}

/// A registered counter without labels.
#[allow(clippy::expect_used)]
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("constant metric definition"))
}

/// A registered gauge, one series per label set.
#[allow(clippy::expect_used)]
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    register(
        prometheus::IntGaugeVec::new(Opts::new(name, help), labels)
            .expect("constant metric definition"),
    )
}

/// A registered gauge without labels.
#[allow(clippy::expect_used)]
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("constant metric definition"))
}

/// A registered gauge of a fractional value (seconds), without labels.
#[allow(clippy::expect_used)]
pub fn float_gauge(name: &str, help: &str) -> prometheus::Gauge {
    register(prometheus::Gauge::new(name, help).expect("constant metric definition"))
}

static GRPC_CALLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_grpc_server_handled_total",
        "gRPC calls answered, by service, method and status code",
        &["service", "method", "code"],
    )
});

static GRPC_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    latency_histogram_vec(
        "recsys_grpc_server_handling_seconds",
        "time from a gRPC call's arrival to its response headers (for unary calls, the whole handler)",
        &["service", "method"],
    )
});

/// The metrics of every series registered so far, in Prometheus' text format.
pub fn render() -> String {
    // Touch the shared series so that a scrape before the first call still lists them.
    LazyLock::force(&GRPC_CALLS);
    LazyLock::force(&GRPC_SECONDS);
    TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap_or_else(|e| format!("# metrics encoding failed: {e}\n"))
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                render(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds `addr` and serves metrics there in the background; logs and carries on
/// when it cannot bind, since metrics are never a reason not to serve.
pub async fn spawn(addr: std::net::SocketAddr, shutdown: CancellationToken) {
    if addr.ip().is_unspecified() {
        // Metrics name every service, method and shard: serve them where the
        // scraper is (loopback, a management network, the pod's address), not on
        // every interface a host or container happens to have.
        tracing::warn!(%addr, "metrics listen on every interface; name a loopback or management address instead");
    }
    match TcpListener::bind(addr).await {
        Ok(listener) => {
            let bound = listener.local_addr().map_or(addr, |a| a);
            tracing::info!(addr = %bound, "serving metrics on /metrics");
            tokio::spawn(async move {
                if let Err(error) = serve(listener, shutdown).await {
                    tracing::warn!(%error, "metrics server stopped");
                }
            });
        }
        Err(error) => tracing::warn!(%addr, %error, "cannot bind the metrics address, no metrics"),
    }
}

// The name predates the identity check: the series counts every call refused for
// who its caller is, and keeps its name so that dashboards and alerts keep working.
static REFUSED_CALLERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_unauthenticated_total",
        "calls refused for who the caller is, by reason: no_client_certificate, missing_api_key, unknown_api_key (UNAUTHENTICATED), identity_not_allowed (PERMISSION_DENIED: a client certificate whose identity the method does not admit)",
        &["reason"],
    )
});

/// Counts a call refused for who its caller is (`UNAUTHENTICATED`, or
/// `PERMISSION_DENIED` for `identity_not_allowed`); `reason` is one of the few
/// fixed names the help text lists.
pub fn count_refused_caller(reason: &'static str) {
    REFUSED_CALLERS.with_label_values(&[reason]).inc();
}

/// Tower layer that counts and times every gRPC call of a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics { inner }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (service, method) = labels(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => status_code(response.headers()),
                Err(_) => "Transport",
            };
            if matches!(code, "Internal" | "Unknown") {
                // The server's own fault by definition (bad input has codes of
                // its own): say which call and what, so that it can be found.
                if let Ok(response) = &response {
                    let message = grpc_message(response.headers());
                    tracing::error!(
                        service,
                        method,
                        code,
                        message,
                        "answered with a server error"
                    );
                }
            }
            GRPC_SECONDS
                .with_label_values(&[service, method])
                .observe(started.elapsed().as_secs_f64());
            GRPC_CALLS.with_label_values(&[service, method, code]).inc();
            response
        })
    }
}

/// `(service, method)` of a gRPC path `/package.Service/Method`: unknown
/// services fold into `other`, unknown methods of known services into `unknown`.
fn labels(path: &str) -> (&'static str, &'static str) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    match KNOWN_METHODS.iter().find(|(known, _)| *known == service) {
        Some((known, methods)) => (
            known,
            methods
                .iter()
                .find(|m| **m == method)
                .copied()
                .unwrap_or("unknown"),
        ),
        None => ("other", "other"),
    }
}

/// The status of a response as far as its headers tell: an error answered before
/// any message puts `grpc-status` in the headers (trailers-only); a success puts it
/// in the trailers, which a layer cannot wait for without holding the body, so a
/// response without it in the headers counts as `Ok`. Errors in the middle of a
/// stream are therefore counted as `Ok` here.
fn status_code(headers: &http::HeaderMap) -> &'static str {
    let Some(value) = headers.get("grpc-status") else {
        return "Ok";
    };
    let code = tonic::Code::from_bytes(value.as_bytes());
    code_name(code)
}

/// The `grpc-message` of an answer, with its spaces put back: the header is
/// percent-encoded, and of the characters our messages and tonic's use, only the
/// space is escaped.
pub(crate) fn grpc_message(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-message")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).replace("%20", " "))
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_fold_unknown_services() {
        assert_eq!(
            labels("/recsys.v1.GatewayService/Recommend"),
            ("recsys.v1.GatewayService", "Recommend")
        );
        assert_eq!(labels("/evil.Service/x"), ("other", "other"));
        assert_eq!(labels(""), ("other", "other"));
        assert_eq!(
            labels("/recsys.v1.RankingService/Rank0123"),
            ("recsys.v1.RankingService", "unknown")
        );
        assert_eq!(
            labels("/grpc.health.v1.Health/Check/extra"),
            ("grpc.health.v1.Health", "unknown")
        );
    }

    /// Every method of the recsys services has its own label: the list above
    /// cannot fall behind the protos.
    #[test]
    fn every_recsys_method_is_known() {
        use prost::Message;
        let set =
            prost_types::FileDescriptorSet::decode(recsys_proto::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    let path = format!("/{name}/{}", method.name());
                    assert_eq!(labels(&path), (name.as_str(), method.name()), "{path}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 9);
    }

    #[test]
    fn status_comes_from_trailers_only_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(status_code(&headers), "Ok");
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        assert_eq!(status_code(&headers), "InvalidArgument");
    }

    #[test]
    fn render_lists_the_shared_series() {
        GRPC_CALLS
            .with_label_values(&["recsys.v1.GatewayService", "Recommend", "Ok"])
            .inc();
        let text = render();
        assert!(text.contains("recsys_grpc_server_handled_total"), "{text}");
    }
}
