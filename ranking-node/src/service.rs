//! The `recsys.v1.RankingService` implementation.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use recsys_model::{FeatureInput, UserContext};
use recsys_proto::v1::{
    FeatureValue, RankRequest, RankResponse, feature_value::Kind,
    ranking_service_server::RankingService,
};
use tonic::{Request, Response, Status};

use crate::batcher::Batcher;
use crate::{RankingConfig, RankingError};

use crate::item_overlay::ServingRanker;

/// Where loading the ranker stands.
pub type LoadState = recsys_server::grpc::LoadState<ServingRanker, crate::error::RankerLoadError>;

/// The gRPC service of one ranking node.
#[derive(Debug, Clone)]
pub struct RankingNodeService {
    state: Arc<ArcSwap<LoadState>>,
    batcher: Arc<Batcher<ServingRanker>>,
    max_candidates: usize,
}

impl RankingNodeService {
    /// A service scoring with `state` on `batcher`'s threads.
    pub fn new(
        state: Arc<ArcSwap<LoadState>>,
        batcher: Arc<Batcher<ServingRanker>>,
        config: &RankingConfig,
    ) -> Self {
        Self {
            state,
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
        let ranker = match self.state.load().as_ref() {
            LoadState::Ready(ranker) => ranker.clone(),
            LoadState::Loading => {
                return Err(RankingError::NotReady("ranker still loading".into()));
            }
            LoadState::Failed(reason) => {
                return Err(RankingError::NotReady(format!(
                    "ranker not loaded: {reason}"
                )));
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
        let user = UserContext {
            user_id: request.user_id,
            features: user_features(&request.user_features)?,
        };
        let answer = self
            .batcher
            .submit(ranker.clone(), user, request.item_ids, deadline)?;
        // The reply is dropped unanswered only when the scoring pass panicked.
        let outcome = answer.await.map_err(|_| RankingError::NoAnswer)?;
        let scores = outcome.map_err(RankingError::DeadlineExceeded)??;
        Ok(RankResponse {
            scores: scores.scores,
            model_version: ranker.ranker().version().to_string(),
            user_out_of_vocabulary: scores.user_out_of_vocabulary,
        })
    }
}

#[tonic::async_trait]
impl RankingService for RankingNodeService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        // The queue drops the request unscored once the caller stops waiting.
        let deadline = recsys_server::deadline::metadata_timeout(request.metadata())
            .and_then(recsys_server::deadline::deadline_after);
        Ok(Response::new(
            RankingNodeService::rank(self, request.into_inner(), deadline).await?,
        ))
    }
}
