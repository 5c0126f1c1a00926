//! The request path's spans and the trace context carried between processes in
//! gRPC metadata (W3C `traceparent`/`tracestate`, what every OpenTelemetry SDK
//! and collector speaks).
//!
//! Every span of the request path is a `debug` span with target [`TARGET`]: the
//! default log filter leaves them disabled, and the trace export
//! ([`crate::telemetry`]) takes exactly those, whatever `RUST_LOG` says. The
//! functions here do nothing until the export is on ([`enabled`]), so a node
//! call carries no extra metadata and a server reads none when traces are off.
//!
//! The spans, by process: the gateway's `recommend` (from the client's
//! `traceparent` when it sends one), `retrieve` (the fan-out and merge), one
//! `shard_search` per shard, `rank`; a retrieval node's `search` (child of the
//! gateway's `shard_search`) and `index_search` (the search itself, after the
//! wait for a pool slot); a ranking node's `rank` and the `ranking_batch` that
//! scored it (child of its first request, linked to the others it holds).

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the request path's spans (`tracing::debug_span!(target: TARGET, ..)`).
pub const TARGET: &str = "recsys::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once by [`crate::telemetry::init`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

pub(crate) fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Puts the current span's context into an outgoing call's `metadata`, so
/// that the server's spans join the caller's trace.
pub fn inject(metadata: &mut MetadataMap) {
    if !enabled() {
        return;
    }
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(metadata));
    });
}

/// Makes `span` (just created, not entered yet) a child of the caller's span
/// named in an incoming call's `metadata`; without one it stays a root.
pub fn adopt_parent(span: &tracing::Span, metadata: &MetadataMap) {
    if !enabled() || span.is_disabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    // Fails only for a span already started or not traced: it stays as it is.
    let _ = span.set_parent(parent);
}

/// Links `span` to `other` (a batch to the requests it serves beside its parent).
pub fn link(span: &tracing::Span, other: &tracing::Span) {
    if !enabled() || span.is_disabled() || other.is_disabled() {
        return;
    }
    use opentelemetry::trace::TraceContextExt;
    span.add_link(other.context().span().span_context().clone());
}

/// Runs `work` inside `span` and marks the span failed when `work` fails: how
/// each traced stage (a server's call, a shard's search) wraps its future.
pub async fn in_span<T, E: std::fmt::Display>(
    span: tracing::Span,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    use tracing::Instrument;
    let outcome = work.instrument(span.clone()).await;
    if let Err(error) = &outcome {
        fail(&span, error);
    }
    outcome
}

/// Marks `span` failed with `reason` (`otel.status_code`, declared on the span
/// as `tracing::field::Empty`, with `otel.status_description`).
pub fn fail(span: &tracing::Span, reason: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason.to_string());
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter_map(|entry| match entry {
                KeyAndValueRef::Ascii(key, _) => Some(key.as_str()),
                KeyAndValueRef::Binary(..) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_carried_while_traces_are_off() {
        let mut metadata = MetadataMap::new();
        let span = tracing::debug_span!(target: TARGET, "off");
        let _entered = span.enter();
        inject(&mut metadata);
        assert!(metadata.is_empty());
    }

    #[test]
    fn metadata_carries_w3c_fields_both_ways() {
        let mut metadata = MetadataMap::new();
        MetadataInjector(&mut metadata).set(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        // A key gRPC metadata cannot hold is dropped, not a panic.
        MetadataInjector(&mut metadata).set("bad key", "x".into());
        let extractor = MetadataExtractor(&metadata);
        assert_eq!(
            extractor.get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(extractor.keys(), vec!["traceparent"]);
    }
}
