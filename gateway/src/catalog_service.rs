//! `recsys.v1.CatalogService` on the gateway: item upserts and deletes, checked
//! against the bundle the gateway serves and appended to the cluster's change log
//! in etcd, one log entry per call, one record per shard the call touches.
//!
//! The call answers once etcd has committed the entry, with its revision; the
//! retrieval replicas of each shard then apply it (`recsys-retrieval-node`'s
//! follower). Without etcd there is no log to append to, and the service says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use recsys_bundle::shard_of;
use recsys_catalog_log::{ChangeLog, LogError};
use recsys_discovery::DiscoveryError;
use recsys_proto::checks::check_embedding;
use recsys_proto::limits::{MAX_CATALOG_ITEMS, MAX_ID_BYTES};
use recsys_proto::v1::catalog_service_server::CatalogService;
use recsys_proto::v1::{
    CatalogChangeResponse, DeleteItemsRequest, ItemChangeRecord, ShardChangeRecord,
    UpsertItemsRequest, item_change_record::Change,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::apply_lag::ApplyLag;
use crate::bundle_state::ready_bundle;
use crate::service::GatewayShared;

/// Where the gateway appends item changes: the etcd the cluster registers in.
#[derive(Debug, Clone)]
pub struct ItemLogOptions {
    /// The cluster's etcd and how to reach it.
    pub etcd: recsys_discovery::EtcdAccess,
    /// The cluster name (`/recsys/{cluster}/catalog/`).
    pub cluster: String,
    /// Refuse item changes once one accepted here has waited longer than this
    /// for a serving retrieval replica to apply it, or the waiting ones would
    /// take longer than this to apply (`apply_lag`); zero: never.
    pub max_apply_lag: Duration,
}

/// `--max-apply-lag-ms`'s default: a replica restarted beside a steady writer
/// catches up well within it, a writer faster than the replicas reaches it in
/// seconds, and a 50,000-item burst still goes in at ~40,000 items/s
/// (docs/benchmarks-history.md, "Session 14: push-back").
pub const DEFAULT_MAX_APPLY_LAG: Duration = Duration::from_secs(10);

/// The service; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    shared: Arc<GatewayShared>,
    options: Option<ItemLogOptions>,
    /// Connected on first use: connecting is lazy anyway, and a gateway whose
    /// etcd is away must still start.
    log: Arc<OnceCell<ChangeLog>>,
    /// Push-back while replicas fall behind.
    lag: Arc<ApplyLag>,
}

impl Catalog {
    /// A service appending to the log `options` names (none: every call is
    /// refused with `FAILED_PRECONDITION`).
    pub fn new(
        shared: Arc<GatewayShared>,
        options: Option<ItemLogOptions>,
        shutdown: CancellationToken,
    ) -> Self {
        let max = options
            .as_ref()
            .map_or(Duration::ZERO, |options| options.max_apply_lag);
        let lag = Arc::new(ApplyLag::new(max));
        lag.spawn_probes(shared.view.clone(), shared.clients.clone(), shutdown);
        Self {
            shared,
            options,
            log: Arc::new(OnceCell::new()),
            lag,
        }
    }

    async fn log(&self) -> Result<&ChangeLog, Status> {
        let Some(options) = &self.options else {
            return Err(Status::failed_precondition(
                "item changes need the cluster's etcd: start the gateway with --etcd",
            ));
        };
        self.log
            .get_or_try_init(|| ChangeLog::connect(&options.etcd, &options.cluster))
            .await
            .map_err(log_status)
    }

    /// The bundle's shard count, dimensions and version.
    fn bundle(&self) -> Result<(u32, usize, String), Status> {
        let (_, bundle) = ready_bundle(&self.shared.versions, "").map_err(Status::from)?;
        let manifest = &bundle.manifest;
        Ok((
            manifest.shard_count,
            manifest.dimensions,
            manifest.version.clone(),
        ))
    }

