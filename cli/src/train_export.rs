//! `recsys train retrieval --bundle-out DIR`: writes the trained two-tower model as a bundle
//! the cluster serves (`recsys_trainer::export`), optionally with a ranker, and
//! says how to serve it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use recsys_bundle::{IndexParams, Manifest};
use recsys_trainer::{
    CatalogIds, Dataset, ExportOptions, TwoTower, catalog_ids, export_bundle, item_attributes,
    user_history,
};

use crate::bundle_cmd::{attach, default_version, on_event, progress_bar};

/// Where and how to write the trained model as a bundle.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Write the trained model as a servable bundle into this directory.
    #[arg(long, env = "RECSYS_TRAIN_BUNDLE_OUT")]
    pub bundle_out: Option<PathBuf>,
    /// Hash shards of the exported bundle.
    #[arg(long, default_value_t = 2, env = "RECSYS_TRAIN_SHARDS")]
    pub shards: u32,
    /// A ranker directory to serve with the exported bundle (what `recsys train
    /// ranking --out` or tools/tfrs_export writes).
    #[arg(long, env = "RECSYS_TRAIN_RANKER")]
    pub ranker: Option<PathBuf>,
}

/// Writes `model` into `out`; `raw` is the data set as loaded, keyed by item id.
pub fn export(
    model: &TwoTower,
    raw: &Dataset,
    source: &str,
    args: &ExportArgs,
    out: &Path,
) -> anyhow::Result<(Manifest, CatalogIds)> {
    let keys = model.vocabularies().item_id.values();
    let catalog = catalog_ids(keys, raw)?;
    let history = user_history(keys, &catalog, raw);
    let attributes = item_attributes(keys, &catalog, raw)?;
    let options = ExportOptions {
        shards: args.shards,
        params: IndexParams::default(),
        version: format!("trained-{}", default_version()),
        source: source.to_string(),
        threads: 0,
    };
    let bar = progress_bar(catalog.ids.len() as u64);
    let progress = |event| on_event(&bar, event);
    // Built beside `out` and swapped in sealed: an interrupted export leaves the
    // previous bundle (or nothing), never half of one.
    let manifest = crate::bundle_cmd::into_dir(out, |dir| {
        let mut manifest = export_bundle(
            model,
            &catalog,
            &history,
            attributes.as_ref(),
            dir,
            &options,
            &progress,
        )
        .with_context(|| format!("exporting the model to {}", out.display()))?;
        bar.finish_and_clear();
        if let Some(ranker) = &args.ranker {
            manifest = attach(dir, ranker, &catalog.ids)?;
        }
        Ok(manifest)
    })?;
    println!(
        "bundle {} written to {}: {} items in {} shards, query tower over {} users, {} interactions left out of their answers{}",
        manifest.version,
        out.display(),
        manifest.items,
        manifest.shard_count,
        model.vocabularies().user_id.values().len(),
        history.interactions(),
        if manifest.ranker.is_some() {
            ", with a ranker"
        } else {
            ""
        }
    );
    println!(
        "serve it: cargo run --release -p recsys-cli -- serve --bundle {}",
        out.display()
    );
    Ok((manifest, catalog))
}
