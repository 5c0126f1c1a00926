//! Admission control: a limit on the calls a server works on at once, with the
//! excess answered `RESOURCE_EXHAUSTED` at once instead of queued.
//!
//! Why a limit on calls in flight rather than a rate: by Little's law the calls in
//! flight are throughput × latency, so once a server is saturated every extra call
//! only adds queueing delay for all of them, and an open-loop flood (clients that
//! do not wait for answers) grows the queue, and memory, without bound. Past the
//! limit a call costs the server one header parse and a trailers-only answer, so
//! overload degrades into fast refusals while the admitted calls keep the latency
//! of a saturated, not a flooded, server. The limit is fixed, per core, with
//! defaults measured with `recsys-bench load` (docs/benchmarks-history.md, "Overload"),
//! or, with `--admission adaptive`, moves between one call per core and that
//! ceiling with the latency of the admitted calls ([`crate::adaptive_limit`]),
//! so that it follows a host whose speed or load changes.
//!
//! [`Admission::wrap`] puts the limit around one service (the gateway's, a node's)
//! rather than the whole router, so `grpc.health.v1` and reflection are never
//! refused: an orchestrator must still see that a busy server is alive. Methods
//! named as exempt (the retrieval node's `Info`) pass too. A call holds its slot
//! until its response body ends, so a server stream (`RecommendStream`) counts
//! for as long as it runs.
//!
//! The layer also enforces the caller's deadline (`grpc-timeout`, see
//! [`crate::deadline`]): tonic's own timeout answers `CANCELLED "Timeout expired"`
//! when a handler outlives it; this one fires first (its timer starts first, and
//! tonic polls the handler before its own timer) and answers
//! `DEADLINE_EXCEEDED`, the code that says what ran out. Either way the handler
//! is dropped, so its work stops at its next `.await`.
//!
//! Metrics, by service: `recsys_admission_admitted_total`,
//! `recsys_admission_shed_total`, `recsys_admission_in_flight`,
//! `recsys_admission_limit`, `recsys_admission_deadline_exceeded_total`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
// tokio's clock, so that tests can run the adaptive limit on a paused clock.
use tokio::time::Instant;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use tonic::server::NamedService;

use crate::adaptive_limit::AdaptiveLimit;
use crate::metrics::{counter_vec, gauge_vec};

/// How a server's limit is set (`--admission`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AdmissionMode {
    /// The limit is `--max-in-flight` (or the role's default) at all times.
    #[default]
    Fixed,
    /// The limit moves between one call per core and `--max-in-flight` (or the
    /// role's default) with the latency admitted calls see.
    Adaptive,
}

/// Which server a limit is for; each has its own default per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRole {
    /// The gateway: a call holds a fan-out to every shard and a ranking call.
    Gateway,
    /// A retrieval node: a call is one search on the search pool.
    Retrieval,
    /// A ranking node: a call is one request in the scoring queue.
    Ranking,
}

impl AdmissionRole {
    /// Default calls in flight per core. The gateway's throughput on its 2-vCPU
    /// host stops growing at about 8 requests in flight, and in open-loop
    /// overload a limit of 8 answered as many requests as one of 32 with a
    /// fifth of the admitted p99 (docs/benchmarks-history.md, "Overload"): past the knee
    /// more in flight only queues. A node is sized for four gateways at their
    /// limit (each request puts one call on every shard and one on the ranking
    /// pool), so that a lone gateway sheds at the door and nodes shed only when
    /// several gateways overload them together.
    pub const fn per_core(self) -> usize {
        match self {
            Self::Gateway => 4,
            Self::Retrieval | Self::Ranking => 16,
        }
    }

    /// The default limit for `cores` cores.
    pub fn default_limit(self, cores: usize) -> usize {
        self.per_core().saturating_mul(cores.max(1))
    }
}

/// `--max-in-flight N`: the server's admission limit.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct AdmissionFlags {
    /// Most calls the server works on at once; more are answered
    /// RESOURCE_EXHAUSTED at once (0 = the server's default per core: 4 for the
    /// gateway, 16 for a node). Health and reflection are never refused.
    #[arg(long, env = "RECSYS_MAX_IN_FLIGHT", default_value_t = 0)]
    pub max_in_flight: usize,
}

