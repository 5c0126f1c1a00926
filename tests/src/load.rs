//! A steady load through the gateway for fault tests: a few clients send
//! `Recommend` back to back and count every failed request and every answer with
//! less than full coverage, until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use recsys_proto::v1::RecommendRequest;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{gateway_client, recommend};

/// What a load run saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed, with the first few messages.
    pub failed: u64,
    /// Answered requests whose coverage was not full (a shard missing).
    pub partial: u64,
    /// The first failure messages and partial answers' reasons, for the assertion message.
    pub errors: Vec<String>,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    partial: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

/// A running load; [`Load::stop`] ends it and reports.
#[derive(Debug)]
pub struct Load {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    counters: Arc<Counters>,
}

impl Load {
    /// Starts `clients` clients against `gateway`, each sending `make(i)` for its
    /// i-th request with `timeout` as the deadline.
    pub async fn start(
        gateway: SocketAddr,
        clients: usize,
        timeout: Duration,
        make: impl Fn(u64) -> RecommendRequest + Send + Sync + 'static,
    ) -> Self {
        let stop = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let make = Arc::new(make);
        let mut tasks = JoinSet::new();
        for client_index in 0..clients {
            let mut client = gateway_client(gateway).await;
            let (stop, counters, make) = (stop.clone(), counters.clone(), make.clone());
            tasks.spawn(async move {
                let mut i = client_index as u64;
                while !stop.is_cancelled() {
                    match recommend(&mut client, make(i), timeout).await {
                        Ok(response) => {
                            counters.ok.fetch_add(1, Ordering::Relaxed);
                            let coverage = response.coverage.unwrap_or_default();
                            if coverage.shards_answered < coverage.shards_asked {
                                counters.partial.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut errors) = counters.errors.lock()
                                    && errors.len() < 5
                                {
                                    errors.push(format!("partial: {:?}", coverage.reasons));
                                }
                            }
                        }
                        Err(status) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut errors) = counters.errors.lock()
                                && errors.len() < 5
                            {
                                errors.push(format!("{:?}: {}", status.code(), status.message()));
                            }
                        }
                    }
                    i += clients as u64;
                }
            });
        }
        Self {
            stop,
            tasks,
            counters,
        }
    }

    /// Requests answered so far.
    pub fn answered(&self) -> u64 {
        self.counters.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further requests were answered, or `timeout`.
    pub async fn wait_for_answers(&self, more: u64, timeout: Duration) -> bool {
        let target = self.answered() + more;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.answered() < target {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Stops the clients and reports.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        LoadReport {
            ok: self.counters.ok.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
            partial: self.counters.partial.load(Ordering::Relaxed),
            errors: self
                .counters
                .errors
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }
}
