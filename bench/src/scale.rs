//! Scale: a synthetic clustered catalog of 1M to 10M items (64-d by default),
//! built into 1, 2, 4 and 8 shards and served with every server its own
//! process: build time, resident memory per item against a written formula,
//! cold start, recall@100 against the exact top-100, p50/p99 at one request
//! in flight and QPS at saturation; JSON lines and a PNG of how they grow.
//!
//! The catalog is the bundle builder's synthetic generator (Gaussian clusters
//! around random centres, as real embeddings cluster by topic) with every
//! vector normalized, so inner product ranks as cosine: on the unnormalized
//! catalog HNSW's inner-product graph stops improving below full recall (see
//! the history of issue 21), which would measure the generator, not scale.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use recsys_bundle::{IndexParams, Metric};
use recsys_bundle_builder::synthetic::{SyntheticSpec, generate};
use recsys_bundle_builder::{BuildEvent, BuildOptions, build_bundle};
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_proto::v1::recommend_request::Query;
use recsys_proto::v1::{QueryEmbedding, RecommendOptions, RecommendRequest};
use serde_json::json;
use tonic::transport::Channel;

use crate::glove_split::{K, ground_truth_among};
use crate::stats::percentile;
use recsys_local_cluster::{ProcessCluster, ProcessOptions};

/// Options of `recsys-bench scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Catalog sizes (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    pub items: Vec<usize>,
    /// Shard counts each catalog is built into.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub shards: Vec<u32>,
    /// Embedding dimensions.
    #[arg(long, default_value_t = 64)]
    pub dim: usize,
    /// Graph degree (HNSW `M`) of the shards. (A wider graph was once tried for
    /// the recall of 5M-item shards and did not help; the insertion order did:
    /// docs/benchmarks.md, "Scale".)
    #[arg(long, default_value_t = IndexParams::default().connectivity)]
    pub connectivity: usize,
    /// Clusters of the synthetic catalog.
    #[arg(long, default_value_t = 1000)]
    pub clusters: usize,
    /// Queries (held-out points of the same clusters) for recall and latency.
    #[arg(long, default_value_t = 500)]
    pub queries: usize,
    /// Requests in flight for the saturation rate.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Seconds of the saturation run.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Where the bundles, `scale.json` and `scale.png` go.
    #[arg(long, default_value = "target/bench-scale")]
    pub work: PathBuf,
    /// Rebuild bundles that exist.
    #[arg(long)]
    pub rebuild: bool,
    /// Only redraw `scale.png` from the `scale.json` a run left in `--work`.
    #[arg(long)]
    pub replot: bool,
}

/// What one (catalog, shards) measured.
#[derive(Debug, Clone)]
struct Point {
    items: usize,
    shards: u32,
    /// The graph degree the shards were built with.
    connectivity: usize,
    build_s: Option<f64>,
    file_bytes: u64,
    rss_bytes: u64,
    formula_bytes: u64,
    cold_start_ms: f64,
    recall: f64,
    p50_us: f64,
    p99_us: f64,
    qps: f64,
}

/// A [`Point`] read back from one `scale.json` entry.
fn point_of(line: &serde_json::Value) -> anyhow::Result<Point> {
    let number = |key: &str| {
        line[key]
            .as_f64()
            .with_context(|| format!("scale.json: {key} is missing or not a number"))
    };
    Ok(Point {
        items: number("items")? as usize,
        shards: number("shards")? as u32,
        // Entries written before the flag existed were all built at M 32.
        connectivity: line["connectivity"]
            .as_u64()
            .map_or(IndexParams::default().connectivity, |m| m as usize),
        build_s: line["build_s"].as_f64(),
        file_bytes: number("file_bytes")? as u64,
        rss_bytes: number("rss_bytes")? as u64,
        formula_bytes: number("formula_bytes")? as u64,
        cold_start_ms: number("cold_start_ms")?,
        recall: number("recall_at_100")?,
        p50_us: number("p50_us")?,
        p99_us: number("p99_us")?,
        qps: number("qps")?,
    })
}

