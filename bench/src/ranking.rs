//! Ranking latency of the TFRS DCN tutorial ranker, in-process, one thread: the
//! recsys side of `bench/tfrs_dcn_timing.py`.
//!
//! The model has the tutorial's shape: six categorical features with MovieLens
//! 100K vocabulary sizes, 32-d embeddings (x0 = 192), one full-rank cross layer,
//! Dense 192 → Dense 192 → 1, random weights. Each call scores N candidate
//! movies of one user through `Ranker::score`, feature lookup included.
//! candle's products use one thread, as a ranking node's do and as TFRS's side
//! uses one intra-op thread (`RAYON_NUM_THREADS` overrides it).
//!
//! `--grpc` measures the same calls through a ranking node's `Rank`: the ranker
//! goes into a bundle with `attach_ranker` (the path an exported TFRS ranker
//! takes), a ranking node serves it on loopback in this process with one scoring
//! thread, and a client sends the calls one after another; the time is the
//! client's, protobuf and HTTP/2 included. A `grpc.health.v1` check on the same
//! channel, timed first, gives the floor of any call. `--concurrency` adds runs
//! with that many clients at once, for throughput.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use recsys_model::dcn_v2::Head;
use recsys_model::ranker::{FeatureSpec, Side};
use recsys_model::{
    Activation, DcnConfig, Ranker, RankerConfig, RankerFiles, Structure, UserContext,
};

use crate::stats::percentile;

/// Options of `recsys-bench ranking`.
#[derive(Debug, Clone, Args)]
pub struct RankingArgs {
    /// Where to write the benchmark ranker.
    #[arg(long, default_value = "target/bench-ranker")]
    pub work: PathBuf,
    /// Candidates per call.
    #[arg(long, value_delimiter = ',', default_value = "200,1000")]
    pub batch: Vec<usize>,
    /// Timed calls per batch size (after 20 warm-up calls).
    #[arg(long, default_value_t = 300)]
    pub calls: usize,
    /// Through a ranking node's gRPC `Rank` instead of in-process.
    #[arg(long)]
    pub grpc: bool,
    /// With --grpc: clients at once (each runs --calls calls per batch size).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub concurrency: Vec<usize>,
    /// In-process: compute the first cross product from x0 in every call, as
    /// without the per-item precomputation.
    #[arg(long)]
    pub no_precompute: bool,
    /// In-process: keep the precomputed first product but not the fold of the cross
    /// layer into the first deep layer.
    #[arg(long)]
    pub no_fold: bool,
    /// With --grpc: the node's scoring threads.
    #[arg(long, default_value_t = 1)]
    pub node_threads: usize,
    /// With --grpc: the node's --max-batch-rows (0 = one request per pass).
    #[arg(long, default_value_t = recsys_ranking_node::RankingConfig::new("").max_batch_rows)]
    pub max_batch_rows: usize,
}

/// (name, side, vocabulary size) of the tutorial's features.
const FEATURES: [(&str, Side, usize); 6] = [
    ("movie_id", Side::Item, 1682),
    ("user_id", Side::User, 943),
    ("user_gender", Side::User, 2),
    ("user_zip_code", Side::User, 795),
    ("user_occupation_text", Side::User, 21),
    ("bucketized_user_age", Side::User, 7),
];
const DIM: usize = 32;

