//! `recsys-bench two-stage`: what a two-stage request costs the cluster against
//! the sum of its kernels (issue 21, part 3).
//!
//! The request: a GloVe-50 held-out query retrieves `--retrieve-k` (200) of the
//! 390k items at the gateway's default recall target, and the DCN tutorial
//! ranker (`ranking.rs`, with an item table covering every item) ranks them;
//! the answer is the best `--k`. Three numbers come out, each per request:
//!
//! - **kernels**: the same request's search (the node's `LiveShard::search_at`
//!   at the beam its depth table gives) and forward pass (`Ranker::score`) in
//!   this process, one after the other, on the same queries: CPU time of every
//!   thread of this process (candle may use several), per request. Each stage
//!   is timed over every query at once, the caches warm with that stage alone
//!   (the sum); then both stages request by request, as one process serving
//!   the request runs them (`per_request_cpu_us`), each finding the caches as
//!   the other left them.
//! - **cluster**: the gateway, the retrieval node and the ranking node, each a
//!   process (`ProcessCluster`), driven closed-loop at `--concurrency` requests
//!   in flight for `--seconds`: the CPU time the three processes spent (every
//!   thread, from `/proc/PID/task/*/schedstat`), divided by the requests
//!   answered; per process too, so the rest can be placed.
//! - **latency at half the saturating rate**: open loop at half the closed
//!   loop's rate, p50 and p99 of the answers.
//!
//! The client (this process) is not counted; on a 2-core host it competes
//! with the servers for the cores, which lowers the saturating rate but not
//! the CPU per request.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use recsys_bundle::{Manifest, Quantization};
use recsys_local_cluster::{ProcessCluster, ProcessOptions};
use recsys_model::{Ranker, UserContext};
use recsys_proto::v1::{
    FeatureValue, QueryEmbedding, RecommendOptions, RecommendRequest, StageTimings,
    gateway_service_client::GatewayServiceClient, recommend_request::Query,
};
use recsys_retrieval_node::{LoadMode, ShardIndex};
use tonic::transport::Channel;

use crate::glove_split::{GloveSplit, glove_bundle};
use crate::stats::percentile;

/// Options of `recsys-bench two-stage`.
#[derive(Debug, Clone, Args)]
pub struct TwoStageArgs {
    /// The GloVe split and where its bundles are kept.
    #[command(flatten)]
    pub split: GloveSplit,
    /// Candidates retrieved and ranked per request.
    #[arg(long, default_value_t = 200)]
    pub retrieve_k: u32,
    /// Items in the answer.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// The gateway's `--recall-target` (the kernels search at the same depth).
    #[arg(long, default_value_t = recsys_proto::limits::DEFAULT_RECALL_TARGET)]
    pub recall_target: f32,
    /// Requests in flight in the closed-loop (saturating) run.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Measured seconds of each run, after one second of warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// HNSW degree of the bundle's graph.
    #[arg(long, default_value_t = 32)]
    pub connectivity: usize,
    /// Rebuild the bundle even when one with these parameters exists.
    #[arg(long)]
    pub rebuild: bool,
}

