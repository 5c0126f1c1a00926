//! Calls to nodes: one shard's search, and the replica retry policy that searches
//! and ranking calls share.

use std::sync::Arc;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_bundle::shard_of;
use recsys_discovery::NodeRecord;
use recsys_proto::v1::{
    SearchRequest, SearchResponse, retrieval_service_client::RetrievalServiceClient,
};
use tokio::time::Instant;
use tonic::Code;

use crate::node_channels::{NodeChannels, NodeHandle};

/// The outcome of asking one shard.
#[derive(Debug)]
pub struct ShardAnswer {
    /// The shard asked.
    pub shard: u32,
    /// The answer, or why there is none (lowercase, for coverage).
    pub outcome: Result<SearchResponse, String>,
}

/// Which shard to ask, out of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardTarget {
    /// The shard.
    pub shard: u32,
    /// Shards in the bundle, to check that answers hold only this shard's items.
    pub shard_count: u32,
}

/// Asks a shard through its replicas until one answers, the retry is spent, or
/// `deadline` passes.
pub async fn search_shard(
    clients: &NodeChannels,
    target: ShardTarget,
    replicas: &[NodeRecord],
    request: SearchRequest,
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
) -> ShardAnswer {
    let started = Instant::now();
    let outcome = search_replicas(clients, target, replicas, request, deadline, hedge_after).await;
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
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
) -> Result<SearchResponse, String> {
    let response = call_replicas(
        clients,
        replicas,
        deadline,
        hedge_after,
        |node, remaining| {
            let mut grpc_request = tonic::Request::new(request.clone());
            grpc_request.set_timeout(remaining);
            let mut client = RetrievalServiceClient::new(node.channel.clone());
            async move { client.search(grpc_request).await }
        },
    )
    .await
    .inspect_err(|reason| tracing::debug!(shard = target.shard, %reason, "shard gave no answer"))?;
    check(response, target)
}

