//! `recsys bundle`: builds a bundle, with a progress bar, into a plain directory
//! (`--out`) or as a new version of a root (`--root`); `recsys bundle verify`,
//! `activate` and `versions` check and manage built ones (`bundle_admin.rs`),
//! `publish` uploads one to an object store (`bundle_publish.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use recsys_bundle::{BundleRoot, IndexParams, Manifest, Metric, Quantization};
use recsys_bundle_builder::synthetic::{SyntheticSpec, build_synthetic as build_synthetic_bundle};
use recsys_bundle_builder::{BuildEvent, BuildOptions, ItemVectors, Staging, build_bundle};

/// `recsys bundle [build flags] | verify | activate | versions | publish | compact`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct BundleCommand {
    /// What to do with built bundles; without one, build a bundle.
    #[command(subcommand)]
    pub action: Option<BundleAction>,
    #[command(flatten)]
    pub build: BundleArgs,
}

/// The subcommands of `recsys bundle`.
#[derive(Debug, Clone, Subcommand)]
pub enum BundleAction {
    /// Check a bundle version: every file present with its recorded size and
    /// checksum, nothing unlisted, the manifest consistent. Given a root, checks
    /// every version in it. Exits 1 naming the first bad file.
    Verify(crate::bundle_admin::VerifyArgs),
    /// Point a root's CURRENT at one of its complete versions (atomically).
    Activate(crate::bundle_admin::ActivateArgs),
    /// List a root's complete versions, marking the current one.
    Versions(crate::bundle_admin::VersionsArgs),
    /// Upload a built version to a root in an S3-compatible object store
    /// (every file, the manifest last), optionally pointing its CURRENT at it.
    Publish(crate::bundle_publish::PublishArgs),
    /// Build a new version from a version of the root plus the cluster's item
    /// change log up to now (vectors re-indexed, names and ranker features
    /// updated), recording the log revision it contains.
    // Boxed: the etcd flags (TLS, user) make it the largest variant by far.
    Compact(Box<crate::compact::CompactArgs>),
}

/// Options of `recsys bundle` (a build).
#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    /// Output directory: built beside it, then swapped in.
    #[arg(
        long,
        env = "RECSYS_BUNDLE_OUT",
        required_unless_present = "root",
        conflicts_with = "root"
    )]
    pub out: Option<PathBuf>,
    /// Bundle root: build a new version ROOT/<version> (never rebuilding one
    /// that exists) and point ROOT/CURRENT at it.
    #[arg(long, env = "RECSYS_BUNDLE_OUT_ROOT")]
    pub root: Option<PathBuf>,
    /// With --root: leave CURRENT where it is (roll the new version out later
    /// with `recsys bundle activate`).
    #[arg(long, requires = "root")]
    pub keep_current: bool,
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
    /// A further ranker as an A/B variant, `NAME=DIR` (repeatable): served
    /// beside `--ranker` (the variant `default`) to the users the gateway
    /// assigns to it (`--ranker-shares`).
    #[arg(long, value_name = "NAME=DIR", requires = "ranker")]
    pub ranker_variant: Vec<String>,
    /// Traffic shares of the variants, `default=0.9,NAME=0.1` (weights,
    /// normalized); a gateway's `--ranker-shares FILE` overrides them while it
    /// runs. Without: everything to `default`.
    #[arg(
        long,
        value_name = "NAME=WEIGHT,...",
        value_delimiter = ',',
        requires = "ranker"
    )]
    pub ranker_shares: Vec<String>,
    /// Typed item attributes for filters: a TSV of `id` and `NAME:TYPE`
    /// columns (keyword, keyword_list with `|` between keywords, integer,
    /// float, boolean), one row per item; an empty cell is a missing value.
    #[arg(long, conflicts_with = "synthetic")]
    pub attributes: Option<PathBuf>,
    /// Bundle version (default: derived from the source and the time).
    #[arg(long)]
    pub version: Option<String>,
    /// Leave a complete bundle already in --out (or the version already in
    /// --root) alone instead of rebuilding it: for one-shot jobs (docker compose,
    /// Kubernetes) that run again on every start while nodes may be serving from
    /// that directory.
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
    let into = match (&args.out, &args.root) {
        (Some(out), _) => out.display().to_string(),
        (None, Some(root)) => {
            recsys_bundle::root::check_version_name(&options.version)?;
            format!("{}/{}", root.display(), options.version)
        }
        (None, None) => anyhow::bail!("say where to write: --out DIR or --root ROOT"),
    };
    Ok(format!(
        "bundle {} from {source} into {into} in {} shards, {:?}",
        options.version, options.shard_count, options.params
    ))
}

/// Runs `recsys bundle`: a build, or one of its subcommands.
pub fn run_command(command: BundleCommand) -> anyhow::Result<()> {
    match command.action {
        None => run(command.build),
        Some(BundleAction::Verify(args)) => crate::bundle_admin::verify(&args),
        Some(BundleAction::Activate(args)) => crate::bundle_admin::activate(&args),
        Some(BundleAction::Versions(args)) => crate::bundle_admin::versions(&args),
        Some(BundleAction::Publish(args)) => crate::bundle_publish::publish(&args),
        // Reads etcd: `main` runs it on the runtime, never here.
        Some(BundleAction::Compact(_)) => {
            anyhow::bail!("recsys bundle compact runs on the async runtime")
        }
    }
}