/// Writes the tutorial-shaped ranker into `work`, with an item table that
/// gives each of `items` a movie (id 1 to 1682 are the movies themselves;
/// larger ids cycle through them).
pub(crate) fn write_ranker(
    work: &std::path::Path,
    items: impl IntoIterator<Item = u64>,
) -> anyhow::Result<RankerFiles> {
    std::fs::create_dir_all(work.join("vocab"))?;
    // candle cannot seed its CPU generator; the values do not change the timing.
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut features = Vec::new();
    for (name, side, size) in FEATURES {
        let values: Vec<String> = (1..=size).map(|i| format!("{name}-{i}")).collect();
        std::fs::write(
            work.join(recsys_bundle::layout::vocabulary_file(name)),
            values.join("\n") + "\n",
        )?;
        tensors.insert(
            format!("embedding.{name}"),
            Tensor::randn(0f32, 0.05, (size + 1, DIM), &device)?,
        );
        features.push(FeatureSpec::categorical(
            name,
            side,
            &recsys_bundle::layout::vocabulary_file(name),
            DIM,
        ));
    }
    let width = DIM * FEATURES.len();
    let dense = |out: usize, inp: usize| {
        Tensor::randn(0f32, (2.0 / inp as f64) as f32, (out, inp), &device)
    };
    tensors.insert("cross.0.weight".into(), dense(width, width)?);
    tensors.insert(
        "cross.0.bias".into(),
        Tensor::zeros(width, DType::F32, &device)?,
    );
    tensors.insert("deep.0.weight".into(), dense(192, width)?);
    tensors.insert(
        "deep.0.bias".into(),
        Tensor::zeros(192, DType::F32, &device)?,
    );
    tensors.insert("deep.1.weight".into(), dense(192, 192)?);
    tensors.insert(
        "deep.1.bias".into(),
        Tensor::zeros(192, DType::F32, &device)?,
    );
    tensors.insert("head.weight".into(), dense(1, 192)?);
    tensors.insert("head.bias".into(), Tensor::zeros(1, DType::F32, &device)?);
    candle_core::safetensors::save(&tensors, work.join("weights.safetensors"))?;
    let config = RankerConfig {
        version: "tfrs-dcn-tutorial-shape".into(),
        dcn: DcnConfig {
            input_dim: width,
            cross_layers: 1,
            projection_dim: None,
            diag_scale: 0.0,
            use_bias: true,
            cross_activation: Activation::Linear,
            structure: Structure::Stacked,
            deep_units: vec![192, 192],
            deep_activation: Activation::Relu,
            head: Head::Regression,
            experts: None,
            heads: Vec::new(),
        },
        features,
    };
    std::fs::write(
        work.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut table = String::from("item_id\tmovie_id\n");
    for item in items {
        let movie = item.saturating_sub(1) % MOVIES + 1;
        table.push_str(&format!("{item}\tmovie_id-{movie}\n"));
    }
    std::fs::write(work.join("item_features.tsv"), table)?;
    Ok(RankerFiles {
        bundle_dir: work.to_path_buf(),
        config: work.join("config.json"),
        weights: work.join("weights.safetensors"),
        item_features: work.join("item_features.tsv"),
        user_features: None,
    })
}

/// The user of every call.
pub(crate) const USER: [(&str, &str); 4] = [
    ("user_gender", "user_gender-1"),
    ("user_zip_code", "user_zip_code-100"),
    ("user_occupation_text", "user_occupation_text-5"),
    ("bucketized_user_age", "bucketized_user_age-3"),
];
const USER_ID: &str = "user_id-42";

/// [`USER`] as a request's `user_features`.
pub(crate) fn user_features() -> HashMap<String, recsys_proto::v1::FeatureValue> {
    use recsys_proto::v1::{FeatureValue, feature_value::Kind};
    USER.into_iter()
        .map(|(k, v)| {
            let value = FeatureValue {
                kind: Some(Kind::StringValue(v.into())),
            };
            (k.to_string(), value)
        })
        .collect()
}

/// `batch` candidate ids, cycling through the catalogue.
fn candidates(batch: usize) -> Vec<u64> {
    (1..=batch as u64).map(|i| (i - 1) % MOVIES + 1).collect()
}

const MOVIES: u64 = 1682;

/// Runs the benchmark and prints one JSON line per batch size.
pub fn run(args: RankingArgs) -> anyhow::Result<()> {
    let files = write_ranker(&args.work.join("ranker"), 1..=MOVIES)
        .context("writing the benchmark ranker")?;
    if args.grpc {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(run_grpc(args, files));
    }
    let mut ranker = Ranker::load(&files)?;
    if args.no_precompute {
        ranker = ranker.without_precomputation();
    }
    if args.no_fold {
        ranker = ranker.without_fold();
    }
    let user = UserContext {
        user_id: USER_ID.into(),
        features: USER
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect(),
    };
    println!(
        "{}",
        serde_json::json!({"engine": "recsys", "event": "model", "x0_dim": DIM * FEATURES.len(),
            "threads": candle_core::utils::get_num_threads(), "precomputed": ranker.precomputed(),
            "folded": ranker.folded()})
    );
    for &batch in &args.batch {
        let items = candidates(batch);
        for _ in 0..20 {
            ranker.score(&user, &items, false)?;
        }
        let mut times = Vec::with_capacity(args.calls);
        for _ in 0..args.calls {
            let started = Instant::now();
            let scores = ranker.score(&user, &items, false)?;
            times.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(scores.scores.len() == batch, "wrong number of scores");
        }
        report(
            serde_json::json!({"engine": "recsys", "batch": batch}),
            &mut times,
        );
    }
    Ok(())
}

/// Prints `fields` with the median, p90 and mean of `times` (ms).
fn report(mut fields: serde_json::Value, times: &mut [f64]) {
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    times.sort_by(f64::total_cmp);
    fields["calls"] = times.len().into();
    fields["median_ms"] = percentile(times, 0.5).into();
    fields["p90_ms"] = percentile(times, 0.9).into();
    fields["mean_ms"] = mean.into();
    println!("{fields}");
}

/// A bundle of the catalogue's movies (tiny vectors: only the ranker matters here)
/// with the benchmark ranker attached.
fn write_bundle(work: &std::path::Path, ranker: &RankerFiles) -> anyhow::Result<PathBuf> {
    let dir = work.join("bundle");
    let _ = std::fs::remove_dir_all(&dir);
    let ids: Vec<u64> = (1..=MOVIES).collect();
    let data: Vec<f32> = ids
        .iter()
        .flat_map(|&id| (0..4).map(move |d| ((id * 4 + d) as f32).sin()))
        .collect();
    let items = recsys_bundle_builder::ItemVectors::new(&dir, 4, data, Some(ids.clone()), None)?;
    let options = recsys_bundle_builder::BuildOptions {
        params: recsys_bundle::IndexParams::default(),
        shard_count: 1,
        version: "bench-ranking".into(),
        source: "bench".into(),
        threads: 1,
    };
    recsys_bundle_builder::build_bundle(&dir, &items, None, &options, &|_| {})?;
    attach(&dir, ranker, &ids)?;
    Ok(dir)
}

/// Puts the ranker written by [`write_ranker`] into the bundle at `dir`, whose
/// items are `ids`.
pub(crate) fn attach(
    dir: &std::path::Path,
    ranker: &RankerFiles,
    ids: &[u64],
) -> anyhow::Result<()> {
    let ranker_dir = ranker
        .config
        .parent()
        .context("the ranker config has no directory")?;
    recsys_bundle_builder::attach_ranker(dir, ranker_dir, ids)?;
    Ok(())
}

/// Forward passes the node in this process has run, and their total seconds (its
/// `recsys_ranking_score_seconds` histogram), to tell the node's compute from the
/// transport around it. Warm-up calls are counted too.
fn node_passes() -> (f64, f64) {
    let text = recsys_server::metrics::render();
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("recsys_ranking_score_seconds_count"),
        value("recsys_ranking_score_seconds_sum"),
    )
}

