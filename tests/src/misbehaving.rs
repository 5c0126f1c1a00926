//! Nodes that misbehave on purpose, for the gateway's failure tests: a ranking node
//! that is slow, fails, or answers the wrong number or non-finite scores; a
//! retrieval node whose bundle is still loading, or one that lies in its answers
//! (`LyingShard`); one that holds every search until the test lets it answer,
//! counting the searches whose caller left first (`GatedShard`); a peer that accepts connections and never says a word. The first two implement the generated tonic server traits of
//! `recsys-proto` and run on a real gRPC server with the health, reflection and
//! metrics layers every node has (`recsys_server::grpc::standard_router`), so the
//! gateway reaches them exactly as it reaches real nodes: nothing of the gateway
//! is replaced.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use recsys_proto::v1::ranking_service_server::{RankingService, RankingServiceServer};
use recsys_proto::v1::retrieval_service_server::{RetrievalService, RetrievalServiceServer};
use recsys_proto::v1::{
    GetItemVectorRequest, GetItemVectorResponse, InfoRequest, InfoResponse, RankRequest,
    RankResponse, SearchRequest, SearchResponse,
};
use recsys_server::grpc::{incoming, set_health, standard_router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;

/// The model version a well-behaved [`FakeRanker`] answers with.
pub const FAKE_MODEL_VERSION: &str = "fake-ranker";

/// The message of a [`RankerBehaviour::Fails`] status.
pub const FAKE_FAILURE: &str = "fake ranker failure";

/// How a [`FakeRanker`] answers.
#[derive(Debug, Clone, Copy)]
pub enum RankerBehaviour {
    /// One score per candidate: the candidate's position, so a ranked answer is the
    /// retrieval order reversed and cannot be mistaken for the fallback.
    Good,
    /// As `Good`, after this long.
    Slow(Duration),
    /// Fails with this code and [`FAKE_FAILURE`].
    Fails(Code),
    /// One score fewer than candidates.
    WrongScoreCount,
    /// A NaN score for the first candidate (a model that overflowed).
    NonFinite,
}

/// A ranking node that behaves as told and counts its calls.
#[derive(Debug, Clone)]
pub struct FakeRanker {
    behaviour: RankerBehaviour,
    calls: Arc<AtomicUsize>,
}

impl FakeRanker {
    pub fn new(behaviour: RankerBehaviour) -> Self {
        Self {
            behaviour,
            calls: Arc::default(),
        }
    }

    /// `Rank` calls that reached it so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl RankingService for FakeRanker {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let candidates = request.get_ref().item_ids.len();
        let mut scores: Vec<f32> = (0..candidates).map(|i| i as f32).collect();
        match self.behaviour {
            RankerBehaviour::Good => {}
            RankerBehaviour::Slow(delay) => tokio::time::sleep(delay).await,
            RankerBehaviour::Fails(code) => return Err(Status::new(code, FAKE_FAILURE)),
            RankerBehaviour::WrongScoreCount => {
                scores.pop();
            }
            RankerBehaviour::NonFinite => {
                if let Some(first) = scores.first_mut() {
                    *first = f32::NAN;
                }
            }
        }
        Ok(Response::new(RankResponse {
            bundle_version: String::new(),
            scores,
            model_version: FAKE_MODEL_VERSION.into(),
            user_out_of_vocabulary: false,
            ..Default::default()
        }))
    }

    /// Like a ranking node built before rollouts: it cannot say its versions.
    async fn info(
        &self,
        _request: Request<recsys_proto::v1::InfoRequest>,
    ) -> Result<Response<recsys_proto::v1::InfoResponse>, Status> {
        Err(Status::unimplemented("a fake ranker has no Info"))
    }
}

/// The message a [`LoadingShard`] refuses searches with: a real node's while its
/// shard loads (`retrieval-node`'s `NodeError::NotReady`).
pub const STILL_LOADING: &str = "shard not ready: the shard is still loading";

/// A retrieval node whose shard never finishes loading: health `NOT_SERVING`,
/// `Search` `UNAVAILABLE`, as a real node answers until its shard is in memory.
#[derive(Debug, Clone, Default)]
pub struct LoadingShard {
    calls: Arc<AtomicUsize>,
}

impl LoadingShard {
    /// `Search` calls that reached it so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl RetrievalService for LoadingShard {
    /// A misbehaving shard is asked for searches only.
    async fn get_item_vector(
        &self,
        _: Request<GetItemVectorRequest>,
    ) -> Result<Response<GetItemVectorResponse>, Status> {
        Err(Status::unimplemented("a misbehaving test shard"))
    }

