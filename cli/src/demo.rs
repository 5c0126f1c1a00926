//! `recsys demo` and `recsys serve`: a whole cluster in this process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use recsys_bundle::Manifest;
use recsys_bundle::attributes::ItemAttributes;
use recsys_bundle::filter::{AttributeType, Filter, Literal};
use recsys_local_cluster::{EtcdCluster, LocalCluster, LocalClusterOptions};
use recsys_proto::v1::{
    RecommendRequest, gateway_service_client::GatewayServiceClient, recommend_request::Query,
};

use crate::bundle_cmd::{IndexArgs, SyntheticArgs, build_synthetic};
use crate::query::print_response;

/// What `recsys demo` and `recsys serve` share: metrics and discovery.
#[derive(Debug, Clone, Args)]
pub struct ClusterFlags {
    /// Where Prometheus metrics of the whole cluster are served (http://ADDR/metrics).
    #[arg(long, env = "RECSYS_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Discover through etcd (client URLs) instead of a static list; nodes register there.
    #[arg(long, env = "RECSYS_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// Cluster name in etcd.
    #[arg(long, env = "RECSYS_CLUSTER", default_value = "demo")]
    pub cluster: String,
}

impl ClusterFlags {
    fn etcd(&self) -> Option<EtcdCluster> {
        (!self.etcd.is_empty()).then(|| EtcdCluster {
            // `demo` and `serve` run on loopback: plaintext etcd, no auth.
            etcd: recsys_discovery::EtcdAccess::plain(self.etcd.clone()),
            cluster: self.cluster.clone(),
            lease_ttl: recsys_discovery::DEFAULT_LEASE_TTL,
            users: None,
        })
    }
}

/// Options of `recsys demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the gateway listens.
    #[arg(long, env = "RECSYS_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    pub gateway_addr: SocketAddr,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Where the synthetic bundle is kept between runs.
    #[arg(long, env = "RECSYS_DEMO_BUNDLE", default_value = "target/demo-bundle")]
    pub bundle_dir: PathBuf,
    /// A MovieLens 100K directory (u.data, u.item, u.user): train the two-tower
    /// model on it, export it and serve that instead of the synthetic bundle.
    #[arg(long, env = "RECSYS_DEMO_DATA")]
    pub data: Option<PathBuf>,
    /// Where the bundle trained from --data is kept between runs.
    #[arg(
        long,
        env = "RECSYS_DEMO_TRAINED_BUNDLE",
        default_value = "target/demo-movielens"
    )]
    pub trained_bundle_dir: PathBuf,
    /// Rebuild the bundle even if one is cached.
    #[arg(long)]
    pub rebuild: bool,
    /// Replicas per shard.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// Print the samples and stop instead of serving (for scripts).
    #[arg(long)]
    pub no_serve: bool,
    /// Skip the item updates the demo shows (a new item added, one withdrawn
    /// while the cluster serves). They need etcd: without --etcd the demo starts
    /// a private one when an `etcd` binary is on PATH.
    #[arg(long)]
    pub no_live_items: bool,
    #[command(flatten)]
    pub synthetic: SyntheticArgs,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// Options of `recsys serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The bundle to serve: a version directory, or a root's current version.
    #[command(flatten)]
    pub bundle: recsys_bundle::flags::BundleFlags,
    /// Where the gateway listens.
    #[arg(long, env = "RECSYS_GATEWAY_ADDR", default_value = "127.0.0.1:50051")]
    pub gateway_addr: SocketAddr,
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Replicas per shard.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
}

