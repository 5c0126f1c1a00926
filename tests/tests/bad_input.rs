//! Issue 18's bad-input test: over 10,000 generated malformed and adversarial
//! requests against a whole cluster (gateway, two shards, a ranking node, each
//! the real binary in its own process on loopback), typed and as raw bytes, plus
//! cancelled streams and concurrent bursts. Nothing may crash, no answer may be
//! INTERNAL or UNKNOWN, no OK answer may break an invariant (more than k items,
//! duplicates, excluded ids, non-finite scores), and further rounds of the same
//! kinds of traffic may neither grow any server's resident memory by 50 MiB nor
//! add a metric series with a label value the warm-up round had not shown: what
//! a hostile client sends must not accumulate. (A new combination of known
//! values may appear: which shard first refuses which call depends on what the
//! concurrent bursts let through, and is bounded by the values' product.)
//!
//! The servers run as processes so that what is measured is theirs, with the
//! allocator the binaries install (`recsys_server::allocator`): with every
//! server inside the test, the resident set was mostly this client's own
//! requests (the generator builds messages of tens of MB that servers refuse on
//! their length prefix) kept by glibc's per-thread arenas after they were freed,
//! and moved by over 100 MiB between rounds on a loaded machine while the live
//! heap stayed at 3 MiB.
//!
//! Needs the binaries (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use recsys_local_cluster::ServerProcess;
use recsys_proto::limits::{
    MAX_EXCLUSIONS, MAX_FILTER_BYTES, MAX_ID_BYTES, MAX_K, MAX_LIST_VALUES, MAX_RETRIEVE_K,
    MAX_USER_FEATURES,
};
use recsys_proto::v1::gateway_service_client::GatewayServiceClient;
use recsys_proto::v1::ranking_service_client::RankingServiceClient;
use recsys_proto::v1::retrieval_service_client::RetrievalServiceClient;
use recsys_proto::v1::{
    FeatureValue, QueryEmbedding, RankRequest, RecommendOptions, RecommendRequest,
    RecommendResponse, SearchRequest, StringList, feature_value, recommend_request,
};
use recsys_tests::noise::Noise;
use recsys_tests::processes::{free_addr, spawn};
use recsys_tests::*;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

const DIMENSIONS: usize = 16;
/// Loop turns of each round; with the bursts of 24, three rounds send about
/// 33,000 requests.
const PER_ROUND: usize = 2_600;

/// Requests and values that are usually fine and often not, drawn from [`Noise`].
trait Adversarial {
    fn float(&mut self) -> f32;
    fn count(&mut self, limit: usize) -> usize;
    fn id(&mut self) -> u64;
    fn string(&mut self) -> String;
    fn features(&mut self) -> std::collections::HashMap<String, FeatureValue>;
    fn embedding(&mut self) -> Vec<f32>;
    fn filter(&mut self, depth: u32) -> recsys_proto::v1::Filter;
    fn expression(&mut self) -> String;
    fn recommend(&mut self) -> RecommendRequest;
    fn search(&mut self) -> SearchRequest;
    fn rank(&mut self) -> RankRequest;
    fn head_weights(&mut self) -> std::collections::HashMap<String, f32>;
}

impl Adversarial for Noise {
    /// A float that is usually fine and often not.
    fn float(&mut self) -> f32 {
        self.pick(&[
            0.1,
            -0.5,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            3.4e38,
            -3.4e38,
            1e6,
            1.000_001e6,
            f32::MIN_POSITIVE,
            0.0,
        ])
    }

    fn count(&mut self, limit: usize) -> usize {
        self.pick(&[0, 1, 3, limit, limit + 1])
    }

    fn id(&mut self) -> u64 {
        match self.below(3) {
            0 => self.below(3_000),
            1 => u64::MAX - self.below(3),
            _ => self.next_u64(),
        }
    }

    fn string(&mut self) -> String {
        let len = self.pick(&[0, 1, 8, MAX_ID_BYTES, MAX_ID_BYTES + 1, 70_000]);
        match self.below(3) {
            0 => "u".repeat(len),
            1 => format!("user-{}", self.below(60)),
            _ => String::from_utf8_lossy(&self.bytes(len.min(64))).into_owned(),
        }
    }

