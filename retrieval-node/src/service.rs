//! The `recsys.v1.RetrievalService` implementation: validation, then the search on
//! the blocking pool.

use std::sync::Arc;
use std::time::Instant;

use recsys_bundle::attributes::RowFilter;
use recsys_bundle::filter::Filter;
use recsys_catalog_log::{CatchUp, ChangeLog};
use recsys_discovery::{Unavailable, VersionPhase, VersionSet};
use recsys_index::{AttributeFilter, Route, ShardAttributes};
use recsys_proto::checks::check_embedding;
use recsys_proto::limits::MAX_FILTER_BYTES;
use recsys_proto::v1::{
    GetItemVectorRequest, GetItemVectorResponse, InfoRequest, InfoResponse, LoadStatus,
    SearchRequest, SearchResponse, VersionInfo, retrieval_service_server::RetrievalService,
};
use recsys_server::exact_searches::ExactSearches;
use recsys_server::trace_context;
use tokio::sync::{Semaphore, watch};
use tonic::{Request, Response, Status};

use crate::versions::ServedShard;
use crate::{NodeError, SearchLimits};

/// The gRPC service of one retrieval node.
#[derive(Debug, Clone)]
pub struct RetrievalNodeService {
    versions: Arc<VersionSet<ServedShard>>,
    pool: Arc<Semaphore>,
    limits: SearchLimits,
    exact_searches: ExactSearches,
    /// The change log, with etcd: read to answer `min_log_revision`.
    change_log: Option<ChangeLog>,
}

