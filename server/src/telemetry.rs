//! Logging and tracing setup for binaries: `RUST_LOG` filters the log (`info` by
//! default); OpenTelemetry traces are exported over OTLP/gRPC when, and only
//! when, `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
//!
//! Why traces are off by default, and why off costs nothing: the request path's
//! spans ([`crate::trace_context`]) are `debug` spans of their own target, which
//! the default `info` filter disables at the call site (one relaxed load), and
//! the trace context is put into node calls only while a trace layer is
//! installed. Turned on, the spans go to an OpenTelemetry batch processor (a
//! thread of its own) whatever `RUST_LOG` says, and the export's gRPC runs on a
//! one-thread runtime of its own, so exporting neither waits for nor takes a
//! worker of the runtime that serves requests (docs/benchmarks.md, "Traces",
//! measures both). The standard variables configure it as in every
//! OpenTelemetry SDK: `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`/`_ARG` (default: every trace, or as the caller's
//! context says), `OTEL_BSP_*` (batching), `OTEL_EXPORTER_OTLP_*` (endpoint,
//! headers, timeout); `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
//! turn it off again.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::trace_context;

/// What [`init`] set up; dropping it flushes the spans not exported yet.
#[derive(Debug, Default)]
#[must_use = "dropping the guard at once would stop the trace export"]
pub struct Telemetry {
    export: Option<TraceExport>,
}

#[derive(Debug)]
struct TraceExport {
    provider: SdkTracerProvider,
    /// Drives the exporter's gRPC connection; dropped after the provider's shutdown.
    runtime: tokio::runtime::Runtime,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(export) = self.export.take() {
            if let Err(error) = export.provider.shutdown() {
                eprintln!("trace export: the last spans may be lost: {error}");
            }
            export.runtime.shutdown_background();
        }
    }
}

/// Where traces go, from the environment: the OTLP endpoint variables, unless
/// the SDK or the trace exporter is switched off.
fn otlp_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|value| !value.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the stderr log and, when an OTLP endpoint is configured, the trace
/// export for `service` (the default `service.name`). A second call (tests,
/// embedded use) installs nothing and returns a guard that does nothing.
pub fn init(service: &str) -> Telemetry {
    if !otlp_configured(|name| std::env::var(name).ok()) {
        return log_only();
    }
    let export = match start_export(service) {
        Ok(export) => export,
        Err(error) => {
            let telemetry = log_only();
            tracing::error!(%error, "trace export not started, serving without it");
            return telemetry;
        }
    };
    let tracer = export.provider.tracer("recsys");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(trace_context::TARGET, tracing::Level::DEBUG));
    let installed = Registry::default()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .with_filter(log_filter()),
        )
        .with(spans)
        .try_init();
    if installed.is_err() {
        // Another subscriber was first (an embedding program's): its choice.
        return Telemetry::default();
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    trace_context::set_enabled(true);
    tracing::info!(
        service,
        endpoint = %std::env::var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT"))
            .unwrap_or_default(),
        "exporting traces over OTLP"
    );
    Telemetry {
        export: Some(export),
    }
}

/// The stderr log alone, filtered as a whole (no trace layer).
fn log_only() -> Telemetry {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    Telemetry::default()
}

/// The exporter, built on a runtime of its own (tonic's channel spawns its
/// connection there), and the provider that batches spans into it.
fn start_export(service: &str) -> Result<TraceExport, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()
        .map_err(|e| format!("starting the export runtime: {e}"))?;
    let exporter = {
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("building the OTLP exporter: {e}"))?
    };
    let mut resource = Resource::builder();
    // `OTEL_SERVICE_NAME` names the service when set (the SDK reads it).
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |name| name.trim().is_empty()) {
        resource = resource.with_service_name(service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok(TraceExport { provider, runtime })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn traces_are_exported_only_with_an_endpoint_and_not_when_switched_off() {
        assert!(!otlp_configured(vars(&[])));
        assert!(!otlp_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(otlp_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(otlp_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(!otlp_configured(vars(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
                off
            ])));
        }
    }
}