    fn features(&mut self) -> std::collections::HashMap<String, FeatureValue> {
        let names = [
            "age",
            "gender",
            "occupation",
            "zip",
            "genres",
            "unknown",
            "",
        ];
        (0..self.count(MAX_USER_FEATURES).min(MAX_USER_FEATURES + 1))
            .map(|i| {
                let name = match self.below(4) {
                    0 => format!("f{i}"),
                    1 => "n".repeat(self.pick(&[1, 128, 129, 5_000])),
                    _ => self.pick(&names).to_string(),
                };
                let kind = match self.below(4) {
                    0 => feature_value::Kind::StringValue(self.string()),
                    1 => feature_value::Kind::IntValue(self.next_u64() as i64),
                    2 => feature_value::Kind::FloatValue(self.float()),
                    _ => feature_value::Kind::StringList(StringList {
                        values: (0..self.count(MAX_LIST_VALUES))
                            .map(|_| self.string())
                            .collect(),
                    }),
                };
                (name, FeatureValue { kind: Some(kind) })
            })
            .collect()
    }

    fn embedding(&mut self) -> Vec<f32> {
        let len = self.pick(&[
            DIMENSIONS,
            DIMENSIONS,
            0,
            DIMENSIONS - 1,
            DIMENSIONS + 1,
            5_000,
        ]);
        let bad = self.below(3) == 0;
        (0..len)
            .map(|_| if bad { self.float() } else { 0.1 })
            .collect()
    }

    /// A structured filter: deep, wide, empty, with odd values.
    fn filter(&mut self, depth: u32) -> recsys_proto::v1::Filter {
        use recsys_proto::v1::{
            AttributeAnyOf, AttributeEquals, AttributeLiteral, AttributeRange, Filter, FilterList,
            attribute_literal::Value, filter::Kind,
        };
        // Names and keywords stay small (a filter over the decoders' limits is
        // refused before it is read), but some pass the id limit.
        let word = |noise: &mut Self| {
            let len = noise.pick(&[0, 1, 8, MAX_ID_BYTES + 1]);
            "g".repeat(len)
        };
        let literal = |noise: &mut Self| AttributeLiteral {
            value: match noise.below(5) {
                0 => Some(Value::Keyword(word(noise))),
                1 => Some(Value::Integer(noise.next_u64() as i64)),
                2 => Some(Value::Number(f64::from(noise.float()))),
                3 => Some(Value::Boolean(true)),
                _ => None,
            },
        };
        if depth == 0 && self.below(10) == 0 {
            // A chain past the depth limit.
            return (0..self.pick(&[31u32, 32, 33, 200])).fold(
                Filter {
                    kind: Some(Kind::Range(AttributeRange::default())),
                },
                |inner, _| Filter {
                    kind: Some(Kind::Negated(Box::new(inner))),
                },
            );
        }
        // Lists only near the top, so a filter stays small.
        let choice = if depth > 3 {
            self.below(3)
        } else {
            self.below(7)
        };
        let kind = match choice {
            0 => Some(Kind::Equals(AttributeEquals {
                attribute: word(self),
                value: Some(literal(self)),
            })),
            1 => Some(Kind::AnyOf(AttributeAnyOf {
                attribute: word(self),
                values: (0..self.count(3)).map(|_| literal(self)).collect(),
            })),
            2 => Some(Kind::Range(AttributeRange {
                attribute: word(self),
                min: Some(f64::from(self.float())),
                max: (self.below(2) == 0).then(|| f64::from(self.float())),
                min_exclusive: self.below(2) == 0,
                max_exclusive: false,
            })),
            3 => Some(Kind::Negated(Box::new(self.filter(depth + 1)))),
            4 => Some(Kind::All(FilterList {
                filters: (0..self.count(4)).map(|_| self.filter(depth + 1)).collect(),
            })),
            5 => Some(Kind::Any(FilterList {
                filters: (0..self.count(4)).map(|_| self.filter(depth + 1)).collect(),
            })),
            _ => None,
        };
        Filter { kind }
    }

