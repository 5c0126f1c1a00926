//! Overload, through the gateway's public API against real servers: admission
//! control refuses the calls past the limit at once while the admitted ones
//! succeed, and a client that goes away stops the gateway's fan-out.
//!
//! The shard behind the gateway is a [`GatedShard`]: every search waits until the
//! test opens its gate, so "at once" needs no clock: a refused call is answered
//! while every admitted call is still held, which it could not be if it had
//! queued behind them. Likewise a cancelled call shows as the shard's search
//! being dropped while its gate is still closed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use recsys_bundle::{Manifest, shard_of};
use recsys_gateway::GatewayConfig;
use recsys_proto::v1::RecommendRequest;
use recsys_tests::misbehaving::{GatedShard, serve_gated_shard, serve_gated_shard_admitting};
use recsys_tests::static_gateway::{gateway_config, serve_static_gateway};
use recsys_tests::*;
use tokio_util::sync::CancellationToken;
use tonic::Code;

const SHARDS: u32 = 2;

/// The longest a test waits for something that should happen; a failure, not a
/// measurement, when it passes.
const WAIT: Duration = Duration::from_secs(30);

/// A client deadline far longer than any test: the gateway has no reason of its
/// own to give up on a held shard.
const LONG: Duration = Duration::from_secs(120);

fn bundle() -> &'static TestBundle {
    static BUNDLE: OnceLock<TestBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("overload");
        shared_bundle(&root, 1_000, SHARDS, 18)
    })
}

/// A gated shard for each of the bundle's shards, holding that shard's items;
/// `open` lists the shards whose gate starts open.
async fn gated_shards(open: &[u32], token: &CancellationToken) -> Vec<(GatedShard, SocketAddr)> {
    let version = Manifest::load(bundle().path()).unwrap().version;
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        let items = (0..1_000u64)
            .filter(|id| shard_of(*id, SHARDS) == shard)
            .collect();
        let node = GatedShard::new(shard, items, &version);
        if open.contains(&shard) {
            node.open();
        }
        let addr = serve_gated_shard(node.clone(), token).await;
        shards.push((node, addr));
    }
    shards
}

/// A gateway over `shards` (one replica each) admitting `max_in_flight` requests.
async fn gateway(
    shards: &[(GatedShard, SocketAddr)],
    max_in_flight: usize,
    token: &CancellationToken,
) -> SocketAddr {
    let config = GatewayConfig {
        max_in_flight,
        ..gateway_config(bundle().path())
    };
    let shards: Vec<Vec<SocketAddr>> = shards.iter().map(|(_, addr)| vec![*addr]).collect();
    serve_static_gateway(config, &shards, &[], token).await
}

fn request() -> RecommendRequest {
    by_embedding(vec![0.1; 32], 10, false)
}