/// Unit-normalizes each row of `data`.
fn normalize(data: &mut [f32], dim: usize) {
    for row in data.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

/// Runs every catalog size and shard count; JSON lines on stdout.
pub async fn run(args: ScaleArgs) -> anyhow::Result<()> {
    if args.replot {
        let data = args.work.join("scale.json");
        let text = std::fs::read_to_string(&data)
            .with_context(|| format!("reading {} (run without --replot first)", data.display()))?;
        let lines: Vec<serde_json::Value> = serde_json::from_str(&text)?;
        let points = lines
            .iter()
            .map(point_of)
            .collect::<anyhow::Result<Vec<_>>>()?;
        return plot(&args.work.join("scale.png"), &points);
    }
    std::fs::create_dir_all(&args.work)?;
    let mut points = Vec::new();
    let mut lines = Vec::new();
    for &items in &args.items {
        eprintln!("generating {items} items of {} dimensions", args.dim);
        let spec = SyntheticSpec {
            items,
            users: args.queries,
            dimensions: args.dim,
            clusters: args.clusters,
            seed: 21,
        };
        let mut catalog = generate(&spec)?;
        catalog.items.names = None;
        normalize(&mut catalog.items.data, args.dim);
        let mut queries = catalog.users.data().to_vec();
        normalize(&mut queries, args.dim);
        eprintln!("exact top-{K} of {} queries", args.queries);
        let rows: Vec<u64> = (0..items as u64).collect();
        let truth = ground_truth_among(&catalog.items.data, &queries, args.dim, &rows);
        for &shards in &args.shards {
            let point = measure(&args, &catalog.items, &queries, &truth, items, shards).await?;
            let line = json!({
                "items": point.items, "shards": point.shards, "dim": args.dim,
                "connectivity": point.connectivity,
                "build_s": point.build_s, "file_bytes": point.file_bytes,
                "rss_bytes": point.rss_bytes, "formula_bytes": point.formula_bytes,
                "rss_bytes_per_item": point.rss_bytes as f64 / items as f64,
                "cold_start_ms": point.cold_start_ms, "recall_at_100": point.recall,
                "p50_us": point.p50_us, "p99_us": point.p99_us, "qps": point.qps,
                "concurrency": args.concurrency,
            });
            println!("{line}");
            lines.push(line);
            points.push(point);
        }
    }
    // The numbers beside the plot.
    let data = args.work.join("scale.json");
    std::fs::write(&data, serde_json::to_string_pretty(&lines)? + "\n")
        .with_context(|| format!("writing {}", data.display()))?;
    plot(&args.work.join("scale.png"), &points)?;
    eprintln!(
        "plot written to {}, its numbers to {}",
        args.work.join("scale.png").display(),
        data.display()
    );
    Ok(())
}

/// Builds (unless built) and serves one catalog in `shards`, and measures it.
async fn measure(
    args: &ScaleArgs,
    items: &recsys_bundle_builder::ItemVectors,
    queries: &[f32],
    truth: &[Vec<u32>],
    count: usize,
    shards: u32,
) -> anyhow::Result<Point> {
    let params = IndexParams {
        metric: Metric::Ip,
        connectivity: args.connectivity,
        ..IndexParams::default()
    };
    let degree = if args.connectivity == IndexParams::default().connectivity {
        String::new()
    } else {
        format!("-m{}", args.connectivity)
    };
    let bundle = args
        .work
        .join(format!("bundle-{count}-d{}-s{shards}{degree}", args.dim));
    let cached = recsys_bundle::Manifest::load(&bundle).is_ok_and(|m| !m.files.is_empty());
    let mut build_s = None;
    if args.rebuild || !cached {
        let options = BuildOptions {
            params,
            shard_count: shards,
            version: format!("scale-{count}-{shards}"),
            source: "synthetic, normalized".into(),
            threads: 0,
        };
        let started = Instant::now();
        let added = std::sync::atomic::AtomicU64::new(0);
        let tenth = (count as u64 / 10).max(1);
        build_bundle(&bundle, items, None, &options, &|event| match event {
            BuildEvent::ItemsAdded { added: more } => {
                let before = added.fetch_add(more, std::sync::atomic::Ordering::Relaxed);
                if (before + more) / tenth > before / tenth {
                    eprintln!(
                        "  {shards} shard(s): {} of {count} items in, {:.0} s",
                        before + more,
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            BuildEvent::MeasuringDepths { shard, .. } => {
                eprintln!("  shard {shard}: measuring search depths");
            }
            _ => {}
        })?;
        build_s = Some(started.elapsed().as_secs_f64());
        eprintln!(
            "built {count} items in {shards} shard(s) in {:.1} s",
            build_s.unwrap_or(0.0)
        );
    }
    let manifest = recsys_bundle::Manifest::load(&bundle)?;
    let file_bytes: u64 = manifest
        .shards
        .iter()
        .map(|s| std::fs::metadata(bundle.join(&s.file)).map_or(0, |m| m.len()))
        .sum();
    // A packed node holds the mapped file and one [vector, base-layer links]
    // block per item, 64-byte aligned (index/src/shard_index.rs, usearch patch 7).
    let stride = (args.dim * 4 + 4 + 2 * params.connectivity * 4).div_ceil(64) * 64;
    let formula_bytes = file_bytes + (count * stride) as u64;

    let started = Instant::now();
    let cluster = ProcessCluster::start(&bundle, &ProcessOptions::default()).await?;
    let cold_start_ms = started.elapsed().as_secs_f64() * 1e3;
    let pids = cluster.pids();
    let nodes = &pids[..pids.len().saturating_sub(1)];
    let channel = crate::process_cluster::channel(cluster.gateway_addr, None).await?;
    let mut client = GatewayServiceClient::new(channel.clone());

    let dim = args.dim;
    let mut latencies = Vec::with_capacity(truth.len());
    let mut found = 0usize;
    for (query, truth) in queries.chunks_exact(dim).zip(truth) {
        let started = Instant::now();
        let answer = client.recommend(request(query)).await?.into_inner();
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
        found += answer
            .items
            .iter()
            .filter(|item| truth.contains(&(item.item_id as u32)))
            .count();
    }
    let rss_bytes: u64 = crate::open_loop::rss_kb(nodes).values().sum::<u64>() * 1024;
    latencies.sort_by(f64::total_cmp);
    let qps = saturate(&channel, queries, dim, args.concurrency, args.seconds).await?;
    drop(cluster);
    Ok(Point {
        items: count,
        shards,
        connectivity: args.connectivity,
        build_s,
        file_bytes,
        rss_bytes,
        formula_bytes,
        cold_start_ms,
        recall: found as f64 / (truth.len() * K) as f64,
        p50_us: percentile(&latencies, 0.5),
        p99_us: percentile(&latencies, 0.99),
        qps,
    })
}

/// An unranked k = 100 request for `query` (also `recsys-bench shards`').
pub(crate) fn request(query: &[f32]) -> RecommendRequest {
    RecommendRequest {
        query: Some(Query::QueryEmbedding(QueryEmbedding {
            values: query.to_vec(),
        })),
        k: K as u32,
        options: Some(RecommendOptions {
            skip_ranking: true,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Answers per second with `concurrency` clients asking one query after the
/// other for `seconds`.
async fn saturate(
    channel: &Channel,
    queries: &[f32],
    dim: usize,
    concurrency: usize,
    seconds: f64,
) -> anyhow::Result<f64> {
    let stop = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency.max(1))
        .map(|client| {
            let mut gateway = GatewayServiceClient::new(channel.clone());
            let queries: Vec<Vec<f32>> = queries.chunks_exact(dim).map(<[f32]>::to_vec).collect();
            tokio::spawn(async move {
                let mut answered = 0u64;
                let mut i = client;
                while Instant::now() < stop {
                    let query = &queries[i % queries.len()];
                    i += concurrency;
                    if gateway.recommend(request(query)).await.is_ok() {
                        answered += 1;
                    }
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.context("a saturation client failed")?;
    }
    Ok(answered as f64 / seconds)
}

/// Four panels against the shard count, one line per catalog size: p50 and
/// p99 latency, QPS at saturation, resident bytes per item (measured, and the
/// formula dashed as a thin line), build seconds.
fn plot(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    crate::report::register_font()?;
    let root = BitMapBackend::new(path, (1200, 900)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("recsys-bench scale", ("sans-serif", 22))?;
    let panels = root.split_evenly((2, 2));
    // One line per catalog size and graph degree.
    let mut sizes: Vec<(usize, usize)> = points.iter().map(|p| (p.items, p.connectivity)).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let max_shards = points.iter().map(|p| p.shards).max().unwrap_or(1) as f64;
    type Pick = fn(&Point) -> Option<f64>;
    let panel_specs: [(&str, &str, Pick, Option<Pick>); 4] = [
        (
            "latency at one in flight: p50 (thick), p99 (thin)",
            "ms",
            |p| Some(p.p50_us / 1e3),
            Some(|p| Some(p.p99_us / 1e3)),
        ),
        ("QPS at saturation", "answers / s", |p| Some(p.qps), None),
        (
            "resident bytes per item (thin: formula)",
            "bytes",
            |p| Some(p.rss_bytes as f64 / p.items as f64),
            Some(|p| Some(p.formula_bytes as f64 / p.items as f64)),
        ),
        ("build time", "s", |p| p.build_s, None),
    ];
    for (panel, (caption, unit, main, thin)) in panels.iter().zip(panel_specs) {
        let values = points.iter().filter_map(|p| {
            main(p)
                .into_iter()
                .chain(thin.and_then(|t| t(p)))
                .reduce(f64::max)
        });
        let top = values.fold(1e-9f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(caption, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0.5f64..max_shards + 0.5, 0f64..top)?;
        chart
            .configure_mesh()
            .x_labels(max_shards as usize + 1)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .x_desc("shards")
            .y_desc(unit)
            .draw()?;
        for (i, size) in sizes.iter().enumerate() {
            let series = |pick: Pick| {
                points
                    .iter()
                    .filter(|p| (p.items, p.connectivity) == *size)
                    .filter_map(move |p| Some((f64::from(p.shards), pick(p)?)))
            };
            let colour = crate::report::colour(i);
            let style = colour.stroke_width(3);
            chart
                .draw_series(LineSeries::new(series(main), style))?
                .label(if size.1 == IndexParams::default().connectivity {
                    format!("{} items", size.0)
                } else {
                    format!("{} items, M {}", size.0, size.1)
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart
                .draw_series(series(main).map(|(x, y)| Circle::new((x, y), 4, colour.filled())))?;
            if let Some(thin) = thin {
                chart.draw_series(LineSeries::new(series(thin), colour.stroke_width(1)))?;
            }
        }
        crate::report::legend(&mut chart)?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_catalog_and_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let point = |items: usize, shards: u32| Point {
            items,
            shards,
            connectivity: 32,
            build_s: Some(10.0 * f64::from(shards)),
            file_bytes: items as u64 * 600,
            rss_bytes: items as u64 * 1200,
            formula_bytes: items as u64 * 1100,
            cold_start_ms: 100.0,
            recall: 0.97,
            p50_us: 800.0 + f64::from(shards) * 100.0,
            p99_us: 1500.0,
            qps: 2000.0 / f64::from(shards),
        };
        let points: Vec<Point> = [1_000_000, 4_000_000]
            .into_iter()
            .flat_map(|items| [1, 2, 4, 8].map(|shards| point(items, shards)))
            .collect();
        let path = dir.path().join("scale.png");
        plot(&path, &points).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
    }

    #[test]
    fn normalized_rows_have_unit_length() {
        let mut data = vec![3.0, 4.0, 0.0, 0.0, 0.0, 0.0];
        normalize(&mut data, 2);
        assert_eq!(&data[..2], &[0.6, 0.8]);
        assert_eq!(&data[2..], &[0.0; 4], "a zero row stays zero");
    }
}
