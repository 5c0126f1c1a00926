//! Ranking latency of the TFRS DCN tutorial ranker, in-process, one thread: the
//! recsys side of `bench/tfrs_dcn_timing.py`.
//!
//! The model has the tutorial's shape: six categorical features with MovieLens
//! 100K vocabulary sizes, 32-d embeddings (x0 = 192), one full-rank cross layer,
//! Dense 192 → Dense 192 → 1, random weights. Each call scores N candidate
//! movies of one user through `Ranker::score`, feature lookup included.
//! Run with `RAYON_NUM_THREADS=1` so candle's matmuls use one thread, as TFRS's
//! side uses one intra-op thread.

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

fn write_ranker(work: &std::path::Path) -> anyhow::Result<RankerFiles> {
    std::fs::create_dir_all(work.join("vocab"))?;
    // candle cannot seed its CPU generator; the values do not change the timing.
    let device = Device::Cpu;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut features = Vec::new();
    for (name, side, size) in FEATURES {
        let values: Vec<String> = (1..=size).map(|i| format!("{name}-{i}")).collect();
        std::fs::write(
            work.join(format!("vocab/{name}.txt")),
            values.join("\n") + "\n",
        )?;
        tensors.insert(
            format!("embedding.{name}"),
            Tensor::randn(0f32, 0.05, (size + 1, DIM), &device)?,
        );
        features.push(FeatureSpec {
            name: name.into(),
            side,
            vocabulary: format!("vocab/{name}.txt"),
            dim: DIM,
        });
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
        },
        features,
    };
    std::fs::write(
        work.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let mut items = String::from("item_id\tmovie_id\n");
    for movie in 1..=1682 {
        items.push_str(&format!("{movie}\tmovie_id-{movie}\n"));
    }
    std::fs::write(work.join("item_features.tsv"), items)?;
    Ok(RankerFiles {
        bundle_dir: work.to_path_buf(),
        config: work.join("config.json"),
        weights: work.join("weights.safetensors"),
        item_features: work.join("item_features.tsv"),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

/// Runs the benchmark and prints one JSON line per batch size.
pub fn run(args: RankingArgs) -> anyhow::Result<()> {
    let files = write_ranker(&args.work).context("writing the benchmark ranker")?;
    let ranker = Ranker::load(&files)?;
    let user = UserContext {
        user_id: "user_id-42".into(),
        features: [
            ("user_gender", "user_gender-1"),
            ("user_zip_code", "user_zip_code-100"),
            ("user_occupation_text", "user_occupation_text-5"),
            ("bucketized_user_age", "bucketized_user_age-3"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
    };
    println!(
        "{}",
        serde_json::json!({"engine": "recsys", "event": "model", "x0_dim": DIM * FEATURES.len(),
            "threads": candle_core::utils::get_num_threads()})
    );
    for &batch in &args.batch {
        let items: Vec<u64> = (1..=batch as u64).map(|i| (i - 1) % 1682 + 1).collect();
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
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        times.sort_by(f64::total_cmp);
        println!(
            "{}",
            serde_json::json!({"engine": "recsys", "batch": batch, "calls": args.calls,
                "median_ms": percentile(&times, 0.5), "p90_ms": percentile(&times, 0.9), "mean_ms": mean})
        );
    }
    Ok(())
}
