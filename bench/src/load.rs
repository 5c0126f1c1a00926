//! Closed-loop load through a gateway: throughput and latency at a given number of
//! requests in flight, the way vespa-fbench or Milvus' benchmark drive a cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use recsys_proto::v1::{
    QueryEmbedding, RecommendOptions, RecommendRequest,
    gateway_service_client::GatewayServiceClient, recommend_request::Query,
};
use tonic::transport::{Channel, Endpoint};

use crate::process_cluster::{BenchCluster, ClusterShape};

/// Options of `recsys-bench load`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Start a local cluster (static membership; in this process unless
    /// `--processes`) on this bundle.
    #[arg(long, conflicts_with = "gateway", required_unless_present = "gateway")]
    pub bundle: Option<PathBuf>,
    /// With `--bundle`: where the servers run.
    #[command(flatten)]
    pub shape: ClusterShape,
    /// Drive a running gateway (`host:port`) instead; needs `--dim`.
    #[arg(long, requires = "dim", conflicts_with = "processes")]
    pub gateway: Option<String>,
    /// Query embedding dimensions (read from the bundle when `--bundle` is given).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Requests in flight, one level after the other (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub concurrency: Vec<usize>,
    /// Measured seconds per level, after one second of warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Items per request.
    #[arg(long, default_value_t = 100)]
    pub k: u32,
    /// HTTP/2 connections to the gateway, shared round-robin by the clients.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Also rank (the default asks for retrieval only).
    #[arg(long)]
    pub rank: bool,
    /// Open loop instead: send this many requests per second whatever the
    /// answers, one level after the other (comma-separated), and report the share
    /// answered, the latency of admitted and of refused requests, memory and the
    /// recovery after each level (see `open_loop.rs`).
    #[arg(long, value_delimiter = ',')]
    pub rate: Vec<f64>,
    /// Also write a report into this directory: `load.json` (every level's
    /// numbers, per second and as a latency histogram) and two PNG plots,
    /// throughput and latency over time and the latency histogram (closed
    /// loop only).
    #[arg(long, conflicts_with = "rate")]
    pub report: Option<PathBuf>,
    /// Open loop: each request's deadline (ms).
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Open loop: most requests the generator keeps outstanding; past it, it
    /// counts requests it could not send instead of growing without bound.
    #[arg(long, default_value_t = 100_000)]
    pub max_outstanding: usize,
}

/// What one client saw at one level.
#[derive(Debug, Default)]
struct ClientTally {
    latencies_us: Vec<f64>,
    /// When each answer in `latencies_us` came, in seconds after the warm-up.
    ended_s: Vec<f64>,
    /// When each error came, likewise.
    errors_s: Vec<f64>,
    errors: u64,
    first_error: Option<String>,
}

/// Runs each concurrency level and prints one JSON line per level. `io_threads`
/// sizes the servers' runtimes when they run as processes.
pub async fn load(args: LoadArgs, io_threads: usize) -> anyhow::Result<()> {
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        anyhow::bail!("--seconds must be a positive number, not {}", args.seconds);
    }
    let mut cluster = None;
    let (addr, dim) = match (&args.bundle, &args.gateway) {
        (Some(bundle), _) => {
            let started = BenchCluster::start(bundle, &args.shape, io_threads).await?;
            let addr = started.gateway_addr().to_string();
            let dim = started.manifest().dimensions;
            cluster = Some(started);
            (addr, dim)
        }
        (None, Some(gateway)) => (
            gateway.clone(),
            args.dim
                .ok_or_else(|| anyhow::anyhow!("--gateway needs --dim"))?,
        ),
        (None, None) => anyhow::bail!("give --bundle DIR or --gateway ADDR --dim D"),
    };
    let pids = cluster.as_ref().map(BenchCluster::pids).unwrap_or_default();
    let outcome = run_levels(args, addr, dim, io_threads, pids).await;
    if let Some(cluster) = cluster {
        // The run's own error first; a server that failed during it comes next.
        let stopped = cluster.shutdown().await;
        outcome?;
        stopped?;
        return Ok(());
    }
    outcome
}