/// The limit a server runs with: `configured`, or `role`'s default for this
/// host's cores when 0.
pub fn resolve_limit(role: AdmissionRole, configured: usize) -> usize {
    if configured > 0 {
        configured
    } else {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        role.default_limit(cores)
    }
}

static ADMITTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_admission_admitted_total",
        "calls admitted under the server's concurrency limit, by service",
        &["service"],
    )
});

static SHED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_admission_shed_total",
        "calls refused with RESOURCE_EXHAUSTED because the server was at its concurrency limit, by service",
        &["service"],
    )
});

static DEADLINE_EXCEEDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "recsys_admission_deadline_exceeded_total",
        "admitted calls answered DEADLINE_EXCEEDED because the caller's deadline passed first, by service",
        &["service"],
    )
});

static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_admission_in_flight",
        "admitted calls not finished yet (a stream counts until it ends), by service",
        &["service"],
    )
});

static LIMIT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "recsys_admission_limit",
        "the server's concurrency limit, by service",
        &["service"],
    )
});

/// The series of one service.
#[derive(Debug)]
struct Series {
    admitted: IntCounter,
    shed: IntCounter,
    deadline_exceeded: IntCounter,
    in_flight: IntGauge,
    limit: IntGauge,
}

#[derive(Debug)]
struct Limiter {
    service: &'static str,
    /// The limit now: fixed, or moved by `adaptive`.
    limit: AtomicUsize,
    /// The adaptive limit's state, when the limit adapts. Samples that find it
    /// locked are skipped rather than waited for: the limit needs a sample of
    /// the calls, not every one.
    adaptive: Option<Mutex<AdaptiveLimit>>,
    exempt: &'static [&'static str],
    in_flight: AtomicUsize,
    series: Series,
}

impl Limiter {
    /// A slot, unless `limit` calls already hold one.
    fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut current = self.in_flight.load(Ordering::Relaxed);
        let limit = self.limit.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.series.in_flight.inc();
        if let Some(Ok(mut adaptive)) = self.adaptive.as_ref().map(Mutex::try_lock) {
            adaptive.admitted(current + 1);
        }
        Some(Permit {
            limiter: self.clone(),
        })
    }

    /// An admitted call answered after `started`: a sample for an adaptive limit.
    fn finished(&self, started: Instant) {
        let Some(Ok(mut adaptive)) = self.adaptive.as_ref().map(Mutex::try_lock) else {
            return;
        };
        let now = Instant::now();
        let latency = now.saturating_duration_since(started);
        if let Some(limit) = adaptive.finished(latency, now.into_std()) {
            self.limit.store(limit, Ordering::Relaxed);
            self.series
                .limit
                .set(i64::try_from(limit).unwrap_or(i64::MAX));
        }
    }

    fn is_exempt(&self, path: &str) -> bool {
        let method = path.rsplit('/').next().unwrap_or_default();
        self.exempt.contains(&method)
    }
}

/// One admitted call's slot; given back when dropped.
#[derive(Debug)]
struct Permit {
    limiter: Arc<Limiter>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.limiter.series.in_flight.dec();
    }
}

/// A server's admission limit, shared by the services it wraps.
#[derive(Debug, Clone)]
pub struct Admission {
    limiter: Arc<Limiter>,
}

impl Admission {
    /// A limit of `limit` calls (at least 1) in flight for `service` (its gRPC
    /// name, the metrics' label); calls to the methods in `exempt` are never refused.
    pub fn new(service: &'static str, limit: usize, exempt: &'static [&'static str]) -> Self {
        Self::with_mode(service, limit, exempt, AdmissionMode::Fixed)
    }

    /// As [`Admission::new`], with `limit` the ceiling of an adaptive limit
    /// when `mode` says so. The adaptive floor is one call per core: below it a
    /// core would idle while calls are refused.
    pub fn with_mode(
        service: &'static str,
        limit: usize,
        exempt: &'static [&'static str],
        mode: AdmissionMode,
    ) -> Self {
        let limit = limit.max(1);
        let series = Series {
            admitted: ADMITTED.with_label_values(&[service]),
            shed: SHED.with_label_values(&[service]),
            deadline_exceeded: DEADLINE_EXCEEDED.with_label_values(&[service]),
            in_flight: IN_FLIGHT.with_label_values(&[service]),
            limit: LIMIT.with_label_values(&[service]),
        };
        series.limit.set(i64::try_from(limit).unwrap_or(i64::MAX));
        let adaptive = match mode {
            AdmissionMode::Fixed => None,
            AdmissionMode::Adaptive => {
                let cores = std::thread::available_parallelism().map_or(1, usize::from);
                Some(Mutex::new(AdaptiveLimit::new(cores, limit)))
            }
        };
        tracing::info!(service, limit, ?mode, "admission limit");
        Self {
            limiter: Arc::new(Limiter {
                service,
                limit: AtomicUsize::new(limit),
                adaptive,
                exempt,
                in_flight: AtomicUsize::new(0),
                series,
            }),
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.limiter.limit.load(Ordering::Relaxed)
    }

    /// Calls holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight.load(Ordering::Relaxed)
    }

