//! `SIGTERM` to a `ranking-node` process under load: the calls it had taken are
//! answered before it exits, later ones are refused with a code the gateway
//! retries elsewhere, nothing ends in another error or hangs, and the process
//! exits by itself with success.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use recsys_proto::v1::RankRequest;
use recsys_proto::v1::ranking_service_client::RankingServiceClient;
use recsys_tests::processes::{self, free_addr};
use recsys_tests::*;
use tonic::Code;

const CLIENTS: usize = 6;
const ITEMS: usize = 2_000;

/// One call: when it was sent, when its answer came, and its code.
#[derive(Debug)]
struct Call {
    sent: Instant,
    answered: Instant,
    code: Code,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_what_was_taken_then_exits() {
    let bundle = synthetic_bundle(ITEMS, 10, 16, 1, 71);
    let addr = free_addr();
    let args: Vec<String> = [
        "--bundle",
        &bundle.path().display().to_string(),
        "--listen",
        &addr.to_string(),
        // One scoring thread and whole-catalog requests: calls queue up, so some
        // are always waiting when the signal comes.
        "--threads",
        "1",
        "--io-threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut node = processes::spawn("ranking", "ranking-node", addr, &args);
    node.wait_serving(Duration::from_secs(60)).await.unwrap();

    let answered = Arc::new(AtomicUsize::new(0));
    let terminated = Arc::new(AtomicBool::new(false));
    let request = RankRequest {
        user_id: bundle.catalog.users.ids()[0].clone(),
        item_ids: (0..ITEMS as u64).collect(),
        ..Default::default()
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (answered, terminated, request) =
                (answered.clone(), terminated.clone(), request.clone());
            tokio::spawn(async move {
                let mut client = RankingServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let mut calls = Vec::new();
                loop {
                    let mut call = tonic::Request::new(request.clone());
                    call.set_timeout(Duration::from_secs(30));
                    let sent = Instant::now();
                    let outcome = client.rank(call).await;
                    let code = match &outcome {
                        Ok(answer) => {
                            assert_eq!(answer.get_ref().scores.len(), ITEMS);
                            answered.fetch_add(1, Ordering::SeqCst);
                            Code::Ok
                        }
                        Err(status) => status.code(),
                    };
                    calls.push(Call {
                        sent,
                        answered: Instant::now(),
                        code,
                    });
                    // Refused once the node stops taking calls: this client is done.
                    if code != Code::Ok {
                        return calls;
                    }
                    if terminated.load(Ordering::SeqCst) {
                        return calls;
                    }
                }
            })
        })
        .collect();

    // Under load: wait (with a deadline) until plenty of calls were answered.
    let loading = Instant::now();
    while answered.load(Ordering::SeqCst) < 50 {
        assert!(
            loading.elapsed() < Duration::from_secs(60),
            "no load: {} answers",
            answered.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    let status = node.terminate(Duration::from_secs(30)).await;
    terminated.store(true, Ordering::SeqCst);
    let status = status.unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "exit status {status}");
    eprintln!(
        "ranking node exited {:?} after SIGTERM",
        signalled.elapsed()
    );

    let mut calls = Vec::new();
    for client in clients {
        calls.extend(
            tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // Under load nothing failed; after the signal, calls the node no longer takes
    // are refused as UNAVAILABLE, or CANCELLED when they raced the server's
    // GOAWAY on an open connection: both are what the gateway retries on another
    // node. Nothing else (no INTERNAL from a scoring thread gone, no timeout).
    let unexpected: Vec<&Call> = calls
        .iter()
        .filter(|c| match c.code {
            Code::Ok => false,
            Code::Unavailable | Code::Cancelled => c.answered < signalled,
            _ => true,
        })
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    // Calls in flight when the signal came: the drain answered them.
    let in_flight = calls
        .iter()
        .filter(|c| c.sent < signalled && c.answered > signalled);
    let (drained, cut): (Vec<&Call>, Vec<&Call>) = in_flight.partition(|c| c.code == Code::Ok);
    eprintln!(
        "{} calls; of those in flight at SIGTERM, {} answered and {} refused",
        calls.len(),
        drained.len(),
        cut.len()
    );
    assert!(
        !drained.is_empty(),
        "no call in flight at SIGTERM was answered: {cut:?}"
    );
    // Every client ended refused, none is left waiting.
    assert_eq!(calls.iter().filter(|c| c.code != Code::Ok).count(), CLIENTS);
}
