//! The request path, one function per phase: validate and plan (with the
//! query's encoding), fan out and merge, rank, respond. Failures are
//! [`GatewayError`]s and [`NodeFailure`]s; the gRPC mapping happens once, at the
//! service edge (`service.rs`, through `GatewayError`'s `From`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use recsys_bundle::shard_of;
use recsys_discovery::ClusterView;
use recsys_proto::v1::{
    Coverage, RankRequest, RankResponse, RecommendRequest, RecommendResponse,
    RecommendStreamResponse, SearchRequest, Stage, StageTimings,
    ranking_service_client::RankingServiceClient, recommend_request::Query,
};
use recsys_server::trace_context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::GatewayError;
use crate::answer_check::check_rank;
use crate::attribute_filter::{RequestFilter, request_filter};
use crate::bundle_state::{BundleState, ready_bundle};
use crate::coverage::{degraded, finish};
use crate::deadline::{Budget, plan};
use crate::diversity::{CANDIDATES_PER_ITEM, Cap};
use crate::fanout::AnswerChecks;
use crate::fanout::{ShardTarget, call_replicas, search_shard};
use crate::impression_log::Impression;
use crate::merge::{Candidate, TopK};
use crate::mmr::{MAX_MMR_CANDIDATES, check_lambda};
use crate::node_failure::NodeFailure;
use crate::response_items::{continue_session, ranked_items, retrieval_items};
use crate::service::Gateway;
use crate::session::SessionPlan;
use crate::shard_k::per_shard_k_cached;
use crate::similar_items::{SimilarTo, item_vector};
use crate::validate::{Checked, check_head_weights, check_ranker_kinds, validate};

/// Where `RecommendStream` sends the running top-k after each shard.
pub type PartialSender = mpsc::Sender<Result<RecommendStreamResponse, GatewayError>>;

/// A valid request, encoded, with everything the later phases need decided.
struct RequestPlan {
    started: Instant,
    bundle: Arc<BundleState>,
    checked: Checked,
    /// The user id for the ranker (empty for an embedding query).
    user_id: String,
    embedding: Vec<f32>,
    encode_us: u64,
    exact: bool,
    /// Read your writes: the change-log revision every shard must have applied.
    min_revision: u64,
    shard_k: u32,
    /// The recall each shard's search aims for (0: the bundle's fixed beam).
    recall_target: f32,
    /// Each shard's exclusions (the ids that hash to it); moved into the
    /// shards' requests by the fan-out.
    exclusions: Vec<Vec<u64>>,
    /// Items of the user's history among `exclusions`.
    seen_excluded: u32,
    /// The session the request continues, if it asks for one.
    session: Option<SessionPlan>,
    /// The request's diversity cap, if any.
    cap: Option<Cap>,
    /// The request's attribute filter.
    filter: Option<RequestFilter>,
    /// Maximal marginal relevance's λ, when asked for.
    mmr: Option<f32>,
    view: Arc<ClusterView>,
    with_ranking: bool,
    /// The ranker variant (A/B arm) that ranks; empty without ranking.
    variant: String,
    budget: Budget,
    /// The slot of an exact search, held until the request ends.
    _exact_slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the fan-out gathered.
struct Retrieved {
    merged: Vec<Candidate>,
    /// With MMR: the candidates' vectors.
    vectors: HashMap<u64, Vec<f32>>,
    /// The highest change-log revision the answering shards had applied.
    log_revision: u64,
    coverage: Coverage,
    retrieval_us: u64,
    /// The longest in-index time and the widest beam of the shards that answered.
    search_us: u64,
    search_ef: u32,
}

impl Gateway {
    /// The whole request path; `partial` receives the running top-k after each shard.
    pub async fn recommend(
        &self,
        request: RecommendRequest,
        timeout: Duration,
        partial: Option<&PartialSender>,
    ) -> Result<RecommendResponse, GatewayError> {
        let mut plan = self.plan_request(&request, timeout)?;
        if let Some(item) = request.similar_to_item_id {
            self.query_from_item(&mut plan, item).await?;
        }
        let retrieve = tracing::debug_span!(
            target: trace_context::TARGET,
            "retrieve",
            shards = plan.bundle.manifest.shard_count,
            retrieve_k = plan.checked.retrieve_k,
        );
        let mut retrieved = self
            .fan_out_and_merge(&mut plan, partial)
            .instrument(retrieve)
            .await?;
        let ranking_started = Instant::now();
        // The answer may hold items changed up to `log_revision`: the names
        // catch up beside the ranking call, which asks the same of its node.
        let names = self.names_caught_up(&plan, retrieved.log_revision);
        let ranked = if plan.with_ranking {
            let rank = tracing::debug_span!(
                target: trace_context::TARGET,
                "rank",
                candidates = retrieved.merged.len(),
            );
            let (ranked, ()) = tokio::join!(
                self.rank_candidates(&plan, &request, &retrieved.merged, retrieved.log_revision)
                    .instrument(rank),
                names
            );
            match ranked {
                Ok(response) => Some(response),
                Err(failure) => {
                    tracing::warn!(reason = %failure, "ranking failed, answering in retrieval order");
                    retrieved
                        .coverage
                        .reasons
                        .push(degraded(Stage::Ranking, None, failure));
                    None
                }
            }
        } else {
            names.await;
            None
        };
        let ranking_us = if plan.with_ranking {
            ranking_started.elapsed().as_micros() as u64
        } else {
            0
        };
        let response = respond(plan, retrieved, ranked, ranking_us);
        if let Some(log) = &self.shared.impressions {
            log.record(Impression::of(&request, &response, log.request_id()));
        }
        Ok(response)
    }