/// Longest a search waits for the shard to apply the revision it asks for.
const MAX_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl RetrievalNodeService {
    /// A service answering from the versions in `versions`, at most `pool`
    /// searches at a time.
    pub fn new(
        versions: Arc<VersionSet<ServedShard>>,
        pool: Arc<Semaphore>,
        limits: SearchLimits,
        change_log: Option<ChangeLog>,
    ) -> Self {
        Self {
            versions,
            pool,
            change_log,
            exact_searches: ExactSearches::new(limits.max_exact_searches),
            limits,
        }
    }

    /// The version a search answers from: the one it names, else the primary;
    /// looked up once, so the whole search uses that one.
    fn ready(&self, version: &str) -> Result<(String, Arc<ServedShard>), NodeError> {
        self.versions.get(version).map_err(|why| match why {
            Unavailable::Loading => NodeError::NotReady("the shard is still loading".into()),
            Unavailable::Failed(reason) => NodeError::NotReady(reason),
            not_served @ Unavailable::NotServed { .. } => {
                NodeError::VersionNotServed(not_served.to_string())
            }
        })
    }

    /// Returns once `served` has applied the change log up to `wanted` (at once
    /// when it has), or why not ([`Self::wait_for_revision`]).
    async fn caught_up(
        &self,
        served: &ServedShard,
        wanted: u64,
        deadline: Option<Instant>,
    ) -> Result<(), NodeError> {
        if wanted <= served.live.revision() {
            return Ok(());
        }
        let shard = served.live.base().shard();
        self.wait_for_revision(&served.applied, shard, wanted, deadline)
            .await
    }

    /// Waits until the shard holds every change up to revision `wanted`, at
    /// most until `deadline` (or [`MAX_REVISION_WAIT`] without one). The log is
    /// partitioned by shard, so the shard's own applied revision stops at its
    /// last entry: one etcd read finds the shard's last entry up to `wanted`,
    /// and only that one must be applied. Without the log, or when the wait runs
    /// out, `FAILED_PRECONDITION`, so the gateway asks another replica.
    async fn wait_for_revision(
        &self,
        applied: &watch::Receiver<u64>,
        shard: u32,
        wanted: u64,
        deadline: Option<Instant>,
    ) -> Result<(), NodeError> {
        let behind = || NodeError::Behind {
            applied: *applied.borrow(),
            wanted,
        };
        let limit = Instant::now() + MAX_REVISION_WAIT;
        let until = deadline.map_or(limit, |deadline| deadline.min(limit));
        let Some(log) = &self.change_log else {
            return Err(behind());
        };
        let applied_now = *applied.borrow();
        let needed =
            tokio::time::timeout_at(until.into(), log.catch_up(shard, applied_now, wanted))
                .await
                .map_err(|_| behind())?
                .map_err(|error| {
                    tracing::warn!(%error, "cannot check the change log for min_log_revision");
                    behind()
                })?;
        let target = match needed {
            CatchUp::Nothing => return Ok(()),
            CatchUp::Apply(target) => target,
            CatchUp::Ahead { .. } => return Err(behind()),
        };
        let mut applied = applied.clone();
        match tokio::time::timeout_at(
            until.into(),
            applied.wait_for(|revision| *revision >= target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(behind()),
        }
    }

    /// Validates, waits for a slot on the search pool, searches. The searches
    /// waiting for a slot are bounded by the admission limit around the service
    /// (`recsys_server::admission`: every waiting search is a call in flight), and
    /// a caller that leaves drops its wait. A search whose `deadline` has passed
    /// by the time it would start is not run: `DEADLINE_EXCEEDED`.
    async fn search(
        &self,
        request: SearchRequest,
        deadline: Option<Instant>,
    ) -> Result<SearchResponse, NodeError> {
        let (version, served) = self.ready(&request.bundle_version)?;
        let live = served.live.clone();
        let index = live.base();
        validate(&request, index.dimensions(), &self.limits)?;
        let SearchRequest {
            query,
            k,
            mut exclude_item_ids,
            exact,
            min_log_revision,
            bundle_version: _,
            filter,
            return_vectors,
            recall_target,
            recall_at,
        } = request;
        // The depth is looked up for the items the target is about.
        let recall_at = if recall_at == 0 { k } else { recall_at.min(k) };
        let recall_target = (recall_target > 0.0).then_some(recall_target);
        let filter = checked_filter(&filter, served.attributes.as_deref())?;
        let attributes = served.attributes.clone();
        self.caught_up(&served, min_log_revision, deadline).await?;
        exclude_item_ids.sort_unstable();
        exclude_item_ids.dedup();
        // Held until the search ends (moved into the blocking task below).
        let exact_slot = if exact {
            Some(self.exact_searches.try_start()?)
        } else {
            None
        };
        let queued = Instant::now();
        let waiting = crate::metrics::waiting(index.shard());
        let permit = self
            .pool
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NodeError::PoolClosed)?;
        drop(waiting);
        let queued = queued.elapsed();
        let searcher = live.clone();
        let request_span = tracing::Span::current();
        let searched = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _exact_slot = exact_slot;
            let started = Instant::now();
            if deadline.is_some_and(|deadline| deadline <= started) {
                return None;
            }
            let span = tracing::debug_span!(
                target: trace_context::TARGET,
                parent: &request_span,
                "index_search",
                shard = searcher.base().shard(),
                ef = tracing::field::Empty,
                filtered = filter.is_some(),
                exact,
            )
            .entered();
            // Filtered searches keep the bundle's beam: their routes are
            // chosen from it (`recsys_index::Route`).
            let ef = searcher
                .base()
                .depth_for(
                    recall_at as usize,
                    recall_target.filter(|_| filter.is_none()),
                )
                .max(k as usize);
            span.record("ef", ef);
            let hits = match (filter, &attributes) {
                (Some(filter), Some(attributes)) => filtered_search(
                    &searcher,
                    &query,
                    k,
                    &exclude_item_ids,
                    exact,
                    filter,
                    attributes,
                ),
                _ => searcher
                    .search_at(&query, k as usize, &exclude_item_ids, exact, ef)
                    .map(|hits| (hits, None)),
            };
            Some((hits, started.elapsed(), if exact { 0 } else { ef }))
        })
        .await
        .map_err(|e| NodeError::Search(format!("search task failed: {e}")))?;
        let Some((hits, elapsed, ef)) = searched else {
            crate::metrics::expired(index.shard());
            return Err(NodeError::DeadlineExceeded);
        };
        crate::metrics::search(index.shard(), exact, queued, elapsed);
        let (hits, filtered) = hits?;
        if let Some((_, route)) = filtered {
            crate::metrics::filtered(index.shard(), route.as_str());
        }
        let (item_ids, scores): (Vec<u64>, Vec<f32>) = hits.into_iter().unzip();
        let vectors = if return_vectors {
            stored_vectors(&live, &item_ids)?
        } else {
            Vec::new()
        };
        Ok(SearchResponse {
            item_ids,
            scores,
            shard: index.shard(),
            items_searched: live.stats().items,
            bundle_version: version,
            search_us: elapsed.as_micros() as u64,
            // Read after the search: never lower than what the search saw.
            log_revision: live.revision(),
            filter_matches: filtered.map_or(0, |(matches, _)| matches),
            filter_scanned: filtered.is_some_and(|(_, route)| route == Route::Scan),
            vectors,
            search_ef: u32::try_from(ef).unwrap_or(u32::MAX),
        })
    }

    /// One item's vector from the version asked for, once the shard has applied
    /// `min_log_revision`. A lookup in memory: no pool slot.
    async fn item_vector(
        &self,
        request: GetItemVectorRequest,
        deadline: Option<Instant>,
    ) -> Result<GetItemVectorResponse, NodeError> {
        let (version, served) = self.ready(&request.bundle_version)?;
        self.caught_up(&served, request.min_log_revision, deadline)
            .await?;
        let live = &served.live;
        let vector = live.vector(request.item_id)?;
        Ok(GetItemVectorResponse {
            found: vector.is_some(),
            vector: vector.unwrap_or_default(),
            bundle_version: version,
            log_revision: live.revision(),
        })
    }
}