    /// A text filter: valid, cut short, nested too deep, just over the size
    /// limit (a request far over the decoders' limits is refused before it is
    /// read, and that answer is pinned elsewhere), or noise.
    fn expression(&mut self) -> String {
        match self.below(5) {
            0 => String::new(),
            1 => r#"genre in ["Comedy", "Drama"] and year >= 1990"#.into(),
            2 => "(".repeat(self.pick(&[1, 33, MAX_FILTER_BYTES + 1])),
            3 => "year >= ".into(),
            _ => {
                let len = self.pick(&[1, 8, 64, MAX_FILTER_BYTES, MAX_FILTER_BYTES + 1]);
                // Printable ASCII: exactly `len` bytes.
                self.bytes(len)
                    .iter()
                    .map(|b| char::from(b % 95 + 32))
                    .collect()
            }
        }
    }

    fn recommend(&mut self) -> RecommendRequest {
        let query = match self.below(3) {
            0 => Some(recommend_request::Query::UserId(self.string())),
            1 => Some(recommend_request::Query::QueryEmbedding(QueryEmbedding {
                values: self.embedding(),
            })),
            _ => None,
        };
        RecommendRequest {
            min_revision: self.pick(&[0, 0, 0, 1, u64::MAX]),
            query,
            user_features: if self.below(2) == 0 {
                self.features()
            } else {
                Default::default()
            },
            k: self.pick(&[0, 1, 10, MAX_K, MAX_K + 1, u32::MAX]),
            retrieve_k: self.pick(&[0, 5, 100, MAX_RETRIEVE_K, MAX_RETRIEVE_K + 1, u32::MAX]),
            exclude_item_ids: (0..self.count(MAX_EXCLUSIONS)).map(|_| self.id()).collect(),
            options: (self.below(2) == 0).then(|| RecommendOptions {
                exact: self.below(8) == 0,
                top_k_probability: self.pick(&[0.0, 0.5, 1.0, 2.0, -1.0, f32::NAN]),
                skip_ranking: self.below(2) == 0,
                include_seen: self.below(2) == 0,
                recall_target: self.pick(&[0.0, 0.5, 0.95, 1.0, 1.5, -1.0, f32::NAN]),
            }),
            similar_to_item_id: (self.below(4) == 0).then(|| self.id()),
            diversity: (self.below(4) == 0).then(|| recsys_proto::v1::Diversity {
                attribute: self.string(),
                max_per_value: self.pick(&[0, 1, 2, u32::MAX]),
                mmr_lambda: self.pick(&[None, Some(0.5), Some(1.0), Some(-1.0), Some(f32::NAN)]),
            }),
            filter: (self.below(6) == 0).then(|| self.filter(0)),
            filter_expression: if self.below(4) == 0 {
                self.expression()
            } else {
                String::new()
            },
            // A token of random bytes (never a valid signature), or none.
            session: (self.below(4) == 0).then(|| recsys_proto::v1::SessionRequest {
                token: {
                    let len = self.count(64);
                    self.bytes(len)
                },
                mode: self.pick(&[0, 1, 7, -1]),
            }),
            head_weights: self.head_weights(),
        }
    }

    fn search(&mut self) -> SearchRequest {
        SearchRequest {
            bundle_version: String::new(),
            min_log_revision: self.pick(&[0, 0, 0, 1, u64::MAX]),
            query: self.embedding(),
            k: self.pick(&[0, 1, 10, MAX_RETRIEVE_K, MAX_RETRIEVE_K + 1, u32::MAX]),
            exclude_item_ids: (0..self.count(MAX_EXCLUSIONS)).map(|_| self.id()).collect(),
            exact: self.below(8) == 0,
            filter: if self.below(4) == 0 {
                self.expression()
            } else {
                String::new()
            },
            return_vectors: self.below(4) == 0,
            recall_target: self.pick(&[0.0, 0.5, 0.95, 1.0, 1.5, -1.0, f32::NAN]),
            recall_at: self.pick(&[0, 1, 25, u32::MAX]),
        }
    }

