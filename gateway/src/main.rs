//! `gateway`: the public entry point of a recsys cluster.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

use recsys_proto::limits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use recsys_discovery::{EtcdMembership, EtcdOptions, Membership, StaticMembership, StaticSpec};
use recsys_gateway::{
    GatewayConfig, GatewaySecurity, NodeTlsFiles, RecommendLimits, RequestPolicy, run,
};

/// Fans recommendation requests out to the retrieval shards and merges their answers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The bundle: a version directory (manifest, catalog, query model) or a root.
    #[command(flatten)]
    bundle: recsys_bundle::flags::BundleFlags,
    /// The object store holding a `--bundle-root s3://...` and the local cache.
    #[command(flatten)]
    store: recsys_bundle_store::flags::StoreFlags,
    /// Address to listen on.
    #[arg(long, env = "RECSYS_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics (off when not given).
    #[arg(long, env = "RECSYS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Static membership file (JSON: {"shards": [["addr", ...], ...], "ranking": [...]}).
    #[arg(long = "static", env = "RECSYS_STATIC", conflicts_with_all = ["shard", "etcd"])]
    static_file: Option<PathBuf>,
    /// Discover nodes in etcd (`--etcd` client URLs, TLS and auth toward it)
    /// instead of a static list.
    #[command(flatten)]
    etcd: recsys_discovery::flags::EtcdAccessFlags,
    #[command(flatten)]
    versions: recsys_discovery::flags::VersionFlags,
    /// Cluster name in etcd: nodes are read from /recsys/{cluster}/nodes/.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "default")]
    cluster: String,
    /// Static membership as flags: N=addr[,addr...] per shard, repeatable.
    #[arg(
        long,
        env = "RECSYS_SHARDS",
        value_delimiter = ' ',
        conflicts_with = "etcd"
    )]
    shard: Vec<String>,
    /// Largest k (items in an answer).
    #[arg(long, env = "RECSYS_MAX_K", default_value_t = RecommendLimits::default().max_k)]
    max_k: u32,
    /// Largest retrieve_k (candidates retrieved); at most what every node accepts.
    #[arg(long, env = "RECSYS_MAX_RETRIEVE_K", default_value_t = RecommendLimits::default().max_retrieve_k)]
    max_retrieve_k: u32,
    /// Candidates retrieved and ranked when a request leaves retrieve_k at 0:
    /// each costs a forward pass of the ranker and widens every shard's
    /// search. Unranked answers retrieve k.
    #[arg(long, env = "RECSYS_DEFAULT_RETRIEVE_K", default_value_t = limits::DEFAULT_RETRIEVE_K)]
    default_retrieve_k: u32,
    /// Most excluded ids per request.
    #[arg(long, env = "RECSYS_MAX_EXCLUSIONS", default_value_t = RecommendLimits::default().max_exclusions)]
    max_exclusions: usize,
    /// Deadline (ms) for requests that carry none.
    #[arg(long, env = "RECSYS_DEFAULT_TIMEOUT_MS", default_value_t = limits::DEFAULT_TIMEOUT.as_millis() as u64)]
    default_timeout_ms: u64,
    /// Per-shard probability of not truncating the global top-k (Vespa's top-k-probability).
    #[arg(long, env = "RECSYS_TOP_K_PROBABILITY", default_value_t = limits::DEFAULT_TOP_K_PROBABILITY)]
    top_k_probability: f64,
    /// The recall@k each shard's HNSW search aims for when a request names
    /// none: the shard searches with the narrowest beam its bundle's builder
    /// measured to reach it (0: every search uses the bundle's fixed beam).
    #[arg(long, env = "RECSYS_RECALL_TARGET", default_value_t = limits::DEFAULT_RECALL_TARGET)]
    recall_target: f32,
    /// Hedge a node call to a second replica after this many ms without an answer (0: off).
    #[arg(long, env = "RECSYS_HEDGE_AFTER_MS", default_value_t = 0)]
    hedge_after_ms: u64,
    /// The longest client deadline honoured (ms): longer ones are clamped to it.
    #[arg(long, env = "RECSYS_MAX_TIMEOUT_MS", default_value_t = limits::DEFAULT_MAX_TIMEOUT.as_millis() as u64)]
    max_timeout_ms: u64,
    /// Exact (brute-force) searches running at once; more get
    /// RESOURCE_EXHAUSTED. 0 disables exact searches (FAILED_PRECONDITION).
    #[arg(long, env = "RECSYS_MAX_EXACT_SEARCHES", default_value_t = limits::DEFAULT_MAX_EXACT_SEARCHES)]
    max_exact_searches: usize,
    #[command(flatten)]
    server_limits: recsys_server::limits::ServerLimitFlags,
    /// How often each node's grpc.health.v1 is checked (ms).
    #[arg(long, env = "RECSYS_HEALTH_INTERVAL_MS", default_value_t = 1000)]
    health_interval_ms: u64,
    #[command(flatten)]
    tls: recsys_server::tls::ServerTlsFlags,
    /// PEM cluster CA that nodes' certificates must chain to: mutual TLS toward
    /// the nodes, each node's certificate checked against its registration.
    #[arg(long, env = "RECSYS_NODE_TLS_CA", requires_all = ["node_tls_cert", "node_tls_key"])]
    node_tls_ca: Option<PathBuf>,
    /// PEM client certificate the gateway presents to nodes.
    #[arg(long, env = "RECSYS_NODE_TLS_CERT", requires = "node_tls_ca")]
    node_tls_cert: Option<PathBuf>,
    /// PEM key of --node-tls-cert.
    #[arg(long, env = "RECSYS_NODE_TLS_KEY", requires = "node_tls_ca")]
    node_tls_key: Option<PathBuf>,
    /// File of accepted API keys (`NAME SHA256-HEX` per line, re-read while
    /// running); calls without an accepted key get UNAUTHENTICATED.
    #[arg(long, env = "RECSYS_API_KEYS")]
    api_keys: Option<PathBuf>,
    /// File of session token keys (`ID SECRET-HEX` per line, at least 16 bytes
    /// of secret; the first line signs, every line verifies; re-read while
    /// running, so keys rotate without a restart). Gateways that share the file
    /// answer each other's sessions; without it each signs with a random key.
    #[arg(long, env = "RECSYS_SESSION_KEYS")]
    session_keys: Option<PathBuf>,
    /// A JSON file of ranker variant traffic shares, `{"default": 0.9,
    /// "NAME": 0.1}` (and an optional `"salt"`), re-read while the gateway
    /// runs: shares change without a restart. Without it, the bundle's own
    /// (`recsys bundle --ranker-shares`).
    #[arg(long, env = "RECSYS_RANKER_SHARES")]
    ranker_shares: Option<PathBuf>,
    /// Log what every answer showed (request id, time, user and features,
    /// items with positions and scores, versions, ranker variant) as JSON
    /// lines into files in this directory, one directory per gateway; off the
    /// request path, never failing one. `*.jsonl` files are complete; the one
    /// being written ends in `.partial`.
    #[arg(long, env = "RECSYS_IMPRESSION_LOG")]
    impression_log: Option<PathBuf>,
    /// Close an impression log file once it holds this many bytes.
    #[arg(long, default_value_t = 64 << 20, env = "RECSYS_IMPRESSION_LOG_MAX_BYTES")]
    impression_log_max_bytes: u64,
    /// ... or once its first record is this many seconds old: at most this
    /// much is lost to a `kill -9`.
    #[arg(long, default_value_t = 60, env = "RECSYS_IMPRESSION_LOG_MAX_AGE_S")]
    impression_log_max_age_s: u64,
    /// Seconds a session token stays good; an older one starts a new session
    /// (the answer's session_note says so).
    #[arg(long, env = "RECSYS_SESSION_TTL_SECS", default_value_t = recsys_gateway::session::DEFAULT_SESSION_TTL.as_secs())]
    session_ttl_secs: u64,
    /// With etcd: refuse UpsertItems and DeleteItems (RESOURCE_EXHAUSTED) once a
    /// change accepted here has waited longer than this for a serving retrieval
    /// replica to apply it, so that writers back off and changes stay visible
    /// within about this long; 0 never refuses.
    #[arg(long, env = "RECSYS_MAX_APPLY_LAG_MS", default_value_t = recsys_gateway::DEFAULT_MAX_APPLY_LAG.as_millis() as u64)]
    max_apply_lag_ms: u64,
    #[command(flatten)]
    admission: recsys_server::admission::AdmissionFlags,
    #[command(flatten)]
    runtime: recsys_server::runtime::RuntimeFlags,
    /// Parse and validate the flags and environment, print the configuration and
    /// exit without binding, connecting or loading: the deploy files' check.
    #[arg(long, env = "RECSYS_CHECK_CONFIG")]
    check_config: bool,
}

