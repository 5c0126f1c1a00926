//! Transport limits every recsys server applies: HTTP/2 streams per connection,
//! and the status of a request tonic cannot even frame.
//!
//! The largest message each service decodes is set where the service is added
//! (`max_decoding_message_size`, sized by `recsys_proto::limits`), since it
//! differs per service; what is here is the same for all of them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::transport::Server;

use crate::admission::AdmissionMode;

/// Transport limits of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// HTTP/2 streams (calls) one connection may have open at once; a client
    /// opening more waits for one to finish (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_concurrent_streams: u32,
    /// Whether the admission limit (`--max-in-flight`) is fixed or adapts to
    /// the latency of admitted calls below it.
    pub admission: AdmissionMode,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: recsys_proto::limits::DEFAULT_MAX_CONCURRENT_STREAMS,
            admission: AdmissionMode::Fixed,
        }
    }
}

impl ServerLimits {
    /// A tonic server builder with these limits.
    ///
    /// It also lets as many streams be reset by the client before the server
    /// accepted them as the connection may have open at once
    /// ([`Self::max_pending_accept_reset_streams`]). h2 counts those streams as a
    /// reset flood (the HTTP/2 "rapid reset" attack, CVE-2023-44487) and, past its
    /// default of 20, closes the whole connection with `ENHANCE_YOUR_CALM`, failing
    /// every other call on it with `UNKNOWN`. Under overload that is what honest
    /// clients do: their deadlines expire on calls the busy server has not picked
    /// up yet, and a gateway's one connection to a node carries many such calls at
    /// once. A client cannot have more streams open than
    /// `max_concurrent_streams`, so resets past that are still a flood, and the
    /// count stays bounded.
    pub fn builder(&self) -> Server {
        Server::builder()
            .max_concurrent_streams(Some(self.max_concurrent_streams))
            .http2_max_pending_accept_reset_streams(Some(self.max_pending_accept_reset_streams()))
    }

    /// Streams the client reset before the server accepted them that one
    /// connection may hold before h2 closes it as a reset flood: one per stream
    /// it may have open (see [`Self::builder`]).
    pub fn max_pending_accept_reset_streams(&self) -> usize {
        usize::try_from(self.max_concurrent_streams).unwrap_or(usize::MAX)
    }
}

/// `--max-concurrent-streams N`, shared by every server binary.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ServerLimitFlags {
    /// HTTP/2 streams one client connection may have open at once (unbounded
    /// streams would let one connection pin the server's memory).
    #[arg(long, env = "RECSYS_MAX_CONCURRENT_STREAMS", default_value_t = recsys_proto::limits::DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// `fixed`: at most `--max-in-flight` calls at once. `adaptive`: the limit
    /// moves between one call per core and `--max-in-flight` with the latency
    /// of admitted calls, shrinking when it doubles (docs/benchmarks-history.md, "Overload").
    #[arg(long, env = "RECSYS_ADMISSION", value_enum, default_value_t = AdmissionMode::Fixed)]
    pub admission: AdmissionMode,
}

impl ServerLimitFlags {
    /// The limits, or why the flags are unusable.
    pub fn limits(&self) -> Result<ServerLimits, String> {
        if self.max_concurrent_streams == 0 {
            return Err("--max-concurrent-streams must be at least 1".into());
        }
        Ok(ServerLimits {
            max_concurrent_streams: self.max_concurrent_streams,
            admission: self.admission,
        })
    }
}

/// The messages tonic (0.14) answers with `INTERNAL` when a request's bytes
/// cannot be framed or decoded, before any service code runs: a body that ends
/// mid-message, a unary call's body that ends without any message (a caller
/// that gave up before sending, as a gateway's cancelled fan-out can leave), a
/// compressed-flag byte other than 0 or 1 or without an encoding, a health or
/// reflection request prost cannot decode (ours go through
/// `recsys_proto::codec`, which says `INVALID_ARGUMENT` itself). Pinned by the
/// bad-input tests, which fail if tonic changes them.
const CALLER_FAULTS: &[&str] = &[
    "Unexpected EOF decoding stream",
    "Missing request message",
    "protocol error: received message with invalid compression flag",
    "protocol error: received message with compressed-flag but no grpc-encoding",
    "failed to decode Protobuf message",
];

/// Tower layer that answers requests tonic could not frame or decode with
/// `INVALID_ARGUMENT` instead of `INTERNAL`: the bytes are the caller's fault,
/// and an `INTERNAL` would count as a server bug in every dashboard. Only
/// trailers-only answers (the status in the headers, as tonic sends a request
/// it refused before the handler) are looked at.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerFaultLayer;

impl<S> tower_layer::Layer<S> for CallerFaultLayer {
    type Service = CallerFault<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerFault { inner }
    }
}

/// The service [`CallerFaultLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct CallerFault<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for CallerFault<S>
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
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            blame_caller(response.headers_mut());
            Ok(response)
        })
    }
}

/// Rewrites an `INTERNAL` status in `headers` to `INVALID_ARGUMENT` when its
/// message is one of [`CALLER_FAULTS`].
fn blame_caller(headers: &mut http::HeaderMap) {
    let internal = headers
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13");
    if !internal {
        return;
    }
    let caller_fault = crate::metrics::grpc_message(headers)
        .is_some_and(|message| CALLER_FAULTS.iter().any(|p| message.starts_with(p)));
    if caller_fault {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(code: &'static str, message: &'static str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", http::HeaderValue::from_static(code));
        headers.insert("grpc-message", http::HeaderValue::from_static(message));
        headers
    }

    #[test]
    fn framing_errors_are_the_callers_and_other_errors_stay() {
        let mut truncated = headers("13", "Unexpected%20EOF%20decoding%20stream.");
        blame_caller(&mut truncated);
        assert_eq!(truncated["grpc-status"], "3");
        let mut empty = headers("13", "Missing%20request%20message.");
        blame_caller(&mut empty);
        assert_eq!(empty["grpc-status"], "3");
        let mut ours = headers("13", "scoring%20pass%20failed");
        blame_caller(&mut ours);
        assert_eq!(ours["grpc-status"], "13");
        let mut unavailable = headers("14", "Unexpected%20EOF%20decoding%20stream.");
        blame_caller(&mut unavailable);
        assert_eq!(unavailable["grpc-status"], "14");
    }

    #[test]
    fn zero_streams_is_refused() {
        let flags = ServerLimitFlags {
            max_concurrent_streams: 0,
            admission: AdmissionMode::Fixed,
        };
        assert!(flags.limits().is_err());
    }
}