    fn rank(&mut self) -> RankRequest {
        RankRequest {
            bundle_version: String::new(),
            user_id: self.string(),
            user_features: self.features(),
            item_ids: (0..self.count(MAX_RETRIEVE_K as usize))
                .map(|_| self.id())
                .collect(),
            min_log_revision: self.pick(&[0, 0, 1, u64::MAX]),
            head_weights: self.head_weights(),
            ranker_variant: if self.below(4) == 0 {
                self.string()
            } else {
                String::new()
            },
        }
    }

    // Head weights of arbitrary names and values (the fuzzed bundles' rankers
    // have one output, so any entry is refused).
    fn head_weights(&mut self) -> std::collections::HashMap<String, f32> {
        (0..self.pick(&[0, 0, 0, 1, 3]))
            .map(|_| {
                (
                    self.string(),
                    self.pick(&[0.0, 1.0, -1.0, 1e7, f32::NAN, f32::INFINITY]),
                )
            })
            .collect()
    }
}

/// The invariants of an OK answer to `request`.
fn check_answer(response: &RecommendResponse, request: &RecommendRequest) {
    assert_answer_invariants(response, request.k, &request.exclude_item_ids);
}

fn tally(codes: &mut BTreeMap<String, usize>, what: &str, outcome: Result<(), Status>) {
    let code = outcome.as_ref().map_or_else(Status::code, |()| Code::Ok);
    assert!(
        !matches!(code, Code::Internal | Code::Unknown),
        "{what}: {outcome:?}"
    );
    *codes.entry(format!("{what} {code:?}")).or_insert(0) += 1;
}

