//! Calls to nodes: one shard's search, and the replica retry policy that searches
//! and ranking calls share.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_bundle::attributes::{ItemAttributes, RowFilter};
use recsys_discovery::NodeRecord;
use recsys_proto::limits;
use recsys_proto::v1::{
    SearchRequest, SearchResponse, retrieval_service_client::RetrievalServiceClient,
};
use recsys_server::trace_context;
use tokio::time::Instant;
use tonic::Code;

use crate::answer_check::{SearchExpectation, check_search};
use crate::node_channels::{NodeChannels, NodeHandle};
use crate::node_failure::{NodeFailure, code_name};

/// The outcome of asking one shard.
#[derive(Debug)]
pub struct ShardAnswer {
    /// The shard asked.
    pub shard: u32,
    /// The answer, or why there is none.
    pub outcome: Result<SearchResponse, NodeFailure>,
}

/// Which shard to ask, out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardTarget {
    /// The shard.
    pub shard: u32,
    /// Shards in the bundle, to check that answers hold only this shard's items.
    pub shard_count: u32,
}

/// What a shard's answer must agree with besides the request itself.
#[derive(Debug, Clone, Copy)]
pub struct AnswerChecks<'a> {
    /// The bundle version the request is answered by.
    pub version: &'a str,
    /// The request's filter, compiled against the bundle's attributes.
    pub filter: Option<(&'a ItemAttributes, &'a RowFilter)>,
}