/// Polls `condition` until it holds; fails after [`WAIT`] saying `what`.
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn admission_series(name: &str) -> f64 {
    let series = format!(r#"{name}{{service="recsys.v1.GatewayService"}}"#);
    metric_value(&recsys_server::metrics::render(), &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_burst_past_the_limit_is_refused_at_once_while_the_admitted_requests_succeed() {
    let token = CancellationToken::new();
    // Shard 0 answers at once, shard 1 holds every search: an admitted request
    // stays in flight until the gate opens.
    let shards = gated_shards(&[0], &token).await;
    let held_shard = shards[1].0.clone();
    let limit = 4;
    let gateway = gateway(&shards, limit, &token).await;

    let mut admitted = Vec::new();
    for _ in 0..limit {
        let mut client = gateway_client(gateway).await;
        admitted.push(tokio::spawn(async move {
            recommend(&mut client, request(), LONG).await
        }));
    }
    eventually("every admitted request reaching the held shard", || {
        held_shard.calls() == limit
    })
    .await;

    let shed_before = admission_series("recsys_admission_shed_total");
    let burst: Vec<_> = (0..32)
        .map(|_| {
            tokio::spawn(async move {
                let mut client = gateway_client(gateway).await;
                recommend(&mut client, request(), LONG).await
            })
        })
        .collect();
    for call in burst {
        // Answered while the admitted requests are all still held.
        let status = call
            .await
            .unwrap()
            .expect_err("a request past the limit was admitted");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("limit of 4 calls in flight"),
            "the refusal does not name the limit: {}",
            status.message()
        );
    }
    assert_eq!(
        held_shard.calls(),
        limit,
        "a refused request reached a shard"
    );
    assert!(admission_series("recsys_admission_shed_total") - shed_before >= 32.0);

    held_shard.open();
    for call in admitted {
        let answer = call.await.unwrap().expect("an admitted request failed");
        assert!(full_coverage(&answer, SHARDS), "{:?}", answer.coverage);
        assert_eq!(answer.items.len(), 10);
    }
    // The slots are free again.
    let mut client = gateway_client(gateway).await;
    recommend(&mut client, request(), LONG)
        .await
        .expect("a request after the burst failed");
    token.cancel();
}

#[tokio::test]
async fn a_cancelled_stream_stops_the_fan_out() {
    let token = CancellationToken::new();
    let shards = gated_shards(&[0], &token).await;
    let held_shard = shards[1].0.clone();
    let gateway = gateway(&shards, 0, &token).await;

    let mut client = gateway_client(gateway).await;
    let mut call = tonic::Request::new(request());
    call.set_timeout(LONG);
    let mut stream = client.recommend_stream(call).await.unwrap().into_inner();
    // The open shard's partial answer arrives; the held shard's search is out.
    let partial = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("no partial answer")
        .unwrap()
        .expect("the stream ended before any answer");
    assert!(!partial.r#final);
    eventually("the held shard's search arriving", || {
        held_shard.calls() == 1
    })
    .await;
    assert_eq!(held_shard.abandoned(), 0);

    drop(stream);
    // The gateway drops its call to the held shard long before the deadline
    // would have ended it.
    eventually("the gateway cancelling the held search", || {
        held_shard.abandoned() == 1
    })
    .await;
    held_shard.open();
    token.cancel();
}

#[tokio::test]
async fn a_cancelled_call_stops_the_fan_out() {
    let token = CancellationToken::new();
    let shards = gated_shards(&[0], &token).await;
    let held_shard = shards[1].0.clone();
    let gateway = gateway(&shards, 0, &token).await;

    let mut client = gateway_client(gateway).await;
    let call = tokio::spawn(async move { recommend(&mut client, request(), LONG).await });
    eventually("the held shard's search arriving", || {
        held_shard.calls() == 1
    })
    .await;
    // The client gives up (its task dropped with the call in it).
    call.abort();
    eventually("the gateway cancelling the held search", || {
        held_shard.abandoned() == 1
    })
    .await;
    held_shard.open();
    token.cancel();
}

#[tokio::test]
async fn shards_that_all_shed_the_search_make_the_gateway_answer_resource_exhausted() {
    let token = CancellationToken::new();
    let version = Manifest::load(bundle().path()).unwrap().version;
    // Every shard admits one search at a time and holds it: one request fills
    // them all, and the next is refused by every shard.
    let mut shards = Vec::new();
    for shard in 0..SHARDS {
        let items = (0..1_000u64)
            .filter(|id| shard_of(*id, SHARDS) == shard)
            .collect();
        let node = GatedShard::new(shard, items, &version);
        let addr = serve_gated_shard_admitting(node.clone(), 1, &token).await;
        shards.push((node, addr));
    }
    let gateway = gateway(&shards, 0, &token).await;

    let mut client = gateway_client(gateway).await;
    let held = tokio::spawn(async move { recommend(&mut client, request(), LONG).await });
    eventually("the held request reaching every shard", || {
        shards.iter().all(|(node, _)| node.calls() == 1)
    })
    .await;

    let mut client = gateway_client(gateway).await;
    let status = recommend(&mut client, request(), LONG)
        .await
        .expect_err("a request the shards all refused was answered");
    // Not UNAVAILABLE: the cluster is up, and failing over to another gateway
    // would only add to the load on the same shards.
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("overloaded"),
        "the refusal does not say the shards are overloaded: {}",
        status.message()
    );
    assert!(
        shards.iter().all(|(node, _)| node.calls() == 1),
        "a refused search reached a shard"
    );

    for (node, _) in &shards {
        node.open();
    }
    let answer = held.await.unwrap().expect("the held request failed");
    assert!(full_coverage(&answer, SHARDS), "{:?}", answer.coverage);
    token.cancel();
}