/// `--check-config` for `recsys bundle`.
pub fn check_command(command: &BundleCommand) -> anyhow::Result<String> {
    match &command.action {
        None => check(&command.build),
        Some(action) => Ok(format!("{action:?}")),
    }
}

/// Where a build goes: a plain directory, or a new version of a root.
enum Destination {
    Dir(PathBuf),
    Version { root: BundleRoot, activate: bool },
}

/// Builds the bundle `args` describe: into a staging directory, sealed, then
/// renamed into place (and, in a root, made current unless `--keep-current`).
pub fn run(mut args: BundleArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let destination = match (&args.out, &args.root) {
        (Some(out), None) => Destination::Dir(out.clone()),
        (None, Some(root)) => Destination::Version {
            root: BundleRoot::new(root),
            activate: !args.keep_current,
        },
        _ => anyhow::bail!("say where to write: --out DIR or --root ROOT"),
    };
    // Fixed now: a root's directory is named by it before anything is built.
    let version = args.version.take().unwrap_or_else(default_version);
    args.version = Some(version.clone());
    if args.if_missing && already_built(&destination, &version)? {
        return Ok(());
    }
    let staging = match &destination {
        Destination::Dir(out) => Staging::dir(out)?,
        Destination::Version { root, .. } => Staging::version(root.dir(), &version)?,
    };
    let out = staging.path().to_path_buf();
    let manifest = build_into(&args, &out)?;
    let dir = staging
        .commit()
        .context("moving the finished bundle into place")?;
    if let Destination::Version {
        root,
        activate: true,
    } = &destination
    {
        root.set_current(&version)?;
        eprintln!(
            "{} now names {version}",
            root.dir().join("CURRENT").display()
        );
    }
    println!(
        "bundle {} written to {}: {} items of {} dimensions in {} shards ({:.1} s)",
        manifest.version,
        dir.display(),
        manifest.items,
        manifest.dimensions,
        manifest.shard_count,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--if-missing`: whether the bundle is already there (and, in a root, made
/// current unless `--keep-current`), so nothing is to be built.
fn already_built(destination: &Destination, version: &str) -> anyhow::Result<bool> {
    match destination {
        Destination::Dir(out) => match Manifest::load(out) {
            Ok(manifest) if !manifest.files.is_empty() => {
                println!(
                    "bundle {} already in {}: not rebuilt (--if-missing)",
                    manifest.version,
                    out.display()
                );
                Ok(true)
            }
            _ => Ok(false),
        },
        Destination::Version { root, activate } => {
            if root.complete(version).is_err() {
                return Ok(false);
            }
            if *activate {
                root.set_current(version)?;
            }
            println!(
                "bundle {version} already in {}: not rebuilt (--if-missing)",
                root.dir().display()
            );
            Ok(true)
        }
    }
}

/// Builds the bundle `args` describe into `out`, an empty staging directory.
fn build_into(args: &BundleArgs, out: &Path) -> anyhow::Result<Manifest> {
    Ok(if let Some(vectors) = &args.vectors {
        eprintln!("reading {}", vectors.display());
        let items = ItemVectors::read(
            vectors,
            args.dim,
            args.ids.as_deref(),
            args.names.as_deref(),
        )?;
        let source = vectors.display().to_string();
        let manifest = build(
            out,
            &items,
            None,
            &args.index,
            args.version.clone(),
            &source,
        )?;
        let manifest = match &args.ranker {
            Some(ranker) => {
                attach(out, ranker, &items.ids)?;
                attach_variants(out, &args.ranker_variant, &args.ranker_shares, &items.ids)?
            }
            None => manifest,
        };
        match &args.attributes {
            Some(file) => add_attributes(out, file, &items.ids, manifest)?,
            None => manifest,
        }
    } else if args.synthetic {
        build_synthetic(out, &args.synthetic_spec, &args.index, args.version.clone())?
    } else {
        anyhow::bail!("say what to index: --vectors FILE or --synthetic");
    })
}

/// Runs `build` on a staging directory beside `out` and swaps the finished,
/// sealed bundle in: a reader of `out` sees the old bundle or the new one.
pub(crate) fn into_dir<T>(
    out: &Path,
    build: impl FnOnce(&Path) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let staging = Staging::dir(out)?;
    let value = build(staging.path())?;
    staging
        .commit()
        .with_context(|| format!("moving the finished bundle into {}", out.display()))?;
    Ok(value)
}

/// Adds the item attributes in `file` to the bundle in `out` (whose items
/// are `items`), checked first: every row must be an item of the bundle.
fn add_attributes(
    out: &Path,
    file: &Path,
    items: &[u64],
    mut manifest: Manifest,
) -> anyhow::Result<Manifest> {
    use recsys_bundle::attributes::{ATTRIBUTES_FILE, ItemAttributes};
    let attributes = ItemAttributes::load(file)?;
    let known: std::collections::HashSet<u64> = items.iter().copied().collect();
    let mut ids: Vec<u64> = attributes.ids().to_vec();
    ids.sort_unstable();
    if let Some(stranger) = ids.iter().find(|id| !known.contains(id)) {
        anyhow::bail!(
            "{}: item {stranger} has attributes but is not among the bundle's items",
            file.display()
        );
    }
    attributes.save(&out.join(ATTRIBUTES_FILE))?;
    manifest.attributes = Some(ATTRIBUTES_FILE.to_string());
    recsys_bundle_builder::seal(out, &mut manifest)?;
    let names: Vec<&str> = attributes
        .schema()
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    eprintln!(
        "attributes added for {} of {} items: {}",
        attributes.len(),
        items.len(),
        names.join(", ")
    );
    Ok(manifest)
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

/// Adds each `NAME=DIR` ranker variant to the bundle in `out` and records the
/// `NAME=WEIGHT` shares; returns the new manifest.
fn attach_variants(
    out: &Path,
    variants: &[String],
    shares: &[String],
    items: &[u64],
) -> anyhow::Result<Manifest> {
    for variant in variants {
        let (name, dir) = variant
            .split_once('=')
            .with_context(|| format!("--ranker-variant {variant:?}: NAME=DIR"))?;
        let attached =
            recsys_bundle_builder::attach_ranker_variant(out, Path::new(dir), items, Some(name))
                .with_context(|| format!("adding the ranker variant {name} in {dir}"))?;
        eprintln!(
            "ranker variant {name}: {} added, features for {} items",
            attached.version, attached.ranker_items
        );
    }
    let mut manifest = Manifest::load(out)?;
    if shares.is_empty() {
        return Ok(manifest);
    }
    let mut weights = std::collections::BTreeMap::new();
    for share in shares {
        let (name, weight) = share
            .split_once('=')
            .with_context(|| format!("--ranker-shares {share:?}: NAME=WEIGHT"))?;
        let weight: f64 = weight
            .parse()
            .with_context(|| format!("--ranker-shares {share:?}: the weight is a number"))?;
        weights.insert(name.to_string(), weight);
    }
    manifest.ranker_shares = weights;
    let shares = manifest
        .shares()
        .map_err(|e| anyhow::anyhow!("--ranker-shares: {e}"))?;
    recsys_bundle_builder::seal(out, &mut manifest)?;
    let described: Vec<String> = shares
        .shares()
        .iter()
        .map(|(name, share)| format!("{name} {:.1} %", share * 100.0))
        .collect();
    eprintln!("ranker shares: {}", described.join(", "));
    Ok(manifest)
}

/// Builds a synthetic bundle into `out` (written in place: callers stage it).
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
        BuildEvent::MeasuringDepths { shard, queries } => bar.set_message(format!(
            "shard {shard}: measuring search depths ({queries} queries)"
        )),
    }
}

/// `v` and the build time in seconds since the epoch: unique enough to tell bundles apart.
pub(crate) fn default_version() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("v{secs}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        bundle: BundleCommand,
    }

    /// `recsys bundle --vectors FILE --attributes FILE`: the attributes land in
    /// the bundle, named and checksummed; a row for an item the bundle does not
    /// have is refused by id.
    #[test]
    fn attributes_are_added_to_a_bundle_built_from_vectors() {
        let dir = tempfile::tempdir().unwrap();
        let vectors = dir.path().join("items.f32");
        let data: Vec<u8> = (0..40u32 * 4)
            .flat_map(|i| ((i % 7) as f32 + 0.5).to_le_bytes())
            .collect();
        std::fs::write(&vectors, data).unwrap();
        let attributes = dir.path().join("attributes.tsv");
        std::fs::write(&attributes, "id\tcolour:keyword\n1\tred\n2\tblue\n").unwrap();
        let out = dir.path().join("bundle");
        let args = |attributes: &Path| {
            Cli::parse_from([
                "recsys",
                "--vectors",
                vectors.to_str().unwrap(),
                "--dim",
                "4",
                "--out",
                out.to_str().unwrap(),
                "--attributes",
                attributes.to_str().unwrap(),
            ])
            .bundle
        };
        run_command(args(&attributes)).unwrap();
        let manifest = Manifest::load(&out).unwrap();
        assert_eq!(manifest.attributes.as_deref(), Some("attributes.tsv"));
        recsys_bundle::verify_bundle(&out).unwrap();
        let read =
            recsys_bundle::attributes::ItemAttributes::load(&out.join("attributes.tsv")).unwrap();
        assert_eq!(
            read.value(2, "colour"),
            Some(recsys_bundle::filter::AttributeValue::Keyword("blue"))
        );

        std::fs::write(&attributes, "id\tcolour:keyword\n1\tred\n999\tblue\n").unwrap();
        let error = run_command(args(&attributes)).unwrap_err().to_string();
        assert!(error.contains("item 999"), "{error}");
    }
}
