//! `recsys items upsert | delete`: item changes on a live cluster, through the
//! gateway's `CatalogService` (which appends them to the cluster's change log in
//! etcd; the retrieval replicas apply them within moments).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use recsys_bundle_builder::ItemVectors;
use recsys_proto::limits::MAX_CATALOG_ITEMS;
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::{
    CatalogChangeResponse, DeleteItemsRequest, FeatureValue, ItemUpsert, StringList,
    UpsertItemsRequest,
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
    let client = CatalogServiceClient::new(args.gateway.connect().await?);
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
        let request = UpsertItemsRequest { items };
        let response = with_push_back(|| {
            let mut client = client.clone();
            let request = args.gateway.request(request.clone());
            async move {
                client
                    .upsert_items(request?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .await?;
        revision = response.revision;
        eprintln!("upserted {} items at revision {revision}", response.items);
    }
    println!("{revision}");
    Ok(())
}

/// The longest the CLI keeps sending one call the gateway pushes back.
const MAX_PUSH_BACK: Duration = Duration::from_secs(300);

/// One item change call, sent again while the gateway pushes back (replicas
/// behind the change log, `--max-apply-lag-ms` on the gateway), waiting 50 ms
/// doubling to 2 s between tries, for at most [`MAX_PUSH_BACK`]. Any other
/// refusal (etcd's quota, a bad item) is final.
async fn with_push_back<F, Fut>(mut send: F) -> anyhow::Result<CatalogChangeResponse>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<tonic::Response<CatalogChangeResponse>>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    let mut said = false;
    loop {
        let error = match send().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(error) => error,
        };
        let pushed_back = error.downcast_ref::<tonic::Status>().is_some_and(|status| {
            status.code() == tonic::Code::ResourceExhausted
                && status.message().contains("--max-apply-lag-ms")
        });
        if !pushed_back || started.elapsed() > MAX_PUSH_BACK {
            return Err(match error.downcast::<tonic::Status>() {
                Ok(status) => refused(status),
                Err(error) => error,
            });
        }
        if !said {
            eprintln!("the gateway pushes back (replicas are behind the change log); waiting");
            said = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
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
    let client = CatalogServiceClient::new(args.gateway.connect().await?);
    let mut revision = 0;
    for ids in args.ids.chunks(MAX_CATALOG_ITEMS) {
        let request = DeleteItemsRequest {
            item_ids: ids.to_vec(),
        };
        let response = with_push_back(|| {
            let mut client = client.clone();
            let request = args.gateway.request(request.clone());
            async move {
                client
                    .delete_items(request?)
                    .await
                    .map_err(anyhow::Error::from)
            }
        })
        .await?;
        revision = response.revision;
        eprintln!("deleted {} items at revision {revision}", response.items);
    }
    println!("{revision}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn answer(revision: u64) -> anyhow::Result<tonic::Response<CatalogChangeResponse>> {
        Ok(tonic::Response::new(CatalogChangeResponse {
            revision,
            items: 1,
        }))
    }

    /// The gateway's push-back is waited out; its other refusals are final.
    #[tokio::test(start_paused = true)]
    async fn push_back_is_waited_out_and_other_refusals_are_final() {
        let tries = Cell::new(0);
        let lagging = || {
            tries.set(tries.get() + 1);
            let result = if tries.get() < 3 {
                Err(tonic::Status::resource_exhausted(
                    "item changes refused: ... (--max-apply-lag-ms 10000); retry",
                )
                .into())
            } else {
                answer(7)
            };
            async move { result }
        };
        assert_eq!(with_push_back(lagging).await.unwrap().revision, 7);
        assert_eq!(tries.get(), 3);

        let tries = Cell::new(0);
        let full = || {
            tries.set(tries.get() + 1);
            async {
                Err(tonic::Status::resource_exhausted("etcd is full: --quota-backend-bytes").into())
            }
        };
        let refused = with_push_back(full).await.unwrap_err();
        assert!(
            refused.to_string().contains("quota-backend-bytes"),
            "{refused}"
        );
        assert_eq!(tries.get(), 1);
    }
}