    /// `service` behind this limit, for `Router::add_service`.
    pub fn wrap<S>(&self, service: S) -> Admitted<S> {
        Admitted {
            inner: service,
            limiter: self.limiter.clone(),
        }
    }
}

/// A service behind an [`Admission`] limit.
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    limiter: Arc<Limiter>,
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

type Response = http::Response<tonic::body::Body>;

impl<S, B> tower_service::Service<http::Request<B>> for Admitted<S>
where
    S: tower_service::Service<http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let limiter = &self.limiter;
        if limiter.is_exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let Some(permit) = limiter.try_acquire() else {
            limiter.series.shed.inc();
            if let Some(Ok(mut adaptive)) = limiter.adaptive.as_ref().map(Mutex::try_lock) {
                adaptive.refused();
            }
            let status = tonic::Status::resource_exhausted(format!(
                "{} is at its limit of {} calls in flight (--max-in-flight, --admission); retry later",
                limiter.service,
                limiter.limit.load(Ordering::Relaxed)
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        limiter.series.admitted.inc();
        let timeout = crate::deadline::header_timeout(request.headers());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            // The sample is the time to the response's headers: a unary call's
            // whole handler, a stream's time to its first answer (how long it
            // runs after that is the caller's business, not congestion).
            let response = match timeout {
                None => response.await?,
                Some(timeout) => match tokio::time::timeout(timeout, response).await {
                    Ok(response) => response?,
                    Err(_) => {
                        let limiter = &permit.limiter;
                        limiter.finished(started);
                        limiter.series.deadline_exceeded.inc();
                        let status = tonic::Status::deadline_exceeded(format!(
                            "the caller's deadline of {timeout:?} passed before {} answered",
                            limiter.service
                        ));
                        return Ok(status.into_http());
                    }
                },
            };
            permit.limiter.finished(started);
            Ok(response.map(|body| tonic::body::Body::new(Held { body, permit })))
        })
    }
}

/// A response body that keeps its call's slot until it ends or is dropped.
struct Held<B> {
    body: B,
    #[allow(dead_code)] // held for its `Drop`
    permit: Permit,
}

