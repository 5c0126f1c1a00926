//! Open-loop load through a gateway: requests sent at a fixed rate whatever the
//! answers, the way real clients arrive (and the way a closed-loop generator,
//! which waits for each answer, cannot overload anything: it slows down with
//! the server, "coordinated omission").
//!
//! For each `--rate` level, after one unloaded reference (one request at a time):
//! - the share of requests answered OK, refused (`RESOURCE_EXHAUSTED`), timed
//!   out, or failed otherwise;
//! - the latency of the OK answers (p50, p99) next to the unloaded p99;
//! - the time to refuse a request (p50, p99, max of the `RESOURCE_EXHAUSTED`
//!   answers, as the client sees it: an upper bound on the server's share);
//! - the largest resident memory of each server process during the level;
//! - the recovery: from the end of the level until a request, sent one at a
//!   time, is answered OK within 3× the unloaded p99.
//!
//! The sender issues, at every millisecond tick, the requests due by then, each
//! on its own task, with the deadline `--timeout-ms`. At most
//! `--max-outstanding` are kept in flight; requests past that are counted as
//! `not_sent` rather than letting the generator's own memory grow without bound.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::load::{LoadArgs, query};
use crate::stats::percentile;

/// What the requests of one level came back with.
#[derive(Debug, Default)]
struct Tally {
    ok_us: Vec<f64>,
    shed_us: Vec<f64>,
    /// Other outcomes by gRPC code name (`DeadlineExceeded` and tonic's own
    /// client timeout, `Cancelled`, are the timed-out ones).
    other: BTreeMap<String, u64>,
}

/// Locks the tally; a panic in a request task cannot leave it half-written.
fn lock(tally: &Mutex<Tally>) -> std::sync::MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the unloaded reference and then every rate level, printing one JSON line each.
pub async fn run(
    args: Arc<LoadArgs>,
    channels: Vec<Channel>,
    dim: usize,
    pids: Vec<u32>,
) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let mut next_id = 1u64 << 40;
    let unloaded = unloaded(&args, &channels[0], dim, timeout, &mut next_id).await?;
    let unloaded_p99 = percentile(&unloaded, 0.99);
    println!(
        "{}",
        serde_json::json!({
            "event": "unloaded", "requests": unloaded.len(),
            "p50_us": percentile(&unloaded, 0.5), "p99_us": unloaded_p99,
            "rss_kb": rss_kb(&pids),
        })
    );
    for &rate in &args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            anyhow::bail!("--rate must be positive, not {rate}");
        }
        let level = Level::run(&args, &channels, dim, timeout, rate, &pids, &mut next_id).await;
        // From the moment sending stops, while the level's last requests drain.
        let recovery = recover(
            &args,
            &channels[0],
            dim,
            timeout,
            unloaded_p99,
            &mut next_id,
        )
        .await;
        let Level {
            tally,
            sent,
            not_sent,
            max_rss_kb,
            outstanding,
        } = level;
        // Every request has a deadline, so this ends.
        while outstanding.load(Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let tally = std::mem::take(&mut *lock(&tally));
        let mut ok = tally.ok_us;
        let mut shed = tally.shed_us;
        ok.sort_by(f64::total_cmp);
        shed.sort_by(f64::total_cmp);
        let share = |n: usize| n as f64 / sent.max(1) as f64;
        println!(
            "{}",
            serde_json::json!({
                "event": "open_loop", "rate": rate, "seconds": args.seconds,
                "timeout_ms": args.timeout_ms, "k": args.k, "rank": args.rank,
                "sent": sent, "not_sent": not_sent,
                "ok": ok.len(), "ok_share": share(ok.len()),
                "shed": shed.len(), "shed_share": share(shed.len()),
                "other": tally.other,
                "ok_qps": ok.len() as f64 / args.seconds,
                "ok_p50_us": percentile(&ok, 0.5), "ok_p99_us": percentile(&ok, 0.99),
                "unloaded_p99_us": unloaded_p99,
                "ok_p99_over_unloaded": percentile(&ok, 0.99) / unloaded_p99,
                "shed_p50_us": percentile(&shed, 0.5), "shed_p99_us": percentile(&shed, 0.99),
                "shed_max_us": shed.last().copied().unwrap_or(f64::NAN),
                "max_rss_kb": max_rss_kb,
                "recovery_ms": recovery.map(|d| d.as_secs_f64() * 1e3),
            })
        );
    }
    Ok(())
}