/// Asks a shard through its replicas until one answers with an answer that
/// passes the checks (`answer_check`, against `checks`), the retry is spent,
/// or `deadline` passes.
pub async fn search_shard(
    clients: &NodeChannels,
    target: ShardTarget,
    replicas: &[NodeRecord],
    request: SearchRequest,
    checks: AnswerChecks<'_>,
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
) -> ShardAnswer {
    let started = Instant::now();
    let span = tracing::debug_span!(
        target: trace_context::TARGET,
        "shard_search",
        shard = target.shard,
        k = request.k,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    let outcome = trace_context::in_span(
        span,
        search_replicas(
            clients,
            target,
            replicas,
            request,
            checks,
            deadline,
            hedge_after,
        ),
    )
    .await;
    crate::metrics::shard_answer(target.shard, outcome.is_ok(), started.elapsed());
    ShardAnswer {
        shard: target.shard,
        outcome,
    }
}

async fn search_replicas(
    clients: &NodeChannels,
    target: ShardTarget,
    replicas: &[NodeRecord],
    request: SearchRequest,
    checks: AnswerChecks<'_>,
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
) -> Result<SearchResponse, NodeFailure> {
    let dimensions = request.query.len();
    let expected = SearchExpectation {
        target,
        excluded: &request.exclude_item_ids,
        version: checks.version,
        vectors: request.return_vectors.then_some(dimensions),
        filter: checks.filter,
    };
    // Vectors, when asked for, make the answer larger by their size.
    let max_bytes = SEARCH_RESPONSE_MAX_BYTES
        + if request.return_vectors {
            (request.k as usize).saturating_mul(dimensions) * 4 + 64
        } else {
            0
        };
    call_replicas(
        clients,
        replicas,
        deadline,
        hedge_after,
        |node, remaining| {
            let mut grpc_request = tonic::Request::new(request.clone());
            grpc_request.set_timeout(remaining);
            trace_context::inject(grpc_request.metadata_mut());
            let mut client = RetrievalServiceClient::new(node.channel.clone())
                .max_decoding_message_size(max_bytes);
            async move { client.search(grpc_request).await }
        },
        |response| check_search(response, &expected),
    )
    .await
    .inspect_err(|reason| tracing::debug!(shard = target.shard, %reason, "shard gave no answer"))
}

/// The largest shard answer the gateway decodes: one to a search of
/// `MAX_RETRIEVE_K` (no shard is asked for more).
const SEARCH_RESPONSE_MAX_BYTES: usize =
    limits::search_response_max_bytes(limits::MAX_RETRIEVE_K as usize);

/// Calls `replicas` in the order [`NodeChannels::replica_order`] gives until one
/// answers. One more attempt goes to another replica: as a retry after an error,
/// or as a hedge when the first has not answered after `hedge_after` (the first
/// answer of the two wins, the other is dropped and so cancelled). No retry after a
/// timeout or a request the node rejects as invalid (Quickwit's leaf retry policy:
/// a timed-out node would only time out again and the budget is spent). A
/// transport failure (`UNAVAILABLE`, or `CANCELLED`/`UNKNOWN` from a connection
/// that broke mid-call) also leaves the node out of routing until a health check
/// passes. The error says why, for the retry rules' callers and for coverage.
///
/// `call` makes one attempt on the node it is given (usually a gRPC call on
/// `node.channel`) with the time left; taking the node rather than only its channel
/// lets the tests in `fanout/call_replicas_tests.rs` script each replica's answer
/// and run this policy on a paused clock.
///
/// An answer must also pass `check` (`answer_check`): one that fails is
/// counted, its node quarantined when the failure breaks a guarantee
/// ([`NodeFailure::breaks_guarantee`]), and the call retried on the other
/// replica as after an error.
pub async fn call_replicas<T, F, Fut, C>(
    clients: &NodeChannels,
    replicas: &[NodeRecord],
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
    mut call: F,
    mut check: C,
) -> Result<T, NodeFailure>
where
    F: FnMut(&NodeHandle, std::time::Duration) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    C: FnMut(&T) -> Result<(), NodeFailure>,
{
    let order = clients.replica_order(replicas);
    let mut order = order.into_iter().take(2);
    let Some(first) = order.next() else {
        return Err(NodeFailure::NoReplica);
    };
    let mut spare = order.next();
    let mut attempt = |replica: Result<Arc<NodeHandle>, String>| {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let call = replica.map(|node| {
            let call = call(&node, remaining);
            (node, call)
        });
        async move {
            let (node, call) = call.map_err(Attempt::Setup)?;
            let in_flight = node.start_call();
            let outcome = call.await;
            drop(in_flight);
            match outcome {
                Ok(response) => Ok((node, response.into_inner())),
                Err(status) => Err(Attempt::Failed(node, status)),
            }
        }
    };
    let mut attempts = FuturesUnordered::new();
    attempts.push(Box::pin(attempt(first)));
    let hedge_at = hedge_after
        .map(|after| Instant::now() + after)
        .filter(|at| *at < deadline);
    let mut last_error = NodeFailure::NoReplica;
    loop {
        let hedge_ready = spare.is_some() && hedge_at.is_some();
        tokio::select! {
            biased;
            next = attempts.next() => {
                let Some(outcome) = next else {
                    return Err(last_error);
                };
                match outcome {
                    Ok((node, response)) => match check(&response) {
                        Ok(()) => return Ok(response),
                        Err(failure) => {
                            if let Some(label) = failure.refused_answer() {
                                crate::metrics::refused_answer(label);
                            }
                            tracing::warn!(replica = %node.addr, reason = %failure, "node answer refused");
                            if failure.breaks_guarantee() {
                                node.quarantine();
                            }
                            last_error = failure;
                        }
                    },
                    Err(Attempt::Setup(reason)) => last_error = NodeFailure::Setup(reason),
                    // tonic enforces the grpc-timeout we set too, and may win the
                    // race against ours with CANCELLED "Timeout expired": the clock decides.
                    Err(Attempt::Failed(..)) if Instant::now() >= deadline => {
                        crate::metrics::node_call_failed("timeout");
                        return Err(NodeFailure::DeadlineExceeded);
                    }
                    Err(Attempt::Failed(node, status)) => {
                        crate::metrics::node_call_failed(code_name(status.code()));
                        let code = status.code();
                        // A node shedding load is expected under overload, and a
                        // line per refused call would add to it.
                        if code == Code::ResourceExhausted {
                            tracing::debug!(replica = %node.addr, message = status.message(), "node call refused");
                        } else {
                            tracing::warn!(replica = %node.addr, code = ?code, message = status.message(), "node call failed");
                        }
                        let failure = NodeFailure::from(status);
                        // CANCELLED before the deadline is a connection that broke
                        // mid-call (a node killed): worth the retry.
                        if matches!(code, Code::DeadlineExceeded | Code::InvalidArgument) {
                            return Err(failure);
                        }
                        if matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown) {
                            node.mark_unhealthy();
                        }
                        last_error = failure;
                    }
                }
                match spare.take() {
                    Some(replica) => attempts.push(Box::pin(attempt(replica))),
                    None if attempts.is_empty() => return Err(last_error),
                    None => {}
                }
            }
            _ = tokio::time::sleep_until(hedge_at.unwrap_or(deadline)), if hedge_ready => {
                if let Some(replica) = spare.take() {
                    crate::metrics::hedged();
                    attempts.push(Box::pin(attempt(replica)));
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                crate::metrics::node_call_failed("timeout");
                return Err(NodeFailure::DeadlineExceeded);
            }
        }
    }
}

/// Why one attempt gave no answer.
enum Attempt {
    /// The call could not be made (a bad address).
    Setup(String),
    /// The node (or the transport to it) answered with an error.
    Failed(Arc<NodeHandle>, tonic::Status),
}

#[cfg(test)]
mod call_replicas_tests;