    /// Validate and plan: the bundle, the limits, the query's embedding, each
    /// shard's `k'` and exclusions, the time budget of each stage.
    fn plan_request(
        &self,
        request: &RecommendRequest,
        timeout: Duration,
    ) -> Result<RequestPlan, GatewayError> {
        let started = Instant::now();
        // The version this request is answered by, end to end.
        let (version, bundle) = ready_bundle(&self.shared.versions, "")?;
        let manifest = &bundle.manifest;
        let view = self.shared.view_of(&version);
        let options = request.options.unwrap_or_default();
        let mut checked = validate(request, manifest.dimensions, &self.shared.policy.limits)?;
        let user_id = match &request.query {
            Some(Query::UserId(user_id)) => user_id.clone(),
            Some(Query::QueryEmbedding(_)) | None => String::new(),
        };
        // Items like one item, for nobody in particular, are answered in
        // retrieval order: there is no user to rank for.
        let similar_for_nobody = request.similar_to_item_id.is_some() && user_id.is_empty();
        let with_ranking = !options.skip_ranking && !view.ranking.is_empty() && !similar_for_nobody;
        // The A/B arm whose ranker ranks, by the user's assignment.
        let variant = if with_ranking {
            let file = self.shared.ranker_shares.as_ref().map(|f| f.load_full());
            crate::ranker_shares::variant_of(&user_id, &bundle, file.as_deref())
        } else {
            String::new()
        };
        if with_ranking && let Some(inputs) = bundle.inputs_of(&variant) {
            check_ranker_kinds(&request.user_features, inputs)?;
            check_head_weights(&request.head_weights, inputs)?;
        }
        let diversity = request.diversity.as_ref();
        // A cap unless only MMR is asked for.
        let cap = diversity
            .filter(|d| !d.attribute.is_empty() || d.mmr_lambda.is_none())
            .map(|d| Cap::check(d, bundle.attributes.as_ref()))
            .transpose()?;
        let mmr = diversity
            .and_then(|d| d.mmr_lambda)
            .map(check_lambda)
            .transpose()?;
        if mmr.is_some() && checked.retrieve_k > MAX_MMR_CANDIDATES {
            return Err(GatewayError::invalid(
                "retrieve_k",
                format!(
                    "is {} with diversity.mmr_lambda, the limit is {MAX_MMR_CANDIDATES}",
                    checked.retrieve_k
                ),
            ));
        }
        let filter = request_filter(request, bundle.attributes.as_ref())?;
        if request.retrieve_k == 0 {
            // Two stages by default: rank more candidates than are returned;
            // a cap passes over candidates, so have a few per item to give.
            let policy = &self.shared.policy;
            let mut wanted = checked.k;
            if with_ranking {
                wanted = wanted.max(policy.default_retrieve_k);
            }
            if cap.is_some() || mmr.is_some() {
                wanted = wanted.max(checked.k.saturating_mul(CANDIDATES_PER_ITEM));
            }
            let most = if mmr.is_some() {
                policy.limits.max_retrieve_k.min(MAX_MMR_CANDIDATES)
            } else {
                policy.limits.max_retrieve_k
            };
            checked.retrieve_k = wanted.min(most).max(checked.k);
        }
        let exact_slot = if options.exact {
            Some(self.shared.exact_searches.try_start()?)
        } else {
            None
        };
        // A similar-items request's query is the item's vector, fetched from
        // its shard next (`query_from_item`); the user, if any, only ranks.
        let embedding = match (&request.query, request.similar_to_item_id) {
            (_, Some(_)) => Vec::new(),
            (Some(query), None) => bundle.encode(query, &request.user_features)?,
            (None, None) => return Err(GatewayError::invalid("query", "empty request")),
        };
        let encode_us = started.elapsed().as_micros() as u64;

        let probability = if options.exact {
            1.0
        } else if options.top_k_probability > 0.0 {
            f64::from(options.top_k_probability)
        } else {
            self.shared.policy.top_k_probability
        };
        let recall_target = if options.recall_target > 0.0 {
            options.recall_target
        } else {
            self.shared.policy.recall_target
        };
        let shard_count = manifest.shard_count;
        let shard_k = per_shard_k_cached(checked.retrieve_k, shard_count, probability);
        // Each shard only needs the exclusions that hash to it.
        let mut exclusions = vec![Vec::new(); shard_count as usize];
        let mut exclude = |id: u64| exclusions[shard_of(id, shard_count) as usize].push(id);
        request
            .exclude_item_ids
            .iter()
            .copied()
            .for_each(&mut exclude);
        let session = SessionPlan::open(request, &self.shared.sessions, &manifest.version)?;
        let mut room = self.shared.policy.limits.max_exclusions.saturating_sub(
            request.exclude_item_ids.len() + usize::from(request.similar_to_item_id.is_some()),
        );
        // A next page leaves out what the session was shown (the newest
        // pages first, when they outnumber the exclusions' limit).
        if let Some(session) = &session {
            let shown = session.excluded_ids();
            shown
                .iter()
                .rev()
                .take(room)
                .for_each(|(id, _)| exclude(*id));
            room = room.saturating_sub(shown.len());
        }
        // What the user already has is left out unless asked for, within the
        // exclusions' limit (the caller's own ids first).
        let seen: &[u64] = if options.include_seen {
            &[]
        } else {
            bundle.history.items(&user_id)
        };
        let seen = &seen[..seen.len().min(room)];
        seen.iter().copied().for_each(&mut exclude);
        Ok(RequestPlan {
            started,
            checked,
            user_id,
            embedding,
            encode_us,
            exact: options.exact,
            min_revision: request.min_revision,
            shard_k,
            recall_target,
            exclusions,
            seen_excluded: seen.len() as u32,
            session,
            cap,
            filter,
            mmr,
            with_ranking,
            variant,
            budget: plan(timeout, with_ranking),
            view,
            bundle,
            _exact_slot: exact_slot,
        })
    }

