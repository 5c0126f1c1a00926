//! `retrieval-node`: serves one shard of a bundle.

#[global_allocator]
static ALLOCATOR: recsys_server::allocator::Allocator = recsys_server::allocator::Allocator;

use std::net::SocketAddr;

use clap::Parser;
use recsys_retrieval_node::{DEFAULT_FOLD_MIN_ITEMS, LoadMode, NodeConfig, SearchLimits, run};

/// Serves one shard of a recsys bundle over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The bundle: a version directory (holds manifest.json) or a root.
    #[command(flatten)]
    bundle: recsys_bundle::flags::BundleFlags,
    /// The object store holding a `--bundle-root s3://...` and the local cache.
    #[command(flatten)]
    store: recsys_bundle_store::flags::StoreFlags,
    /// Shard number to serve.
    #[arg(long, env = "RECSYS_SHARD")]
    shard: u32,
    /// Address to listen on.
    #[arg(long, env = "RECSYS_LISTEN", default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
    /// Serve Prometheus metrics on http://ADDR/metrics (off when not given).
    #[arg(long, env = "RECSYS_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    etcd: recsys_discovery::flags::EtcdFlags,
    #[command(flatten)]
    versions: recsys_discovery::flags::VersionFlags,
    /// Searches running at once (0 = one per core).
    #[arg(long, env = "RECSYS_SEARCH_THREADS", default_value_t = 0)]
    search_threads: usize,
    /// Largest k a search may ask for: at least the API's retrieve_k limit, so a
    /// node never refuses what a gateway accepts (`recsys_proto::limits`).
    #[arg(long, env = "RECSYS_MAX_SEARCH_K", default_value_t = SearchLimits::default().max_k)]
    max_search_k: u32,
    /// Most excluded ids per search: at least the API's exclusion limit.
    #[arg(long, env = "RECSYS_MAX_EXCLUSIONS", default_value_t = SearchLimits::default().max_exclusions)]
    max_exclusions: usize,
    /// Exact (brute-force) searches running at once; more get
    /// RESOURCE_EXHAUSTED. 0 disables exact searches (FAILED_PRECONDITION).
    #[arg(long, env = "RECSYS_MAX_EXACT_SEARCHES", default_value_t = SearchLimits::default().max_exact_searches)]
    max_exact_searches: usize,
    #[command(flatten)]
    server_limits: recsys_server::limits::ServerLimitFlags,
    /// How to open the shard file: `packed` memory-maps it and copies vectors and
    /// base-layer links into one huge-page block per item (fast searches),
    /// `hugepages` copies the file into huge-page memory, `view` memory-maps it
    /// (memory shared with the page cache and other nodes on the host), `load`
    /// reads it into the heap; `coded` is `packed` plus each item's neighbours'
    /// 4-bit codes, so a search measures only the neighbours that may enter
    /// its beam (fastest; f32 shards only; about 1.6 KB more per item,
    /// seconds more at start).
    #[arg(long, env = "RECSYS_LOAD_MODE", value_enum, default_value_t = LoadMode::default())]
    load_mode: LoadMode,
    /// Once the item change log has been quiet for a second, fold the shard's
    /// mutable part into a copy of its base when the part holds at least this
    /// many items, so that searches run one graph traversal instead of two
    /// until the next change (0: never). Costs a second copy of the shard in
    /// memory and an HNSW insertion per changed item, at most about a
    /// twentieth of a core over time.
    #[arg(long, env = "RECSYS_FOLD_MIN_ITEMS", default_value_t = DEFAULT_FOLD_MIN_ITEMS)]
    fold_min_items: usize,
    #[command(flatten)]
    tls: recsys_server::tls::ServerTlsFlags,
    #[command(flatten)]
    admission: recsys_server::admission::AdmissionFlags,
    #[command(flatten)]
    runtime: recsys_server::runtime::RuntimeFlags,
    /// Parse and validate the flags and environment, print the configuration and
    /// exit without binding, registering or loading: the deploy files' check.
    #[arg(long, env = "RECSYS_CHECK_CONFIG")]
    check_config: bool,
}

impl Args {
    /// The node's configuration when it listens on `listen`: everything that can
    /// be checked without the network or the bundle (the shard number is checked
    /// against the bundle when it loads). `--check-config` runs exactly this.
    fn config(&self, listen: SocketAddr) -> anyhow::Result<NodeConfig> {
        use recsys_proto::limits::{MAX_EXCLUSIONS, MAX_RETRIEVE_K};
        anyhow::ensure!(
            self.max_search_k >= MAX_RETRIEVE_K,
            "--max-search-k is {}, below {MAX_RETRIEVE_K}: gateways accept retrieve_k up to that and would send searches this node refuses",
            self.max_search_k
        );
        anyhow::ensure!(
            self.max_exclusions >= MAX_EXCLUSIONS,
            "--max-exclusions is {}, below {MAX_EXCLUSIONS}: gateways accept that many and may send them all to one shard",
            self.max_exclusions
        );
        self.store.check(&self.bundle)?;
        Ok(NodeConfig {
            bundle: recsys_bundle::BundleSource::at(self.bundle.given()),
            versions: self.versions.options(),
            shard: self.shard,
            search_threads: self.search_threads,
            limits: SearchLimits {
                max_k: self.max_search_k,
                max_exclusions: self.max_exclusions,
                max_exact_searches: self.max_exact_searches,
            },
            server_limits: self
                .server_limits
                .limits()
                .map_err(|reason| anyhow::anyhow!(reason))?,
            load_mode: self.load_mode,
            max_in_flight: self.admission.max_in_flight,
            fold_min_items: self.fold_min_items,
            announce: self
                .etcd
                .announce(&format!("retrieval-{}", self.shard), listen)?,
            access: self.tls.access(self.listen)?,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let _telemetry = recsys_server::telemetry::init("recsys-retrieval-node");
    let args = Args::parse();
    if args.check_config {
        let config = args.config(args.listen)?;
        println!(
            "retrieval-node: configuration ok: listen {}, metrics {:?}, {config:?}",
            args.listen, args.metrics_listen
        );
        return Ok(());
    }
    args.runtime
        .build(recsys_server::runtime::IoRole::WithComputePools)?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let mut config = args.config(listener.local_addr()?)?;
    config.bundle = args
        .store
        .open(&args.bundle, recsys_bundle::FileSet::Shard(args.shard))?;
    let shutdown = recsys_server::shutdown::on_signal();
    if let Some(addr) = args.metrics_listen {
        recsys_server::metrics::spawn(addr, shutdown.clone()).await;
    }
    run(listener, config, shutdown).await?;
    Ok(())
}