    /// Appends `changes` (item id, change) as one log entry.
    async fn append(
        &self,
        changes: Vec<(u64, Change)>,
        shard_count: u32,
        version: String,
    ) -> Result<Response<CatalogChangeResponse>, Status> {
        let items = changes.len() as u32;
        let mut by_shard: BTreeMap<u32, Vec<ItemChangeRecord>> = BTreeMap::new();
        for (id, change) in changes {
            by_shard
                .entry(shard_of(id, shard_count))
                .or_default()
                .push(ItemChangeRecord {
                    change: Some(change),
                });
        }
        let per_shard: Vec<(u32, u64)> = by_shard
            .iter()
            .map(|(shard, changes)| (*shard, changes.len() as u64))
            .collect();
        self.lag.check(&per_shard, shard_count)?;
        let records: Vec<ShardChangeRecord> = by_shard
            .into_iter()
            .map(|(shard, changes)| ShardChangeRecord {
                shard,
                shard_count,
                bundle_version: version.clone(),
                changes,
            })
            .collect();
        let revision = self
            .log()
            .await?
            .append(&records)
            .await
            .map_err(log_status)?;
        self.lag.appended(revision, &per_shard, shard_count);
        tracing::info!(
            revision,
            items,
            shards = records.len(),
            "item changes appended"
        );
        Ok(Response::new(CatalogChangeResponse { revision, items }))
    }
}

/// A log error as the caller should see it.
fn log_status(error: LogError) -> Status {
    match &error {
        LogError::TooLarge { .. } | LogError::Etcd(DiscoveryError::SpaceExceeded { .. }) => {
            Status::resource_exhausted(error.to_string())
        }
        // The gateway's own etcd user lacks the permission: its configuration,
        // not the caller's request and not an outage.
        LogError::Etcd(etcd) if etcd.is_refusal() => Status::failed_precondition(format!(
            "the gateway may not write the change log: {error}"
        )),
        LogError::Etcd(_) => Status::unavailable(format!("the change log is unavailable: {error}")),
        LogError::Malformed { .. } => Status::internal(error.to_string()),
    }
}

fn check_count(field: &str, count: usize) -> Result<(), Status> {
    if count == 0 || count > MAX_CATALOG_ITEMS {
        return Err(Status::invalid_argument(format!(
            "{field}: has {count} items, must be between 1 and {MAX_CATALOG_ITEMS}"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl CatalogService for Catalog {
    async fn upsert_items(
        &self,
        request: Request<UpsertItemsRequest>,
    ) -> Result<Response<CatalogChangeResponse>, Status> {
        let items = request.into_inner().items;
        check_count("items", items.len())?;
        let (shard_count, dimensions, version) = self.bundle()?;
        for (i, item) in items.iter().enumerate() {
            if item.embedding.len() != dimensions {
                return Err(Status::invalid_argument(format!(
                    "items[{i}].embedding: has {} values, expected {dimensions}",
                    item.embedding.len()
                )));
            }
            check_embedding(&item.embedding, dimensions).map_err(|error| {
                Status::invalid_argument(format!("items[{i}].embedding: {error}"))
            })?;
            if item.name.len() > MAX_ID_BYTES {
                return Err(Status::invalid_argument(format!(
                    "items[{i}].name: is {} bytes, the limit is {MAX_ID_BYTES}",
                    item.name.len()
                )));
            }
            recsys_proto::checks::check_user_features(&item.features).map_err(|error| {
                Status::invalid_argument(format!("items[{i}].features: {error}"))
            })?;
        }
        let changes = items
            .into_iter()
            .map(|item| (item.item_id, Change::Upsert(item)))
            .collect();
        self.append(changes, shard_count, version).await
    }

    async fn delete_items(
        &self,
        request: Request<DeleteItemsRequest>,
    ) -> Result<Response<CatalogChangeResponse>, Status> {
        let ids = request.into_inner().item_ids;
        check_count("item_ids", ids.len())?;
        let (shard_count, _, version) = self.bundle()?;
        let changes = ids
            .into_iter()
            .map(|id| (id, Change::DeleteItemId(id)))
            .collect();
        self.append(changes, shard_count, version).await
    }
}
