//! h2's reset-flood guard against a recsys server: calls that their client
//! cancels before the server took them up (what clients whose deadlines expire
//! on an overloaded server do) must not close the connection the other calls
//! share.
//!
//! The test speaks HTTP/2 frames (h2's client), since a tonic client cannot
//! choose when its reset goes out: it opens a call and leaves it waiting for its
//! message, then opens and at once resets more calls than h2's default guard
//! (20) in one burst, so the server reads them all before it accepts any. Past
//! the guard h2 would answer `GOAWAY ENHANCE_YOUR_CALM` and the waiting call, and
//! any new one, would fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use prost::bytes::Bytes;
use recsys_server::grpc::{incoming, standard_router_with};
use recsys_server::limits::ServerLimits;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Calls reset in the burst: ten times h2's default guard, well under the
/// default `max_concurrent_streams`.
const RESETS: usize = 200;

/// The longest a test waits for an answer; a failure, not a measurement.
const WAIT: Duration = Duration::from_secs(30);

/// An empty `grpc.health.v1.HealthCheckRequest` (the whole server's health), framed.
const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];

async fn serve(token: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_health, router) = standard_router_with(&ServerLimits::default()).unwrap();
    let serve =
        router.serve_with_incoming_shutdown(incoming(listener), token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await.expect("server failed") });
    addr
}

fn health_check(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The `grpc-status` of a call's answer (in its trailers, or in its headers when
/// the answer is trailers-only).
async fn grpc_status(response: h2::client::ResponseFuture) -> String {
    let response = tokio::time::timeout(WAIT, response)
        .await
        .expect("no answer")
        .expect("the call failed: the connection was closed");
    if let Some(status) = response.headers().get("grpc-status") {
        return status.to_str().unwrap().to_string();
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.expect("the answer's body failed: the connection was closed");
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let trailers = body
        .trailers()
        .await
        .expect("the answer's trailers failed: the connection was closed")
        .expect("an answer without trailers");
    trailers["grpc-status"].to_str().unwrap().to_string()
}

#[tokio::test]
async fn calls_reset_before_the_server_took_them_leave_the_connection_open() {
    let token = CancellationToken::new();
    let addr = serve(&token).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();

    // A call in flight across the burst: its message comes after it.
    let (waiting, mut waiting_body) = client.send_request(health_check(addr), false).unwrap();

    // Nothing here yields, so the connection task writes the whole burst at once
    // and the server reads every reset before it accepts any of the calls.
    for _ in 0..RESETS {
        let (_, mut body) = client.send_request(health_check(addr), false).unwrap();
        body.send_reset(h2::Reason::CANCEL);
    }

    waiting_body
        .send_data(Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    assert_eq!(grpc_status(waiting).await, "0", "the waiting call failed");

    // A new call on the same connection.
    let mut client = client
        .ready()
        .await
        .expect("the server closed the connection");
    let (fresh, mut fresh_body) = client.send_request(health_check(addr), false).unwrap();
    fresh_body
        .send_data(Bytes::from_static(EMPTY_MESSAGE), true)
        .unwrap();
    assert_eq!(
        grpc_status(fresh).await,
        "0",
        "a call after the burst failed"
    );
    assert!(!connection.is_finished(), "the connection ended");
    token.cancel();
}

#[test]
fn the_reset_guard_follows_the_stream_limit() {
    let limits = ServerLimits {
        max_concurrent_streams: 64,
        ..ServerLimits::default()
    };
    assert_eq!(limits.max_pending_accept_reset_streams(), 64);
}
