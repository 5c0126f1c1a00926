//! `recsys bundle`: builds a bundle, with a progress bar.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use recsys_bundle::{IndexParams, Manifest, Metric, Quantization};
use recsys_bundle_builder::synthetic::{SyntheticSpec, build_synthetic as build_synthetic_bundle};
use recsys_bundle_builder::{BuildEvent, BuildOptions, ItemVectors, build_bundle};

/// Options of `recsys bundle`.
#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    /// Output directory.
    #[arg(long, env = "RECSYS_BUNDLE_OUT")]
    pub out: PathBuf,
    /// Item embeddings: raw little-endian f32 rows (needs --dim) or .npy (C or Fortran order).
    #[arg(long, conflicts_with = "synthetic")]
    pub vectors: Option<PathBuf>,
    /// Dimensions of a raw f32 file.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Item ids, one per line, parallel to the vectors (default: row numbers).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Item names, one per line, parallel to the vectors.
    #[arg(long)]
    pub names: Option<PathBuf>,
    /// Build a synthetic catalog with planted clusters instead.
    #[arg(long)]
    pub synthetic: bool,
    #[command(flatten)]
    pub synthetic_spec: SyntheticArgs,
    #[command(flatten)]
    pub index: IndexArgs,
    /// A ranker directory to serve with the bundle, as `tools/tfrs_export` writes
    /// it (config.json, weights.safetensors, vocab/, item_features.tsv).
    #[arg(long, conflicts_with = "synthetic")]
    pub ranker: Option<PathBuf>,
    /// Bundle version (default: derived from the source and the time).
    #[arg(long)]
    pub version: Option<String>,
    /// Leave a complete bundle already in --out alone instead of rebuilding it: for
    /// one-shot jobs (docker compose, Kubernetes) that run again on every start
    /// while nodes may be serving from that directory.
    #[arg(long)]
    pub if_missing: bool,
}

/// Shape of a synthetic catalog.
#[derive(Debug, Clone, Args)]
pub struct SyntheticArgs {
    /// Synthetic items.
    #[arg(long, default_value_t = SyntheticSpec::default().items)]
    pub items: usize,
    /// Synthetic users (their ids are user-0, user-1, ...).
    #[arg(long, default_value_t = SyntheticSpec::default().users)]
    pub users: usize,
    /// Synthetic embedding dimensions.
    #[arg(long = "synthetic-dim", default_value_t = SyntheticSpec::default().dimensions)]
    pub dimensions: usize,
    /// Synthetic topics.
    #[arg(long, default_value_t = SyntheticSpec::default().clusters)]
    pub clusters: usize,
    /// Seed of the synthetic catalog.
    #[arg(long, default_value_t = SyntheticSpec::default().seed)]
    pub seed: u64,
}

impl SyntheticArgs {
    fn spec(&self) -> SyntheticSpec {
        SyntheticSpec {
            items: self.items,
            users: self.users,
            dimensions: self.dimensions,
            clusters: self.clusters,
            seed: self.seed,
        }
    }
}

/// Index parameters.
#[derive(Debug, Clone, Args)]
pub struct IndexArgs {
    /// Hash shards.
    #[arg(long, default_value_t = 2)]
    pub shards: u32,
    /// Metric: ip, cos or l2.
    #[arg(long, default_value = "ip")]
    pub metric: String,
    /// Stored scalar type: f32, f16 or i8.
    #[arg(long, default_value = "f32")]
    pub quantization: String,
    /// HNSW graph degree (M).
    #[arg(long, default_value_t = IndexParams::default().connectivity)]
    pub connectivity: usize,
    /// HNSW beam width while building (efConstruction).
    #[arg(long, default_value_t = IndexParams::default().expansion_add)]
    pub expansion_add: usize,
    /// HNSW beam width while searching (ef); nodes use at least k.
    #[arg(long, default_value_t = IndexParams::default().expansion_search)]
    pub expansion_search: usize,
    /// Build threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl IndexArgs {
    pub(crate) fn params(&self) -> anyhow::Result<IndexParams> {
        Ok(IndexParams {
            metric: Metric::parse(&self.metric)?,
            quantization: Quantization::parse(&self.quantization)?,
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
        })
    }
}

/// What `--check-config` can tell about `args` without reading or writing a
/// file: a source is named, the index parameters parse, the shapes are positive.
/// Returns a one-line description of the bundle that would be built.
pub fn check(args: &BundleArgs) -> anyhow::Result<String> {
    let source = match (&args.vectors, args.synthetic) {
        (Some(vectors), _) => vectors.display().to_string(),
        (None, true) => {
            let spec = args.synthetic_spec.spec();
            anyhow::ensure!(
                spec.items > 0 && spec.dimensions > 0 && spec.clusters > 0,
                "--items, --synthetic-dim and --clusters must be positive"
            );
            format!("synthetic {spec:?}")
        }
        (None, false) => anyhow::bail!("say what to index: --vectors FILE or --synthetic"),
    };
    anyhow::ensure!(args.index.shards > 0, "--shards must be at least 1");
    let options = build_options(&args.index, args.version.clone(), &source)?;
    Ok(format!(
        "bundle {} from {source} into {} in {} shards, {:?}",
        options.version,
        args.out.display(),
        options.shard_count,
        options.params
    ))
}