/// Latencies (µs) of the requests answered OK, sent one at a time for a few seconds.
async fn unloaded(
    args: &LoadArgs,
    channel: &Channel,
    dim: usize,
    timeout: Duration,
    next_id: &mut u64,
) -> anyhow::Result<Vec<f64>> {
    let mut client = GatewayServiceClient::new(channel.clone());
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs_f64(args.seconds.min(10.0));
    let mut latencies = Vec::new();
    while Instant::now() < stop_at {
        *next_id += 1;
        let mut request = tonic::Request::new(query(args, dim, *next_id));
        request.set_timeout(timeout);
        let started = Instant::now();
        // A failure here (a deadline missed on a busy host) is not a latency;
        // the level's own accounting shows how many there are under load.
        let answered = client.recommend(request).await.is_ok();
        if answered && started >= warm_until {
            latencies.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// One level: what its requests came back with (filled in as they end).
struct Level {
    tally: Arc<Mutex<Tally>>,
    sent: usize,
    not_sent: usize,
    /// Each process's largest resident set during the level (kB), by pid.
    max_rss_kb: BTreeMap<u32, u64>,
    /// Requests not answered yet.
    outstanding: Arc<AtomicUsize>,
}

impl Level {
    /// Sends `rate` requests per second for `args.seconds`; returns when the last
    /// is sent, not answered.
    async fn run(
        args: &LoadArgs,
        channels: &[Channel],
        dim: usize,
        timeout: Duration,
        rate: f64,
        pids: &[u32],
        next_id: &mut u64,
    ) -> Level {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let mut max_rss_kb: BTreeMap<u32, u64> = BTreeMap::new();
        let (mut sent, mut not_sent) = (0usize, 0usize);
        let started = Instant::now();
        let duration = Duration::from_secs_f64(args.seconds);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut next_sample = started;
        loop {
            tick.tick().await;
            let elapsed = started.elapsed().min(duration);
            let due = (elapsed.as_secs_f64() * rate) as usize;
            while sent + not_sent < due {
                if outstanding.load(Ordering::Relaxed) >= args.max_outstanding {
                    not_sent += 1;
                    continue;
                }
                *next_id += 1;
                let mut request = tonic::Request::new(query(args, dim, *next_id));
                request.set_timeout(timeout);
                let mut client = GatewayServiceClient::new(channels[sent % channels.len()].clone());
                let (tally, outstanding) = (tally.clone(), outstanding.clone());
                outstanding.fetch_add(1, Ordering::Relaxed);
                // Not joined: a finished task's memory stays while its handle lives.
                drop(tokio::spawn(async move {
                    let began = Instant::now();
                    let outcome = client.recommend(request).await;
                    let us = began.elapsed().as_secs_f64() * 1e6;
                    let mut tally = lock(&tally);
                    match outcome {
                        Ok(_) => tally.ok_us.push(us),
                        Err(status) if status.code() == Code::ResourceExhausted => {
                            tally.shed_us.push(us)
                        }
                        Err(status) => {
                            *tally
                                .other
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                        }
                    }
                    drop(tally);
                    // Counted down only once recorded: the level waits for zero.
                    outstanding.fetch_sub(1, Ordering::Relaxed);
                }));
                sent += 1;
            }
            if Instant::now() >= next_sample {
                for (pid, kb) in rss_kb(pids) {
                    let max = max_rss_kb.entry(pid).or_default();
                    *max = (*max).max(kb);
                }
                next_sample += Duration::from_millis(250);
            }
            if elapsed >= duration {
                break;
            }
        }
        Level {
            tally,
            sent,
            not_sent,
            max_rss_kb,
            outstanding,
        }
    }
}

/// Time from now until a request, sent one at a time every millisecond or so, is
/// answered OK within 3× `unloaded_p99` µs; `None` after 30 s.
async fn recover(
    args: &LoadArgs,
    channel: &Channel,
    dim: usize,
    timeout: Duration,
    unloaded_p99: f64,
    next_id: &mut u64,
) -> Option<Duration> {
    let mut client = GatewayServiceClient::new(channel.clone());
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(30) {
        *next_id += 1;
        let mut request = tonic::Request::new(query(args, dim, *next_id));
        request.set_timeout(timeout);
        let began = Instant::now();
        let outcome = client.recommend(request).await;
        if outcome.is_ok() && began.elapsed().as_secs_f64() * 1e6 <= 3.0 * unloaded_p99 {
            return Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

/// Resident memory (kB) of each process in `pids` that is still there.
pub(crate) fn rss_kb(pids: &[u32]) -> BTreeMap<u32, u64> {
    pids.iter()
        .filter_map(|&pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let kb = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some((pid, kb))
        })
        .collect()
}