/// Runs the three measurements and prints one JSON line each, then a summary line.
pub async fn run(args: TwoStageArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.seconds.is_finite() && args.seconds > 0.0,
        "--seconds must be a positive number"
    );
    let split = args.split.open()?;
    let (dim, queries) = (split.dim, split.queries().to_vec());
    let (plain, _) = glove_bundle(
        &args.split.work,
        split.items(),
        dim,
        Quantization::F32,
        (args.connectivity, 128),
        1,
        args.rebuild,
    )?;
    let bundle = ranked_bundle(&plain, &args.split.work, args.rebuild)?;
    drop(split);

    let kernels = tokio::task::block_in_place(|| kernels(&bundle, &args, &queries, dim))?;
    println!("{}", kernels.json());

    let cluster = ProcessCluster::start(
        &bundle,
        &ProcessOptions {
            gateway_recall_target: Some(args.recall_target),
            ..ProcessOptions::default()
        },
    )
    .await?;
    let channels = connect(cluster.gateway_addr, 4).await?;
    let pids = cluster.pids();
    let requests = Requests {
        queries: Arc::new(queries),
        dim,
        k: args.k,
        retrieve_k: args.retrieve_k,
        features: Arc::new(crate::ranking::user_features()),
    };
    let saturated = closed_loop(&channels, &requests, &pids, &args).await?;
    let cluster_cpu_us = saturated.cpu_us_per_request();
    println!(
        "{}",
        serde_json::json!({
            "event": "saturation", "concurrency": args.concurrency, "seconds": args.seconds,
            "requests": saturated.latencies_us.len(), "errors": saturated.errors,
            "unranked": saturated.unranked, "qps": saturated.qps(args.seconds),
            "p50_us": percentile(&saturated.latencies_us, 0.5),
            "p99_us": percentile(&saturated.latencies_us, 0.99),
            "cpu_us_per_request": cluster_cpu_us,
            "cpu_us_per_request_by_process": saturated.cpu_us_by_process(),
            "stages": saturated.stages(),
        })
    );
    let rate = saturated.qps(args.seconds) / 2.0;
    let half = open_loop(&channels, &requests, &pids, rate, args.seconds).await?;
    let (p50, p99) = (
        percentile(&half.latencies_us, 0.5),
        percentile(&half.latencies_us, 0.99),
    );
    println!(
        "{}",
        serde_json::json!({
            "event": "half_rate", "rate": rate, "seconds": args.seconds,
            "requests": half.latencies_us.len(), "errors": half.errors,
            "unranked": half.unranked, "p50_us": p50, "p99_us": p99,
            "p99_over_p50": p99 / p50,
            "cpu_us_per_request": half.cpu_us_per_request(),
            "stages": half.stages(),
        })
    );
    drop(cluster);
    let kernels_us = kernels.search_cpu_us + kernels.rank_cpu_us;
    println!(
        "{}",
        serde_json::json!({
            "event": "summary", "kernels_cpu_us": kernels_us,
            "cluster_cpu_us": cluster_cpu_us,
            "cluster_over_kernels": cluster_cpu_us / kernels_us,
            "target_cluster_over_kernels": 1.6,
            "half_rate_p99_over_p50": p99 / p50, "target_p99_over_p50": 3.0,
        })
    );
    Ok(())
}

/// A copy of the GloVe bundle `plain` with the tutorial ranker attached
/// (every item in its item table), kept beside it in `work`.
fn ranked_bundle(plain: &Path, work: &Path, rebuild: bool) -> anyhow::Result<PathBuf> {
    let name = plain
        .file_name()
        .context("the GloVe bundle has no name")?
        .to_string_lossy();
    let dir = work.join(format!("{name}-dcn"));
    if !rebuild && Manifest::load(&dir).is_ok_and(|m| m.ranker.is_some()) {
        return Ok(dir);
    }
    eprintln!(
        "attaching the DCN tutorial ranker to a copy of {}",
        plain.display()
    );
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(plain, &dir)?;
    let ids: Vec<u64> = (0..Manifest::load(&dir)?.items).collect();
    let files = crate::ranking::write_ranker(&work.join("two-stage-ranker"), ids.iter().copied())?;
    crate::ranking::attach(&dir, &files, &ids)?;
    Ok(dir)
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The in-process cost of one request's two kernels.
struct Kernels {
    queries: usize,
    ef: usize,
    search_cpu_us: f64,
    rank_cpu_us: f64,
    /// Both stages request by request (search, then rank its candidates), as
    /// one process serving the request runs them: each stage finds the caches
    /// as the other left them.
    per_request_cpu_us: f64,
}

impl Kernels {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "event": "kernels", "queries": self.queries, "ef": self.ef,
            "search_cpu_us": self.search_cpu_us, "rank_cpu_us": self.rank_cpu_us,
            "sum_cpu_us": self.search_cpu_us + self.rank_cpu_us,
            "per_request_cpu_us": self.per_request_cpu_us,
            "candle_threads": candle_core::utils::get_num_threads(),
        })
    }
}

