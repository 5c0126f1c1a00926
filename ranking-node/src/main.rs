//! `ranking-node`: scores retrieval candidates with the bundle's DCN-V2 ranker.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

use std::net::SocketAddr;

use clap::Parser;
use recsys_ranking_node::RankingConfig;

/// Scores retrieval candidates for a user over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The bundle: a version directory (holds manifest.json and ranker/) or a root.
    #[command(flatten)]
    bundle: recsys_bundle::flags::BundleFlags,
    /// The object store holding a `--bundle-root s3://...` and the local cache.
    #[command(flatten)]
    store: recsys_bundle_store::flags::StoreFlags,
    /// Address to listen on.
    #[arg(long, env = "RECSYS_LISTEN", default_value = "127.0.0.1:50071")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics (off when not given).
    #[arg(long, env = "RECSYS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    etcd: recsys_discovery::flags::EtcdFlags,
    #[command(flatten)]
    versions: recsys_discovery::flags::VersionFlags,
    /// Scoring threads, one forward pass each at a time (0 = one per core).
    #[arg(long, env = "RECSYS_RANK_THREADS", default_value_t = 0)]
    threads: usize,
    /// Most candidates one forward pass takes from concurrent requests (0 = one request per pass).
    #[arg(long, env = "RECSYS_MAX_BATCH_ROWS", default_value_t = RankingConfig::new("").max_batch_rows)]
    max_batch_rows: usize,
    /// Most requests waiting for a scoring thread; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "RECSYS_MAX_QUEUE", default_value_t = RankingConfig::new("").max_queue)]
    max_queue: usize,
    /// Most candidates waiting for a scoring thread, over all requests; more get
    /// RESOURCE_EXHAUSTED (a request alone in the queue is always taken).
    #[arg(long, env = "RECSYS_MAX_QUEUE_CANDIDATES", default_value_t = RankingConfig::new("").max_queue_candidates)]
    max_queue_candidates: usize,
    #[command(flatten)]
    admission: recsys_server::admission::AdmissionFlags,
    /// Most candidates per request.
    #[arg(long, env = "RECSYS_MAX_CANDIDATES", default_value_t = RankingConfig::new("").max_candidates)]
    max_candidates: usize,
    /// Score unknown item ids with out-of-vocabulary features instead of refusing them.
    #[arg(long, env = "RECSYS_ALLOW_UNKNOWN_ITEMS")]
    allow_unknown_items: bool,
    #[command(flatten)]
    tls: recsys_server::tls::ServerTlsFlags,
    #[command(flatten)]
    server_limits: recsys_server::limits::ServerLimitFlags,
    #[command(flatten)]
    runtime: recsys_server::runtime::RuntimeFlags,
    /// Parse and validate the flags and environment, print the configuration and
    /// exit without binding, registering or loading: the deploy files' check.
    #[arg(long, env = "RECSYS_CHECK_CONFIG")]
    check_config: bool,
}

impl Args {
    /// The node's configuration when it listens on `listen`: everything that can
    /// be checked without the network or the bundle. `--check-config` runs exactly this.
    fn config(&self, listen: SocketAddr) -> anyhow::Result<RankingConfig> {
        let floor = recsys_proto::limits::MAX_RETRIEVE_K as usize;
        anyhow::ensure!(
            self.max_candidates >= floor,
            "--max-candidates is {}, below {floor}: gateways retrieve up to that many candidates and would send requests this node refuses",
            self.max_candidates
        );
        self.store.check(&self.bundle)?;
        Ok(RankingConfig {
            bundle: recsys_bundle::BundleSource::at(self.bundle.given()),
            versions: self.versions.options(),
            threads: self.threads,
            max_batch_rows: self.max_batch_rows,
            max_queue: self.max_queue,
            max_queue_candidates: self.max_queue_candidates,
            max_in_flight: self.admission.max_in_flight,
            max_candidates: self.max_candidates,
            allow_unknown_items: self.allow_unknown_items,
            announce: self.etcd.announce("ranking", listen)?,
            access: self.tls.access(self.listen)?,
            server_limits: self
                .server_limits
                .limits()
                .map_err(|reason| anyhow::anyhow!(reason))?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    // Before anything starts a thread (see kernel_threads).
    recsys_server::kernel_threads::one_per_product_by_default();
    let _telemetry = recsys_server::telemetry::init("recsys-ranking-node");
    let args = Args::parse();
    if args.check_config {
        let config = args.config(args.listen)?;
        println!(
            "ranking-node: configuration ok: listen {}, metrics {:?}, {config:?}",
            args.listen, args.metrics_listen
        );
        return Ok(());
    }
    args.runtime
        .build(recsys_server::runtime::IoRole::WithComputePools)?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    tracing::info!(
        threads_per_product = recsys_model::threads_per_product(),
        "scoring threads split no matrix product unless RAYON_NUM_THREADS says so"
    );
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut config = args.config(listener.local_addr()?)?;
    config.bundle = args
        .store
        .open(&args.bundle, recsys_bundle::FileSet::Ranker)?;
    let shutdown = recsys_server::shutdown::on_signal();
    if let Some(addr) = args.metrics_listen {
        recsys_server::metrics::spawn(addr, shutdown.clone()).await;
    }
    recsys_ranking_node::run(listener, config, shutdown).await?;
    Ok(())
}