    async fn search(&self, _: Request<SearchRequest>) -> Result<Response<SearchResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::unavailable(STILL_LOADING))
    }

    #[allow(deprecated)] // `state` is filled as a node fills it, for older clients.
    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let status = recsys_proto::v1::LoadStatus::Loading;
        Ok(Response::new(InfoResponse {
            state: status.name().into(),
            load_status: status.into(),
            ..Default::default()
        }))
    }
}

/// A retrieval node whose searches wait until the test opens its gate, then
/// answer `items` (ids of the shard it stands for, best first). It counts the
/// searches that arrived and those whose caller went away before the answer (the
/// server dropped the handler: a cancelled call), which is how a test sees that
/// the gateway stopped fanning out.
#[derive(Debug, Clone)]
pub struct GatedShard {
    shard: u32,
    bundle_version: Arc<str>,
    items: Arc<Vec<u64>>,
    gate: Arc<tokio::sync::Semaphore>,
    calls: Arc<AtomicUsize>,
    abandoned: Arc<AtomicUsize>,
}

impl GatedShard {
    /// A closed gate in front of `items` of `shard`, answering as a node of
    /// `bundle_version` does.
    pub fn new(shard: u32, items: Vec<u64>, bundle_version: &str) -> Self {
        Self {
            shard,
            bundle_version: bundle_version.into(),
            items: Arc::new(items),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
            calls: Arc::default(),
            abandoned: Arc::default(),
        }
    }

    /// Lets every waiting and later search answer.
    pub fn open(&self) {
        self.gate.close();
    }

    /// `Search` calls that reached it so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Searches dropped before they answered.
    pub fn abandoned(&self) -> usize {
        self.abandoned.load(Ordering::SeqCst)
    }
}

/// Counts a search as abandoned unless it is defused first.
struct AbandonGuard(Option<Arc<AtomicUsize>>);

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if let Some(counter) = self.0.take() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tonic::async_trait]
impl RetrievalService for GatedShard {
    /// A misbehaving shard is asked for searches only.
    async fn get_item_vector(
        &self,
        _: Request<GetItemVectorRequest>,
    ) -> Result<Response<GetItemVectorResponse>, Status> {
        Err(Status::unimplemented("a misbehaving test shard"))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut guard = AbandonGuard(Some(self.abandoned.clone()));
        // A closed semaphore is the open gate.
        let _ = self.gate.acquire().await;
        guard.0 = None;
        let k = request.get_ref().k as usize;
        let item_ids: Vec<u64> = self.items.iter().copied().take(k).collect();
        let scores = (0..item_ids.len()).map(|i| 1.0 - i as f32 * 1e-3).collect();
        Ok(Response::new(SearchResponse {
            item_ids,
            scores,
            items_searched: self.items.len() as u64,
            shard: self.shard,
            bundle_version: self.bundle_version.to_string(),
            search_us: 0,
            log_revision: 0,
            ..Default::default()
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented("a gated test shard has no info"))
    }
}

/// Serves `shard` on a free loopback port until `token` is cancelled, health
/// `SERVING`, with the admission layer every node has.
pub async fn serve_gated_shard(shard: GatedShard, token: &CancellationToken) -> SocketAddr {
    serve_gated_shard_admitting(shard, 1024, token).await
}

/// [`serve_gated_shard`] with an admission limit of `max_in_flight` searches:
/// held searches fill it, and the next one is refused `RESOURCE_EXHAUSTED`.
pub async fn serve_gated_shard_admitting(
    shard: GatedShard,
    max_in_flight: usize,
    token: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, router) = standard_router().unwrap();
    let name = <RetrievalServiceServer<GatedShard> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::Serving).await;
    let admission = recsys_server::admission::Admission::new(name, max_in_flight, &["Info"]);
    let serve = router
        .add_service(admission.wrap(RetrievalServiceServer::new(shard)))
        .serve_with_incoming_shutdown(incoming(listener), token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await.expect("gated retrieval node failed") });
    addr
}

/// How a [`LyingShard`] answers a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lie {
    /// An honest-looking answer (its shard's ids, finite scores, the version).
    None,
    /// One score is `+inf` (what a query of ±3.4e38 once made real nodes answer).
    InfiniteScore,
    /// The same id twice.
    Duplicate,
    /// The request's first excluded id among the hits.
    Excluded,
    /// Another bundle version.
    WrongVersion,
    /// No answer at all, for longer than any test (a node stuck in a search).
    Silent,
}

/// A retrieval node for one shard that answers with two of its shard's ids,
/// lying as told; it counts its calls.
#[derive(Debug, Clone)]
pub struct LyingShard {
    lie: Lie,
    ids: [u64; 2],
    shard: u32,
    version: String,
    calls: Arc<AtomicUsize>,
}