/// Where the gateway learns its nodes.
#[derive(Debug)]
enum Discovery {
    Etcd(EtcdOptions),
    Static(StaticMembership),
}

impl Args {
    /// Everything `serve` needs that can be checked without the network or the
    /// bundle; `--check-config` runs exactly this, so it cannot drift from `serve`.
    fn plan(&self) -> anyhow::Result<(Discovery, GatewayConfig)> {
        let etcd = self.etcd.access()?;
        let discovery = if let Some(etcd) = &etcd {
            Discovery::Etcd(EtcdOptions::new(etcd, self.cluster.clone()))
        } else {
            let spec = match &self.static_file {
                Some(path) => StaticSpec::from_file(path)?,
                None => StaticSpec::from_shard_flags(&self.shard, &[])
                    .context("give the nodes with --etcd URL, --static FILE or --shard N=addr")?,
            };
            Discovery::Static(StaticMembership::new(&spec)?)
        };
        anyhow::ensure!(
            self.top_k_probability > 0.0 && self.top_k_probability <= 1.0,
            "--top-k-probability is {}, must be in (0, 1]",
            self.top_k_probability
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.recall_target),
            "--recall-target is {}, must be in [0, 1] (0: the bundle's fixed beam)",
            self.recall_target
        );
        anyhow::ensure!(self.max_k > 0, "--max-k must be at least 1");
        anyhow::ensure!(
            self.max_retrieve_k <= limits::MAX_RETRIEVE_K,
            "--max-retrieve-k ({}) is above {}, the most a node searches or ranks: the gateway would accept requests its nodes refuse",
            self.max_retrieve_k,
            limits::MAX_RETRIEVE_K
        );
        anyhow::ensure!(
            self.max_exclusions <= limits::MAX_EXCLUSIONS,
            "--max-exclusions ({}) is above {}, the most a node takes",
            self.max_exclusions,
            limits::MAX_EXCLUSIONS
        );
        anyhow::ensure!(
            self.max_retrieve_k >= self.max_k,
            "--max-retrieve-k ({}) is below --max-k ({})",
            self.max_retrieve_k,
            self.max_k
        );
        anyhow::ensure!(
            self.default_retrieve_k <= self.max_retrieve_k,
            "--default-retrieve-k ({}) is above --max-retrieve-k ({})",
            self.default_retrieve_k,
            self.max_retrieve_k
        );
        anyhow::ensure!(
            self.default_timeout_ms > 0,
            "--default-timeout-ms must be positive"
        );
        anyhow::ensure!(
            self.max_timeout_ms >= self.default_timeout_ms,
            "--max-timeout-ms ({}) is below --default-timeout-ms ({})",
            self.max_timeout_ms,
            self.default_timeout_ms
        );
        anyhow::ensure!(
            self.health_interval_ms > 0,
            "--health-interval-ms must be positive"
        );
        self.store.check(&self.bundle)?;
        let config = GatewayConfig {
            bundle: recsys_bundle::BundleSource::at(self.bundle.given()),
            versions: self.versions.options(),
            policy: RequestPolicy {
                limits: RecommendLimits {
                    max_k: self.max_k,
                    max_retrieve_k: self.max_retrieve_k,
                    max_exclusions: self.max_exclusions,
                },
                default_timeout: Duration::from_millis(self.default_timeout_ms),
                top_k_probability: self.top_k_probability,
                recall_target: self.recall_target,
                hedge_after: (self.hedge_after_ms > 0)
                    .then(|| Duration::from_millis(self.hedge_after_ms)),
                max_timeout: Duration::from_millis(self.max_timeout_ms),
                max_exact_searches: self.max_exact_searches,
                default_retrieve_k: self.default_retrieve_k,
                session_ttl: Duration::from_secs(self.session_ttl_secs),
            },
            connect_timeout: Duration::from_secs(1),
            health_interval: Duration::from_millis(self.health_interval_ms),
            security: GatewaySecurity {
                access: self.tls.access(self.listen)?,
                node_tls: match (&self.node_tls_ca, &self.node_tls_cert, &self.node_tls_key) {
                    (Some(ca), Some(cert), Some(key)) => Some(NodeTlsFiles {
                        ca: ca.clone(),
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
                api_keys: self.api_keys.clone(),
                session_keys: self.session_keys.clone(),
            },
            server_limits: self
                .server_limits
                .limits()
                .map_err(|reason| anyhow::anyhow!(reason))?,
            max_in_flight: self.admission.max_in_flight,
            // With etcd, item changes go to the cluster's change log there.
            item_log: etcd.map(|etcd| recsys_gateway::ItemLogOptions {
                etcd,
                cluster: self.cluster.clone(),
                max_apply_lag: Duration::from_millis(self.max_apply_lag_ms),
            }),
            ranker_shares: self.ranker_shares.clone(),
            impression_log: self.impression_log.as_ref().map(|dir| {
                let mut options = recsys_gateway::impression_log::ImpressionLogOptions::new(dir);
                options.max_file_bytes = self.impression_log_max_bytes.max(1);
                options.max_file_age = Duration::from_secs(self.impression_log_max_age_s.max(1));
                options
            }),
        };
        Ok((discovery, config))
    }
}

fn main() -> anyhow::Result<()> {
    let _telemetry = recsys_server::telemetry::init("recsys-gateway");
    let args = Args::parse();
    if args.check_config {
        let (discovery, config) = args.plan()?;
        println!(
            "gateway: configuration ok: listen {}, metrics {:?}, {discovery:?}, {config:?}",
            args.listen, args.metrics_listen
        );
        return Ok(());
    }
    args.runtime
        .build(recsys_server::runtime::IoRole::IoOnly)?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let (discovery, mut config) = args.plan()?;
    config.bundle = args
        .store
        .open(&args.bundle, recsys_bundle::FileSet::Gateway)?;
    let membership: Arc<dyn Membership> = match discovery {
        Discovery::Etcd(options) => {
            tracing::info!(etcd = ?args.etcd.etcd, cluster = %args.cluster, "discovering nodes in etcd");
            Arc::new(EtcdMembership::start(options))
        }
        Discovery::Static(membership) => Arc::new(membership),
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let shutdown = recsys_server::shutdown::on_signal();
    if let Some(addr) = args.metrics_listen {
        recsys_server::metrics::spawn(addr, shutdown.clone()).await;
    }
    run(listener, config, membership, shutdown).await?;
    Ok(())
}