/// The vectors of `ids` as the shard serves them, row after row. An id the
/// search just returned that is gone now (deleted meanwhile) gets zeros.
fn stored_vectors(live: &recsys_index::LiveShard, ids: &[u64]) -> Result<Vec<f32>, NodeError> {
    let dimensions = live.base().dimensions();
    let mut vectors = Vec::with_capacity(ids.len() * dimensions);
    for id in ids {
        match live.vector(*id)? {
            Some(vector) => vectors.extend(vector),
            None => vectors.extend(std::iter::repeat_n(0.0, dimensions)),
        }
    }
    Ok(vectors)
}

/// A search's filter parsed and compiled against the shard's attributes (once,
/// before the search waits for the pool): `None` without one,
/// `INVALID_ARGUMENT` naming the filter's problem (and the attribute) for one
/// that cannot be used here.
fn checked_filter(
    text: &str,
    attributes: Option<&ShardAttributes>,
) -> Result<Option<RowFilter>, NodeError> {
    if text.is_empty() {
        return Ok(None);
    }
    let filter = Filter::parse(text).map_err(|e| NodeError::invalid("filter", e.to_string()))?;
    let attributes = attributes
        .ok_or_else(|| NodeError::invalid("filter", "the bundle has no item attributes"))?;
    let compiled = attributes
        .attributes()
        .compile(&filter)
        .map_err(|e| NodeError::invalid("filter", e.to_string()))?;
    Ok(Some(compiled))
}

/// The hits of a filtered search, with the estimated matches and the way the
/// search took.
type FilteredAnswer = (Vec<recsys_index::Hit>, Option<(u64, Route)>);

/// [`LiveShard::search_filtered`] with a filter compiled against `attributes`.
fn filtered_search(
    shard: &recsys_index::LiveShard,
    query: &[f32],
    k: u32,
    excluded: &[u64],
    exact: bool,
    filter: RowFilter,
    attributes: &ShardAttributes,
) -> Result<FilteredAnswer, recsys_index::SearchError> {
    let filter = AttributeFilter::compiled(attributes, filter);
    let matches = filter.estimated_matches().round() as u64;
    let answer = shard.search_filtered(query, k as usize, excluded, exact, &filter)?;
    Ok((answer.hits, Some((matches, answer.route))))
}

/// Checks a request against the index and the limits; errors name the field and the limit.
pub fn validate(
    request: &SearchRequest,
    dimensions: usize,
    limits: &SearchLimits,
) -> Result<(), NodeError> {
    if request.query.is_empty() {
        return Err(NodeError::invalid(
            "query",
            format!("is empty, expected {dimensions} values"),
        ));
    }
    if request.query.len() != dimensions {
        return Err(NodeError::invalid(
            "query",
            format!("has {} values, expected {dimensions}", request.query.len()),
        ));
    }
    if let Err(error) = check_embedding(&request.query, dimensions) {
        return Err(NodeError::invalid("query", error.to_string()));
    }
    if request.k == 0 || request.k > limits.max_k {
        return Err(NodeError::invalid(
            "k",
            format!("is {}, must be between 1 and {}", request.k, limits.max_k),
        ));
    }
    let target = request.recall_target;
    if !(0.0..=1.0).contains(&target) {
        return Err(NodeError::invalid(
            "recall_target",
            format!("is {target}, must be between 0 and 1 (0 means the bundle's beam)"),
        ));
    }
    if request.filter.len() > MAX_FILTER_BYTES {
        return Err(NodeError::invalid(
            "filter",
            format!(
                "is {} bytes, the limit is {MAX_FILTER_BYTES}",
                request.filter.len()
            ),
        ));
    }
    if request.exclude_item_ids.len() > limits.max_exclusions {
        return Err(NodeError::invalid(
            "exclude_item_ids",
            format!(
                "has {} ids, the limit is {}",
                request.exclude_item_ids.len(),
                limits.max_exclusions
            ),
        ));
    }
    Ok(())
}

