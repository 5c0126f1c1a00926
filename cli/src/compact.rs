//! `recsys bundle compact` and `recsys items truncate`: folding the cluster's
//! item change log into a new bundle version, and deleting what a version
//! already contains from the log.
//!
//! Compaction reads every shard's log entries after the base version's
//! `log_revision` at one etcd revision, applies them to the base's items
//! (`recsys_bundle_builder::compact_bundle`) and writes the result as a new
//! version of the root through the same staging path as any build, with that
//! revision as its `log_revision`. Nodes serving the new version then apply
//! only the entries after it. Truncating the log up to that revision is safe
//! once no node serves (or may restart on) an older version: such a node would
//! replay from its own, older revision and miss what was deleted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use recsys_bundle::{BundleRoot, Manifest};
use recsys_bundle_builder::{BuildEvent, CompactOptions, ItemEdit, Staging, compact_bundle};
use recsys_catalog_log::{ChangeLog, LogEntry};
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::item_change_record::Change;

use crate::bundle_cmd::{default_version, on_event, progress_bar};

/// The change log's etcd: its URLs, and TLS and the user toward it (an etcd
/// with auth needs a user that may read, and for `truncate` delete, the log).
#[derive(Debug, Clone, Args)]
pub struct LogFlags {
    /// etcd (`--etcd` client URLs holding the cluster's change log, TLS, user).
    #[command(flatten)]
    pub etcd: recsys_discovery::flags::EtcdAccessFlags,
    /// Cluster name: the log lives under /recsys/{cluster}/catalog/.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    pub cluster: String,
}

impl LogFlags {
    async fn connect(&self) -> anyhow::Result<ChangeLog> {
        let etcd = self
            .etcd
            .access()?
            .ok_or_else(|| anyhow::anyhow!("the change log needs --etcd URL"))?;
        let endpoints = etcd.endpoints.clone();
        ChangeLog::connect(etcd, &self.cluster)
            .await
            .with_context(|| format!("connecting to the change log at {endpoints:?}"))
    }
}

/// Options of `recsys bundle compact`.
#[derive(Debug, Clone, Args)]
pub struct CompactArgs {
    /// The bundle root holding the base version; the new one is written beside it.
    #[arg(long, env = "RECSYS_BUNDLE_ROOT")]
    pub root: PathBuf,
    /// The base version [default: the root's CURRENT].
    #[arg(long)]
    pub from: Option<String>,
    /// The new version's name [default: derived from the time].
    #[arg(long)]
    pub version: Option<String>,
    #[command(flatten)]
    pub log: LogFlags,
    /// Leave CURRENT where it is (roll the new version out later).
    #[arg(long)]
    pub keep_current: bool,
    /// Then delete the log up to the new version's revision (only once no node
    /// serves an older version: see `recsys items truncate`).
    #[arg(long)]
    pub truncate: bool,
    /// Build threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Options of `recsys items truncate`.
#[derive(Debug, Clone, Args)]
pub struct TruncateArgs {
    #[command(flatten)]
    pub log: LogFlags,
    /// Delete every entry at or before this revision: the `log_revision` of a
    /// compacted version that every node already serves.
    #[arg(long)]
    pub up_to: u64,
}

/// A change-log feature value as an item feature table cell.
fn cell(value: &recsys_proto::v1::FeatureValue) -> Option<String> {
    Some(match value.kind.as_ref()? {
        Kind::StringValue(s) => s.clone(),
        Kind::IntValue(i) => i.to_string(),
        Kind::FloatValue(f) => f.to_string(),
        Kind::StringList(list) => list.values.join("|"),
    })
}

/// The log's entries as edits, in log order; refuses entries written for
/// another sharding than the base version's.
fn edits(entries: &[LogEntry], shard_count: u32) -> anyhow::Result<Vec<ItemEdit>> {
    let mut edits = Vec::new();
    for entry in entries {
        anyhow::ensure!(
            entry.record.shard_count == shard_count,
            "change log revision {} was written for {} shards, the base version has {shard_count}",
            entry.revision,
            entry.record.shard_count
        );
        for change in &entry.record.changes {
            match &change.change {
                Some(Change::Upsert(item)) => edits.push(ItemEdit::Upsert {
                    id: item.item_id,
                    vector: item.embedding.clone(),
                    name: item.name.clone(),
                    features: item
                        .features
                        .iter()
                        .filter_map(|(name, value)| Some((name.clone(), cell(value)?)))
                        .collect::<BTreeMap<_, _>>(),
                }),
                Some(Change::DeleteItemId(id)) => edits.push(ItemEdit::Delete { id: *id }),
                None => {}
            }
        }
    }
    Ok(edits)
}

/// `recsys bundle compact`.
pub async fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = BundleRoot::new(&args.root);
    let from = match &args.from {
        Some(version) => version.clone(),
        None => root.current()?,
    };
    let from_dir = root.complete(&from)?;
    let base = Manifest::load(&from_dir)?;
    let version = args.version.clone().unwrap_or_else(default_version);
    recsys_bundle::root::check_version_name(&version)?;
    let log = args.log.connect().await?;
    let (entries, revision) = log
        .read_all_after(base.log_revision)
        .await
        .context("reading the change log")?;
    let edits = edits(&entries, base.shard_count)?;
    eprintln!(
        "compacting {from} (log revision {}) with {} changes up to revision {revision} into {version}",
        base.log_revision,
        edits.len()
    );
    let options = CompactOptions {
        version: version.clone(),
        log_revision: revision,
        threads: args.threads,
    };
    let root_dir = args.root.clone();
    let built_version = version.clone();
    let compacted = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let staging = Staging::version(&root_dir, &built_version)?;
        let bar = progress_bar(edits.len() as u64 + base.items);
        let progress = |event: BuildEvent| on_event(&bar, event);
        let compacted = compact_bundle(&from_dir, staging.path(), &edits, &options, &progress)
            .with_context(|| format!("compacting {}", from_dir.display()))?;
        bar.finish_and_clear();
        let dir = staging
            .commit()
            .context("moving the compacted version into place")?;
        Ok((compacted, dir))
    })
    .await??;
    let (compacted, dir) = compacted;
    if !args.keep_current {
        root.set_current(&version)?;
        eprintln!(
            "{} now names {version}",
            root.dir().join("CURRENT").display()
        );
    }
    println!(
        "bundle {version} written to {}: {} items ({} upserted, {} deleted), log revision {revision} ({:.1} s)",
        dir.display(),
        compacted.manifest.items,
        compacted.upserted,
        compacted.deleted,
        started.elapsed().as_secs_f64()
    );
    if args.truncate {
        let deleted = log.truncate(revision).await.context("truncating the log")?;
        println!("deleted {deleted} change log keys up to revision {revision}");
    }
    Ok(())
}

/// `recsys items truncate`.
pub async fn truncate(args: TruncateArgs) -> anyhow::Result<()> {
    let log = args.log.connect().await?;
    let deleted = log
        .truncate(args.up_to)
        .await
        .context("truncating the log")?;
    println!(
        "deleted {deleted} change log keys up to revision {}",
        args.up_to
    );
    Ok(())
}
