//! Cold start of a retrieval node, and the gateway's latency beyond the slowest shard.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::future::join_all;
use recsys_local_cluster::wait_until_serving_polling;
use recsys_proto::v1::{
    QueryEmbedding, RecommendOptions, RecommendRequest, SearchRequest,
    gateway_service_client::GatewayServiceClient, recommend_request::Query,
    retrieval_service_client::RetrievalServiceClient,
};
use recsys_retrieval_node::{LoadMode, NodeConfig, SearchLimits};
use tokio_util::sync::CancellationToken;

use crate::process_cluster::{BenchCluster, ClusterShape};

/// Options of `recsys-bench cold-start`.
#[derive(Debug, Clone, Args)]
pub struct ColdStartArgs {
    /// The bundle.
    #[arg(long)]
    pub bundle: PathBuf,
    /// The shard to serve.
    #[arg(long, default_value_t = 0)]
    pub shard: u32,
    /// Repetitions.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// How the node opens the shard file.
    #[arg(long, value_enum, default_value_t = LoadMode::default())]
    pub load_mode: LoadMode,
}

/// Starts a node `runs` times and reports the time from bind to SERVING.
pub async fn cold_start(args: ColdStartArgs) -> anyhow::Result<()> {
    for run in 0..args.runs {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let config = NodeConfig {
            bundle: recsys_bundle::BundleSource::at(args.bundle.clone()),
            versions: Default::default(),
            shard: args.shard,
            search_threads: 1,
            limits: SearchLimits::default(),
            load_mode: args.load_mode,
            announce: None,
            access: Default::default(),
            server_limits: Default::default(),
            max_in_flight: 0,
            fold_min_items: recsys_retrieval_node::DEFAULT_FOLD_MIN_ITEMS,
        };
        let started = Instant::now();
        let task = tokio::spawn(recsys_retrieval_node::run(listener, config, token.clone()));
        // Polled every millisecond: the default backoff would round start-ups up to
        // its next poll (126 ms, then 226 ms, ...).
        wait_until_serving_polling(addr, Duration::from_secs(60), Duration::from_millis(1))
            .await
            .map_err(|(waited, detail)| {
                anyhow::anyhow!("not serving after {waited:?}: {detail}")
            })?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        println!(
            "{}",
            serde_json::json!({"event": "cold_start", "run": run, "ms_to_serving": ms,
                "load_mode": format!("{:?}", args.load_mode)})
        );
        token.cancel();
        let _ = task.await;
    }
    Ok(())
}

/// Options of `recsys-bench overhead`.
#[derive(Debug, Clone, Args)]
pub struct OverheadArgs {
    /// The bundle (the demo's: target/demo-bundle).
    #[arg(long, default_value = "target/demo-bundle")]
    pub bundle: PathBuf,
    /// Requests measured (after 200 warm-up requests).
    #[arg(long, default_value_t = 2_000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub requests: usize,
    /// Items per request.
    #[arg(long, default_value_t = 100)]
    pub k: u32,
    /// Where the servers run.
    #[command(flatten)]
    pub shape: ClusterShape,
}

fn median(values: Vec<f64>) -> f64 {
    percentile(values, 0.5)
}

fn percentile(mut values: Vec<f64>, p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    crate::stats::percentile(&values, p)
}