#[tonic::async_trait]
impl RetrievalService for RetrievalNodeService {
    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        let deadline = recsys_server::deadline::metadata_timeout(request.metadata())
            .and_then(recsys_server::deadline::deadline_after);
        let span = tracing::debug_span!(
            target: trace_context::TARGET,
            "search",
            otel.kind = "server",
            k = request.get_ref().k,
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        trace_context::adopt_parent(&span, request.metadata());
        let response = trace_context::in_span(
            span,
            RetrievalNodeService::search(self, request.into_inner(), deadline),
        )
        .await?;
        Ok(Response::new(response))
    }

    async fn get_item_vector(
        &self,
        request: Request<GetItemVectorRequest>,
    ) -> Result<Response<GetItemVectorResponse>, Status> {
        let deadline = recsys_server::deadline::metadata_timeout(request.metadata())
            .and_then(recsys_server::deadline::deadline_after);
        let response = self.item_vector(request.into_inner(), deadline).await?;
        Ok(Response::new(response))
    }

    #[allow(deprecated)] // `state`, the string, is still filled for older clients.
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let versions: Vec<VersionInfo> = crate::versions::registration_states(&self.versions)
            .into_iter()
            .map(|state| VersionInfo {
                load_status: match state.state {
                    VersionPhase::Loading => LoadStatus::Loading,
                    VersionPhase::Serving => LoadStatus::Serving,
                    VersionPhase::Failed => LoadStatus::Failed,
                }
                .into(),
                version: state.version,
                load_error: state.error,
                shard_count: state.shard_count.unwrap_or(0),
            })
            .collect();
        let mut response = match self.versions.primary() {
            Some((version, served)) => {
                let live = &served.live;
                let (index, stats) = (live.base(), live.stats());
                InfoResponse {
                    shard: index.shard(),
                    shard_count: index.shard_count(),
                    items: stats.items,
                    log_revision: stats.revision,
                    live_items: stats.delta,
                    folded: live.folded(),
                    dimensions: index.dimensions() as u32,
                    metric: index.metric().as_str().into(),
                    bundle_version: version,
                    quantization: index.quantization().as_str().into(),
                    load_status: LoadStatus::Serving.into(),
                    ..Default::default()
                }
            }
            None => match self.versions.get("") {
                Err(Unavailable::Failed(reason)) => InfoResponse {
                    load_error: reason,
                    load_status: LoadStatus::Failed.into(),
                    ..Default::default()
                },
                _ => InfoResponse {
                    load_status: LoadStatus::Loading.into(),
                    ..Default::default()
                },
            },
        };
        response.versions = versions;
        response.state = response.load_status().name().into();
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: Vec<f32>, k: u32, excluded: usize) -> SearchRequest {
        SearchRequest {
            min_log_revision: 0,
            bundle_version: String::new(),
            query,
            k,
            exclude_item_ids: (0..excluded as u64).collect(),
            exact: false,
            ..Default::default()
        }
    }

    #[test]
    fn validation_names_field_and_limit() {
        let limits = SearchLimits {
            max_k: 100,
            max_exclusions: 3,
            max_exact_searches: 1,
        };
        let message = |r: SearchRequest| validate(&r, 2, &limits).unwrap_err().to_string();
        assert!(message(request(vec![], 1, 0)).contains("query: is empty, expected 2"));
        assert!(message(request(vec![1.0], 1, 0)).contains("query: has 1 values, expected 2"));
        assert!(message(request(vec![1.0, f32::NAN], 1, 0)).contains("value 1 is NaN"));
        assert!(message(request(vec![1.0, f32::INFINITY], 1, 0)).contains("finite"));
        // The query: finite, but its scores would be inf.
        assert_eq!(
            message(request(vec![3.4e38, -3.4e38], 1, 0)),
            "query: value 0 is 3.4e38, values must be finite and within ±1e6"
        );
        assert!(
            message(request(vec![1.0, 0.0], 0, 0)).contains("k: is 0, must be between 1 and 100")
        );
        assert!(message(request(vec![1.0, 0.0], 101, 0)).contains("between 1 and 100"));
        assert!(message(request(vec![1.0, 0.0], 1, 4)).contains("the limit is 3"));
        assert!(validate(&request(vec![1.0, 0.0], 100, 3), 2, &limits).is_ok());
        for target in [-0.1, 1.01, f32::NAN] {
            let mut r = request(vec![1.0, 0.0], 1, 0);
            r.recall_target = target;
            assert!(message(r).starts_with("recall_target: is"), "{target}");
        }
        let mut r = request(vec![1.0, 0.0], 1, 0);
        r.recall_target = 0.95;
        assert!(validate(&r, 2, &limits).is_ok());
    }
}