impl LyingShard {
    /// A node of `shard` of `shard_count` in bundle `version`.
    pub fn new(lie: Lie, shard: u32, shard_count: u32, version: &str) -> Self {
        let mut own = (0u64..).filter(|id| recsys_bundle::shard_of(*id, shard_count) == shard);
        let ids = [own.next().unwrap(), own.next().unwrap()];
        Self {
            lie,
            ids,
            shard,
            version: version.into(),
            calls: Arc::default(),
        }
    }

    /// `Search` calls that reached it so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[tonic::async_trait]
impl RetrievalService for LyingShard {
    /// A misbehaving shard is asked for searches only.
    async fn get_item_vector(
        &self,
        _: Request<GetItemVectorRequest>,
    ) -> Result<Response<GetItemVectorResponse>, Status> {
        Err(Status::unimplemented("a misbehaving test shard"))
    }

    async fn search(
        &self,
        request: Request<SearchRequest>,
    ) -> Result<Response<SearchResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut item_ids = self.ids.to_vec();
        let mut scores = vec![0.9, 0.8];
        let mut bundle_version = self.version.clone();
        match self.lie {
            Lie::None => {}
            Lie::InfiniteScore => scores[0] = f32::INFINITY,
            Lie::Duplicate => item_ids[1] = item_ids[0],
            Lie::Excluded => {
                if let Some(excluded) = request.get_ref().exclude_item_ids.first() {
                    item_ids = vec![*excluded];
                    scores = vec![0.9];
                }
            }
            Lie::WrongVersion => bundle_version = format!("{}-other", self.version),
            Lie::Silent => tokio::time::sleep(Duration::from_secs(600)).await,
        }
        Ok(Response::new(SearchResponse {
            item_ids,
            scores,
            shard: self.shard,
            items_searched: 2,
            bundle_version,
            search_us: 1,
            log_revision: 0,
            ..Default::default()
        }))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Err(Status::unimplemented(
            "a lying shard says nothing about itself",
        ))
    }
}

/// Serves `shard` on a free loopback port until `token` is cancelled, health `SERVING`.
pub async fn serve_lying_shard(shard: LyingShard, token: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, router) = standard_router().unwrap();
    let name = <RetrievalServiceServer<LyingShard> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::Serving).await;
    let serve = router
        .add_service(RetrievalServiceServer::new(shard))
        .serve_with_incoming_shutdown(incoming(listener), token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await.expect("lying retrieval node failed") });
    addr
}

/// Serves `ranker` on a free loopback port until `token` is cancelled, health `SERVING`.
pub async fn serve_ranker(ranker: FakeRanker, token: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, router) = standard_router().unwrap();
    let name = <RankingServiceServer<FakeRanker> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::Serving).await;
    let serve = router
        .add_service(RankingServiceServer::new(ranker))
        .serve_with_incoming_shutdown(incoming(listener), token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await.expect("fake ranking node failed") });
    addr
}

/// Serves `shard` on a free loopback port until `token` is cancelled, health `NOT_SERVING`.
pub async fn serve_loading_shard(shard: LoadingShard, token: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (health, router) = standard_router().unwrap();
    let name = <RetrievalServiceServer<LoadingShard> as NamedService>::NAME;
    set_health(&health, name, ServingStatus::NotServing).await;
    let serve = router
        .add_service(RetrievalServiceServer::new(shard))
        .serve_with_incoming_shutdown(incoming(listener), token.clone().cancelled_owned());
    tokio::spawn(async move { serve.await.expect("loading retrieval node failed") });
    addr
}

/// A peer that accepts TCP connections and never says a word: a hung machine.
pub async fn black_hole(token: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = token.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((socket, _)) => held.push(socket),
                    Err(_) => break,
                },
            }
        }
    });
    addr
}

/// A real retrieval node for `shard` of the bundle in `bundle`, on a free loopback
/// port until `token` is cancelled; waits until it is `SERVING`, and fails at once
/// with the node's own error if it ends before (a later failure of the node
/// shows as its shard missing from the coverage the tests check).
pub async fn retrieval_node(
    bundle: &std::path::Path,
    shard: u32,
    token: &CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = crate::node_config(bundle, shard);
    let serve = recsys_retrieval_node::run(listener, config, token.clone());
    let name = format!("retrieval node of shard {shard}");
    let mut node = recsys_local_cluster::ServerHandle::spawn(name, addr, token.clone(), serve);
    node.wait_serving(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    addr
}
