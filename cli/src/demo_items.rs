//! The demo's item updates: while the cluster serves, a new item is added for
//! the first sample user and that user's best item is withdrawn, both through
//! the gateway's `CatalogService` (the change log in etcd), and the user's
//! recommendations are asked again, carrying the delete's revision so that the
//! answer is one every node has applied both changes to.
//!
//! The new item is placed where the user's query embedding points (so retrieval
//! finds it first) and given the withdrawn item's ranker features under its own
//! id and title: "a new movie like the one withdrawn".

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use recsys_bundle::{Manifest, Metric, QueryModel};
use recsys_proto::v1::catalog_service_client::CatalogServiceClient;
use recsys_proto::v1::feature_value::Kind;
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_proto::v1::{
    DeleteItemsRequest, FeatureValue, ItemUpsert, RecommendOptions, RecommendRequest,
    RecommendResponse, StringList, UpsertItemsRequest, recommend_request::Query,
};
use tonic::transport::Channel;

use crate::query::print_response;

/// The id the demo gives its new item: above MovieLens' and the synthetic ids.
const NEW_ITEM_ID: u64 = 10_000_001;

async fn ask(
    client: &mut GatewayServiceClient<Channel>,
    user: &str,
    k: u32,
    min_revision: u64,
    skip_ranking: bool,
) -> anyhow::Result<RecommendResponse> {
    let mut request = tonic::Request::new(RecommendRequest {
        query: Some(Query::UserId(user.to_string())),
        k,
        retrieve_k: 100,
        min_revision,
        options: Some(RecommendOptions {
            skip_ranking,
            ..Default::default()
        }),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(5));
    Ok(client
        .recommend(request)
        .await
        .map_err(|status| anyhow::anyhow!("Recommend: {}", status.message()))?
        .into_inner())
}

/// The ranker's item features of `source` as an upsert's, for `id` titled
/// `name`: the cells naming the source's id name the new one, a title column
/// takes the name, a cell with `|` is a list (empty: none).
fn features_like(
    bundle_dir: &Path,
    manifest: &Manifest,
    source: u64,
    id: u64,
    name: &str,
) -> anyhow::Result<HashMap<String, FeatureValue>> {
    let Some(ranker) = &manifest.ranker else {
        return Ok(HashMap::new());
    };
    let path = Manifest::resolve(bundle_dir, &ranker.item_features);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
    let source_text = source.to_string();
    let Some(row) = lines.find(|line| line.split('\t').next() == Some(source_text.as_str())) else {
        return Ok(HashMap::new());
    };
    Ok(header
        .iter()
        .zip(row.split('\t'))
        .skip(1)
        .filter(|(_, cell)| !cell.is_empty())
        .map(|(column, cell)| {
            let kind = if *cell == source_text {
                Kind::StringValue(id.to_string())
            } else if column.contains("title") {
                Kind::StringValue(name.to_string())
            } else if cell.contains('|') {
                Kind::StringList(StringList {
                    values: cell.split('|').map(str::to_string).collect(),
                })
            } else {
                Kind::StringValue(cell.to_string())
            };
            (column.to_string(), FeatureValue { kind: Some(kind) })
        })
        .collect())
}

/// Adds an item for `user`, withdraws the user's best one, and shows the
/// user's recommendations before and after.
pub async fn show(
    channel: Channel,
    bundle_dir: &Path,
    manifest: &Manifest,
    user: &str,
) -> anyhow::Result<()> {
    let Some(spec) = &manifest.query_model else {
        return Ok(());
    };
    let model = QueryModel::load(bundle_dir, spec)?;
    let embedding = model
        .encode(user, &HashMap::new())
        .map_err(|e| anyhow::anyhow!("encoding {user}: {e:?}"))?;
    let mut gateway = GatewayServiceClient::new(channel.clone());
    let mut catalog = CatalogServiceClient::new(channel);
    let before = ask(&mut gateway, user, 5, 0, false).await?;
    let Some(best) = before.items.first().cloned() else {
        return Ok(());
    };
    // Inner product favours longer vectors; cosine and L2 the same direction.
    let scale = if manifest.index.metric == Metric::Ip {
        2.0
    } else {
        1.0
    };
    let name = format!("A new release like {}", best.name);
    let added = catalog
        .upsert_items(UpsertItemsRequest {
            items: vec![ItemUpsert {
                item_id: NEW_ITEM_ID,
                embedding: embedding.iter().map(|v| v * scale).collect(),
                name: name.clone(),
                features: features_like(bundle_dir, manifest, best.item_id, NEW_ITEM_ID, &name)?,
            }],
        })
        .await
        .map_err(|status| anyhow::anyhow!("UpsertItems: {}", status.message()))?
        .into_inner();
    println!(
        "\nwhile the cluster serves: added item {NEW_ITEM_ID} \"{name}\" (change log revision {})",
        added.revision
    );
    let withdrawn = catalog
        .delete_items(DeleteItemsRequest {
            item_ids: vec![best.item_id],
        })
        .await
        .map_err(|status| anyhow::anyhow!("DeleteItems: {}", status.message()))?
        .into_inner();
    println!(
        "and withdrew item {} \"{}\", {user}'s best (revision {})",
        best.item_id, best.name, withdrawn.revision
    );
    let after = ask(&mut gateway, user, 10, withdrawn.revision, false).await?;
    println!(
        "\nrecommendations for {user} now (min_revision {}):",
        withdrawn.revision
    );
    print_response(&after);
    match after.items.iter().position(|i| i.item_id == NEW_ITEM_ID) {
        Some(rank) => println!("  the new item is number {}", rank + 1),
        None => {
            // The ranker has never seen the new id (its id embedding is the
            // out-of-vocabulary row): retrieval alone shows where it landed.
            let retrieved = ask(&mut gateway, user, 5, withdrawn.revision, true).await?;
            println!(
                "  the ranker puts the new item below the top 10; retrieval alone (skip_ranking):"
            );
            print_response(&retrieved);
        }
    }
    if after.items.iter().any(|i| i.item_id == best.item_id) {
        anyhow::bail!("the withdrawn item {} is still recommended", best.item_id);
    }
    println!("  try it: recsys items delete --gateway ADDR --ids {NEW_ITEM_ID}   (then ask again)");
    Ok(())
}
