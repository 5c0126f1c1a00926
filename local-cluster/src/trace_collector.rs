//! An OTLP trace collector on loopback that keeps the spans it is sent: what
//! the trace test (`tests/tests/traces.rs`) follows across processes, and what
//! `recsys-bench --processes --trace` exports to when it measures the cost of
//! tracing. The real thing's role (an OpenTelemetry Collector, Jaeger, Tempo)
//! with none of its storage: a list in memory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::ClusterError;

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    /// The `service.name` of the process that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// 16 bytes.
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    pub span_id: Vec<u8>,
    /// Empty for a root span.
    pub parent_span_id: Vec<u8>,
    /// The span ids it links to.
    pub links: Vec<Vec<u8>>,
    /// Attributes, their values as text.
    pub attributes: HashMap<String, String>,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    /// The status description.
    pub status_message: String,
}

/// The collector; clones share the spans. Stops serving when dropped.
#[derive(Debug, Clone)]
pub struct TraceCollector {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    _stop_on_drop: Arc<tokio_util::sync::DropGuard>,
}

#[derive(Debug, Clone)]
struct Service {
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

fn lock(spans: &Mutex<Vec<CollectedSpan>>) -> MutexGuard<'_, Vec<CollectedSpan>> {
    spans.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let status = span.status.unwrap_or_default();
                    received.push(CollectedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        links: span.links.into_iter().map(|l| l.span_id).collect(),
                        attributes: attributes(&span.attributes),
                        status_code: status.code,
                        status_message: status.message,
                    });
                }
            }
        }
        lock(&self.spans).extend(received);
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl TraceCollector {
    /// Serves a collector on a free loopback port, on the current runtime.
    pub async fn start() -> Result<Self, ClusterError> {
        let any: SocketAddr = ([127, 0, 0, 1], 0).into();
        let bind_error = |source| ClusterError::Bind { addr: any, source };
        let listener = tokio::net::TcpListener::bind(any)
            .await
            .map_err(bind_error)?;
        let addr = listener.local_addr().map_err(bind_error)?;
        let spans = Arc::new(Mutex::new(Vec::new()));
        let service = TraceServiceServer::new(Service {
            spans: spans.clone(),
        });
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stopped.cancelled_owned(),
                )
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "the trace collector stopped");
            }
        });
        Ok(Self {
            spans,
            addr,
            _stop_on_drop: Arc::new(stop.clone().drop_guard()),
            stop,
        })
    }

    /// The value of `OTEL_EXPORTER_OTLP_ENDPOINT` that sends spans here.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<CollectedSpan> {
        lock(&self.spans).clone()
    }

    /// How many spans were received so far.
    pub fn count(&self) -> usize {
        lock(&self.spans).len()
    }

    /// Stops serving now (dropping the last clone does too).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}
