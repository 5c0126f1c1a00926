//! The `recsys.v1.GatewayService` implementation: validate, encode, fan out to every
//! shard at once, fold answers into the top-k as they arrive, report coverage.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_bundle::shard_of;
use recsys_discovery::ClusterView;
use recsys_proto::v1::{
    Coverage, DegradedReason, RankRequest, RankResponse, RecommendRequest, RecommendResponse,
    RecommendStreamResponse, SearchRequest, StageTimings, gateway_service_server::GatewayService,
    ranking_service_client::RankingServiceClient, recommend_request::Query,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::GatewayError;
use crate::bundle_state::BundleState;
use crate::deadline::{plan, request_timeout};
use crate::fanout::{ShardTarget, call_replicas, search_shard};
use crate::merge::{Candidate, TopK};
use crate::node_channels::NodeChannels;
use crate::response_items::{ranked_items, retrieval_items};
use crate::shard_k::per_shard_k_cached;
use crate::validate::{RecommendLimits, validate};

/// Tunables of request handling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPolicy {
    /// Request limits.
    pub limits: RecommendLimits,
    /// Deadline for requests that carry none.
    pub default_timeout: Duration,
    /// Default per-shard top-k probability for approximate searches (see `shard_k`).
    pub top_k_probability: f64,
    /// Send a node call to a second replica when the first has not answered after
    /// this long (`None`: only retry after an error). Off by default: a hedge adds
    /// load exactly when nodes are slow, so it is for replicated clusters with
    /// headroom, set near the shard latency's p95.
    pub hedge_after: Option<Duration>,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            limits: RecommendLimits::default(),
            default_timeout: recsys_proto::limits::DEFAULT_TIMEOUT,
            top_k_probability: recsys_proto::limits::DEFAULT_TOP_K_PROBABILITY,
            hedge_after: None,
        }
    }
}

/// State shared by every request.
#[derive(Debug)]
pub struct GatewayShared {
    /// The bundle, once loaded.
    pub bundle: ArcSwapOption<BundleState>,
    /// The latest cluster view.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// Channels to nodes, with their load and health.
    pub clients: Arc<NodeChannels>,
    /// Tunables.
    pub policy: RequestPolicy,
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Gateway {
    shared: Arc<GatewayShared>,
}

type StreamSender = mpsc::Sender<Result<RecommendStreamResponse, Status>>;

impl Gateway {
    /// A gateway over `shared`.
    pub fn new(shared: Arc<GatewayShared>) -> Self {
        Self { shared }
    }

