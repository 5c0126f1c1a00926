//! The `recsys.v1.RankingService` implementation.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use recsys_model::{FeatureInput, RankError, Ranker, UserContext};
use recsys_proto::v1::{
    FeatureValue, RankRequest, RankResponse, feature_value::Kind,
    ranking_service_server::RankingService,
};
use tonic::{Request, Response, Status};

use crate::RankingConfig;
use crate::batcher::{Batcher, QueueError};

/// Where loading the ranker stands.
pub type LoadState = recsys_server::grpc::LoadState<Ranker>;

/// The gRPC service of one ranking node.
#[derive(Debug, Clone)]
pub struct RankingNodeService {
    state: Arc<ArcSwap<LoadState>>,
    batcher: Arc<Batcher>,
    max_candidates: usize,
}

impl RankingNodeService {
    /// A service scoring with `state` on `batcher`'s threads.
    pub fn new(
        state: Arc<ArcSwap<LoadState>>,
        batcher: Arc<Batcher>,
        config: &RankingConfig,
    ) -> Self {
        Self {
            state,
            batcher,
            max_candidates: config.max_candidates,
        }
    }
}

/// Most values in one list-valued user feature.
const MAX_LIST_VALUES: usize = 1024;

/// The request's user features as the ranker takes them. Integers are values of a
/// categorical feature (ids, buckets) or numbers, whichever the feature is; the
/// ranker checks each value against its feature's kind.
fn user_features(
    features: &HashMap<String, FeatureValue>,
) -> Result<HashMap<String, FeatureInput>, Status> {
    features
        .iter()
        .filter_map(|(name, value)| {
            let input = match value.kind.as_ref()? {
                Kind::StringValue(s) => Ok(FeatureInput::Value(s.clone())),
                Kind::IntValue(i) => Ok(FeatureInput::Value(i.to_string())),
                Kind::FloatValue(f) => Ok(FeatureInput::Number(f64::from(*f))),
                Kind::StringList(list) if list.values.len() > MAX_LIST_VALUES => {
                    Err(Status::invalid_argument(format!(
                        "user_features[{name}]: has {} values, the limit is {MAX_LIST_VALUES}",
                        list.values.len()
                    )))
                }
                Kind::StringList(list) => Ok(FeatureInput::Values(list.values.clone())),
            };
            Some(input.map(|input| (name.clone(), input)))
        })
        .collect()
}

/// A full queue is back-pressure the gateway answers by falling back to retrieval
/// order (and does not count against the node's health); a closed one means the
/// node is going away, which the gateway retries elsewhere.
fn queue_status(error: QueueError) -> Status {
    match error {
        QueueError::Full(_) => Status::resource_exhausted(error.to_string()),
        QueueError::Closed => Status::unavailable(error.to_string()),
    }
}

#[tonic::async_trait]
impl RankingService for RankingNodeService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        let ranker = match self.state.load().as_ref() {
            LoadState::Ready(ranker) => ranker.clone(),
            LoadState::Loading => return Err(Status::unavailable("ranker still loading")),
            LoadState::Failed(reason) => {
                return Err(Status::unavailable(format!("ranker not loaded: {reason}")));
            }
        };
        let request = request.into_inner();
        if request.item_ids.len() > self.max_candidates {
            return Err(Status::invalid_argument(format!(
                "item_ids: has {} ids, the limit is {}",
                request.item_ids.len(),
                self.max_candidates
            )));
        }
        if request.user_id.len() > 1024 {
            return Err(Status::invalid_argument(format!(
                "user_id: is {} bytes, the limit is 1024",
                request.user_id.len()
            )));
        }
        let user = UserContext {
            user_id: request.user_id,
            features: user_features(&request.user_features)?,
        };
        let items = request.item_ids;
        let answer = self
            .batcher
            .submit(ranker.clone(), user, items)
            .map_err(queue_status)?;
        // The reply is dropped unanswered only when the scoring pass panicked.
        let scored = answer
            .await
            .map_err(|_| Status::internal("scoring pass failed without an answer"))?;
        match scored {
            Ok(scores) => Ok(Response::new(RankResponse {
                scores: scores.scores,
                model_version: ranker.version().to_string(),
                user_out_of_vocabulary: scores.user_out_of_vocabulary,
            })),
            Err(error @ (RankError::UnknownItems(_) | RankError::BadFeature(_))) => {
                Err(Status::invalid_argument(error.to_string()))
            }
            Err(error) => Err(Status::internal(error.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn a_full_queue_is_resource_exhausted_and_a_closed_one_unavailable() {
        let full = queue_status(QueueError::Full(4));
        assert_eq!(full.code(), Code::ResourceExhausted);
        assert_eq!(full.message(), "ranking queue full: 4 requests waiting");
        assert_eq!(queue_status(QueueError::Closed).code(), Code::Unavailable);
    }
}