    /// Makes `item`'s own vector the query and excludes the item from the
    /// answer (`similar_items`); the fetch counts as the encode stage.
    async fn query_from_item(&self, plan: &mut RequestPlan, item: u64) -> Result<(), GatewayError> {
        let manifest = &plan.bundle.manifest;
        let query = SimilarTo {
            item,
            version: &manifest.version,
            shard_count: manifest.shard_count,
            dimensions: manifest.dimensions,
            min_revision: plan.min_revision,
            deadline: plan.started + plan.budget.retrieval,
        };
        let (shard, vector) = item_vector(&self.shared.clients, &plan.view, &query).await?;
        plan.embedding = vector;
        if let Some(excluded) = plan.exclusions.get_mut(shard as usize) {
            excluded.push(item);
        }
        plan.encode_us = plan.started.elapsed().as_micros() as u64;
        Ok(())
    }

    /// Fan out and merge: every shard at once, each answer folded into the
    /// bounded top-k as it arrives; a shard that fails becomes a coverage reason,
    /// and no shard at all an error.
    async fn fan_out_and_merge(
        &self,
        plan: &mut RequestPlan,
        partial: Option<&PartialSender>,
    ) -> Result<Retrieved, GatewayError> {
        // Up to 10 000 ids: moved into the requests, not copied.
        let exclusions = std::mem::take(&mut plan.exclusions);
        let plan = &*plan;
        let manifest = &plan.bundle.manifest;
        let shard_count = manifest.shard_count;
        let retrieval_started = Instant::now();
        let deadline = plan.started + plan.budget.retrieval;
        let no_replicas = Vec::new();
        let mut pending: FuturesUnordered<_> = exclusions
            .into_iter()
            .enumerate()
            .map(|(shard, exclude_item_ids)| {
                let replicas = plan.view.shards.get(shard).unwrap_or(&no_replicas);
                let search = SearchRequest {
                    query: plan.embedding.clone(),
                    k: plan.shard_k,
                    exclude_item_ids,
                    exact: plan.exact,
                    min_log_revision: plan.min_revision,
                    bundle_version: manifest.version.clone(),
                    filter: plan
                        .filter
                        .as_ref()
                        .map(|f| f.text.clone())
                        .unwrap_or_default(),
                    return_vectors: plan.mmr.is_some(),
                    recall_target: plan.recall_target,
                    recall_at: plan.checked.retrieve_k.div_ceil(shard_count.max(1)),
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
                    AnswerChecks {
                        version: &manifest.version,
                        filter: plan
                            .bundle
                            .attributes
                            .as_ref()
                            .zip(plan.filter.as_ref().map(|f| &f.compiled)),
                    },
                    deadline,
                    self.shared.policy.hedge_after,
                )
            })
            .collect();

        let mut top = TopK::new(plan.checked.retrieve_k as usize);
        let mut coverage = Coverage {
            shards_asked: shard_count,
            items_total: manifest.items,
            ..Default::default()
        };
        // Whether every shard that failed ran out of time (and none answered).
        let mut all_timed_out = true;
        // Whether every shard that failed was refused under its admission limit.
        let mut all_overloaded = true;
        let mut log_revision = 0;
        let (mut search_us, mut search_ef) = (0, 0);
        let mut vectors = HashMap::new();
        let dimensions = plan.embedding.len();
        while let Some(answer) = pending.next().await {
            match answer.outcome {
                Ok(response) => {
                    log_revision = log_revision.max(response.log_revision);
                    search_us = search_us.max(response.search_us);
                    search_ef = search_ef.max(response.search_ef);
                    if plan.mmr.is_some() && dimensions > 0 {
                        // Checked: one row of `dimensions` per item.
                        for (id, row) in response
                            .item_ids
                            .iter()
                            .zip(response.vectors.chunks_exact(dimensions))
                        {
                            vectors.insert(*id, row.to_vec());
                        }
                    }
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
                            items: retrieval_items(
                                top.sorted(),
                                plan.checked.k,
                                &plan.bundle.names(),
                            ),
                            coverage: Some(finish(coverage.clone())),
                            bundle_version: manifest.version.clone(),
                            ..Default::default()
                        };
                        // A client that went away only loses the partial results.
                        let _ = sender.send(Ok(running)).await;
                    }
                }
                Err(failure) => {
                    all_timed_out &= failure.is_timeout();
                    all_overloaded &= failure.is_overloaded();
                    coverage
                        .reasons
                        .push(degraded(Stage::Retrieval, Some(answer.shard), failure));
                }
            }
        }
        if coverage.shards_answered == 0 {
            let reasons: Vec<String> = coverage
                .reasons
                .iter()
                .map(|r| format!("shard {}: {}", r.shard.unwrap_or_default(), r.reason))
                .collect();
            let reasons = reasons.join("; ");
            return Err(if all_timed_out {
                GatewayError::DeadlineExceeded(reasons)
            } else if all_overloaded {
                GatewayError::ShardsOverloaded(reasons)
            } else {
                GatewayError::NoShardAnswered(reasons)
            });
        }
        Ok(Retrieved {
            log_revision,
            vectors,
            merged: top.into_sorted(),
            coverage,
            retrieval_us: retrieval_started.elapsed().as_micros() as u64,
            search_us,
            search_ef,
        })
    }

    /// Waits, within the ranking budget, until the bundle's names hold every
    /// item change up to `revision`; an answer named before is still answered.
    async fn names_caught_up(&self, plan: &RequestPlan, revision: u64) {
        let overlay = &plan.bundle.overlay;
        if revision > overlay.revision()
            && !overlay
                .wait_for(revision, plan.started + plan.budget.ranking)
                .await
        {
            tracing::debug!(
                wanted = revision,
                applied = overlay.revision(),
                "naming before the item changes are applied"
            );
        }
    }

    /// Rank: the merged candidates' ids to the ranking pool (one retry on
    /// another node, none after a timeout); an answer without one finite score
    /// per candidate is refused (`answer_check`), and the answer falls back to
    /// retrieval order with the reason in coverage.
    async fn rank_candidates(
        &self,
        plan: &RequestPlan,
        request: &RecommendRequest,
        merged: &[Candidate],
        log_revision: u64,
    ) -> Result<RankResponse, NodeFailure> {
        let rank = RankRequest {
            user_id: plan.user_id.clone(),
            user_features: request.user_features.clone(),
            item_ids: merged.iter().map(|c| c.item_id).collect(),
            bundle_version: plan.bundle.manifest.version.clone(),
            min_log_revision: log_revision,
            head_weights: request.head_weights.clone(),
            ranker_variant: plan.variant.clone(),
        };
        call_replicas(
            &self.shared.clients,
            &plan.view.ranking,
            plan.started + plan.budget.ranking,
            self.shared.policy.hedge_after,
            |node, remaining| {
                let mut grpc_request = tonic::Request::new(rank.clone());
                grpc_request.set_timeout(remaining);
                trace_context::inject(grpc_request.metadata_mut());
                let mut client = RankingServiceClient::new(node.channel.clone())
                    .max_decoding_message_size(RANK_RESPONSE_MAX_BYTES);
                async move { client.rank(grpc_request).await }
            },
            |response| check_rank(response, merged.len(), &plan.bundle.manifest.version),
        )
        .await
    }
}