    /// The whole request path; `partial` receives the running top-k after each shard.
    pub async fn recommend(
        &self,
        request: RecommendRequest,
        timeout: Duration,
        partial: Option<&StreamSender>,
    ) -> Result<RecommendResponse, GatewayError> {
        let started = Instant::now();
        let bundle = self
            .shared
            .bundle
            .load_full()
            .ok_or_else(|| GatewayError::NotReady("the bundle is still loading".into()))?;
        let manifest = &bundle.manifest;
        let checked = validate(&request, manifest.dimensions, &self.shared.policy.limits)?;
        let query = request
            .query
            .as_ref()
            .ok_or_else(|| GatewayError::invalid("query", "empty request"))?;
        let embedding = bundle.encode(query, &request.user_features)?;
        let encode_us = started.elapsed().as_micros() as u64;

        let options = request.options.unwrap_or_default();
        let probability = if options.exact {
            1.0
        } else if options.top_k_probability > 0.0 {
            f64::from(options.top_k_probability)
        } else {
            self.shared.policy.top_k_probability
        };
        let shard_count = manifest.shard_count;
        let shard_k = per_shard_k_cached(checked.retrieve_k, shard_count, probability);

        // Each shard only needs the exclusions that hash to it.
        let mut exclusions = vec![Vec::new(); shard_count as usize];
        for id in &request.exclude_item_ids {
            exclusions[shard_of(*id, shard_count) as usize].push(*id);
        }

        let view = self.shared.view.borrow().clone();
        let with_ranking = !options.skip_ranking && !view.ranking.is_empty();
        let budget = plan(timeout, with_ranking);
        let retrieval_started = Instant::now();
        let deadline = started + budget.retrieval;
        let no_replicas = Vec::new();
        let mut pending: FuturesUnordered<_> = exclusions
            .into_iter()
            .enumerate()
            .map(|(shard, exclude_item_ids)| {
                let replicas = view.shards.get(shard).unwrap_or(&no_replicas);
                let search = SearchRequest {
                    query: embedding.clone(),
                    k: shard_k,
                    exclude_item_ids,
                    exact: options.exact,
                };
                let target = ShardTarget {
                    shard: shard as u32,
                    shard_count,
                };
                search_shard(
                    &self.shared.clients,
                    target,
                    replicas,
                    search,
                    deadline,
                    self.shared.policy.hedge_after,
                )
            })
            .collect();

        let mut top = TopK::new(checked.retrieve_k as usize);
        let mut coverage = Coverage {
            shards_asked: shard_count,
            items_total: manifest.items,
            ..Default::default()
        };
        while let Some(answer) = pending.next().await {
            match answer.outcome {
                Ok(response) => {
                    let candidates: Vec<Candidate> = response
                        .item_ids
                        .iter()
                        .zip(&response.scores)
                        .map(|(&item_id, &score)| Candidate { item_id, score })
                        .collect();
                    top.merge(answer.shard, &candidates);
                    coverage.shards_answered += 1;
                    coverage.items_searched += response.items_searched;
                    if let Some(sender) = partial {
                        let running = RecommendStreamResponse {
                            r#final: false,
                            items: retrieval_items(top.sorted(), checked.k, &bundle.catalog),
                            coverage: Some(finish(coverage.clone())),
                            bundle_version: manifest.version.clone(),
                            ..Default::default()
                        };
                        // A client that went away only loses the partial results.
                        let _ = sender.send(Ok(running)).await;
                    }
                }
                Err(reason) => coverage.reasons.push(DegradedReason {
                    stage: "retrieval".into(),
                    shard: Some(answer.shard),
                    reason,
                }),
            }
        }
        let retrieval_us = retrieval_started.elapsed().as_micros() as u64;
        if coverage.shards_answered == 0 {
            let reasons: Vec<String> = coverage
                .reasons
                .iter()
                .map(|r| format!("shard {}: {}", r.shard.unwrap_or_default(), r.reason))
                .collect();
            return Err(GatewayError::NoShardAnswered(reasons.join("; ")));
        }
        let merged = top.into_sorted();
        let ranking_started = Instant::now();
        let mut ranked = None;
        if with_ranking {
            let user_id = match query {
                Query::UserId(user_id) => user_id.clone(),
                Query::QueryEmbedding(_) => String::new(),
            };
            let rank = RankRequest {
                user_id,
                user_features: request.user_features.clone(),
                item_ids: merged.iter().map(|c| c.item_id).collect(),
            };
            match self.rank(&view, rank, started + budget.ranking).await {
                Ok(response) if response.scores.len() == merged.len() => ranked = Some(response),
                Ok(response) => coverage.reasons.push(ranking_reason(format!(
                    "malformed answer: {} scores for {} candidates",
                    response.scores.len(),
                    merged.len()
                ))),
                Err(reason) => coverage.reasons.push(ranking_reason(reason)),
            }
        }
        let ranking_us = if with_ranking {
            ranking_started.elapsed().as_micros() as u64
        } else {
            0
        };
        let coverage = finish(coverage);
        crate::metrics::stage("encode", Duration::from_micros(encode_us));
        crate::metrics::stage("retrieval", Duration::from_micros(retrieval_us));
        if with_ranking {
            crate::metrics::stage("ranking", Duration::from_micros(ranking_us));
        }
        if coverage.shards_answered < coverage.shards_asked {
            crate::metrics::degraded("retrieval");
        } else if coverage.degraded {
            crate::metrics::degraded("ranking");
        }
        if coverage.degraded {
            tracing::debug!(
                answered = coverage.shards_answered,
                asked = coverage.shards_asked,
                reasons = coverage.reasons.len(),
                "degraded answer"
            );
        }
        let (items, model_version) = match &ranked {
            Some(response) => (
                ranked_items(&merged, &response.scores, checked.k, &bundle.catalog),
                response.model_version.clone(),
            ),
            None => (
                retrieval_items(&merged, checked.k, &bundle.catalog),
                String::new(),
            ),
        };
        let total = started.elapsed();
        crate::metrics::stage("total", total);
        Ok(RecommendResponse {
            items,
            coverage: Some(coverage),
            timings: Some(StageTimings {
                encode_us,
                retrieval_us,
                ranking_us,
                total_us: total.as_micros() as u64,
            }),
            bundle_version: manifest.version.clone(),
            model_version,
            ranked: ranked.is_some(),
        })
    }

    /// Scores the candidates on the ranking pool, retrying once on another node.
    async fn rank(
        &self,
        view: &ClusterView,
        request: RankRequest,
        deadline: Instant,
    ) -> Result<RankResponse, String> {
        call_replicas(
            &self.shared.clients,
            &view.ranking,
            deadline,
            self.shared.policy.hedge_after,
            |node, remaining| {
                let mut grpc_request = tonic::Request::new(request.clone());
                grpc_request.set_timeout(remaining);
                let mut client = RankingServiceClient::new(node.channel.clone());
                async move { client.rank(grpc_request).await }
            },
        )
        .await
    }
}

fn ranking_reason(reason: String) -> DegradedReason {
    tracing::warn!(%reason, "ranking failed, answering in retrieval order");
    DegradedReason {
        stage: "ranking".into(),
        shard: None,
        reason,
    }
}

/// Marks the coverage degraded when anything fell short.
fn finish(mut coverage: Coverage) -> Coverage {
    coverage.degraded =
        !coverage.reasons.is_empty() || coverage.shards_answered < coverage.shards_asked;
    coverage
}

#[tonic::async_trait]
impl GatewayService for Gateway {
    async fn recommend(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<RecommendResponse>, Status> {
        let timeout = request_timeout(request.metadata(), self.shared.policy.default_timeout);
        let response = Gateway::recommend(self, request.into_inner(), timeout, None).await?;
        Ok(Response::new(response))
    }

    type RecommendStreamStream = ReceiverStream<Result<RecommendStreamResponse, Status>>;

    async fn recommend_stream(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<Self::RecommendStreamStream>, Status> {
        let timeout = request_timeout(request.metadata(), self.shared.policy.default_timeout);
        let request = request.into_inner();
        let capacity = self
            .shared
            .bundle
            .load()
            .as_ref()
            .map_or(1, |b| b.manifest.shard_count as usize)
            + 1;
        let (sender, receiver) = mpsc::channel(capacity);
        let gateway = self.clone();
        tokio::spawn(async move {
            let message = match gateway.recommend(request, timeout, Some(&sender)).await {
                Ok(done) => Ok(RecommendStreamResponse {
                    r#final: true,
                    items: done.items,
                    coverage: done.coverage,
                    timings: done.timings,
                    bundle_version: done.bundle_version,
                    model_version: done.model_version,
                    ranked: done.ranked,
                }),
                Err(error) => Err(Status::from(error)),
            };
            let _ = sender.send(message).await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