impl<B: http_body::Body + Unpin> http_body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_service::Service;

    /// A handler that answers when the test says so.
    #[derive(Clone)]
    struct Gated(Arc<tokio::sync::Semaphore>);

    impl NamedService for Gated {
        const NAME: &'static str = "test.Gated";
    }

    impl Service<http::Request<()>> for Gated {
        type Response = Response;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let gate = self.0.clone();
            Box::pin(async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok(http::Response::new(tonic::body::Body::new(Streaming)))
            })
        }
    }

    /// A response body that has not ended (a stream still sending).
    struct Streaming;

    impl http_body::Body for Streaming {
        type Data = tonic::codegen::Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
            Poll::Pending
        }
    }

    fn call(path: &str) -> http::Request<()> {
        http::Request::builder()
            .uri(format!("http://x/test.Gated/{path}"))
            .body(())
            .unwrap()
    }

    fn grpc_status(response: &Response) -> Option<tonic::Code> {
        tonic::Status::from_header_map(response.headers()).map(|s| s.code())
    }

    #[tokio::test]
    async fn the_call_past_the_limit_is_refused_at_once_and_exempt_methods_pass() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let admission = Admission::new("test.Gated", 2, &["Info"]);
        let mut service = admission.wrap(Gated(gate.clone()));
        let held: Vec<_> = (0..2)
            .map(|_| tokio::spawn(service.call(call("Work"))))
            .collect();
        let shed = service.call(call("Work")).await.unwrap();
        assert_eq!(grpc_status(&shed), Some(tonic::Code::ResourceExhausted));
        let message = tonic::Status::from_header_map(shed.headers()).unwrap();
        assert!(
            message.message().contains("limit of 2 calls in flight"),
            "{message:?}"
        );
        assert_eq!(admission.in_flight(), 2);
        // An exempt method runs past the limit (it waits on the gate like the others).
        let info = tokio::spawn(service.call(call("Info")));
        gate.add_permits(3);
        let info = info.await.unwrap().unwrap();
        assert_eq!(grpc_status(&info), None);
        let mut bodies = Vec::new();
        for call in held {
            let response = call.await.unwrap().unwrap();
            assert_eq!(grpc_status(&response), None);
            bodies.push(response);
        }
        // A slot is held until the response body is gone.
        assert_eq!(admission.in_flight(), 2);
        drop(bodies);
        assert_eq!(admission.in_flight(), 0);
        gate.add_permits(1);
        let again = service.call(call("Work")).await.unwrap();
        assert_eq!(grpc_status(&again), None);
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_deadline_exceeded_and_gives_its_slot_back() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let admission = Admission::new("test.Gated", 1, &[]);
        let mut service = admission.wrap(Gated(gate));
        let mut request = call("Work");
        request.headers_mut().insert(
            crate::deadline::GRPC_TIMEOUT_HEADER,
            http::HeaderValue::from_static("1m"),
        );
        let response = service.call(request).await.unwrap();
        assert_eq!(grpc_status(&response), Some(tonic::Code::DeadlineExceeded));
        drop(response);
        assert_eq!(admission.in_flight(), 0);
    }

    /// A handler that answers after the milliseconds its path names.
    #[derive(Clone)]
    struct Slow;

    impl NamedService for Slow {
        const NAME: &'static str = "test.Slow";
    }

    impl Service<http::Request<()>> for Slow {
        type Response = Response;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            let millis: u64 = request
                .uri()
                .path()
                .rsplit('/')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
                Ok(http::Response::new(tonic::body::Body::empty()))
            })
        }
    }

    /// Sends `calls` calls of `millis` ms at once; how many were shed.
    async fn burst(service: &Admitted<Slow>, calls: usize, millis: u64) -> usize {
        let pending: Vec<_> = (0..calls)
            .map(|_| {
                let mut service = service.clone();
                tokio::spawn(async move { service.call(call(&millis.to_string())).await })
            })
            .collect();
        let mut shed = 0;
        for call in pending {
            let response = call.await.unwrap().unwrap();
            if grpc_status(&response) == Some(tonic::Code::ResourceExhausted) {
                shed += 1;
            }
        }
        shed
    }

    // On tokio's paused clock: the handlers' latencies are exact, whatever the
    // machine's speed.
    #[tokio::test(start_paused = true)]
    async fn an_adaptive_limit_shrinks_when_latency_grows_and_grows_back_when_it_falls() {
        let ceiling = 256;
        let admission = Admission::with_mode("test.Slow", ceiling, &[], AdmissionMode::Adaptive);
        let service = admission.wrap(Slow);
        // Unloaded: one call at a time, 1 ms each.
        for _ in 0..400 {
            assert_eq!(burst(&service, 1, 1).await, 0);
        }
        assert_eq!(
            admission.limit(),
            ceiling,
            "an unloaded server keeps its ceiling"
        );
        // Overload: more calls than slots, twenty times slower (a limit only
        // shrinks while it refuses calls).
        let mut shed = 0;
        for _ in 0..40 {
            shed += burst(&service, ceiling + ceiling / 4, 20).await;
        }
        let shrunk = admission.limit();
        assert!(shrunk < ceiling / 4, "limit {shrunk}");
        assert!(shed > 0, "a limit below the ceiling sheds the excess");
        // Fast again and using the whole limit: it grows back by one a window.
        for _ in 0..400 {
            burst(&service, shrunk + 2, 1).await;
        }
        assert!(admission.limit() > shrunk, "limit {}", admission.limit());
    }

    #[test]
    fn defaults_scale_with_cores_and_a_configured_limit_wins() {
        assert_eq!(AdmissionRole::Gateway.default_limit(2), 8);
        assert_eq!(AdmissionRole::Retrieval.default_limit(0), 16);
        assert_eq!(resolve_limit(AdmissionRole::Ranking, 5), 5);
        assert!(resolve_limit(AdmissionRole::Gateway, 0) >= 4);
    }
}