/// Searches and ranks every query twice (the first pass warms caches), timing
/// the second: the node's search at the gateway's depth, the ranker on its
/// candidates; then once more request by request, both stages in turn.
fn kernels(
    bundle: &Path,
    args: &TwoStageArgs,
    queries: &[f32],
    dim: usize,
) -> anyhow::Result<Kernels> {
    let manifest = Manifest::load(bundle)?;
    let index = ShardIndex::open_with(bundle, 0, LoadMode::default())?;
    let shard = recsys_index::LiveShard::new(index, 0)?;
    let ranker = Ranker::load(
        &manifest
            .ranker_files(bundle)
            .context("the bundle has no ranker")?,
    )?;
    let retrieve_k = args.retrieve_k as usize;
    let ef = shard
        .base()
        .depth_for(retrieve_k, Some(args.recall_target).filter(|t| *t > 0.0))
        .max(retrieve_k);
    let user = UserContext {
        user_id: String::new(),
        features: crate::ranking::USER
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    };
    // The two kernels, each as the node runs it; every timed loop below calls these.
    let search = |query: &[f32]| -> anyhow::Result<Vec<u64>> {
        let hits = shard.search_at(query, retrieve_k, &[], false, ef)?;
        Ok(hits.iter().map(|hit| hit.0).collect())
    };
    let rank = |ids: &[u64]| -> anyhow::Result<()> {
        let scores = ranker.score(&user, ids, false)?;
        anyhow::ensure!(scores.scores.len() == ids.len(), "a score per candidate");
        Ok(())
    };
    // Each stage over every query at once, timed as a whole, twice (the first
    // pass warms caches): the CPU time of every thread of this process.
    let (mut search_s, mut rank_s) = (0.0, 0.0);
    for _pass in 0..2 {
        let started = cpu_time::ProcessTime::now();
        let candidates = queries
            .chunks_exact(dim)
            .map(search)
            .collect::<anyhow::Result<Vec<_>>>()?;
        search_s = started.elapsed().as_secs_f64();
        let started = cpu_time::ProcessTime::now();
        for ids in &candidates {
            rank(ids)?;
        }
        rank_s = started.elapsed().as_secs_f64();
    }
    let started = cpu_time::ProcessTime::now();
    for query in queries.chunks_exact(dim) {
        rank(&search(query)?)?;
    }
    let per_request_s = started.elapsed().as_secs_f64();
    let n = (queries.len() / dim) as f64;
    Ok(Kernels {
        queries: queries.len() / dim,
        ef,
        search_cpu_us: search_s / n * 1e6,
        rank_cpu_us: rank_s / n * 1e6,
        per_request_cpu_us: per_request_s / n * 1e6,
    })
}

/// CPU time of every thread of process `pid` so far, from each thread's
/// `schedstat` ([`crate::stats::schedstat_nanos`]): for another process, over
/// a run of seconds; this process's kernels are timed with
/// `CLOCK_PROCESS_CPUTIME_ID` instead.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut nanos = 0u64;
    for task in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended meanwhile has no file left: its time is lost.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        nanos += crate::stats::schedstat_nanos(&stat)
            .with_context(|| format!("{} is not a schedstat", path.display()))?;
    }
    Ok(nanos as f64 * 1e-9)
}

async fn connect(addr: std::net::SocketAddr, n: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..n {
        channels.push(crate::process_cluster::channel(addr, None).await?);
    }
    Ok(channels)
}

/// The requests sent: the held-out queries in turn, one user's features.
#[derive(Clone)]
struct Requests {
    queries: Arc<Vec<f32>>,
    dim: usize,
    k: u32,
    retrieve_k: u32,
    features: Arc<HashMap<String, FeatureValue>>,
}

impl Requests {
    fn get(&self, i: usize) -> RecommendRequest {
        let n = self.queries.len() / self.dim;
        let row = i % n;
        RecommendRequest {
            query: Some(Query::QueryEmbedding(QueryEmbedding {
                values: self.queries[row * self.dim..(row + 1) * self.dim].to_vec(),
            })),
            k: self.k,
            retrieve_k: self.retrieve_k,
            user_features: (*self.features).clone(),
            options: Some(RecommendOptions::default()),
            ..Default::default()
        }
    }
}

/// What one run saw.
#[derive(Debug, Default)]
struct Run {
    latencies_us: Vec<f64>,
    errors: u64,
    /// Answers that came back unranked (the ranking stage failed).
    unranked: u64,
    /// CPU seconds each server process spent during the run.
    cpu_s: Vec<f64>,
    /// Sums of the answers' stage timings (see [`Run::stages`]).
    stage_us: [f64; 4],
}

impl Run {
    fn qps(&self, seconds: f64) -> f64 {
        self.latencies_us.len() as f64 / seconds
    }

    fn cpu_us_per_request(&self) -> f64 {
        self.cpu_s.iter().sum::<f64>() / self.latencies_us.len().max(1) as f64 * 1e6
    }

    /// Per process, in the cluster's start order (retrieval node, ranking node, gateway).
    fn cpu_us_by_process(&self) -> Vec<f64> {
        let n = self.latencies_us.len().max(1) as f64;
        self.cpu_s.iter().map(|s| s / n * 1e6).collect()
    }

