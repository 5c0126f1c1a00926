//! One client, one request at a time, through a gateway over GloVe-50 cut into
//! 1 and N shards (every server its own process): recall@100 against the exact
//! top-100 and the rate, per recall target, alternated pass by pass; and where
//! a request's time goes (client, gateway, hop to the shards, the search).
//!
//! Why: issue 21 found a 4-shard cluster answering one client at 0.61x the
//! 1-shard cluster's rate at a higher recall than asked (every shard searched
//! with the bundle's one beam); with the builder's measured depths each shard
//! searches only as deep as the recall target needs at the `k` it is asked.

use std::time::Instant;

use clap::Args;
use recsys_bundle::{IndexParams, Quantization};
use recsys_proto::v1::gateway_service_client::GatewayServiceClient as GatewayClient;
use tonic::transport::Channel;

use crate::glove_split::{GloveSplit, K, glove_bundle};
use crate::stats::percentile;
use recsys_local_cluster::{ProcessCluster, ProcessOptions};
use recsys_retrieval_node::LoadMode;

/// Options of `recsys-bench shards`.
#[derive(Debug, Clone, Args)]
pub struct ShardsArgs {
    #[command(flatten)]
    pub split: GloveSplit,
    /// Shard counts: one bundle and one cluster each, side by side.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    pub shards: Vec<u32>,
    /// Recall targets: one cluster per shard count and target, its gateway
    /// started with `--recall-target T`; 0 is the bundle's fixed beam, what
    /// every search used before depths were measured.
    #[arg(long, value_delimiter = ',', default_value = "0,0.95")]
    pub recall_targets: Vec<f32>,
    /// How the retrieval nodes open their shards: one cluster per shard
    /// count, target and mode (`coded` walks the graph on 4-bit codes).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "packed")]
    pub load_modes: Vec<LoadMode>,
    /// Passes over the queries per cluster and target, alternated.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Rebuild the bundles even if ones with the same parameters exist.
    #[arg(long)]
    pub rebuild: bool,
}

/// One request's measurements.
#[derive(Default)]
struct Sample {
    client_us: f64,
    total_us: f64,
    retrieval_us: f64,
    search_us: f64,
    search_ef: f64,
    recalled: usize,
}

/// What one (cluster, target) gathered over its passes.
struct Config {
    shards: u32,
    target: f32,
    mode: LoadMode,
    client: GatewayClient<Channel>,
    samples: Vec<Sample>,
    rates: Vec<f64>,
}

