//! The `recsys.v1.GatewayService` edge: the gateway's shared state, and the gRPC
//! methods that run the request path (`recommend.rs`) and map its errors to
//! statuses, in this one place.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use recsys_discovery::{ClusterView, VersionSet};
use recsys_proto::v1::{
    RecommendRequest, RecommendResponse, RecommendStreamResponse,
    gateway_service_server::GatewayService,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use recsys_server::exact_searches::ExactSearches;
use recsys_server::trace_context;
use tracing::Instrument;

use crate::bundle_filter::VersionViews;
use crate::bundle_state::BundleState;
use crate::deadline::request_timeout;
use crate::node_channels::NodeChannels;
use crate::session::SessionKeyring;
use crate::validate::RecommendLimits;

/// Tunables of request handling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestPolicy {
    /// Request limits.
    pub limits: RecommendLimits,
    /// Deadline for requests that carry none.
    pub default_timeout: Duration,
    /// Default per-shard top-k probability for approximate searches (see `shard_k`).
    pub top_k_probability: f64,
    /// The recall@k each shard's search aims for when a request names none
    /// (`RecommendOptions.recall_target`); 0: the bundle's fixed beam.
    pub recall_target: f32,
    /// Send a node call to a second replica when the first has not answered after
    /// this long (`None`: only retry after an error). Off by default: a hedge adds
    /// load exactly when nodes are slow, so it is for replicated clusters with
    /// headroom, set near the shard latency's p95.
    pub hedge_after: Option<Duration>,
    /// The longest deadline honoured: a client's longer one is clamped to it.
    pub max_timeout: Duration,
    /// Exact searches (`options.exact`) running at once; more are refused
    /// with `RESOURCE_EXHAUSTED`, and 0 refuses every one (`FAILED_PRECONDITION`).
    pub max_exact_searches: usize,
    /// Candidates retrieved for a ranked answer when a request leaves
    /// `retrieve_k` at 0 (at least `k`, at most `limits.max_retrieve_k`), so
    /// that a caller who sends only a user and `k` gets the two-stage answer;
    /// an unranked answer retrieves `k`.
    pub default_retrieve_k: u32,
    /// How long a session token stays good (`session`).
    pub session_ttl: Duration,
}

impl Default for RequestPolicy {
    fn default() -> Self {
        Self {
            limits: RecommendLimits::default(),
            default_timeout: recsys_proto::limits::DEFAULT_TIMEOUT,
            top_k_probability: recsys_proto::limits::DEFAULT_TOP_K_PROBABILITY,
            recall_target: recsys_proto::limits::DEFAULT_RECALL_TARGET,
            hedge_after: None,
            max_timeout: recsys_proto::limits::DEFAULT_MAX_TIMEOUT,
            max_exact_searches: recsys_proto::limits::DEFAULT_MAX_EXACT_SEARCHES,
            default_retrieve_k: recsys_proto::limits::DEFAULT_RETRIEVE_K,
            session_ttl: crate::session::DEFAULT_SESSION_TTL,
        }
    }
}

/// State shared by every request.
#[derive(Debug)]
pub struct GatewayShared {
    /// The bundle versions held (loading, loaded, or why a load failed); a
    /// request uses the primary one, looked up once at its start.
    pub versions: Arc<VersionSet<BundleState>>,
    /// The latest cluster view: every node routable for a version held.
    pub view: watch::Receiver<Arc<ClusterView>>,
    /// The view of each version held, when the gateway keeps them
    /// (`bundle_filter`); without, requests route by `view`.
    pub views: Option<watch::Receiver<Arc<VersionViews>>>,
    /// Channels to nodes, with their load and health.
    pub clients: Arc<NodeChannels>,
    /// Tunables.
    pub policy: RequestPolicy,
    /// The cap on exact searches at once (`policy.max_exact_searches`).
    pub exact_searches: ExactSearches,
    /// The keys session tokens are signed with (`session`).
    pub sessions: SessionKeyring,
    /// A shares file overriding the bundles' ranker variant shares
    /// (`ranker_shares`), as last read.
    pub ranker_shares: Option<Arc<arc_swap::ArcSwap<crate::ranker_shares::SharesFile>>>,
    /// Where every answer is logged, when configured.
    pub impressions: Option<crate::impression_log::ImpressionLog>,
}