/// For each query, times (a) the same per-shard searches the gateway would send,
/// sent by the client directly to every shard at once, and (b) the gateway's
/// `Recommend`. Overhead = (b) − (a): the gateway hop, validation, encoding, merge.
/// Also reports the gateway's own timings (its handler, and the fan-out and merge
/// in it), to split the overhead into the hop and the handler. Then times health checks to
/// the gateway, the hop's own floor: back to back, and each after a direct round
/// as the `Recommend`s are (servers that slept through the shards' searches wake
/// more slowly). `io_threads` sizes the servers' runtimes when they run as
/// processes.
pub async fn overhead(args: OverheadArgs, io_threads: usize) -> anyhow::Result<()> {
    let cluster = BenchCluster::start(&args.bundle, &args.shape, io_threads).await?;
    let manifest = cluster.manifest().clone();
    let mut direct_round = DirectRound::connect(&cluster, args.k).await?;
    let mut gateway = GatewayServiceClient::new(cluster.gateway_channel().await?);
    let dim = manifest.dimensions;
    let query = |i: usize| -> Vec<f32> {
        (0..dim)
            .map(|d| (((i * 31 + d * 17) % 97) as f32 / 97.0) - 0.5)
            .collect()
    };
    let (mut direct, mut through_gateway) = (Vec::new(), Vec::new());
    // What the gateway itself reports: its whole handler, and the fan-out in it
    // (the shard calls and the merge of their answers as they arrive).
    let (mut handler, mut fan_out) = (Vec::new(), Vec::new());
    for i in 0..args.requests + WARM_UP {
        let query = query(i);
        let direct_us = direct_round.run(&query).await?;
        let started = Instant::now();
        let response = gateway
            .recommend(RecommendRequest {
                query: Some(Query::QueryEmbedding(QueryEmbedding { values: query })),
                k: args.k,
                // The retrieval path only: the direct side does no ranking either.
                options: Some(RecommendOptions {
                    skip_ranking: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await?;
        let gateway_us = started.elapsed().as_secs_f64() * 1e6;
        let response = response.into_inner();
        let coverage = response.coverage.unwrap_or_default();
        // A shard that did not answer would make the gateway look fast.
        anyhow::ensure!(
            !coverage.degraded && coverage.shards_answered == coverage.shards_asked,
            "degraded answer ({} of {} shards): {:?}",
            coverage.shards_answered,
            coverage.shards_asked,
            coverage.reasons
        );
        if i >= WARM_UP {
            direct.push(direct_us);
            through_gateway.push(gateway_us);
            let timings = response.timings.unwrap_or_default();
            handler.push(timings.total_us as f64);
            fan_out.push(timings.retrieval_us as f64);
        }
    }
    // The floor of the extra hop: a `grpc.health.v1` check to the gateway, on a
    // channel like the client's, timed the same way (no validation, fan-out,
    // merge or items).
    let channel = cluster.gateway_channel().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let check = tonic_health::pb::HealthCheckRequest::default();
    let (mut hop, mut hop_after_direct) = (Vec::new(), Vec::new());
    for i in 0..args.requests + WARM_UP {
        let started = Instant::now();
        health.check(check.clone()).await?;
        let back_to_back_us = started.elapsed().as_secs_f64() * 1e6;
        direct_round.run(&query(i)).await?;
        let started = Instant::now();
        health.check(check.clone()).await?;
        if i >= WARM_UP {
            hop.push(back_to_back_us);
            hop_after_direct.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    let overhead: Vec<f64> = through_gateway
        .iter()
        .zip(&direct)
        .map(|(g, d)| g - d)
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "event": "gateway_overhead",
            "processes": matches!(cluster, BenchCluster::Processes(..)),
            "tls": args.shape.tls.is_some(),
            "trace": args.shape.trace,
            "server_pids": cluster.pids(),
            // 0: each binary's own default.
            "io_threads": io_threads,
            "gateway_io_threads": args.shape.gateway_io_threads.unwrap_or(io_threads),
            "shards": manifest.shard_count, "items": manifest.items,
            "k": args.k, "shard_k": direct_round.shard_k, "requests": args.requests,
            "direct_all_shards_median_us": median(direct.clone()),
            "gateway_median_us": median(through_gateway.clone()),
            "overhead_median_us": median(overhead.clone()),
            "overhead_p90_us": percentile(overhead, 0.9),
            "direct_p90_us": percentile(direct, 0.9),
            "gateway_p90_us": percentile(through_gateway, 0.9),
            "gateway_handler_median_us": median(handler),
            "gateway_fan_out_median_us": median(fan_out),
            "gateway_health_rtt_median_us": median(hop),
            "gateway_health_rtt_after_direct_median_us": median(hop_after_direct),
        })
    );
    cluster.shutdown().await?;
    Ok(())
}

/// Requests before the measured ones.
const WARM_UP: usize = 200;

/// The searches the gateway would send for one query, sent by the client itself
/// to every shard at once.
struct DirectRound {
    shards: Vec<RetrievalServiceClient<tonic::transport::Channel>>,
    shard_k: u32,
}

impl DirectRound {
    async fn connect(cluster: &BenchCluster, k: u32) -> anyhow::Result<Self> {
        let mut shards = Vec::new();
        for addr in cluster.shard_addrs() {
            shards.push(RetrievalServiceClient::new(
                cluster.node_channel(addr).await?,
            ));
        }
        // What the gateway asks each shard for at its default probability (k
        // itself for one shard).
        let shard_k = recsys_gateway_shard_k(k, cluster.manifest().shard_count);
        Ok(Self { shards, shard_k })
    }

    /// Sends the round and returns its time in µs.
    async fn run(&mut self, query: &[f32]) -> anyhow::Result<f64> {
        let started = Instant::now();
        let k = self.shard_k;
        let calls = self.shards.iter_mut().map(|client| {
            client.search(SearchRequest {
                min_log_revision: 0,
                query: query.to_vec(),
                k,
                exclude_item_ids: vec![],
                exact: false,
                bundle_version: String::new(),
                ..Default::default()
            })
        });
        for result in join_all(calls).await {
            result?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6)
    }
}

/// The gateway's per-shard k at its default top-k probability.
fn recsys_gateway_shard_k(k: u32, shards: u32) -> u32 {
    recsys_gateway::shard_k::per_shard_k(
        k,
        shards,
        recsys_gateway::RequestPolicy::default().top_k_probability,
    )
}
