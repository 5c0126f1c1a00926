//! `recsys items upsert | delete`: item changes on a live cluster, through the
//! gateway's `CatalogService` (which appends them to the cluster's change log in
//! etcd; the retrieval replicas apply them within moments).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use recsys_bundle_builder::ItemVectors;
use recsys_proto::limits::MAX_CATALOG_ITEMS;
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::{
    DeleteItemsRequest, FeatureValue, ItemUpsert, StringList, UpsertItemsRequest,
};

use crate::gateway_client::{GatewayFlags, refused};

/// `recsys items ...`.
#[derive(Debug, Subcommand)]
pub enum ItemsCommand {
    /// Add items or replace their vectors: embeddings from a `.npy` or raw f32
    /// file, ids and names from line files (as `recsys bundle` reads them).
    Upsert(UpsertArgs),
    /// Withdraw items by id.
    Delete(DeleteArgs),
    /// Delete the change log up to a revision (straight in etcd): the
    /// `log_revision` of a compacted version (`recsys bundle compact`) that
    /// every node serves. A node restarting on an older version would miss it.
    Truncate(crate::compact::TruncateArgs),
}

/// Options of `recsys items upsert`.
#[derive(Debug, Args)]
pub struct UpsertArgs {
    #[command(flatten)]
    pub gateway: GatewayFlags,
    /// Item embeddings: `.npy` (float32, one row per item) or raw little-endian f32.
    #[arg(long)]
    pub vectors: PathBuf,
    /// Dimensions of a raw f32 file (a `.npy` header says them).
    #[arg(long)]
    pub dim: Option<usize>,
    /// Item ids, one per line, parallel to the rows (default: the row numbers).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Item names, one per line, parallel to the rows.
    #[arg(long)]
    pub names: Option<PathBuf>,
    /// Ranker item features: a table as the bundle's `ranker/item_features.tsv`
    /// (header `item_id<TAB>feature...`, one item per line, multi-hot values
    /// joined by `|`); items it lacks are upserted without features.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Items per call; each call is one change-log entry.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

/// Options of `recsys items delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub gateway: GatewayFlags,
    /// Item ids, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ids: Vec<u64>,
}

/// Runs an items command, printing each call's revision.
pub async fn run(command: ItemsCommand) -> anyhow::Result<()> {
    match command {
        ItemsCommand::Upsert(args) => upsert(args).await,
        ItemsCommand::Delete(args) => delete(args).await,
        ItemsCommand::Truncate(args) => crate::compact::truncate(args).await,
    }
}

async fn upsert(args: UpsertArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_CATALOG_ITEMS).contains(&args.batch),
        "--batch {} must be between 1 and {MAX_CATALOG_ITEMS}",
        args.batch
    );
    let vectors = ItemVectors::read(
        &args.vectors,
        args.dim,
        args.ids.as_deref(),
        args.names.as_deref(),
    )
    .with_context(|| format!("reading {}", args.vectors.display()))?;
    let mut features = match &args.features {
        Some(path) => read_features(path)?,
        None => HashMap::new(),
    };
    let mut client = CatalogServiceClient::new(args.gateway.connect().await?);
    let rows: Vec<usize> = (0..vectors.len()).collect();
    let mut revision = 0;
    for batch in rows.chunks(args.batch) {
        let items = batch
            .iter()
            .map(|&row| ItemUpsert {
                item_id: vectors.ids[row],
                embedding: vectors.row(row).to_vec(),
                name: vectors
                    .names
                    .as_ref()
                    .map(|names| names[row].clone())
                    .unwrap_or_default(),
                features: features.remove(&vectors.ids[row]).unwrap_or_default(),
            })
            .collect();
        let response = client
            .upsert_items(args.gateway.request(UpsertItemsRequest { items })?)
            .await
            .map_err(refused)?
            .into_inner();
        revision = response.revision;
        eprintln!("upserted {} items at revision {revision}", response.items);
    }
    println!("{revision}");
    Ok(())
}

/// Reads an item feature table: each item's features by name, a cell with `|`
/// as a list of values, any other as one value (the ranker parses numbers).
fn read_features(path: &Path) -> anyhow::Result<HashMap<u64, HashMap<String, FeatureValue>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    anyhow::ensure!(
        header.first() == Some(&"item_id"),
        "{}: the header must start with item_id",
        path.display()
    );
    let mut table = HashMap::new();
    for (number, line) in lines.enumerate().filter(|(_, line)| !line.is_empty()) {
        let cells: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            cells.len() == header.len(),
            "{}: line {} has {} fields, the header {}",
            path.display(),
            number + 2,
            cells.len(),
            header.len()
        );
        let id: u64 = cells[0].parse().with_context(|| {
            format!(
                "{}: line {}: item_id {:?}",
                path.display(),
                number + 2,
                cells[0]
            )
        })?;
        let values = header[1..]
            .iter()
            .zip(&cells[1..])
            .map(|(name, cell)| {
                let kind = if cell.contains('|') {
                    Kind::StringList(StringList {
                        values: cell.split('|').map(str::to_string).collect(),
                    })
                } else {
                    Kind::StringValue((*cell).to_string())
                };
                (name.to_string(), FeatureValue { kind: Some(kind) })
            })
            .collect();
        table.insert(id, values);
    }
    Ok(table)
}

async fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let mut client = CatalogServiceClient::new(args.gateway.connect().await?);
    let mut revision = 0;
    for ids in args.ids.chunks(MAX_CATALOG_ITEMS) {
        let request = DeleteItemsRequest {
            item_ids: ids.to_vec(),
        };
        let response = client
            .delete_items(args.gateway.request(request)?)
            .await
            .map_err(refused)?
            .into_inner();
        revision = response.revision;
        eprintln!("deleted {} items at revision {revision}", response.items);
    }
    println!("{revision}");
    Ok(())
}