impl GatewayShared {
    /// The view to route a request of `version` by.
    pub fn view_of(&self, version: &str) -> Arc<ClusterView> {
        match &self.views {
            Some(views) => views.borrow().get(version),
            None => self.view.borrow().clone(),
        }
    }

    /// Shared state routing by `view` through `clients`, with `policy`.
    pub fn new(
        view: watch::Receiver<Arc<ClusterView>>,
        clients: Arc<NodeChannels>,
        policy: RequestPolicy,
    ) -> Self {
        Self {
            versions: Arc::new(VersionSet::new()),
            view,
            views: None,
            clients,
            exact_searches: ExactSearches::new(policy.max_exact_searches),
            sessions: SessionKeyring::random(policy.session_ttl),
            policy,
            ranker_shares: None,
            impressions: None,
        }
    }
}

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<GatewayShared>,
}

impl Gateway {
    /// A gateway over `shared`.
    pub fn new(shared: Arc<GatewayShared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl GatewayService for Gateway {
    async fn recommend(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<RecommendResponse>, Status> {
        let timeout = request_timeout(request.metadata(), &self.shared.policy);
        let span = request_span(&request);
        let response = trace_context::in_span(
            span,
            Gateway::recommend(self, request.into_inner(), timeout, None),
        )
        .await?;
        Ok(Response::new(response))
    }

    type RecommendStreamStream =
        Pin<Box<dyn Stream<Item = Result<RecommendStreamResponse, Status>> + Send>>;

    async fn recommend_stream(
        &self,
        request: Request<RecommendRequest>,
    ) -> Result<Response<Self::RecommendStreamStream>, Status> {
        let timeout = request_timeout(request.metadata(), &self.shared.policy);
        let span = request_span(&request);
        let request = request.into_inner();
        let capacity = self
            .shared
            .versions
            .primary()
            .map_or(1, |(_, bundle)| bundle.manifest.shard_count as usize)
            + 1;
        let (sender, receiver) = mpsc::channel(capacity);
        let gateway = self.clone();
        let task_span = span.clone();
        let task = async move {
            let work = gateway.recommend(request, timeout, Some(&sender));
            let answer = tokio::select! {
                answer = work => answer,
                // The client dropped the stream (cancelled, or its deadline
                // passed): dropping the request's future cancels the node calls
                // still out and skips ranking, instead of finishing for nobody.
                () = sender.closed() => {
                    tracing::debug!("recommend stream cancelled by the client, fan-out stopped");
                    return;
                }
            };
            let message = answer.map(|done| RecommendStreamResponse {
                r#final: true,
                items: done.items,
                coverage: done.coverage,
                timings: done.timings,
                bundle_version: done.bundle_version,
                model_version: done.model_version,
                ranked: done.ranked,
                seen_excluded: done.seen_excluded,
                session_token: done.session_token,
                session_note: done.session_note,
                diversity_note: done.diversity_note,
                heads: done.heads,
                ranker_variant: done.ranker_variant,
            });
            if let Err(error) = &message {
                trace_context::fail(&span, error);
            }
            let _ = sender.send(message).await;
        };
        tokio::spawn(task.instrument(task_span));
        let stream = ReceiverStream::new(receiver).map(|message| message.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The span of one `Recommend`/`RecommendStream` call: a child of the client's
/// span when its call carries a `traceparent`.
fn request_span(request: &Request<RecommendRequest>) -> tracing::Span {
    let message = request.get_ref();
    let span = tracing::debug_span!(
        target: trace_context::TARGET,
        "recommend",
        otel.kind = "server",
        k = message.k,
        retrieve_k = message.retrieve_k,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
    );
    trace_context::adopt_parent(&span, request.metadata());
    span
}