/// Calls `replicas` in the order [`NodeChannels::replica_order`] gives until one
/// answers. One more attempt goes to another replica: as a retry after an error,
/// or as a hedge when the first has not answered after `hedge_after` (the first
/// answer of the two wins, the other is dropped and so cancelled). No retry after a
/// timeout or a request the node rejects as invalid (Quickwit's leaf retry policy:
/// a timed-out node would only time out again and the budget is spent). A
/// transport failure (`UNAVAILABLE`, or `CANCELLED`/`UNKNOWN` from a connection
/// that broke mid-call) also leaves the node out of routing until a health check
/// passes. The error is a lowercase reason for coverage.
///
/// `call` makes one attempt on the node it is given (usually a gRPC call on
/// `node.channel`) with the time left; taking the node rather than only its channel
/// lets the tests in `fanout/call_replicas_tests.rs` script each replica's answer
/// and run this policy on a paused clock.
pub async fn call_replicas<T, F, Fut>(
    clients: &NodeChannels,
    replicas: &[NodeRecord],
    deadline: Instant,
    hedge_after: Option<std::time::Duration>,
    mut call: F,
) -> Result<T, String>
where
    F: FnMut(&NodeHandle, std::time::Duration) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let order = clients.replica_order(replicas);
    let mut order = order.into_iter().take(2);
    let Some(first) = order.next() else {
        return Err("no replica available".into());
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
            outcome.map_err(|status| Attempt::Failed(node, status))
        }
    };
    let mut attempts = FuturesUnordered::new();
    attempts.push(Box::pin(attempt(first)));
    let hedge_at = hedge_after
        .map(|after| Instant::now() + after)
        .filter(|at| *at < deadline);
    let mut last_error = String::new();
    loop {
        let hedge_ready = spare.is_some() && hedge_at.is_some();
        tokio::select! {
            biased;
            next = attempts.next() => {
                let Some(outcome) = next else {
                    return Err(last_error);
                };
                match outcome {
                    Ok(response) => return Ok(response.into_inner()),
                    Err(Attempt::Setup(reason)) => last_error = reason,
                    // tonic enforces the grpc-timeout we set too, and may win the
                    // race against ours with CANCELLED "Timeout expired": the clock decides.
                    Err(Attempt::Failed(..)) if Instant::now() >= deadline => {
                        crate::metrics::node_call_failed("timeout");
                        return Err("deadline exceeded".into());
                    }
                    Err(Attempt::Failed(node, status)) => {
                        crate::metrics::node_call_failed(code_name(status.code()));
                        tracing::warn!(replica = %node.addr, code = ?status.code(), message = status.message(), "node call failed");
                        let reason = format!("{}: {}", code_name(status.code()), status.message());
                        // CANCELLED before the deadline is a connection that broke
                        // mid-call (a node killed): worth the retry.
                        if matches!(status.code(), Code::DeadlineExceeded | Code::InvalidArgument) {
                            return Err(reason);
                        }
                        if matches!(
                            status.code(),
                            Code::Unavailable | Code::Cancelled | Code::Unknown
                        ) {
                            node.mark_unhealthy();
                        }
                        last_error = reason;
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
                return Err("deadline exceeded".into());
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

/// Rejects answers whose parallel arrays disagree or that hold items of another
/// shard (a node serving the wrong shard or bundle; the merge relies on shards
/// holding disjoint ids); drops non-finite scores.
fn check(mut response: SearchResponse, target: ShardTarget) -> Result<SearchResponse, String> {
    if response.item_ids.len() != response.scores.len() {
        return Err(format!(
            "malformed answer: {} ids and {} scores",
            response.item_ids.len(),
            response.scores.len()
        ));
    }
    if let Some(stray) = response
        .item_ids
        .iter()
        .find(|id| shard_of(**id, target.shard_count) != target.shard)
    {
        return Err(format!(
            "answer holds item {stray}, which belongs to shard {} of {}: the node serves another shard or bundle",
            shard_of(*stray, target.shard_count),
            target.shard_count
        ));
    }
    if response.scores.iter().any(|s| !s.is_finite()) {
        let (ids, scores) = response
            .item_ids
            .iter()
            .zip(&response.scores)
            .filter(|(_, s)| s.is_finite())
            .map(|(id, s)| (*id, *s))
            .unzip();
        response.item_ids = ids;
        response.scores = scores;
    }
    Ok(response)
}

/// Lowercase gRPC code names for coverage reasons.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid argument",
        Code::DeadlineExceeded => "deadline exceeded",
        Code::NotFound => "not found",
        Code::AlreadyExists => "already exists",
        Code::PermissionDenied => "permission denied",
        Code::ResourceExhausted => "resource exhausted",
        Code::FailedPrecondition => "failed precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out of range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod call_replicas_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_SHARD: ShardTarget = ShardTarget {
        shard: 0,
        shard_count: 1,
    };

    #[test]
    fn malformed_answers_are_refused_and_nan_dropped() {
        let bad = SearchResponse {
            item_ids: vec![1, 2],
            scores: vec![0.5],
            ..Default::default()
        };
        assert!(
            check(bad, ONE_SHARD)
                .unwrap_err()
                .contains("2 ids and 1 scores")
        );
        let nan = SearchResponse {
            item_ids: vec![1, 2, 3],
            scores: vec![0.5, f32::NAN, 0.1],
            ..Default::default()
        };
        let ok = check(nan, ONE_SHARD).unwrap();
        assert_eq!(ok.item_ids, vec![1, 3]);
    }

    #[test]
    fn items_of_another_shard_are_refused() {
        let target = ShardTarget {
            shard: 1,
            shard_count: 4,
        };
        let foreign = (0..100u64).find(|id| shard_of(*id, 4) != 1).unwrap();
        let own = (0..100u64).find(|id| shard_of(*id, 4) == 1).unwrap();
        let answer = |ids: Vec<u64>| SearchResponse {
            scores: vec![0.5; ids.len()],
            item_ids: ids,
            ..Default::default()
        };
        assert!(check(answer(vec![own]), target).is_ok());
        let err = check(answer(vec![own, foreign]), target).unwrap_err();
        assert!(err.contains("another shard"), "{err}");
    }
}