/// Runs the benchmark: a table on stderr, one JSON line per configuration.
pub async fn run(args: ShardsArgs) -> anyhow::Result<()> {
    let split = args.split.open()?;
    let defaults = IndexParams::default();
    let mut clusters = Vec::new();
    let mut configs = Vec::new();
    for &shards in &args.shards {
        let (bundle, built) = glove_bundle(
            &args.split.work,
            split.items(),
            split.dim,
            Quantization::F32,
            (defaults.connectivity, defaults.expansion_add),
            shards,
            args.rebuild,
        )?;
        if let Some(seconds) = built {
            eprintln!("built {shards} shard(s) in {seconds:.1} s");
        }
        for &target in &args.recall_targets {
            for &mode in &args.load_modes {
                let options = ProcessOptions {
                    gateway_recall_target: Some(target),
                    // The retrieval nodes read it; the other servers ignore it.
                    env: vec![("RECSYS_LOAD_MODE".into(), mode_name(mode))],
                    ..ProcessOptions::default()
                };
                let cluster = ProcessCluster::start(&bundle, &options).await?;
                let channel = crate::process_cluster::channel(cluster.gateway_addr, None).await?;
                clusters.push(cluster);
                configs.push(Config {
                    shards,
                    target,
                    mode,
                    client: GatewayClient::new(channel),
                    samples: Vec::new(),
                    rates: Vec::new(),
                });
            }
        }
    }
    let queries: Vec<&[f32]> = split.queries().chunks_exact(split.dim).collect();
    // Warm every cluster's page cache and connections before timing.
    for config in &mut configs {
        for query in queries.iter().take(200) {
            ask(&mut config.client, query).await?;
        }
    }
    let count = configs.len();
    for round in 0..args.rounds {
        for i in 0..count {
            let config = &mut configs[(i + round) % count];
            let started = Instant::now();
            for (query, truth) in queries.iter().zip(&split.truth) {
                let (mut sample, ids) = ask(&mut config.client, query).await?;
                sample.recalled = ids
                    .iter()
                    .filter(|id| truth.contains(&(**id as u32)))
                    .count();
                config.samples.push(sample);
            }
            config
                .rates
                .push(queries.len() as f64 / started.elapsed().as_secs_f64());
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    report(&configs, queries.len() * args.rounds);
    // Dropping a cluster stops its processes.
    drop(clusters);
    Ok(())
}

/// One request: k = 100 for `query`, unranked, at the gateway's recall
/// target; with the answer's ids.
async fn ask(
    client: &mut GatewayClient<Channel>,
    query: &[f32],
) -> anyhow::Result<(Sample, Vec<u64>)> {
    let request = crate::scale::request(query);
    let started = Instant::now();
    let response = client.recommend(request).await?.into_inner();
    let client_us = started.elapsed().as_secs_f64() * 1e6;
    let ids = response.items.iter().map(|item| item.item_id).collect();
    let timings = response.timings.unwrap_or_default();
    let sample = Sample {
        client_us,
        total_us: timings.total_us as f64,
        retrieval_us: timings.retrieval_us as f64,
        search_us: timings.search_us as f64,
        search_ef: f64::from(timings.search_ef),
        recalled: 0,
    };
    Ok((sample, ids))
}

/// `mode` as the nodes' `--load-mode` spells it.
fn mode_name(mode: LoadMode) -> String {
    use clap::ValueEnum;
    mode.to_possible_value().map_or_else(
        || format!("{mode:?}").to_lowercase(),
        |v| v.get_name().to_owned(),
    )
}

/// The median of `values`.
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    percentile(&sorted, 0.5)
}

fn report(configs: &[Config], answers: usize) {
    eprintln!(
        "{:>6} {:>6} {:>7} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "shards",
        "target",
        "mode",
        "recall",
        "QPS",
        "vs 1",
        "client",
        "gateway",
        "retrieval",
        "search",
        "beam"
    );
    let one_shard = |target: f32, mode: LoadMode| {
        configs
            .iter()
            .find(|c| c.shards == 1 && c.target == target && c.mode == mode)
            .map(|c| median(c.rates.iter().copied()))
    };
    for config in configs {
        let recall =
            config.samples.iter().map(|s| s.recalled).sum::<usize>() as f64 / (answers * K) as f64;
        let rate = median(config.rates.iter().copied());
        let versus = one_shard(config.target, config.mode).map(|one| rate / one);
        let p50 = |f: fn(&Sample) -> f64| median(config.samples.iter().map(f));
        let (client, gateway, retrieval, search) = (
            p50(|s| s.client_us),
            p50(|s| s.total_us),
            p50(|s| s.retrieval_us),
            p50(|s| s.search_us),
        );
        let beam = config.samples.iter().map(|s| s.search_ef).sum::<f64>()
            / config.samples.len().max(1) as f64;
        eprintln!(
            "{:>6} {:>6} {:>7} {:>9.4} {:>8.0} {:>7} {:>7.0}us {:>7.0}us {:>7.0}us {:>7.0}us {:>9.1}",
            config.shards,
            config.target,
            mode_name(config.mode),
            recall,
            rate,
            versus.map_or("-".into(), |v| format!("{v:.3}")),
            client,
            gateway,
            retrieval,
            search,
            beam
        );
        println!(
            "{}",
            serde_json::json!({
                "shards": config.shards, "recall_target": config.target,
                "load_mode": mode_name(config.mode),
                "recall_at_100": recall, "qps_median": rate, "qps_passes": config.rates,
                "qps_vs_one_shard": versus,
                "p50_us": {"client": client, "gateway_total": gateway,
                           "gateway_retrieval": retrieval, "slowest_shard_search": search},
                "mean_widest_beam": beam,
            })
        );
    }
}