struct Targets {
    gateway: GatewayServiceClient<Channel>,
    gateway_channel: Channel,
    shard: RetrievalServiceClient<Channel>,
    shard_channel: Channel,
    ranking: RankingServiceClient<Channel>,
    ranking_channel: Channel,
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// One round: typed adversarial requests to each server, raw byte mutations of
/// valid messages, cancelled streams and concurrent bursts.
async fn round(targets: &mut Targets, noise: &mut Noise) -> BTreeMap<String, usize> {
    let mut codes = BTreeMap::new();
    let timeout = Duration::from_secs(10);
    let valid = by_embedding(vec![0.1; DIMENSIONS], 10, false);
    let raw_bases = [
        ("/recsys.v1.GatewayService/Recommend", valid.encode_to_vec()),
        (
            "/recsys.v1.RetrievalService/Search",
            noise.search().encode_to_vec(),
        ),
        (
            "/recsys.v1.RankingService/Rank",
            noise.rank().encode_to_vec(),
        ),
    ];
    for i in 0..PER_ROUND {
        match i % 13 {
            0..=4 => {
                let request = noise.recommend();
                let mut call = tonic::Request::new(request.clone());
                call.set_timeout(timeout);
                let outcome = targets.gateway.recommend(call).await;
                if let Ok(response) = &outcome {
                    check_answer(response.get_ref(), &request);
                }
                tally(&mut codes, "recommend", outcome.map(drop));
            }
            5 | 6 => {
                let request = noise.search();
                let k = request.k as usize;
                let outcome = targets.shard.search(request).await;
                if let Ok(response) = &outcome {
                    let response = response.get_ref();
                    assert!(response.item_ids.len() <= k);
                    assert!(response.scores.iter().all(|s| s.is_finite()));
                }
                tally(&mut codes, "search", outcome.map(drop));
            }
            7 | 8 => {
                let request = noise.rank();
                let outcome = targets.ranking.rank(request.clone()).await;
                if let Ok(response) = &outcome {
                    let response = response.get_ref();
                    assert_eq!(response.scores.len(), request.item_ids.len());
                    assert!(response.scores.iter().all(|s| s.is_finite()));
                }
                tally(&mut codes, "rank", outcome.map(drop));
            }
            9 | 10 => {
                let (path, base) = &raw_bases[noise.below(3) as usize];
                let body = match noise.below(3) {
                    0 => {
                        let len = noise.below(300) as usize;
                        noise.bytes(len)
                    }
                    1 => {
                        let mut bytes = base.clone();
                        for _ in 0..=noise.below(4) {
                            let bit = noise.below(bytes.len() as u64 * 8) as usize;
                            bytes[bit / 8] ^= 1 << (bit % 8);
                        }
                        bytes
                    }
                    _ => base[..noise.below(base.len() as u64) as usize].to_vec(),
                };
                let channel = match *path {
                    p if p.contains("Gateway") => &targets.gateway_channel,
                    p if p.contains("Retrieval") => &targets.shard_channel,
                    _ => &targets.ranking_channel,
                };
                // One call in eight ends its body without any message.
                let outcome = if noise.below(8) == 0 {
                    raw_grpc::call_without_message(channel, path).await
                } else {
                    raw_grpc::call(channel, path, body).await
                };
                tally(&mut codes, "raw", outcome.map(drop));
            }
            11 => {
                // A stream dropped after its first message, or before any.
                let outcome = targets.gateway.recommend_stream(valid.clone()).await;
                if let Ok(response) = outcome {
                    let mut stream = response.into_inner();
                    if noise.below(2) == 0 {
                        let _ = stream.next().await;
                    }
                }
                *codes.entry("stream dropped".into()).or_insert(0) += 1;
            }
            _ => {
                // A burst of concurrent calls, valid and not: some may be shed
                // (RESOURCE_EXHAUSTED), none may break.
                let burst: Vec<_> = (0..24)
                    .map(|_| {
                        let request = noise.recommend();
                        let mut client = targets.gateway.clone();
                        tokio::spawn(async move {
                            let outcome = client.recommend(request.clone()).await;
                            if let Ok(response) = &outcome {
                                check_answer(response.get_ref(), &request);
                            }
                            outcome.map(drop)
                        })
                    })
                    .collect();
                for call in burst {
                    tally(&mut codes, "burst", call.await.unwrap());
                }
            }
        }
    }
    codes
}

/// A server process and where it serves metrics.
struct Server {
    process: ServerProcess,
    metrics: std::net::SocketAddr,
}

/// The cluster, one process per server: shards 0 and 1, the ranking node, the
/// gateway.
struct Cluster {
    servers: Vec<Server>,
}

impl Cluster {
    /// Two retrieval nodes, a ranking node and a gateway with static membership
    /// on `bundle`, each SERVING.
    async fn start(bundle: &std::path::Path, dir: &std::path::Path) -> Self {
        let bundle_arg = bundle.display().to_string();
        let mut servers = Vec::new();
        let mut shard_addrs = Vec::new();
        for shard in 0..2u32 {
            let shard_arg = shard.to_string();
            let server = Server::spawn(
                &format!("shard {shard}"),
                "retrieval-node",
                &["--bundle", &bundle_arg, "--shard", &shard_arg],
            );
            shard_addrs.push(server.process.addr.to_string());
            servers.push(server);
        }
        let ranking = Server::spawn("ranking", "ranking-node", &["--bundle", &bundle_arg]);
        let ranking_addr = ranking.process.addr.to_string();
        servers.push(ranking);
        for server in &mut servers {
            server.wait_serving().await;
        }
        let spec = serde_json::json!({
            "shards": shard_addrs.iter().map(|a| vec![a]).collect::<Vec<_>>(),
            "ranking": [ranking_addr],
        });
        let static_file = dir.join("static.json");
        std::fs::write(&static_file, spec.to_string()).unwrap();
        let static_arg = static_file.display().to_string();
        let mut gateway = Server::spawn(
            "gateway",
            "gateway",
            &["--bundle", &bundle_arg, "--static", &static_arg],
        );
        gateway.wait_serving().await;
        servers.push(gateway);
        Self { servers }
    }