    fn record(&mut self, outcome: Result<Answer, tonic::Status>) {
        match outcome {
            Ok(answer) => {
                self.latencies_us.push(answer.us);
                self.unranked += u64::from(!answer.ranked);
                let t = answer.timings;
                for (sum, us) in self.stage_us.iter_mut().zip([
                    t.total_us,
                    t.retrieval_us,
                    t.search_us,
                    t.ranking_us,
                ]) {
                    *sum += us as f64;
                }
            }
            Err(_) => self.errors += 1,
        }
    }

    /// The mean wall time of the gateway's stages, as its answers report them:
    /// whole request, retrieval, the shard's time inside its index, ranking.
    fn stages(&self) -> serde_json::Value {
        let n = self.latencies_us.len().max(1) as f64;
        let [total, retrieval, search, ranking] = self.stage_us.map(|sum| sum / n);
        serde_json::json!({
            "gateway_total_us": total, "retrieval_us": retrieval,
            "in_index_search_us": search, "ranking_us": ranking,
        })
    }

    fn absorb(&mut self, other: Run) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.unranked += other.unranked;
        for (sum, more) in self.stage_us.iter_mut().zip(other.stage_us) {
            *sum += more;
        }
    }
}

/// One answer: its latency at the client, whether it was ranked, and the
/// gateway's stage timings.
struct Answer {
    us: f64,
    ranked: bool,
    timings: StageTimings,
}

async fn call(
    mut client: GatewayServiceClient<Channel>,
    request: RecommendRequest,
) -> Result<Answer, tonic::Status> {
    let started = Instant::now();
    let answer = client.recommend(request).await?.into_inner();
    Ok(Answer {
        us: started.elapsed().as_secs_f64() * 1e6,
        ranked: answer.ranked,
        timings: answer.timings.unwrap_or_default(),
    })
}

fn cpu_of(pids: &[u32]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|&pid| process_cpu_seconds(pid)).collect()
}

/// `args.concurrency` clients, each one request after the other, for
/// `args.seconds` after a second of warm-up.
async fn closed_loop(
    channels: &[Channel],
    requests: &Requests,
    pids: &[u32],
    args: &TwoStageArgs,
) -> anyhow::Result<Run> {
    let warm_until = Instant::now() + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs_f64(args.seconds);
    let clients: Vec<_> = (0..args.concurrency.max(1))
        .map(|client| {
            let channel = channels[client % channels.len()].clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut run = Run::default();
                let mut i = client * 7919;
                while Instant::now() < stop_at {
                    i += 1;
                    let outcome =
                        call(GatewayServiceClient::new(channel.clone()), requests.get(i)).await;
                    let done = Instant::now();
                    if done >= warm_until && done <= stop_at {
                        run.record(outcome);
                    }
                }
                run
            })
        })
        .collect();
    tokio::time::sleep_until(warm_until.into()).await;
    let before = cpu_of(pids)?;
    tokio::time::sleep_until(stop_at.into()).await;
    let after = cpu_of(pids)?;
    let mut total = Run::default();
    for client in clients {
        total.absorb(client.await?);
    }
    total.latencies_us.sort_by(f64::total_cmp);
    total.cpu_s = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(total)
}

/// Requests sent at `rate` per second whatever the answers, for `seconds`
/// after a second of warm-up at the same rate.
async fn open_loop(
    channels: &[Channel],
    requests: &Requests,
    pids: &[u32],
    rate: f64,
    seconds: f64,
) -> anyhow::Result<Run> {
    anyhow::ensure!(rate > 0.0, "no request was answered at saturation");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let warm_until = started + Duration::from_secs(1);
    let stop_at = warm_until + Duration::from_secs_f64(seconds);
    let mut calls = Vec::new();
    let mut before = None;
    let mut i = 0usize;
    loop {
        let at = started + interval.mul_f64(i as f64);
        if at >= stop_at {
            break;
        }
        tokio::time::sleep_until(at).await;
        if before.is_none() && at >= warm_until {
            before = Some(cpu_of(pids)?);
        }
        let client = GatewayServiceClient::new(channels[i % channels.len()].clone());
        let measured = at >= warm_until;
        calls.push((measured, tokio::spawn(call(client, requests.get(i)))));
        i += 1;
    }
    let mut run = Run::default();
    for (measured, call) in calls {
        let outcome = call.await?;
        if measured {
            run.record(outcome);
        }
    }
    let after = cpu_of(pids)?;
    run.latencies_us.sort_by(f64::total_cmp);
    let before = before.context("no request in the measured part")?;
    run.cpu_s = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Ok(run)
}
