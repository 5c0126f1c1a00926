//! The `recsys.v1.RankingService` implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use recsys_discovery::{Unavailable, VersionSet};
use recsys_model::{FeatureInput, UserContext};
use recsys_proto::v1::{
    FeatureValue, InfoRequest, InfoResponse, LoadStatus, RankRequest, RankResponse, VersionInfo,
    feature_value::Kind, ranking_service_server::RankingService,
};
use recsys_server::trace_context;
use tonic::{Request, Response, Status};

use crate::batcher::Batcher;
use crate::item_overlay::ServingRanker;
use crate::versions::ServedRanker;
use crate::{RankingConfig, RankingError};

/// The gRPC service of one ranking node.
#[derive(Debug, Clone)]
pub struct RankingNodeService {
    versions: Arc<VersionSet<ServedRanker>>,
    batcher: Arc<Batcher<ServingRanker>>,
    max_candidates: usize,
}

impl RankingNodeService {
    /// A service scoring with the rankers of `versions` on `batcher`'s threads.
    pub fn new(
        versions: Arc<VersionSet<ServedRanker>>,
        batcher: Arc<Batcher<ServingRanker>>,
        config: &RankingConfig,
    ) -> Self {
        Self {
            versions,
            batcher,
            max_candidates: config.max_candidates,
        }
    }
}

use recsys_proto::checks::check_user_features;
use recsys_proto::limits::MAX_ID_BYTES;

/// The request's user features as the ranker takes them, once they are within
/// the API's limits (`recsys_proto::checks`, the gateway's own check). Integers
/// are values of a categorical feature (ids, buckets) or numbers, whichever the
/// feature is; the ranker checks each value against its feature's kind.
fn user_features(
    features: &HashMap<String, FeatureValue>,
) -> Result<HashMap<String, FeatureInput>, RankingError> {
    check_user_features(features)
        .map_err(|e| RankingError::invalid("user_features", e.to_string()))?;
    Ok(feature_inputs(features))
}

/// Feature values as the ranker takes them (an unset value is left out).
pub(crate) fn feature_inputs(
    features: &HashMap<String, FeatureValue>,
) -> HashMap<String, FeatureInput> {
    features
        .iter()
        .filter_map(|(name, value)| {
            let input = match value.kind.as_ref()? {
                Kind::StringValue(s) => FeatureInput::Value(s.clone()),
                Kind::IntValue(i) => FeatureInput::Value(i.to_string()),
                Kind::FloatValue(f) => FeatureInput::Number(f64::from(*f)),
                Kind::StringList(list) => FeatureInput::Values(list.values.clone()),
            };
            Some((name.clone(), input))
        })
        .collect()
}

impl RankingNodeService {
    /// Checks, scores on the batcher's threads, answers.
    async fn rank(
        &self,
        request: RankRequest,
        deadline: Option<Instant>,
    ) -> Result<RankResponse, RankingError> {
        // Looked up once: the whole request is scored by this version.
        let (bundle_version, ranker) = match self.versions.get(&request.bundle_version) {
            Ok((version, served)) => match request.ranker_variant.as_str() {
                "" | recsys_bundle::DEFAULT_VARIANT => (version, served.ranker.clone()),
                name => match served.variants.get(name) {
                    Some(ranker) => (version, ranker.clone()),
                    None => {
                        return Err(RankingError::VariantNotServed(format!(
                            "ranker_variant: bundle version {version} has no variant {name:?} (it has {})",
                            std::iter::once(recsys_bundle::DEFAULT_VARIANT)
                                .chain(served.variants.keys().map(String::as_str))
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                },
            },
            Err(Unavailable::Loading) => {
                return Err(RankingError::NotReady("ranker still loading".into()));
            }
            Err(Unavailable::Failed(reason)) => {
                return Err(RankingError::NotReady(format!(
                    "ranker not loaded: {reason}"
                )));
            }
            Err(not_served @ Unavailable::NotServed { .. }) => {
                return Err(RankingError::VersionNotServed(not_served.to_string()));
            }
        };
        if request.item_ids.len() > self.max_candidates {
            return Err(RankingError::invalid(
                "item_ids",
                format!(
                    "has {} ids, the limit is {}",
                    request.item_ids.len(),
                    self.max_candidates
                ),
            ));
        }
        if request.user_id.len() > MAX_ID_BYTES {
            return Err(RankingError::invalid(
                "user_id",
                format!(
                    "is {} bytes, the limit is {MAX_ID_BYTES}",
                    request.user_id.len()
                ),
            ));
        }
        if request.min_log_revision > ranker.revision()
            && !ranker.wait_for(request.min_log_revision, deadline).await
        {
            tracing::debug!(
                wanted = request.min_log_revision,
                applied = ranker.revision(),
                "scoring before the item changes asked for are applied"
            );
        }
        // Checked before the pass, which they do not change: they only
        // recombine its head scores.
        let weights = if request.head_weights.is_empty() {
            Vec::new()
        } else {
            ranker.ranker().head_weights(&request.head_weights)?
        };
        let user = UserContext {
            user_id: request.user_id,
            features: user_features(&request.user_features)?,
        };
        let answer = self
            .batcher
            .submit(ranker.clone(), user, request.item_ids, deadline)?;
        // The reply is dropped unanswered only when the scoring pass panicked.
        let outcome = answer.await.map_err(|_| RankingError::NoAnswer)?;
        let mut scores = outcome.map_err(RankingError::DeadlineExceeded)??;
        ranker.ranker().reweigh(&mut scores, &weights);
        Ok(RankResponse {
            bundle_version,
            scores: scores.scores,
            model_version: ranker.ranker().version().to_string(),
            user_out_of_vocabulary: scores.user_out_of_vocabulary,
            heads: ranker
                .ranker()
                .heads()
                .iter()
                .map(|h| h.name.clone())
                .collect(),
            head_scores: scores.head_scores,
        })
    }
}

#[tonic::async_trait]
impl RankingService for RankingNodeService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        // The queue drops the request unscored once the caller stops waiting.
        let deadline = recsys_server::deadline::metadata_timeout(request.metadata())
            .and_then(recsys_server::deadline::deadline_after);
        let span = tracing::debug_span!(
            target: trace_context::TARGET,
            "rank",
            otel.kind = "server",
            candidates = request.get_ref().item_ids.len(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        );
        trace_context::adopt_parent(&span, request.metadata());
        Ok(Response::new(
            trace_context::in_span(
                span,
                RankingNodeService::rank(self, request.into_inner(), deadline),
            )
            .await?,
        ))
    }

    #[allow(deprecated)] // `state`, the string, is still filled for older clients.
    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        use recsys_discovery::VersionPhase;
        let versions: Vec<VersionInfo> = self
            .versions
            .states()
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
                shard_count: 0,
            })
            .collect();
        let mut response = match self.versions.primary_version() {
            Some(version) => InfoResponse {
                bundle_version: version,
                load_status: LoadStatus::Serving.into(),
                ..Default::default()
            },
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