    /// Where the gateway listens (started last).
    fn gateway_addr(&self) -> std::net::SocketAddr {
        self.servers[3].process.addr
    }

    /// Where shard 1's node listens.
    fn shard_addr(&self) -> std::net::SocketAddr {
        self.servers[1].process.addr
    }

    /// Where the ranking node listens.
    fn ranking_addr(&self) -> std::net::SocketAddr {
        self.servers[2].process.addr
    }

    /// Each server's name and resident memory in bytes; panics when one has
    /// exited (a crash).
    fn resident(&mut self) -> Vec<(String, u64)> {
        self.servers
            .iter_mut()
            .map(|server| {
                server
                    .process
                    .check_running()
                    .unwrap_or_else(|e| panic!("{e}"));
                let pid = server.process.pid().unwrap();
                (server.process.name.clone(), resident_bytes(pid))
            })
            .collect()
    }

    /// Every server's metric series, named by server.
    async fn series(&self) -> std::collections::BTreeSet<String> {
        let mut all = std::collections::BTreeSet::new();
        for server in &self.servers {
            let name = &server.process.name;
            all.extend(series(&scrape(server.metrics).await).map(|s| format!("{name}: {s}")));
        }
        all
    }
}

impl Server {
    fn spawn(name: &str, binary: &str, args: &[&str]) -> Self {
        let (addr, metrics) = (free_addr(), free_addr());
        let mut args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        args.extend([
            "--listen".into(),
            addr.to_string(),
            "--metrics-listen".into(),
            metrics.to_string(),
        ]);
        Self {
            process: spawn(name, binary, addr, &args),
            metrics,
        }
    }