/// Builds the bundle `args` describe.
pub fn run(args: BundleArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.if_missing
        && let Ok(manifest) = Manifest::load(&args.out)
    {
        println!(
            "bundle {} already in {}: not rebuilt (--if-missing)",
            manifest.version,
            args.out.display()
        );
        return Ok(());
    }
    let manifest = if let Some(vectors) = &args.vectors {
        eprintln!("reading {}", vectors.display());
        let items = ItemVectors::read(
            vectors,
            args.dim,
            args.ids.as_deref(),
            args.names.as_deref(),
        )?;
        let source = vectors.display().to_string();
        let manifest = build(
            &args.out,
            &items,
            None,
            &args.index,
            args.version.clone(),
            &source,
        )?;
        match &args.ranker {
            Some(ranker) => attach(&args.out, ranker, &items.ids)?,
            None => manifest,
        }
    } else if args.synthetic {
        build_synthetic(
            &args.out,
            &args.synthetic_spec,
            &args.index,
            args.version.clone(),
        )?
    } else {
        anyhow::bail!("say what to index: --vectors FILE or --synthetic");
    };
    println!(
        "bundle {} written to {}: {} items of {} dimensions in {} shards ({:.1} s)",
        manifest.version,
        args.out.display(),
        manifest.items,
        manifest.dimensions,
        manifest.shard_count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Adds the ranker in `ranker` to the bundle in `out`; returns the new manifest.
pub(crate) fn attach(out: &Path, ranker: &Path, items: &[u64]) -> anyhow::Result<Manifest> {
    let attached = recsys_bundle_builder::attach_ranker(out, ranker, items)
        .with_context(|| format!("adding the ranker in {}", ranker.display()))?;
    eprintln!(
        "ranker {} added: features for {} items",
        attached.version, attached.ranker_items
    );
    if attached.unknown_items > 0 {
        eprintln!(
            "warning: the ranker has no features for {} of the {} items; ranking nodes refuse them \
             unless started with --allow-unknown-items",
            attached.unknown_items,
            items.len()
        );
    }
    Ok(Manifest::load(out)?)
}

/// Builds a synthetic bundle.
pub fn build_synthetic(
    out: &Path,
    spec: &SyntheticArgs,
    index: &IndexArgs,
    version: Option<String>,
) -> anyhow::Result<Manifest> {
    let spec = spec.spec();
    eprintln!(
        "generating {} synthetic items in {} topics, {} users ({} dimensions, seed {})",
        spec.items, spec.clusters, spec.users, spec.dimensions, spec.seed
    );
    let source = format!(
        "synthetic items={} users={} dim={} clusters={} seed={}",
        spec.items, spec.users, spec.dimensions, spec.clusters, spec.seed
    );
    let options = build_options(index, version, &source)?;
    let bar = progress_bar(spec.items as u64);
    let progress = |event: BuildEvent| on_event(&bar, event);
    let (_, manifest) = build_synthetic_bundle(out, &spec, &options, &progress)
        .with_context(|| format!("building the bundle in {}", out.display()))?;
    bar.finish_and_clear();
    Ok(manifest)
}

fn build(
    out: &Path,
    items: &ItemVectors,
    users: Option<&recsys_bundle::UserEmbeddings>,
    index: &IndexArgs,
    version: Option<String>,
    source: &str,
) -> anyhow::Result<Manifest> {
    let options = build_options(index, version, source)?;
    let bar = progress_bar(items.len() as u64);
    let progress = |event: BuildEvent| on_event(&bar, event);
    let manifest = build_bundle(out, items, users, &options, &progress)
        .with_context(|| format!("building the bundle in {}", out.display()))?;
    bar.finish_and_clear();
    Ok(manifest)
}

fn build_options(
    index: &IndexArgs,
    version: Option<String>,
    source: &str,
) -> anyhow::Result<BuildOptions> {
    Ok(BuildOptions {
        params: index.params()?,
        shard_count: index.shards,
        version: version.unwrap_or_else(default_version),
        source: source.to_string(),
        threads: index.threads,
    })
}

pub(crate) fn progress_bar(items: u64) -> ProgressBar {
    let bar = ProgressBar::new(items);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>12} [{bar:40}] {pos}/{len} items ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub(crate) fn on_event(bar: &ProgressBar, event: BuildEvent) {
    match event {
        BuildEvent::ShardStarted { shard, .. } => bar.set_message(format!("shard {shard}")),
        BuildEvent::ItemsAdded { added } => bar.inc(added),
        BuildEvent::ShardSaved { .. } => {}
    }
}

/// `v` and the build time in seconds since the epoch: unique enough to tell bundles apart.
pub(crate) fn default_version() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("v{secs}")
}