/// The largest ranking answer the gateway decodes: scores for `MAX_RETRIEVE_K`
/// candidates (no more are sent).
const RANK_RESPONSE_MAX_BYTES: usize =
    recsys_proto::limits::rank_response_max_bytes(recsys_proto::limits::MAX_RETRIEVE_K as usize);

/// Respond: the top `k` in ranking order (retrieval order when unranked), with
/// coverage, stage timings and versions; records the stage metrics.
fn respond(
    plan: RequestPlan,
    retrieved: Retrieved,
    ranked: Option<RankResponse>,
    ranking_us: u64,
) -> RecommendResponse {
    let coverage = finish(retrieved.coverage);
    let coverage_degraded = coverage.degraded;
    crate::metrics::stage("encode", Duration::from_micros(plan.encode_us));
    crate::metrics::stage("retrieval", Duration::from_micros(retrieved.retrieval_us));
    if plan.with_ranking {
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
    let catalog = &plan.bundle.names();
    // With a cap or MMR, every candidate in order, then they pick k.
    let listed = if plan.cap.is_some() || plan.mmr.is_some() {
        retrieved.merged.len() as u32
    } else {
        plan.checked.k
    };
    let ranked_answer = ranked.is_some();
    let (items, model_version, heads) = match ranked {
        Some(response) => (
            ranked_items(
                &retrieved.merged,
                &response.scores,
                (response.heads.len(), &response.head_scores),
                listed,
                catalog,
            ),
            response.model_version,
            response.heads,
        ),
        None => (
            retrieval_items(&retrieved.merged, listed, catalog),
            String::new(),
            Vec::new(),
        ),
    };
    // MMR orders the candidates; a cap then picks k in that order.
    let items = match plan.mmr {
        Some(lambda) => {
            let keep = if plan.cap.is_some() {
                items.len()
            } else {
                plan.checked.k as usize
            };
            crate::mmr::reorder(items, &retrieved.vectors, lambda, keep)
        }
        None => items,
    };
    let (items, diversity_note) = match (&plan.cap, &plan.bundle.attributes) {
        (Some(cap), Some(attributes)) => cap.apply(items, plan.checked.k as usize, attributes),
        _ => (items, String::new()),
    };
    let (items, session_token, session_note) = match plan.session {
        Some(session) => continue_session(session, items, ranked_answer, plan.checked.k, catalog),
        None => (items, Vec::new(), String::new()),
    };
    let total = plan.started.elapsed();
    crate::metrics::stage("total", total);
    if plan.with_ranking {
        crate::metrics::variant_answer(&plan.variant, total, coverage_degraded);
    }
    RecommendResponse {
        items,
        coverage: Some(coverage),
        timings: Some(StageTimings {
            encode_us: plan.encode_us,
            retrieval_us: retrieved.retrieval_us,
            ranking_us,
            total_us: total.as_micros() as u64,
            search_us: retrieved.search_us,
            search_ef: retrieved.search_ef,
        }),
        bundle_version: plan.bundle.manifest.version.clone(),
        model_version,
        ranked: ranked_answer,
        seen_excluded: plan.seen_excluded,
        session_token,
        session_note,
        diversity_note,
        heads,
        ranker_variant: if ranked_answer {
            plan.variant
        } else {
            String::new()
        },
    }
}