    async fn wait_serving(&mut self) {
        self.process
            .wait_serving(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Resident memory of process `pid`, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .unwrap();
    kib * 1024
}

/// The series names (server included) and label values a set of series shows:
/// a later series made only of these adds a combination, not a new value, so
/// no number of requests can grow the series past their product.
struct SeriesVocabulary {
    names: std::collections::BTreeSet<String>,
    labels: std::collections::BTreeSet<(String, String)>,
}

impl SeriesVocabulary {
    fn of(series: &std::collections::BTreeSet<String>) -> Self {
        let (mut names, mut labels) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for one in series {
            let (name, pairs) = series_labels(one);
            names.insert(name.to_string());
            labels.extend(pairs);
        }
        Self { names, labels }
    }

    fn covers(&self, series: &str) -> bool {
        let (name, pairs) = series_labels(series);
        self.names.contains(name) && pairs.iter().all(|pair| self.labels.contains(pair))
    }
}

/// A series' name and its labels: `name{a="x",b="y"}` gives `name` and
/// `[(a, x), (b, y)]` (escaped characters unescaped).
fn series_labels(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let mut pairs = Vec::new();
    let mut chars = rest.strip_suffix('}').unwrap_or(rest).chars().peekable();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if label.is_empty() || chars.next() != Some('"') {
            break;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        pairs.push((label, value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    (name, pairs)
}

#[test]
fn series_labels_are_read_and_only_known_values_are_covered() {
    let (name, pairs) =
        series_labels(r#"shard 0: calls_total{code="InvalidArgument",path="/a\"b,c"}"#);
    assert_eq!(name, "shard 0: calls_total");
    assert_eq!(
        pairs,
        [
            ("code".to_string(), "InvalidArgument".to_string()),
            ("path".to_string(), "/a\"b,c".to_string())
        ]
    );
    let first: std::collections::BTreeSet<String> = [
        r#"shard 0: calls_total{code="Ok",method="Search"}"#,
        r#"shard 1: calls_total{code="InvalidArgument",method="Search"}"#,
        "shard 0: up",
    ]
    .map(String::from)
    .into();
    let known = SeriesVocabulary::of(&first);
    assert!(known.covers(r#"shard 0: calls_total{code="InvalidArgument",method="Search"}"#));
    assert!(known.covers("shard 0: up"));
    assert!(!known.covers(r#"shard 0: calls_total{code="Ok",method="user-1234"}"#));
    assert!(!known.covers(r#"shard 0: calls_by_user_total{code="Ok"}"#));
}

/// Metric series (sample lines, without their values) of a `/metrics` scrape.
fn series(scraped: &str) -> impl Iterator<Item = String> + '_ {
    scraped
        .lines()
        // Past the HTTP headers, which end at the first empty line.
        .skip_while(|line| !line.trim().is_empty())
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(series, _)| series)
                .to_string()
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_requests_break_nothing_and_leave_nothing_behind() {
    let bundle = synthetic_bundle(3_000, 60, DIMENSIONS, 2, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(bundle.path(), dir.path()).await;
    let gateway_addr = cluster.gateway_addr();
    let gateway_channel = channel(gateway_addr).await;
    let shard_channel = channel(cluster.shard_addr()).await;
    let ranking_channel = channel(cluster.ranking_addr()).await;
    let mut targets = Targets {
        gateway: GatewayServiceClient::new(gateway_channel.clone())
            .max_decoding_message_size(64 << 20),
        gateway_channel,
        shard: RetrievalServiceClient::new(shard_channel.clone()),
        shard_channel,
        ranking: RankingServiceClient::new(ranking_channel.clone()),
        ranking_channel,
    };
    // A ranked answer first: the cluster works before it is attacked (the
    // gateway health-checks the ranking node before it sends it work).
    wait_for_answer(
        gateway_addr,
        ranked("user-1", 10, 50),
        |answer| answer.ranked,
        Duration::from_secs(30),
    )
    .await;
    let mut client = gateway_client(gateway_addr).await;

    let mut noise = Noise(0x5eed_1234_abcd_0001);
    // Round one is the warm-up: the same traffic as the rounds measured, so that
    // what a server allocates once (pools, caches filled to their bound, the
    // allocator's segments for its peak) is in the baseline and not counted as
    // growth.
    let first = round(&mut targets, &mut noise).await;
    let (baseline, series_after_first) = (cluster.resident(), cluster.series().await);
    let second = round(&mut targets, &mut noise).await;
    let after_second = cluster.resident();
    let third = round(&mut targets, &mut noise).await;
    let after_third = cluster.resident();
    let total: usize = [&first, &second, &third]
        .iter()
        .flat_map(|round| round.values())
        .sum();
    eprintln!("first round: {first:?}\nsecond round: {second:?}");
    assert!(total >= 10_000, "{total}");
    // Every kind of refusal happened, and so did answers: the generator reaches
    // both sides of the checks.
    for kind in [
        "recommend Ok",
        "recommend InvalidArgument",
        "search InvalidArgument",
    ] {
        assert!(first.contains_key(kind), "no {kind} in {first:?}");
    }
    // No server may end round two or three 50 MiB above where it ended the
    // warm-up round.
    let mib = |bytes: u64| bytes >> 20;
    for (((name, base), (_, second)), (_, third)) in
        baseline.iter().zip(&after_second).zip(&after_third)
    {
        eprintln!(
            "{name}: resident MiB after rounds 1 2 3: {} {} {}",
            mib(*base),
            mib(*second),
            mib(*third)
        );
    }
    for (((name, base), (_, second)), (_, third)) in
        baseline.iter().zip(&after_second).zip(&after_third)
    {
        let top = (*second).max(*third);
        assert!(
            top < base + (50 << 20),
            "{name}: resident memory grew from {} MiB after the warm-up round to {} MiB",
            mib(*base),
            mib(top)
        );
    }
    let known = SeriesVocabulary::of(&series_after_first);
    let unbounded: Vec<String> = cluster
        .series()
        .await
        .difference(&series_after_first)
        .filter(|added| !known.covers(added))
        .cloned()
        .collect();
    assert!(
        unbounded.is_empty(),
        "rounds two and three added metric series with names or label values the first round had not shown: {unbounded:?}"
    );
    // Still serving, and still ranked.
    let answer = recommend(
        &mut client,
        ranked("user-1", 10, 50),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(answer.ranked && answer.items.len() == 10, "{answer:?}");
    cluster.resident();
}