/// Builds (or reuses) the synthetic bundle, or trains one from `--data`, starts
/// the cluster, prints samples, serves.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if let Some(data) = &args.data {
        return demo_trained(&args, data).await;
    }
    let wanted_source = format!(
        "synthetic items={} users={} dim={} clusters={} seed={}",
        args.synthetic.items,
        args.synthetic.users,
        args.synthetic.dimensions,
        args.synthetic.clusters,
        args.synthetic.seed
    );
    let cached = Manifest::load(&args.bundle_dir).ok().filter(|m| {
        // A bundle built before checksums would not load: build it anew.
        !m.files.is_empty()
            && m.source == wanted_source
            && m.shard_count == args.index.shards
            && args.index.params().is_ok_and(|params| params == m.index)
    });
    match cached {
        Some(manifest) if !args.rebuild => eprintln!(
            "using the cached bundle {} in {} (--rebuild to build anew)",
            manifest.version,
            args.bundle_dir.display()
        ),
        _ => {
            let (dir, synthetic, index) = (
                args.bundle_dir.clone(),
                args.synthetic.clone(),
                args.index.clone(),
            );
            let started = std::time::Instant::now();
            let manifest = tokio::task::spawn_blocking(move || {
                crate::bundle_cmd::into_dir(&dir, |staged| {
                    build_synthetic(staged, &synthetic, &index, Some("demo-1".into()))
                })
            })
            .await??;
            eprintln!(
                "built bundle {}: {} items in {} shards ({:.1} s)",
                manifest.version,
                manifest.items,
                manifest.shard_count,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let serving = (!args.no_serve).then_some(args.cluster.metrics_addr);
    let (etcd, _private) = live_items_etcd(&args).await;
    start_and_serve(
        args.bundle_dir,
        args.gateway_addr,
        args.replicas,
        etcd,
        serving,
        !args.no_live_items,
    )
    .await
}

/// The etcd the demo's cluster uses: `--etcd`'s, or for the item updates a
/// private one (kept alive by the returned guard) when an `etcd` binary is on
/// PATH, else none (static membership, no item updates).
async fn live_items_etcd(
    args: &DemoArgs,
) -> (Option<EtcdCluster>, Option<recsys_discovery::EtcdServer>) {
    if let Some(etcd) = args.cluster.etcd() {
        return (Some(etcd), None);
    }
    if args.no_live_items {
        return (None, None);
    }
    match recsys_discovery::EtcdServer::start().await {
        Ok(server) => {
            eprintln!(
                "started a private etcd on {} for the item updates (--no-live-items to skip)",
                server.endpoint()
            );
            let cluster = EtcdCluster {
                // A private etcd on loopback: plaintext, no auth.
                etcd: recsys_discovery::EtcdAccess::plain(vec![server.endpoint()]),
                cluster: args.cluster.cluster.clone(),
                lease_ttl: recsys_discovery::DEFAULT_LEASE_TTL,
                users: None,
            };
            (Some(cluster), Some(server))
        }
        Err(error) => {
            eprintln!("no item updates in this demo: they need etcd ({error})");
            (None, None)
        }
    }
}

/// Trains on MovieLens (or reuses the bundle trained before), then serves it.
async fn demo_trained(args: &DemoArgs, data: &std::path::Path) -> anyhow::Result<()> {
    // fetch.sh DIR writes DIR/ml-100k: take either directory.
    let data = if !data.join("u.data").exists() && data.join("ml-100k/u.data").exists() {
        data.join("ml-100k")
    } else {
        data.to_path_buf()
    };
    let data = data
        .canonicalize()
        .with_context(|| format!("the data directory {}", data.display()))?;
    let dir = args.trained_bundle_dir.clone();
    let cached = Manifest::load(&dir).ok().filter(|m| {
        !m.files.is_empty() && m.source == crate::train::trained_source(&data) && m.ranker.is_some()
    });
    match cached {
        Some(manifest) if !args.rebuild => eprintln!(
            "using the bundle {} trained before in {} (--rebuild to train anew)",
            manifest.version,
            dir.display()
        ),
        _ => {
            eprintln!(
                "training a ranker and a retrieval model on {} with recsys train's defaults, then exporting to {}",
                data.display(),
                dir.display()
            );
            let (data, out) = (data.clone(), dir.clone());
            tokio::task::spawn_blocking(move || crate::train::train_for_demo(&data, &out))
                .await??;
        }
    }
    let serving = (!args.no_serve).then_some(args.cluster.metrics_addr);
    let (etcd, _private) = live_items_etcd(args).await;
    start_and_serve(
        dir,
        args.gateway_addr,
        args.replicas,
        etcd,
        serving,
        !args.no_live_items,
    )
    .await
}

/// Serves an existing bundle: `--bundle DIR`, or `--bundle-root ROOT`, whose
/// versions every server follows: a change of `CURRENT` (`recsys bundle
/// activate`), or with `--etcd` of the cluster's desired version (`recsys
/// rollout`), is loaded beside the served version and switched to.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let bundle = args.bundle.resolve()?;
    eprintln!(
        "serving bundle version {} from {}",
        bundle.version,
        bundle.dir.display()
    );
    if args.bundle.bundle_root.is_some() {
        eprintln!(
            "following {}: `recsys bundle activate` or `recsys rollout` switches versions without a restart",
            args.bundle.given().display()
        );
    }
    start_and_serve(
        args.bundle.given(),
        args.gateway_addr,
        args.replicas,
        args.cluster.etcd(),
        Some(args.cluster.metrics_addr),
        false,
    )
    .await
}

async fn start_and_serve(
    bundle_dir: PathBuf,
    gateway_addr: SocketAddr,
    replicas: usize,
    etcd: Option<EtcdCluster>,
    keep_serving: Option<SocketAddr>,
    live_items: bool,
) -> anyhow::Result<()> {
    let with_log = etcd.is_some();
    let started = std::time::Instant::now();
    let mut options = LocalClusterOptions::new(&bundle_dir);
    options.gateway_addr = gateway_addr;
    options.replicas = replicas;
    if let Some(etcd) = &etcd {
        eprintln!(
            "nodes register in etcd {} under /recsys/{}/nodes/",
            etcd.etcd.endpoints.join(","),
            etcd.cluster
        );
    }
    options.etcd = etcd;
    let cluster = LocalCluster::start(options)
        .await
        .context("starting the local cluster")?;
    let manifest = cluster.manifest().clone();
    eprintln!(
        "cluster up in {:.2} s: {} shards x {} replica(s), {} ranking node(s), gateway on {}",
        started.elapsed().as_secs_f64(),
        manifest.shard_count,
        replicas.max(1),
        cluster.ranking_nodes(),
        cluster.gateway_addr
    );

    let endpoint = format!("http://{}", cluster.gateway_addr);
    let mut client = GatewayServiceClient::connect(endpoint).await?;
    let users = sample_users(&cluster.bundle_dir(), &manifest);
    // The first answer's best item, for "items like it" below.
    let mut liked: Option<(u64, String)> = None;
    for user in &users {
        println!("\nrecommendations for {user}:");
        let mut request = tonic::Request::new(RecommendRequest {
            query: Some(Query::UserId(user.clone())),
            k: 5,
            retrieve_k: 100,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(1));
        match client.recommend(request).await {
            Ok(response) => {
                let response = response.into_inner();
                if liked.is_none() {
                    liked = response
                        .items
                        .first()
                        .map(|item| (item.item_id, item.name.clone()));
                }
                print_response(&response);
            }
            Err(status) => println!("  failed: {}", status.message()),
        }
    }
    if let Some((item, name)) = &liked {
        println!(
            "
items like {name} (item {item}; its own vector is the query, retrieval order):"
        );
        let mut request = tonic::Request::new(RecommendRequest {
            similar_to_item_id: Some(*item),
            k: 5,
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(1));
        match client.recommend(request).await {
            Ok(response) => print_response(&response.into_inner()),
            Err(status) => println!("  failed: {}", status.message()),
        }
    }
    let filter = sample_filter(&cluster.bundle_dir(), &manifest);
    if let (Some(expression), Some(user)) = (&filter, users.first()) {
        println!("\nrecommendations for {user}, only items with {expression}:");
        let mut request = tonic::Request::new(RecommendRequest {
            query: Some(Query::UserId(user.clone())),
            k: 5,
            filter_expression: expression.clone(),
            ..Default::default()
        });
        request.set_timeout(Duration::from_secs(1));
        match client.recommend(request).await {
            Ok(response) => print_response(&response.into_inner()),
            Err(status) => println!("  failed: {}", status.message()),
        }
    }
    if users.is_empty() {
        println!(
            "\nthe bundle has no query model: query it with embeddings of {} dimensions",
            manifest.dimensions
        );
    }

    if live_items
        && with_log
        && let Some(user) = users.first()
    {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.gateway_addr))?
                .connect()
                .await?;
        if let Err(error) = crate::demo_items::show(channel, &bundle_dir, &manifest, user).await {
            println!("  item updates failed: {error:#}");
        }
    }

    let addr = cluster.gateway_addr;
    let example_user = users.first().cloned().unwrap_or_else(|| "user-0".into());
    println!("\nask it yourself:");
    println!(
        "  cargo run -q -p recsys-cli -- query --gateway {addr} --user-id {example_user} -k 10"
    );
    println!(
        "  grpcurl -plaintext -d '{{\"user_id\": \"{example_user}\", \"k\": 10}}' {addr} recsys.v1.GatewayService/Recommend"
    );
    if let Some((item, _)) = &liked {
        println!(
            "  cargo run -q -p recsys-cli -- query --gateway {addr} --similar-to {item} -k 10"
        );
        println!(
            "  grpcurl -plaintext -d '{{\"similar_to_item_id\": {item}, \"k\": 10}}' {addr} recsys.v1.GatewayService/Recommend"
        );
    }
    if let Some(expression) = &filter {
        println!(
            "  cargo run -q -p recsys-cli -- query --gateway {addr} --user-id {example_user} -k 10 --filter '{expression}'"
        );
    }
    if let Some(metrics_addr) = keep_serving {
        let shutdown = recsys_server::shutdown::on_signal();
        recsys_server::metrics::spawn(metrics_addr, shutdown.clone()).await;
        println!("  curl -s http://{metrics_addr}/metrics | grep ^recsys_");
        eprintln!("\nserving until Ctrl-C");
        cluster.serve_until(shutdown).await?;
    } else {
        cluster.shutdown().await?;
    }
    Ok(())
}

/// A filter to show off on the bundle's attributes, if it has any: its first
/// keyword attribute equal to its most common value (MovieLens: a genre).
fn sample_filter(dir: &std::path::Path, manifest: &Manifest) -> Option<String> {
    let file = manifest.attributes.as_ref()?;
    let attributes = ItemAttributes::load(&Manifest::resolve(dir, file)).ok()?;
    let (name, _) = attributes
        .schema()
        .iter()
        .find(|(_, kind)| matches!(kind, AttributeType::Keyword | AttributeType::KeywordList))?;
    let counts = attributes.keyword_counts(name)?;
    let (value, _) = counts
        .into_iter()
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))?;
    let filter = Filter::Eq {
        attribute: name.clone(),
        value: Literal::String(value.to_string()),
    };
    Some(filter.to_string())
}

/// A few user ids from the bundle's query model vocabulary.
fn sample_users(dir: &std::path::Path, manifest: &Manifest) -> Vec<String> {
    let vocabulary = match &manifest.query_model {
        Some(recsys_bundle::QueryModelSpec::EmbeddingTable { vocabulary, .. }) => vocabulary,
        Some(recsys_bundle::QueryModelSpec::Tower(tower)) => match tower.features.first() {
            Some(feature) => &feature.vocabulary,
            None => return Vec::new(),
        },
        None => return Vec::new(),
    };
    recsys_bundle::lines::read_lines(&Manifest::resolve(dir, vocabulary))
        .map(|ids| ids.into_iter().take(3).collect())
        .unwrap_or_default()
}