async fn run_grpc(args: RankingArgs, files: RankerFiles) -> anyhow::Result<()> {
    use recsys_proto::v1::RankRequest;
    use recsys_proto::v1::ranking_service_client::RankingServiceClient;

    let bundle = write_bundle(&args.work, &files)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = recsys_ranking_node::RankingConfig::new(&bundle);
    config.threads = args.node_threads;
    config.max_batch_rows = args.max_batch_rows;
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(recsys_ranking_node::run(listener, config, token.clone()));
    recsys_local_cluster::wait_until_serving(addr, std::time::Duration::from_secs(60))
        .await
        .map_err(|(waited, why)| {
            anyhow::anyhow!("ranking node not serving after {waited:?}: {why}")
        })?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    println!(
        "{}",
        serde_json::json!({"engine": "recsys-grpc", "event": "model", "x0_dim": DIM * FEATURES.len(),
            "node_threads": args.node_threads, "max_batch_rows": args.max_batch_rows, "rayon_threads": candle_core::utils::get_num_threads()})
    );
    let request = |batch: usize| RankRequest {
        bundle_version: String::new(),
        user_id: USER_ID.into(),
        user_features: user_features(),
        item_ids: candidates(batch),
        min_log_revision: 0,
        head_weights: Default::default(),
        ranker_variant: String::new(),
    };
    // The floor of any call on this channel: a `grpc.health.v1` check (no
    // payload, no hand-off to a scoring thread), timed the same way.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let check = tonic_health::pb::HealthCheckRequest::default();
    for _ in 0..20 {
        health.check(check.clone()).await?;
    }
    let mut times = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let call = Instant::now();
        health.check(check.clone()).await?;
        times.push(call.elapsed().as_secs_f64() * 1e3);
    }
    report(
        serde_json::json!({"engine": "recsys-grpc", "event": "health_rtt"}),
        &mut times,
    );
    for &batch in &args.batch {
        for &clients in &args.concurrency {
            let mut tasks = Vec::with_capacity(clients);
            for _ in 0..clients {
                let mut client = RankingServiceClient::new(channel.clone());
                let request = request(batch);
                let calls = args.calls;
                tasks.push(tokio::spawn(async move {
                    for _ in 0..20 {
                        client.rank(request.clone()).await?;
                    }
                    let mut times = Vec::with_capacity(calls);
                    let timed = Instant::now();
                    for _ in 0..calls {
                        let call = Instant::now();
                        let scores = client.rank(request.clone()).await?.into_inner().scores;
                        times.push(call.elapsed().as_secs_f64() * 1e3);
                        anyhow::ensure!(scores.len() == batch, "wrong number of scores");
                    }
                    anyhow::Ok((times, timed.elapsed().as_secs_f64()))
                }));
            }
            let passes_before = node_passes();
            // Throughput over the longest client's timed calls (warm-up left out).
            let mut times = Vec::new();
            let mut seconds = 0f64;
            for task in tasks {
                let (client_times, client_seconds) = task.await??;
                times.extend(client_times);
                seconds = seconds.max(client_seconds);
            }
            let calls_per_s = times.len() as f64 / seconds;
            let (passes, pass_seconds) = node_passes();
            let node_pass_mean_ms =
                (pass_seconds - passes_before.1) * 1e3 / (passes - passes_before.0).max(1.0);
            report(
                serde_json::json!({"engine": "recsys-grpc", "batch": batch, "clients": clients,
                    "calls_per_s": calls_per_s, "candidates_per_s": calls_per_s * batch as f64,
                    "node_pass_mean_ms": node_pass_mean_ms}),
                &mut times,
            );
        }
    }
    token.cancel();
    server.await??;
    Ok(())
}