/// Connects, then measures every level against the gateway at `addr`.
async fn run_levels(
    args: LoadArgs,
    addr: String,
    dim: usize,
    io_threads: usize,
    pids: Vec<u32>,
) -> anyhow::Result<()> {
    // With --tls, a client of the cluster's CA presenting its client certificate.
    let tls = match &args.shape.tls {
        Some(dir) => Some(
            recsys_local_cluster::ClusterTls { dir: dir.clone() }
                .client("client")
                .load()?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))?.tcp_nodelay(true);
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        channels.push(endpoint.connect().await?);
    }
    let args = Arc::new(args);
    if !args.rate.is_empty() {
        return crate::open_loop::run(args, channels, dim, pids).await;
    }
    let mut levels = Vec::new();
    for &concurrency in &args.concurrency {
        let concurrency = concurrency.max(1);
        let warm_until = Instant::now() + Duration::from_secs(1);
        let stop_at = warm_until + Duration::from_secs_f64(args.seconds);
        let clients: Vec<_> = (0..concurrency)
            .map(|client| {
                let channel = channels[client % channels.len()].clone();
                tokio::spawn(run_client(
                    channel,
                    args.clone(),
                    dim,
                    client,
                    warm_until,
                    stop_at,
                ))
            })
            .collect();
        let mut latencies = Vec::new();
        let (mut samples, mut error_times) = (Vec::new(), Vec::new());
        let (mut errors, mut first_error) = (0, None);
        for client in clients {
            let tally = client.await?;
            samples.extend(
                tally
                    .ended_s
                    .iter()
                    .copied()
                    .zip(tally.latencies_us.iter().copied()),
            );
            latencies.extend(tally.latencies_us);
            error_times.extend(tally.errors_s);
            errors += tally.errors;
            first_error = first_error.or(tally.first_error);
        }
        latencies.sort_by(f64::total_cmp);
        let at = |p: f64| crate::stats::percentile(&latencies, p);
        println!(
            "{}",
            serde_json::json!({
                "event": "load", "gateway": addr, "processes": args.shape.processes, "tls": args.shape.tls.is_some(), "trace": args.shape.trace, "trace_sample": args.shape.trace_sample, "io_threads": io_threads, "concurrency": concurrency,
                "connections": channels.len(), "k": args.k, "rank": args.rank,
                "seconds": args.seconds, "requests": latencies.len(),
                "qps": latencies.len() as f64 / args.seconds,
                "p50_us": at(0.5), "p90_us": at(0.9), "p99_us": at(0.99),
                "errors": errors, "first_error": first_error,
            })
        );
        levels.push(crate::report::LevelSamples {
            label: format!("{concurrency} in flight"),
            seconds: args.seconds,
            samples,
            error_times,
        });
    }
    if let Some(dir) = &args.report {
        let run = serde_json::json!({
            "gateway": addr, "processes": args.shape.processes, "io_threads": io_threads,
            "connections": channels.len(), "k": args.k, "rank": args.rank,
            "bundle": args.bundle, "concurrency": args.concurrency,
        });
        let title = format!(
            "recsys-bench load: k = {}{}, {} s per level",
            args.k,
            if args.rank { ", ranked" } else { "" },
            args.seconds
        );
        crate::report::write_report(dir, &title, run, &levels)?;
        eprintln!("report written to {}", dir.display());
    }
    Ok(())
}

/// Asks one request after the other until `stop_at`; counts those that end after
/// `warm_until`.
async fn run_client(
    channel: Channel,
    args: Arc<LoadArgs>,
    dim: usize,
    client: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> ClientTally {
    let mut gateway = GatewayServiceClient::new(channel);
    let mut tally = ClientTally::default();
    let mut i = (client as u64) << 32;
    while Instant::now() < stop_at {
        i += 1;
        let request = query(&args, dim, i);
        let started = Instant::now();
        let outcome = gateway.recommend(request).await;
        let done = Instant::now();
        if done < warm_until {
            continue;
        }
        if done > stop_at {
            break;
        }
        match outcome {
            Ok(_) => {
                tally
                    .latencies_us
                    .push((done - started).as_secs_f64() * 1e6);
                tally.ended_s.push((done - warm_until).as_secs_f64());
            }
            Err(status) => {
                tally.errors += 1;
                tally.errors_s.push((done - warm_until).as_secs_f64());
                tally.first_error.get_or_insert_with(|| status.to_string());
            }
        }
    }
    tally
}

/// Request number `i`: a fresh pseudo-random query each time (values in
/// [-0.5, 0.5)), so that repeated queries do not find their answers' cache lines warm.
pub(crate) fn query(args: &LoadArgs, dim: usize, i: u64) -> RecommendRequest {
    let values = (0..dim as u64)
        .map(|d| {
            (splitmix64(i.wrapping_mul(0x1_0000_01b3) ^ d) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    RecommendRequest {
        query: Some(Query::QueryEmbedding(QueryEmbedding { values })),
        k: args.k,
        options: Some(RecommendOptions {
            skip_ranking: !args.rank,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// SplitMix64's output function: a cheap, well-mixed hash of a counter.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
