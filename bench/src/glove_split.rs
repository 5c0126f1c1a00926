//! The GloVe-50 split every retrieval benchmark shares: the rows read and
//! normalized, cut into items and held-out queries, the queries' exact
//! top-100 (kept in the work directory), and the bundles built from the items.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use recsys_bundle::{IndexParams, Metric, Quantization};
use recsys_bundle_builder::{BuildOptions, ItemVectors, build_bundle};

pub(crate) const K: usize = 100;

/// The GloVe-50 split every retrieval benchmark uses, and where it keeps
/// what it builds.
#[derive(Debug, Clone, Args)]
pub struct GloveSplit {
    /// Directory written by shared/data/fetch.sh (holds glove-6B-50d/).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to keep the bundle, ground truth and queries.
    #[arg(long, default_value = "target/bench-glove")]
    pub work: PathBuf,
    /// Rows used as items (the rest are held out as queries).
    #[arg(long, default_value_t = 390_000)]
    pub items: usize,
    /// Held-out queries.
    #[arg(long, default_value_t = 1_000)]
    pub queries: usize,
}

/// The split read and checked: items, held-out queries, their exact top-100.
pub(crate) struct OpenSplit {
    pub(crate) dim: usize,
    all: Vec<f32>,
    items: usize,
    queries: usize,
    /// Each query's exact top-100 item rows, best first.
    pub(crate) truth: Vec<Vec<u32>>,
}

impl OpenSplit {
    /// The item rows, row-major.
    pub(crate) fn items(&self) -> &[f32] {
        &self.all[..self.items * self.dim]
    }

    /// The held-out queries, row-major.
    pub(crate) fn queries(&self) -> &[f32] {
        &self.all[self.items * self.dim..(self.items + self.queries) * self.dim]
    }
}

impl GloveSplit {
    /// Reads GloVe, splits it, and reads the exact top-100 of the queries from
    /// `work` (computing and keeping it the first time); writes the queries
    /// there too, for the Python peers.
    pub(crate) fn open(&self) -> anyhow::Result<OpenSplit> {
        let (dim, all) = load_glove(&self.data)?;
        let rows = all.len() / dim;
        anyhow::ensure!(
            self.items + self.queries <= rows,
            "{} items + {} queries exceed the {rows} GloVe rows",
            self.items,
            self.queries
        );
        let mut split = OpenSplit {
            dim,
            all,
            items: self.items,
            queries: self.queries,
            truth: Vec::new(),
        };
        std::fs::create_dir_all(&self.work)?;
        let truth_path = self
            .work
            .join(format!("truth-{}-{}.u32", self.items, self.queries));
        split.truth = if truth_path.exists() {
            std::fs::read(&truth_path)?
                .chunks_exact(4 * K)
                .map(|row| {
                    row.chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect()
                })
                .collect()
        } else {
            eprintln!(
                "computing exact top-{K} of {} queries over {} items",
                self.queries, self.items
            );
            let truth = ground_truth(split.items(), split.queries(), dim);
            write_u32(&truth_path, truth.iter().flatten().copied())?;
            truth
        };
        write_f32(
            &self
                .work
                .join(format!("queries-{}-{}.f32", self.items, self.queries)),
            split.queries(),
        )?;
        Ok(split)
    }
}

/// Reads GloVe and L2-normalizes every row: GloVe is compared by angle
/// (ann-benchmarks' glove-50-angular), which on unit vectors is inner product.
fn load_glove(data: &Path) -> anyhow::Result<(usize, Vec<f32>)> {
    let dir = data.join("glove-6B-50d");
    let mut vectors = recsys_bundle_builder::vectors::read_raw_f32(&dir.join("vectors.f32"), 50)
        .with_context(|| format!("run shared/data/fetch.sh {} first", data.display()))?;
    vectors.par_chunks_mut(50).for_each(|row| {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    });
    Ok((50, vectors))
}

/// Exact top-100 ids of every query by inner product, with all cores.
fn ground_truth(items: &[f32], queries: &[f32], dim: usize) -> Vec<Vec<u32>> {
    let every: Vec<u64> = (0..(items.len() / dim) as u64).collect();
    ground_truth_among(items, queries, dim, &every)
}

/// Exact top-100 rows (fewer when fewer are given) of every query among the
/// item `rows`, by inner product, with all cores: the truth a filtered search
/// is measured against.
pub(crate) fn ground_truth_among(
    items: &[f32],
    queries: &[f32],
    dim: usize,
    rows: &[u64],
) -> Vec<Vec<u32>> {
    queries
        .par_chunks(dim)
        .map(|query| {
            let mut scored: Vec<(f32, u32)> = rows
                .iter()
                .map(|&row| {
                    let item = &items[row as usize * dim..(row as usize + 1) * dim];
                    (Metric::Ip.score(query, item), row as u32)
                })
                .collect();
            let k = K.min(scored.len());
            if k < scored.len() {
                scored.select_nth_unstable_by(k, |a, b| b.0.total_cmp(&a.0));
            }
            let mut top: Vec<(f32, u32)> = scored[..k].to_vec();
            top.sort_by(|a, b| b.0.total_cmp(&a.0));
            top.into_iter().map(|(_, row)| row).collect()
        })
        .collect()
}

pub(crate) fn write_u32(path: &Path, values: impl IntoIterator<Item = u32>) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.into_iter().flat_map(u32::to_le_bytes).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_f32(path: &Path, values: &[f32]) -> anyhow::Result<()> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// The bundle of `items` (GloVe rows of `dim`) in `work` cut into `shards`,
/// built unless one with the same parameters (graph degree and construction
/// beam in `graph`) is there or `rebuild` asks; with the seconds a build took.
/// Its fixed beam is the builder's default.
pub(crate) fn glove_bundle(
    work: &Path,
    items: &[f32],
    dim: usize,
    quantization: Quantization,
    graph: (usize, usize),
    shards: u32,
    rebuild: bool,
) -> anyhow::Result<(PathBuf, Option<f64>)> {
    let (connectivity, expansion_add) = graph;
    let count = items.len() / dim;
    // "-local": built in the bundle builder's locality order (older bundles were not).
    let shards_part = if shards > 1 {
        format!("-s{shards}")
    } else {
        String::new()
    };
    let bundle = work.join(format!(
        "bundle-{count}-m{connectivity}-efc{expansion_add}-{}-local{shards_part}",
        quantization.as_str()
    ));
    let mut build_seconds = None;
    // A bundle cached before bundles were checksummed would not load in a node,
    // and one from before search depths were measured would not follow a
    // recall target.
    let cached = recsys_bundle::Manifest::load(&bundle)
        .is_ok_and(|m| !m.files.is_empty() && m.shards.iter().all(|s| s.search_depths.is_some()));
    if rebuild || !cached {
        let vectors = ItemVectors::new(Path::new("glove"), dim, items.to_vec(), None, None)?;
        let options = BuildOptions {
            params: IndexParams {
                metric: Metric::Ip,
                quantization,
                connectivity,
                expansion_add,
                expansion_search: IndexParams::default().expansion_search,
            },
            shard_count: shards,
            version: "glove".into(),
            source: "glove-6B-50d normalized".into(),
            threads: 0,
        };
        eprintln!("building the index of {count} items in {shards} shard(s)");
        let started = Instant::now();
        build_bundle(&bundle, &vectors, None, &options, &|_| {})?;
        build_seconds = Some(started.elapsed().as_secs_f64());
    }
    Ok((bundle, build_seconds))
}
